//! The one parser of the mount table (`/proc/self/mounts`), with its octal escapes. Used by
//! controllers (gc, check) and monitors (cgroup layout, hiding hierarchies).

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The mount point.
    pub target: PathBuf,
    /// The file system type (`cgroup`, `cgroup2`, `tmpfs`, ...).
    pub fstype: String,
    /// The mount options (for cgroup v1, the controllers among them).
    pub options: Vec<String>,
}

impl MountEntry {
    /// True if `opt` is one of the mount options.
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
}

/// Undoes the kernel's octal escapes in a mounts field (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of `/proc/self/mounts` (or `/proc/mounts`); malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4).then(|| MountEntry {
                target: PathBuf::from(unescape(f[1])),
                fstype: f[2].to_string(),
                options: f[3].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// This process's mount table.
pub(crate) fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mounts")?))
}

/// Mount points at or below `dir` in this process's mount namespace.
pub(crate) fn under(dir: &Path) -> Vec<PathBuf> {
    read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_split_and_unescaped() {
        let text = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n\
                    tmpfs /run/a\\040dir\\134x tmpfs rw,size=1k 0 0\nshort line\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m[0].has_option("cpuacct") && !m[0].has_option("memory"));
        assert_eq!(m[1].target, Path::new("/run/a dir\\x"));
        assert_eq!(m[1].fstype, "tmpfs");
        assert_eq!(unescape("a\\0b\\"), "a\\0b\\");
    }
}
