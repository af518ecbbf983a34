//! On-disk state: the records of a sandbox directory (format v3; v1 and v2 still read), atomic
//! JSON files, the sandbox lock, listing and removing sandbox directories. Used by
//! controllers and monitors.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{FlatConfig, SandboxConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::ProcIdentity;
use crate::layout::{self, GONE_PREFIX};
use crate::verdict::{Usage, Verdict};

/// Version of the on-disk format of a sandbox directory, written by this runbox. 2 added
/// the config's `uid_leased` and `image_trees` (and the state root's `.uids/`); 3 split the
/// config into what the container is built from and what the run brings (`{"sandbox":
/// {..}, "run": {..}}`, each with its part of the limits). A version-1 or -2 directory (a
/// flat config; in 1 no leased uid and the image's trees among its binds) still reads.
/// Readers refuse other versions.
pub(crate) const FORMAT_VERSION: u32 = 3;

/// The first format whose `sandbox.json` holds the split config.
const SPLIT_CONFIG_VERSION: u32 = 3;

/// The oldest format version this runbox reads.
const OLDEST_FORMAT_VERSION: u32 = 1;

/// Removes a sandbox directory so that its id disappears at once: renamed out of the way
/// (to `.gone-<pid>-<start>-<n>`, which `gc` collects if the remover dies), then removed. A
/// claim of the same id never sees a half-removed directory.
pub(crate) fn remove_sandbox_dir(dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox dir has no parent"))?;
    // The uid it leased goes back once nothing of it is left (its processes are gone by now).
    let leased = read_json::<SandboxRecord>(&dir.join("sandbox.json"))
        .ok()
        .filter(|r| r.config.sandbox.uid_leased)
        .map(|r| r.config.sandbox.user.uid);
    let gone = parent.join(owned_name(GONE_PREFIX)?);
    fs::rename(dir, &gone).map_err(|e| Error::io("rename", dir, e))?;
    if let Some(uid) = leased {
        crate::host::uids::release(parent, uid);
    }
    fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))
}

/// Version of the format of a parked spare's `spare.json` ([`ParkedRecord`]). 3 added
/// `proto_version` and `monitor_binary`; 4 made `shape` a sandbox spec (the sandbox's half
/// of a split config). A record of another version names a spare of another binary, which
/// a claim ends instead of serving (one of 3 or older no longer reads: its shape is flat).
pub(crate) const PARKED_FORMAT_VERSION: u32 = 4;

/// The identity of an executable file: device, inode, size and modification time, as
/// `stat` gives them. A binary replaced or rewritten (an upgrade) has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExeIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime`, seconds.
    pub mtime: i64,
    /// `st_mtime`, nanoseconds.
    pub mtime_nsec: i64,
}

impl ExeIdentity {
    /// The identity of the file `path` names (following symbolic links: `/proc/self/exe`
    /// gives the running executable's, even once its path was replaced).
    pub fn of(path: &Path) -> Result<ExeIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        Ok(ExeIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }

    /// The identity of this process's executable.
    pub fn own() -> Result<ExeIdentity> {
        ExeIdentity::of(Path::new("/proc/self/exe"))
    }
}

/// `spare.json` of a parked spare: what it has built, written once the build is done (a
/// directory without it is still building). See `monitor/parked.rs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParkedRecord {
    /// [`PARKED_FORMAT_VERSION`].
    pub format_version: u32,
    /// The protocol version the spare speaks (`proto::frame::PROTO_VERSION`);
    /// absent in a record of an older binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto_version: Option<u32>,
    /// The executable the spare runs, as it saw `/proc/self/exe`; absent in a record of an
    /// older binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_binary: Option<ExeIdentity>,
    /// The spare (its directory's name says the same).
    pub spare: ProcIdentity,
    /// The sandbox spec it serves, as a shape ([`crate::config::SandboxSpec::shape`]: before
    /// a leased uid was put in).
    pub shape: crate::config::SandboxSpec,
    /// The cgroup of its container, `/<prefix>/<its name>`.
    pub cgroup_path: String,
    /// The uid of the range its container runs as, leased by the spare.
    pub uid: Option<u32>,
    /// The uid range (first, count) it leased from: it serves only controllers of that range.
    pub uid_range: (u32, u32),
}

