//! Images: a read-only lower dir plus read-only host binds; the host-based default skeleton.
//! Opened in the controller (the program is resolved in it) and the monitor (its lower dir).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Bump when the skeleton's contents change, so old skeletons are not reused.
const SKELETON_VERSION: u32 = 1;

/// Top-level host paths that may be bound (when real directories) or mirrored (when symlinks).
const HOST_TREES: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Files copied from the host's /etc into the skeleton: nothing secret, needed by dynamic programs.
const HOST_ETC_FILES: &[&str] = &["ld.so.cache", "ld.so.conf", "nsswitch.conf", "localtime"];

/// A read-only image: the overlay's lower dir and read-only binds of host dirs on top.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Image {
    /// The overlay lower dir (a stored image's top layer).
    pub lower: PathBuf,
    /// A stored image's layers beneath `lower`, top first.
    pub below: Vec<PathBuf>,
    /// (host source, absolute destination inside the sandbox), bound read-only.
    pub binds: Vec<(PathBuf, String)>,
}

impl Image {
    /// A caller-supplied image directory, used whole as the lower dir.
    pub fn from_dir(dir: &Path) -> Result<Image> {
        let lower = fs::canonicalize(dir).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("image {} cannot be opened", dir.display()),
                e,
            )
        })?;
        if !lower.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("image {} is not a directory", dir.display()),
            ));
        }
        if lower == Path::new("/") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the host's / cannot be an image (it would carry host secrets); omit the image to get the host-based default",
            ));
        }
        Ok(Image {
            lower,
            below: Vec::new(),
            binds: Vec::new(),
        })
    }

    /// A stored image: its layer directories, top first (at least one).
    pub fn from_layers(layers: &[PathBuf]) -> Result<Image> {
        let (top, below) = layers.split_first().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                "an image needs at least one layer",
            )
        })?;
        Ok(Image {
            lower: top.clone(),
            below: below.to_vec(),
            binds: Vec::new(),
        })
    }

    /// The host-based default: a generated skeleton under `images_dir` (minimal /etc, the host's
    /// top-level symlinks, empty mount points) with the host's /usr and /lib* bound read-only.
    /// The skeleton is made once and shared by every sandbox.
    pub fn host_default(images_dir: &Path) -> Result<Image> {
        let lower = images_dir.join(format!("host-v{SKELETON_VERSION}"));
        let mut binds = Vec::new();
        for name in HOST_TREES {
            let host = Path::new("/").join(name);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => binds.push((host, format!("/{name}"))),
                _ => {}
            }
        }
        if !lower.join(".runbox-skeleton").exists() {
            build_skeleton(images_dir, &lower)?;
        }
        Ok(Image {
            lower,
            below: Vec::new(),
            binds,
        })
    }

    /// Maps a path inside the sandbox to the host path that backs it (bind or layer), `None`
    /// if nothing backs it. Every component of `inside` before the last must already be
    /// resolved (no symlink in the sandbox's view): see [`resolve`](Self::resolve).
    fn host_path(&self, inside: &Path) -> Option<PathBuf> {
        let best = self
            .binds
            .iter()
            .filter(|(_, dest)| inside.starts_with(dest))
            .max_by_key(|(_, dest)| dest.len());
        match best {
            Some((src, dest)) => Some(match inside.strip_prefix(dest) {
                // `join("")` would add a trailing slash: wrong for a file bound or copied.
                Ok(rest) if rest.as_os_str().is_empty() => src.clone(),
                Ok(rest) => src.join(rest),
                Err(_) => src.join(inside),
            }),
            None => self.in_layers(inside.strip_prefix("/").unwrap_or(inside)),
        }
    }

    /// The host path of `rel` in the layers as overlayfs merges them, never resolving a
    /// path on the host: one component at a time, each looked up (without following it) in
    /// the layers that make up its parent directory, top first. A directory merges with the
    /// directories of the same name below it, down to an opaque one; anything else (a file,
    /// a symlink, a whiteout: a 0/0 character device) hides everything below. A symlink in
    /// a lower layer is an entry like any other: the caller resolves it inside the image.
    /// `None` if the merged view has no such entry, or a component before the last is not a
    /// directory there.
    fn in_layers(&self, rel: &Path) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::iter::once(&self.lower)
            .chain(&self.below)
            .cloned()
            .collect();
        let mut parts = rel
            .components()
            .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
            .peekable();
        while let Some(part) = parts.next() {
            let Component::Normal(name) = part else {
                return None;
            };
            let mut merged = Vec::new();
            let mut other = None;
            for dir in &dirs {
                let p = dir.join(name);
                let Ok(meta) = fs::symlink_metadata(&p) else {
                    continue;
                };
                let ft = meta.file_type();
                if ft.is_dir() {
                    let opaque = crate::host::sys::get_xattr(&p, c"trusted.overlay.opaque")
                        .is_ok_and(|v| v == b"y");
                    merged.push(p);
                    if opaque {
                        break;
                    }
                } else {
                    // A whiteout hides it; a file or symlink is it, unless a directory above
                    // already is.
                    let whiteout = ft.is_char_device() && meta.rdev() == 0;
                    if merged.is_empty() && !whiteout {
                        other = Some(p);
                    }
                    break;
                }
            }
            if parts.peek().is_none() {
                return other.or_else(|| merged.into_iter().next());
            }
            if merged.is_empty() {
                return None;
            }
            dirs = merged;
        }
        Some(self.lower.clone())
    }

    /// Resolves `inside` (absolute) within the image, following symlinks as the sandbox would
    /// see them (absolute targets and `..` stay inside the image). Returns the host path of
    /// the target, which is not a symlink.
    fn resolve(&self, inside: &Path) -> Option<PathBuf> {
        let components = |p: &Path| -> Vec<std::ffi::OsString> {
            p.components()
                .rev()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect()
        };
        let mut pending = components(inside);
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&part);
            let meta = self
                .host_path(&next)
                .and_then(|host| fs::symlink_metadata(&host).ok().map(|m| (host, m)));
            let (host, meta) = match meta {
                Some(found) => found,
                // A directory the image lacks but a deeper bind or copy creates.
                None if self
                    .binds
                    .iter()
                    .any(|(_, d)| Path::new(d).starts_with(&next) && Path::new(d) != next) =>
                {
                    cur = next;
                    continue;
                }
                None => return None,
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = fs::read_link(&host).ok()?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                pending.extend(components(&target));
            } else if meta.is_dir() || pending.is_empty() {
                cur = next;
            } else {
                // A file where the path goes on: no such path.
                return None;
            }
        }
        self.host_path(&cur)
    }

    /// Finds the program the sandbox will execute: a path with `/` as is, else the first
    /// executable match in `path_var`, in the image and its binds (the caller adds the
    /// sandbox's own binds and copies to `binds`: a later one wins at the same destination).
    /// Returns its absolute path inside the sandbox.
    pub fn resolve_program(&self, program: &str, path_var: &str) -> Result<String> {
        let candidates: Vec<String> = if program.contains('/') {
            if !program.starts_with('/') {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "program {program:?} must be absolute or a bare name looked up in PATH"
                    ),
                ));
            }
            vec![program.to_string()]
        } else {
            path_var
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
                .collect()
        };
        for inside in &candidates {
            if let Some(host) = self.resolve(Path::new(inside)) {
                if let Ok(meta) = fs::symlink_metadata(&host) {
                    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                        return Ok(inside.clone());
                    }
                }
            }
        }
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "program {program:?} not found as an executable file in the image, its binds or the files copied in (PATH={path_var:?})"
            ),
        ))
    }
}

