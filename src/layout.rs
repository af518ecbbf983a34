//! The state root's layout: where each file of a sandbox directory lives, the scratch a
//! monitor mounts, and the names of temporary directories and cgroups owned by a process.
//! Pure paths and names; shared by every process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A process named by pid plus its start time (field 22 of `/proc/<pid>/stat`), never a bare
/// pid. Plain data here (names of temp dirs and spares carry one); `crate::host::proc` reads
/// it from `/proc` and tells whether it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcIdentity {
    /// Process id in the host's pid namespace.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcIdentity {
    /// The identity at the start of a name part `<pid>-<start time>[-…]` (see
    /// [`owned_name`]).
    pub fn parse_prefix(text: &str) -> Option<ProcIdentity> {
        let mut parts = text.split('-');
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        Some(ProcIdentity { pid, start_time })
    }
}

/// FNV-1a of `bytes`: a hash for names that must be stable across runs and builds (std's
/// hasher is not), such as a build shape's key and a state root's cgroup prefix.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Directory under the state root holding shared images (a dot keeps it apart from ids).
pub(crate) const IMAGES_DIR: &str = ".images";

/// Directory of the isolate-style boxes under a state root (`<root>/.boxes/<n>`).
pub(crate) const BOXES_DIR: &str = ".boxes";

/// Owner written in the uid lease of box `n`: `box:<n>`.
pub(crate) const BOX_LEASE_PREFIX: &str = "box:";

/// Directory of the parked spares under a state root: `<root>/.spares/<shape key>/<name>`,
/// each named by its spare's [`WARM_PREFIX`] name (see `monitor/parked.rs`).
pub(crate) const SPARES_DIR: &str = ".spares";

/// Prefix of the name a controller renames a parked spare's directory to when it claims it
/// (in `<root>/.spares`), followed by the claimer's pid and start time and a counter.
pub(crate) const CLAIMED_PREFIX: &str = ".claimed-";

/// The release generation in `<root>/.spares` (a number; see `controller/parked.rs`).
pub(crate) const SPARES_GENERATION: &str = ".generation";

/// In `<root>/.spares/<shape key>/`: an empty file whose mtime is the shape's last launch.
pub(crate) const SEEN_MARKER: &str = ".seen";

/// The listening socket in a parked spare's directory.
pub(crate) const PARKED_SOCKET: &str = "sock";

/// The control socket in a sandbox directory, on which its monitor serves requests (see
/// `proto/control.rs`).
pub(crate) const CONTROL_SOCKET: &str = "control";

/// A parked spare's record in its directory, written once its container is built.
pub(crate) const PARKED_RECORD: &str = "spare.json";

/// Prefix of the temporary directories sandboxes are prepared in before their id is claimed.
pub(crate) const NEW_PREFIX: &str = ".new-";

/// Prefix of the cgroups spares pre-build containers in, followed by the controller's pid and
/// start time and a counter (sandbox ids cannot start with `_`).
pub(crate) const WARM_PREFIX: &str = "_warm-";

/// Prefix of the names sandbox directories are renamed to just before they are removed,
/// followed by the remover's pid and start time and a counter.
pub(crate) const GONE_PREFIX: &str = ".gone-";

/// The cgroup (in each hierarchy, under the root's prefix) monitors move themselves into when
/// they leave their controller's cgroups; it cannot clash with an id.
pub(crate) const MONITORS_CGROUP: &str = "_monitors";

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
    /// Space reserved for `exit.json` when the sandbox is opened, so the verdict can be
    /// written on a full state root; renamed to `exit.json` when it is.
    pub fn exit_reserve(&self) -> PathBuf {
        self.dir.join("exit.reserve")
    }
    /// Space reserved for rewriting `monitor.json`: exchanged with it on every rewrite.
    pub fn monitor_reserve(&self) -> PathBuf {
        self.dir.join("monitor.reserve")
    }
    /// The monitor's control socket ([`CONTROL_SOCKET`]).
    pub fn control(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }
    /// The FIFO a controller of an older runbox wrote to to start a created sandbox (a
    /// sandbox made by an older monitor, which has no control socket, still has it).
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

/// The files of one exec of a sandbox, `<root>/<id>/execs/<n>/`: its captured output and its
/// verdict, written by the sandbox's monitor, read by any controller.
#[derive(Debug, Clone)]
pub(crate) struct ExecLayout {
    /// `<root>/<id>/execs/<n>`.
    pub dir: PathBuf,
}

impl Layout {
    /// The directory of every exec of the sandbox.
    pub fn execs(&self) -> PathBuf {
        self.dir.join("execs")
    }
    /// The files of exec `n`.
    pub fn exec(&self, n: u64) -> ExecLayout {
        ExecLayout {
            dir: self.execs().join(n.to_string()),
        }
    }
}

impl ExecLayout {
    /// Its verdict, written once it has ended (`exit.json`, an `ExitRecord`).
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Space reserved for `exit.json` when the exec starts.
    pub fn exit_reserve(&self) -> PathBuf {
        self.dir.join("exit.reserve")
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

/// A name unique on this host and owned by `owner` (this process):
/// `<prefix><pid>-<start time>-<n>`. Temp dirs, dirs being removed and pre-built containers'
/// cgroups are named so, and `gc` collects them once their owner is dead ([`owner_of`]).
pub(crate) fn owned_name(prefix: &str, owner: ProcIdentity) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{}-{n}", owner.pid, owner.start_time)
}

/// The owner of a name made by [`owned_name`] with `prefix`; `None` for other names.
pub(crate) fn owner_of(name: &str, prefix: &str) -> Option<ProcIdentity> {
    ProcIdentity::parse_prefix(name.strip_prefix(prefix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_names_are_unique_and_name_their_owner() {
        let me = ProcIdentity {
            pid: 42,
            start_time: 7,
        };
        let a = owned_name(WARM_PREFIX, me);
        let b = owned_name(WARM_PREFIX, me);
        assert_ne!(a, b);
        assert!(a.starts_with("_warm-42-7-"), "{a}");
        assert_eq!(owner_of(&a, WARM_PREFIX), Some(me));
        assert_eq!(owner_of(&a, NEW_PREFIX), None);
        assert_eq!(owner_of("_warm-x", WARM_PREFIX), None);
        assert_eq!(
            Layout::new(Path::new("/r"), "a").exit(),
            Path::new("/r/a/exit.json")
        );
    }
}