/// The release generation of the parked spares under the state root `root` (0 when none
/// was written): see `controller/parked.rs`.
pub(crate) fn spares_generation(root: &Path) -> u64 {
    fs::read_to_string(
        root.join(crate::layout::SPARES_DIR)
            .join(crate::layout::SPARES_GENERATION),
    )
    .ok()
    .and_then(|g| g.trim().parse().ok())
    .unwrap_or(0)
}

/// `sandbox.json`: what the sandbox is, written by the controller before the monitor starts.
/// Read through [`StoredRecord`], whose format version says how its config is laid out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredRecord")]
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

/// `sandbox.json` as read, before its config is decoded by the layout of its format version.
#[derive(Deserialize)]
struct StoredRecord {
    format_version: u32,
    id: String,
    cgroup_path: String,
    created_unix_ms: u64,
    creator: ProcIdentity,
    #[serde(default)]
    remove_on_exit: bool,
    config: serde_json::Value,
}

impl TryFrom<StoredRecord> for SandboxRecord {
    type Error = serde_json::Error;

    /// A flat config of format 1 or 2 is split; the record then says format 3, the layout
    /// it has now (so that it reads back as it is written).
    fn try_from(r: StoredRecord) -> std::result::Result<SandboxRecord, serde_json::Error> {
        let (config, format_version) = if r.format_version < SPLIT_CONFIG_VERSION {
            let flat = serde_json::from_value::<FlatConfig>(r.config)?;
            (flat.into(), SPLIT_CONFIG_VERSION)
        } else {
            let split = serde_json::from_value::<SandboxConfig>(r.config)?;
            (split, r.format_version)
        };
        Ok(SandboxRecord {
            format_version,
            id: r.id,
            cgroup_path: r.cgroup_path,
            created_unix_ms: r.created_unix_ms,
            creator: r.creator,
            remove_on_exit: r.remove_on_exit,
            config,
        })
    }
}

/// Where a sandbox's monitor is in its life, as it records it (the sandbox's state, for
/// callers, is derived from this and the liveness of its processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MonitorPhase {
    /// Setting up the rootfs and container.
    Creating,
    /// Built; the init waits for `start`.
    Created,
    /// The program runs.
    Running,
    /// The program runs, frozen (`pause`): written and cleared by the monitor. The record's
    /// shape is unchanged (the format version stays); a runbox older than the phase reads
    /// such a record as undecodable, and only while the sandbox is paused.
    Paused,
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
    pub phase: MonitorPhase,
    /// The sandbox runs in a container a spare built before the request came.
    #[serde(default)]
    pub prebuilt: bool,
}

/// `exit.json`: how the run ended, written by the monitor after cleanup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The grader's verdict.
    pub verdict: Verdict,
    /// Figures beyond the verdict.
    pub usage: Usage,
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
    write_file(path, bytes, false)
}

/// [`write_atomic`], synced to disk before the rename: for what must outlive a reboot (the
/// image store).
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, true)
}

fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique per process and call: two threads may write the same file at once.
    let tmp = path.with_file_name(format!(".{name}.tmp{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        super::cleanup::remove_file(&tmp, "a temp file that failed to be written");
        Error::io("write", path, e)
    })
}

/// Bytes reserved in every sandbox directory for `exit.json` (`Layout::exit_reserve`): the
/// verdict's figures take well under a kilobyte, the rest holds captured output (on a full
/// state root the output in `exit.json` is cut to what fits; see [`write_reserved`]).
pub(crate) const EXIT_RESERVE_BYTES: usize = 16 * 1024;

/// Bytes reserved for the rewrites of `monitor.json` (`Layout::monitor_reserve`): one page.
pub(crate) const MONITOR_RESERVE_BYTES: usize = 4096;