/// Writes the skeleton into a temporary directory and renames it into place; a concurrent
/// builder that wins the rename is fine.
fn build_skeleton(images_dir: &Path, lower: &Path) -> Result<()> {
    fs::create_dir_all(images_dir).map_err(|e| Error::io("create", images_dir, e))?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = images_dir.join(format!(".tmp-skel-{}-{n}", std::process::id()));
    // A leftover of an earlier process with this pid; one that stays makes the build fail.
    super::cleanup::remove_tree(&tmp, "a leftover skeleton");
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::io(what, p, e)
    };
    let result = (|| -> Result<()> {
        for dir in [
            "", "etc", "proc", "sys", "dev", "tmp", "work", "usr", "root", "run", "var", "var/tmp",
        ] {
            let p = tmp.join(dir);
            fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        for dir in ["tmp", "var/tmp"] {
            let p = tmp.join(dir);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o1777)).map_err(io("chmod", &p))?;
        }
        fs::set_permissions(tmp.join("root"), fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &tmp.join("root")))?;
        for name in HOST_TREES {
            let host = Path::new("/").join(name);
            let p = tmp.join(name);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&host).map_err(io("read link", &host))?;
                    symlink(&target, &p).map_err(io("symlink", &p))?;
                }
                Ok(m) if m.is_dir() => fs::create_dir_all(&p).map_err(io("create", &p))?,
                _ => {}
            }
        }
        let etc = tmp.join("etc");
        let files: &[(&str, &str)] = &[
            (
                "passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            ),
            ("group", "root:x:0:\nnogroup:x:65534:\n"),
            ("hosts", "127.0.0.1\tlocalhost runbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            ("resolv.conf", ""),
            ("hostname", "runbox\n"),
        ];
        for (name, text) in files {
            let p = etc.join(name);
            let mut f = fs::File::create(&p).map_err(io("create", &p))?;
            f.write_all(text.as_bytes()).map_err(io("write", &p))?;
        }
        for name in HOST_ETC_FILES {
            let host = Path::new("/etc").join(name);
            if fs::metadata(&host).is_ok_and(|m| m.is_file()) {
                let p = etc.join(name);
                fs::copy(&host, &p).map_err(io("copy", &host))?;
            }
        }
        // /etc/alternatives holds only symlinks; ld.so.conf.d only small config files.
        copy_flat(Path::new("/etc/alternatives"), &etc.join("alternatives"))?;
        copy_flat(Path::new("/etc/ld.so.conf.d"), &etc.join("ld.so.conf.d"))?;
        fs::File::create(tmp.join(".runbox-skeleton"))
            .map_err(io("create", &tmp.join(".runbox-skeleton")))?;
        Ok(())
    })();
    if let Err(e) = result {
        super::cleanup::remove_tree(&tmp, "a skeleton that failed to build");
        return Err(e);
    }
    match fs::rename(&tmp, lower) {
        Ok(()) => Ok(()),
        Err(_) if lower.join(".runbox-skeleton").exists() => {
            super::cleanup::remove_tree(&tmp, "a skeleton another process built first");
            Ok(())
        }
        Err(e) => {
            super::cleanup::remove_tree(&tmp, "a skeleton that could not be put in place");
            Err(Error::io("rename skeleton to", lower, e))
        }
    }
}

