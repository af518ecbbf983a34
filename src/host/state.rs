//! On-disk state: the records of a sandbox directory (format v1), atomic JSON files, the
//! sandbox lock, listing and removing sandbox directories. Used by controllers and monitors.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::ProcIdentity;
use crate::layout::{self, GONE_PREFIX};
use crate::verdict::{Usage, Verdict};

/// Version of the on-disk format of a sandbox directory, written by this runbox. 2 added
/// the config's `uid_leased` and `image_trees` (and the state root's `.uids/`); a version-1
/// directory (no leased uid, the image's trees among its binds) still reads. Readers refuse
/// other versions.
pub(crate) const FORMAT_VERSION: u32 = 2;

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
        .filter(|r| r.config.uid_leased)
        .map(|r| r.config.user.uid);
    let gone = parent.join(owned_name(GONE_PREFIX)?);
    fs::rename(dir, &gone).map_err(|e| Error::io("rename", dir, e))?;
    if let Some(uid) = leased {
        crate::host::uids::release(parent, uid);
    }
    fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))
}

/// Version of the format of a parked spare's `spare.json` ([`ParkedRecord`]). 3 added
/// `proto_version` and `monitor_binary`; a record of 2 (or 1) still reads, without them,
/// and names a spare of an older binary, which a claim ends instead of serving.
pub(crate) const PARKED_FORMAT_VERSION: u32 = 3;

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
    /// The build shape it serves (as asked, before a leased uid was put in).
    pub shape: crate::config::SandboxConfig,
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
}