/// Reserves `bytes` of the file system for a file to be written later even if it is full by
/// then: a new file at `path` filled with zeros. Written, not `fallocate`d: on ext4 a
/// fallocated range is unwritten extents, whose first write may still need metadata blocks;
/// written pages and blocks are rewritten in place without any (tmpfs: its pages exist).
pub(crate) fn reserve(path: &Path, bytes: usize) -> Result<()> {
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        f.write_all(&vec![0u8; bytes])
    })();
    result.map_err(|e| {
        super::cleanup::remove_file(path, "a reservation that failed");
        Error::io("reserve space for", path, e)
    })
}

/// How a reserved file was turned into the file it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// Renamed over the target (the reserve is used up).
    Rename,
    /// Exchanged with the target (`RENAME_EXCHANGE`): the target's old inode, with its
    /// space, becomes the next reserve. The target must exist.
    Exchange,
}

/// What the reserved file `reserve` can hold without a new block or page: the space it has
/// allocated (a file rewritten in place never grows beyond that).
pub(crate) fn reserved_capacity(reserve: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(reserve)
        .ok()
        .filter(fs::Metadata::is_file)
        .map_or(0, |m| m.blocks().saturating_mul(512))
}

/// Writes `bytes` as `path` using only the space reserved in `reserve` ([`reserve`]): into
/// the reserved file in place (its allocated pages or blocks, so no new space is needed),
/// cut to their length, then renamed (or exchanged, `how`) to `path`, so readers see the
/// whole file or none, as with [`write_atomic`]. `Ok(false)` if the reserve is missing or
/// too small (nothing was changed then); an error otherwise.
pub(crate) fn write_reserved(
    reserve: &Path,
    path: &Path,
    bytes: &[u8],
    how: Reserved,
) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    if (bytes.len() as u64) > reserved_capacity(reserve) {
        return Ok(false);
    }
    let result = (|| {
        let f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(reserve)?;
        f.write_all_at(bytes, 0)?;
        f.set_len(bytes.len() as u64)?;
        drop(f);
        match how {
            Reserved::Rename => fs::rename(reserve, path),
            Reserved::Exchange => nix::fcntl::renameat2(
                None,
                reserve,
                None,
                path,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(std::io::Error::from),
        }
    })();
    result
        .map(|()| true)
        .map_err(|e| Error::io("write (into reserved space)", path, e))
}

/// Writes `spec` as `<bundle>/config.json` through a temp file and rename.
pub(crate) fn write_bundle(
    spec: &libcontainer::oci_spec::runtime::Spec,
    bundle: &Path,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| Error::with_source(ErrorKind::Io, "encode config.json", e))?;
    write_atomic(&bundle.join("config.json"), &json)
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

/// [`layout::owned_name`] for this process.
pub(crate) fn owned_name(prefix: &str) -> Result<String> {
    let me = ProcIdentity::own()
        .map_err(|e| Error::with_source(ErrorKind::Io, "identify this process", e))?;
    Ok(layout::owned_name(prefix, me))
}

/// Takes the sandbox directory's exclusive lock (blocking, or `None` if `block` is false and
/// another process holds it). Delete and gc take it; readers need none (files are replaced
/// atomically).
pub(crate) fn lock(dir: &Path, block: bool) -> Result<Option<Flock<File>>> {
    let f = File::open(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!("no sandbox at {}", dir.display()),
            )
        } else {
            Error::io("open", dir, e)
        }
    })?;
    let arg = if block {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::with_source(
            ErrorKind::Io,
            format!("lock {}", dir.display()),
            e,
        )),
    }
}