/// Copies the symlinks and regular files directly in `src` into `dst` (no subdirectories,
/// no special files); a missing `src` is fine.
fn copy_flat(src: &Path, dst: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(src) else {
        return Ok(());
    };
    fs::create_dir_all(dst).map_err(|e| Error::io("create", dst, e))?;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let p = dst.join(entry.file_name());
        if kind.is_symlink() {
            let target =
                fs::read_link(entry.path()).map_err(|e| Error::io("read link", entry.path(), e))?;
            symlink(&target, &p).map_err(|e| Error::io("symlink", p, e))?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &p).map_err(|e| Error::io("copy", p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("runbox-unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resolves_through_absolute_symlinks_inside_the_image() {
        let d = scratch("resolve");
        fs::create_dir_all(d.join("usr/bin")).unwrap();
        symlink("usr/bin", d.join("bin")).unwrap();
        fs::write(d.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(d.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/usr/bin/tool", d.join("usr/bin/alias")).unwrap();
        fs::write(d.join("usr/bin/data"), "x").unwrap();
        let img = Image::from_dir(&d).unwrap();
        assert_eq!(img.resolve_program("tool", "/bin").unwrap(), "/bin/tool");
        assert_eq!(img.resolve_program("/bin/alias", "").unwrap(), "/bin/alias");
        assert!(img.resolve_program("data", "/usr/bin").is_err());
        assert!(img.resolve_program("missing", "/usr/bin:/bin").is_err());
        assert!(img.resolve_program("rel/tool", "/bin").is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Layers as a stored image has them (finding 13 of issue 21): a lower layer's symlinks
    /// resolve inside the image, never on the host, and the error never names a layer's
    /// directory.
    #[test]
    fn layered_lookup_merges_as_overlayfs_and_never_resolves_on_the_host() {
        // Whiteouts and opaque marks need a file system that is not an overlay (the cgroup
        // v2 guest's / is one): /dev/shm where there is one.
        let d = Path::new("/dev/shm").join(format!("runbox-unit-layers-{}", std::process::id()));
        let d = if Path::new("/dev/shm").is_dir() {
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            d
        } else {
            scratch("layers")
        };
        let (bottom, top, host) = (d.join("l1"), d.join("l2"), d.join("host"));
        for dir in [&bottom, &top, &host] {
            fs::create_dir_all(dir).unwrap();
        }
        let exe = |p: &Path| {
            fs::write(p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(&host.join("hostexe"));
        // Layer 1: `a` and `up` point at the host dir, absolutely and by `..`; layer 2: a
        // real `a/` over it.
        symlink(&host, bottom.join("a")).unwrap();
        let dots = "../".repeat(host.components().count() + 3);
        symlink(
            format!("{dots}{}", host.strip_prefix("/").unwrap().display()),
            bottom.join("up"),
        )
        .unwrap();
        fs::create_dir_all(top.join("a")).unwrap();
        // Merged directories: `bin` in both layers, a tool in each.
        fs::create_dir_all(bottom.join("bin")).unwrap();
        fs::create_dir_all(top.join("bin")).unwrap();
        exe(&bottom.join("bin/low"));
        exe(&top.join("bin/high"));
        // A file in the top layer hides a directory below it.
        fs::create_dir_all(bottom.join("f")).unwrap();
        exe(&bottom.join("f/inner"));
        fs::write(top.join("f"), "x").unwrap();
        // An in-image symlink in the lower layer still works.
        symlink("/bin/low", bottom.join("bin/alias")).unwrap();
        let img = Image::from_layers(&[top.clone(), bottom.clone()]).unwrap();
        let missing = img.resolve_program("/a/nothing", "").unwrap_err();
        for hostile in ["/a/hostexe", "/up/hostexe"] {
            let e = img.resolve_program(hostile, "").unwrap_err();
            assert_eq!(e.kind(), missing.kind());
            assert_eq!(
                e.to_string().replace(hostile, "P"),
                missing.to_string().replace("/a/nothing", "P")
            );
            assert!(!e.to_string().contains(d.to_str().unwrap()), "{e}");
        }
        assert_eq!(img.resolve_program("low", "/bin").unwrap(), "/bin/low");
        assert_eq!(img.resolve_program("high", "/bin").unwrap(), "/bin/high");
        assert_eq!(img.resolve_program("alias", "/bin").unwrap(), "/bin/alias");
        assert!(img.resolve_program("/f/inner", "").is_err());
        // An opaque `bin` on top hides the lower one's tools; a whiteout hides a file.
        crate::host::sys::set_xattr(&top.join("bin"), c"trusted.overlay.opaque", b"y").unwrap();
        assert!(img.resolve_program("low", "/bin").is_err());
        assert_eq!(img.resolve_program("high", "/bin").unwrap(), "/bin/high");
        nix::sys::stat::mknod(
            &top.join("up"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        assert!(img.resolve(Path::new("/up")).is_none());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn host_root_is_refused_as_an_image() {
        assert_eq!(
            Image::from_dir(Path::new("/")).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
    }

    #[test]
    fn host_skeleton_carries_no_host_secrets() {
        let d = scratch("skel");
        let img = Image::host_default(&d).unwrap();
        assert!(img.binds.iter().any(|(_, dest)| dest == "/usr"));
        assert!(!img.lower.join("etc/shadow").exists());
        assert!(!img.lower.join("home").exists());
        let passwd = fs::read_to_string(img.lower.join("etc/passwd")).unwrap();
        assert!(passwd.contains("nobody:x:65534"));
        // The host's shell resolves through the skeleton's symlinks and the /usr bind.
        assert!(img
            .resolve_program("sh", crate::config::DEFAULT_PATH)
            .is_ok());
        // Built once: a second call reuses it.
        assert_eq!(Image::host_default(&d).unwrap(), img);
        fs::remove_dir_all(&d).unwrap();
    }
}
