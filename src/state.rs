//! On-disk state: the layout of a sandbox directory, atomic JSON files, process identities.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::verdict::Verdict;

/// Version of the on-disk format of a sandbox directory. Readers refuse other versions.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The files of one sandbox directory, `<root>/<id>/`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `<root>/<id>`.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of sandbox `id` under `root`.
    pub fn new(root: &Path, id: &str) -> Self {
        Layout { dir: root.join(id) }
    }
    /// The sandbox's config and identity (`sandbox.json`).
    pub fn record(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }
    /// The monitor's identity (`monitor.json`).
    pub fn monitor(&self) -> PathBuf {
        self.dir.join("monitor.json")
    }
    /// The result, written once the run is over (`exit.json`).
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The FIFO a controller writes to to start a created sandbox.
    pub fn start_fifo(&self) -> PathBuf {
        self.dir.join("start.fifo")
    }
    /// Stdin bytes given by the caller.
    pub fn stdin(&self) -> PathBuf {
        self.dir.join("stdin")
    }
    /// Captured stdout.
    pub fn stdout(&self) -> PathBuf {
        self.dir.join("stdout")
    }
    /// Captured stderr.
    pub fn stderr(&self) -> PathBuf {
        self.dir.join("stderr")
    }
}

/// Name of the directory under the state root that every monitor mounts its own scratch
/// tmpfs on, in its private mount namespace.
pub(crate) const SCRATCH_DIR: &str = ".scratch";

/// A monitor's scratch space: `<root>/.scratch`, over which each monitor mounts a size-capped
/// tmpfs in its own mount namespace (so they never collide, and the host never sees them). It
/// holds the overlay's upper and work dirs, the OCI bundle and libcontainer's state, at paths
/// that do not depend on the sandbox id: a spare monitor builds its container before it knows
/// which sandbox it will be.
#[derive(Debug, Clone)]
pub(crate) struct Scratch {
    /// `<root>/.scratch`.
    pub dir: PathBuf,
}

impl Scratch {
    /// The scratch mount point of the state root `root`.
    pub fn of_root(root: &Path) -> Self {
        Scratch {
            dir: root.join(SCRATCH_DIR),
        }
    }
    /// The OCI bundle directory.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    /// The overlay's merged dir, the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
    /// libcontainer's own state root.
    pub fn libcontainer_root(&self) -> PathBuf {
        self.dir.join("lc")
    }
}

/// A name unique on this host and owned by this process: `<prefix><pid>-<start time>-<n>`.
/// Temp dirs, dirs being removed and pre-built containers' cgroups are named so, and `gc`
/// collects them once their owner is dead ([`ProcIdentity::parse_prefix`]).
pub(crate) fn owned_name(prefix: &str) -> Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let me = ProcIdentity::of(std::process::id() as i32)
        .ok_or_else(|| Error::new(ErrorKind::Io, "cannot read own /proc entry"))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{prefix}{}-{}-{n}", me.pid, me.start_time))
}

/// Prefix of the names sandbox directories are renamed to just before they are removed,
/// followed by the remover's pid and start time and a counter.
pub(crate) const GONE_PREFIX: &str = ".gone-";

/// Removes a sandbox directory so that its id disappears at once: renamed out of the way
/// (to `.gone-<pid>-<start>-<n>`, which `gc` collects if the remover dies), then removed. A
/// claim of the same id never sees a half-removed directory.
pub(crate) fn remove_sandbox_dir(dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox dir has no parent"))?;
    let gone = parent.join(owned_name(GONE_PREFIX)?);
    fs::rename(dir, &gone).map_err(|e| Error::io("rename", dir, e))?;
    fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))
}

/// `sandbox.json`: what the sandbox is, written by the controller before the monitor starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SandboxRecord {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The sandbox id.
    pub id: String,
    /// The cgroup path given to libcontainer (`/<prefix>/<id>`).
    pub cgroup_path: String,
    /// Creation time, milliseconds since the epoch.
    pub created_unix_ms: u64,
    /// The controller that created it (a sandbox without a monitor whose creator died is lost).
    pub creator: ProcIdentity,
    /// The monitor reports the result on its pipe, then cleans up and removes the directory
    /// (one-shot runs); nobody else deletes such a sandbox.
    #[serde(default)]
    pub remove_on_exit: bool,
    /// The validated configuration.
    pub config: SandboxConfig,
}

/// Where a sandbox's monitor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Setting up the rootfs and container.
    Creating,
    /// Built; the init waits for `start`.
    Created,
    /// The program runs.
    Running,
}

/// `monitor.json`: the monitor's identity, the init's once it exists, and the phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MonitorRecord {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The monitor process.
    pub monitor: ProcIdentity,
    /// The container's init (pid 1 of the sandbox), once built.
    pub init: Option<ProcIdentity>,
    /// The phase.
    pub phase: Phase,
}

/// `exit.json`: how the run ended, written by the monitor after cleanup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The grader's verdict.
    pub verdict: Verdict,
    /// Figures beyond the verdict.
    pub usage: crate::verdict::Usage,
}

/// A process named by pid plus its start time (field 22 of `/proc/<pid>/stat`), never a bare pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcIdentity {
    /// Process id in the host's pid namespace.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcIdentity {
    /// The identity of `pid` now, or `None` if it does not exist.
    pub fn of(pid: i32) -> Option<ProcIdentity> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_start_time(&stat).map(|start_time| ProcIdentity { pid, start_time })
    }

    /// The identity at the start of a name part `<pid>-<start time>[-…]` (see
    /// [`owned_name`]).
    pub fn parse_prefix(text: &str) -> Option<ProcIdentity> {
        let mut parts = text.split('-');
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        Some(ProcIdentity { pid, start_time })
    }

    /// True if the same process (pid and start time) still exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        parse_start_time(&stat) == Some(self.start_time) && parse_state(&stat) != Some('Z')
    }
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line; the comm field may hold spaces and `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ") " come fields 3.. ; starttime is field 22, so index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Field 3 (state) of a `/proc/<pid>/stat` line.
pub(crate) fn parse_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Writes `value` as JSON to `path` through a temp file and rename (see [`write_atomic`]).
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::with_source(ErrorKind::Io, format!("encode {}", path.display()), e))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temp file and rename, so a reader sees the old file or
/// the new one, never a part.
///
/// No fsync: the state describes processes of this boot only (after a power loss every
/// sandbox is gone and `gc` removes its directory), so durability buys nothing, while an fsync
/// on a disk-backed state root costs milliseconds on every sandbox start.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}

/// Reads a JSON state file; a missing file is `NotFound`, a corrupt one `Io` naming the file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::with_source(
                ErrorKind::NotFound,
                format!("{} is missing", path.display()),
                e,
            )
        } else {
            Error::io("read", path, e)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("state file {} is corrupt", path.display()),
            e,
        )
    })
}

/// Checks the format version of a record read from disk.
pub(crate) fn check_format(version: u32, path: &Path) -> Result<()> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "state file {} has format version {version}, this runbox reads {FORMAT_VERSION}",
                path.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcIdentity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn atomic_write_then_read() {
        let dir = std::env::temp_dir().join(format!("runbox-unit-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        write_json_atomic(&p, &vec![1, 2, 3]).unwrap();
        let back: Vec<i32> = read_json(&p).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        fs::write(&p, b"{trunc").unwrap();
        assert_eq!(read_json::<Vec<i32>>(&p).unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(
            read_json::<Vec<i32>>(&dir.join("none")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