/// The ids of every sandbox directory in the state root `root`, sorted.
pub(crate) fn sandbox_ids(root: &Path) -> Result<Vec<String>> {
    let mut ids: Vec<String> = fs::read_dir(root)
        .map_err(|e| Error::io("read state root", root, e))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| crate::config::validate_id(n).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Checks the format version of a record read from disk.
pub(crate) fn check_format(version: u32, path: &Path) -> Result<()> {
    if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "state file {} has format version {version}, this runbox reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
                path.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn reserved_space_becomes_the_file_and_an_exchange_keeps_a_reserve() {
        let dir = std::env::temp_dir().join(format!("runbox-unit-reserve-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (spare, target) = (dir.join("r"), dir.join("t.json"));
        reserve(&spare, 8192).unwrap();
        assert!(reserved_capacity(&spare) >= 8192);
        // Too big for the reserve: nothing changes.
        assert!(!write_reserved(&spare, &target, &[b'x'; 9000], Reserved::Rename).unwrap());
        assert!(spare.exists() && !target.exists());
        assert!(write_reserved(&spare, &target, b"{\"a\":1}", Reserved::Rename).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"{\"a\":1}");
        assert!(!spare.exists());
        // Missing reserve: nothing written.
        assert!(!write_reserved(&spare, &target, b"{}", Reserved::Rename).unwrap());
        // Exchange: the old file becomes the reserve, with its space.
        reserve(&spare, 4096).unwrap();
        assert!(write_reserved(&spare, &target, b"second", Reserved::Exchange).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(fs::read(&spare).unwrap(), b"{\"a\":1}");
        assert!(write_reserved(&spare, &target, b"third!", Reserved::Exchange).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"third!");
        fs::remove_dir_all(&dir).unwrap();
    }
    /// A `sandbox.json` written by runbox at format 2 (the flat config: serialized from the
    /// tree before the split, every field away from its default): it still reads, each
    /// field in its half, and says format 3, the layout it has now.
    const FORMAT_2_RECORD: &str = r#"{
  "format_version": 2,
  "id": "old-2",
  "cgroup_path": "/runbox/old-2",
  "created_unix_ms": 1796000000000,
  "creator": {
    "pid": 4242,
    "start_time": 987654
  },
  "remove_on_exit": false,
  "config": {
    "args": [
      "sh",
      "-c",
      "echo hi"
    ],
    "exe": "/bin/sh",
    "env": [
      "PATH=/bin",
      "A=b"
    ],
    "cwd": "/tmp",
    "user": {
      "uid": 60007,
      "gid": 60007
    },
    "uid_leased": true,
    "image": "/srv/img/top",
    "image_layers": [
      "/srv/img/l1"
    ],
    "limits": {
      "memory_bytes": 268435456,
      "pids": 32,
      "cpus": 0.5,
      "cpu_period_us": 20000,
      "cpu_time": {
        "secs": 1,
        "nanos": 500000000
      },
      "cpu_time_grace": {
        "secs": 0,
        "nanos": 250000000
      },
      "wall_time": {
        "secs": 9,
        "nanos": 0
      },
      "scratch_bytes": 33554432,
      "shm_bytes": 8388608,
      "output_bytes": 1000,
      "open_files": 64,
      "file_size_bytes": 1048576,
      "cpuset": "0",
      "pending_signals": 100,
      "mqueue_bytes": 4096,
      "locked_memory_bytes": 8192,
      "address_space_bytes": 134217728,
      "stack_bytes": 8388608,
      "core_bytes": 0,
      "collect_bytes": 2048
    },
    "stdin": {
      "bytes": [
        104,
        105
      ]
    },
    "hostname": "box",
    "image_trees": [
      [
        "/usr",
        "/usr"
      ]
    ],
    "binds": [
      [
        "/srv/data",
        "/data"
      ]
    ],
    "rw_binds": [
      [
        "/srv/work",
        "/box"
      ]
    ],
    "copies": [
      [
        "/srv/in.txt",
        "/work/in.txt"
      ]
    ],
    "collects": [
      [
        "/work/out.txt",
        "/srv/out.txt"
      ]
    ],
    "redirects": {
      "stdout": "/box/out"
    },
    "noexec": [
      "/data"
    ],
    "stderr": "inherit"
  }
}"#;

    #[test]
    fn a_format_2_record_reads_into_the_split_config() {
        use crate::config::{Output, Stdin, User};
        use std::time::Duration;
        let r: SandboxRecord = serde_json::from_str(FORMAT_2_RECORD).unwrap();
        check_format(r.format_version, Path::new("sandbox.json")).unwrap();
        assert_eq!((r.format_version, r.id.as_str()), (3, "old-2"));
        let (s, run) = (&r.config.sandbox, &r.config.run);
        // What the container is built from.
        assert_eq!(
            s.user,
            User {
                uid: 60007,
                gid: 60007
            }
        );
        assert!(s.uid_leased);
        assert_eq!(s.image.as_deref(), Some(Path::new("/srv/img/top")));
        assert_eq!(s.image_layers, [Path::new("/srv/img/l1")]);
        assert_eq!(s.image_trees, [("/usr".into(), "/usr".to_string())]);
        assert_eq!(s.hostname, "box");
        assert_eq!(s.binds, [("/srv/data".into(), "/data".to_string())]);
        assert_eq!(s.rw_binds, [("/srv/work".into(), "/box".to_string())]);
        assert_eq!(s.noexec, ["/data"]);
        let l = &s.limits;
        assert_eq!(
            (l.memory_bytes, l.pids, l.cpu_period_us),
            (256 << 20, 32, 20_000)
        );
        assert_eq!(l.cpuset.as_deref(), Some("0"));
        assert_eq!((l.scratch_bytes, l.shm_bytes), (32 << 20, 8 << 20));
        assert_eq!(
            (l.open_files, l.file_size_bytes, l.core_bytes),
            (64, 1 << 20, 0)
        );
        assert_eq!(
            (l.pending_signals, l.mqueue_bytes, l.locked_memory_bytes),
            (100, 4096, 8192)
        );
        // What the run brings.
        assert_eq!(run.args, ["sh", "-c", "echo hi"]);
        assert_eq!((run.exe.as_str(), run.cwd.as_str()), ("/bin/sh", "/tmp"));
        assert_eq!(run.env, ["PATH=/bin", "A=b"]);
        assert_eq!(run.stdin, Stdin::Bytes(b"hi".to_vec()));
        assert_eq!((run.stdout, run.stderr), (Output::Capture, Output::Inherit));
        assert_eq!(run.redirects.stdout.as_deref(), Some("/box/out"));
        assert_eq!(
            run.copies,
            [("/srv/in.txt".into(), "/work/in.txt".to_string())]
        );
        assert_eq!(
            run.collects,
            [("/work/out.txt".to_string(), "/srv/out.txt".into())]
        );
        let l = &run.limits;
        assert_eq!(l.cpus, 0.5);
        assert_eq!(l.cpu_time, Some(Duration::from_millis(1500)));
        assert_eq!(l.cpu_time_grace, Duration::from_millis(250));
        assert_eq!(l.wall_time, Some(Duration::from_secs(9)));
        assert_eq!((l.output_bytes, l.collect_bytes), (1000, 2048));
        assert_eq!(
            (l.address_space_bytes, l.stack_bytes),
            (Some(128 << 20), Some(8 << 20))
        );

        // Written again, it is a format-3 record of the same config; a format-3 record with
        // a flat config (or an older one with a split config) is refused, not misread.
        let text = serde_json::to_string(&r).unwrap();
        let back: SandboxRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.config, r.config);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["config"]["sandbox"].is_object() && v["config"]["run"].is_object());
        let flat_as_3 = FORMAT_2_RECORD.replace("\"format_version\": 2", "\"format_version\": 3");
        assert!(serde_json::from_str::<SandboxRecord>(&flat_as_3).is_err());
        let split_as_2 = text.replace("\"format_version\":3", "\"format_version\":2");
        assert_ne!(split_as_2, text);
        assert!(serde_json::from_str::<SandboxRecord>(&split_as_2).is_err());
    }
}
