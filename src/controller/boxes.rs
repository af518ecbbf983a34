//! Boxes: numbered work dirs that keep their files between runs, as isolate's are
//! (`--init`, many `--run`s, `--cleanup`). Box `N` of a state root is the directory
//! `<root>/.boxes/N`; its `box/` subdirectory is the caller's to fill and appears read-write
//! as `/box` in every run. Box `N` runs as host uid and gid `first + N` of the root's uid
//! range, leased to the box from `init` to `cleanup`, so two boxes never share an owner and
//! no other sandbox gets that uid meanwhile. Between runs everything in `box/` belongs to
//! the caller (the box's owner); during a run, to the box's uid. A box's files live on a
//! size-capped tmpfs of its own (its quota), never on the state root. Runs in the controller.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::config::Command;
use crate::error::{Error, ErrorKind, Result};
use crate::host::cleanup;
use crate::host::state::{self, MonitorRecord};
use crate::host::uids::{self, UidLease};
use crate::layout::{Layout, BOXES_DIR, BOX_LEASE_PREFIX};
use crate::proto::Mode as LaunchMode;
use crate::verdict::Verdict;

use super::root::Root;
use super::sandbox::wait_for_exit;

/// The box's disk: where its tmpfs is mounted, in the box's directory.
const DISK_DIR: &str = "disk";
/// What the caller fills: a bind mount of the work dir on the box's disk.
const WORK_DIR: &str = "box";
/// The box's record, in its directory.
const RECORD: &str = "box.json";
/// The box's lock, in its directory.
const LOCK: &str = "lock";
/// Format of `box.json`: 2 since boxes have a disk of their own (1 still reads).
const BOX_FORMAT: u32 = 2;

/// What a box may hold: a size cap on its own tmpfs (isolate's `--quota`). A run that fills
/// it gets `ENOSPC` (bytes) inside the box; nothing of it reaches the state root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BoxQuota {
    /// Bytes of file data the box holds (tmpfs `size`, rounded up to whole pages). Default
    /// 256 MiB. isolate's BLOCKS are 1 KiB blocks.
    pub bytes: u64,
    /// Files, directories and other inodes the box holds, its work dir included (tmpfs
    /// `nr_inodes`, plus its root). Default 65 536.
    pub inodes: u64,
}

impl BoxQuota {
    /// A box's quota when none is given: 256 MiB of files.
    pub const DEFAULT_BYTES: u64 = 256 << 20;
    /// A box's quota when none is given: 65 536 inodes.
    pub const DEFAULT_INODES: u64 = 65_536;

    /// A quota of `bytes` and `inodes` (checked when a box is initialized with it).
    pub fn new(bytes: u64, inodes: u64) -> BoxQuota {
        BoxQuota { bytes, inodes }
    }

    fn validate(&self) -> Result<()> {
        if self.bytes == 0 || self.inodes == 0 || self.inodes > u64::from(u32::MAX) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "box quota of {} bytes and {} inodes: both must be positive (inodes at most {})",
                    self.bytes,
                    self.inodes,
                    u32::MAX
                ),
            ));
        }
        Ok(())
    }

    /// The tmpfs options for this quota: its root counts as one inode more.
    fn mount_options(&self) -> String {
        format!(
            "size={},nr_inodes={},mode=0700",
            self.bytes,
            self.inodes.saturating_add(1)
        )
    }
}

impl Default for BoxQuota {
    fn default() -> Self {
        BoxQuota::new(Self::DEFAULT_BYTES, Self::DEFAULT_INODES)
    }
}

/// The record of an initialized box (`<box>/box.json`), written last by `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BoxRecord {
    format_version: u32,
    id: u32,
    uid: u32,
    gid: u32,
    owner_uid: u32,
    owner_gid: u32,
    /// The work dir's name on the box's disk (`disk/<work>`): what runs bind at `/box`, a
    /// name no earlier initialization of the box used. Absent in format 1 (the work dir was
    /// `box/` itself, on the state root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    work: Option<String>,
    /// The disk's quota (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<BoxQuota>,
}

impl BoxRecord {
    /// The work dir on the host, as runs bind it.
    fn work_source(&self, dir: &Path) -> PathBuf {
        match &self.work {
            Some(name) => dir.join(DISK_DIR).join(name),
            None => dir.join(WORK_DIR),
        }
    }
}

/// A box, locked for the caller's exclusive use while this value lives (isolate's box lock:
/// one run at a time per box). Made by [`Root::init_box`] or [`Root::open_box`].
#[derive(Debug)]
pub struct WorkBox {
    root: Root,
    record: BoxRecord,
    dir: PathBuf,
    /// The work dir as runs bind it (on the box's disk).
    source: PathBuf,
    _lock: Flock<File>,
}

impl WorkBox {
    /// The box number.
    pub fn id(&self) -> u32 {
        self.record.id
    }

    /// The box's directory (what `isolate --init` prints); the work dir is its `box/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The work dir on the host: `dir()/box`, seen as `/box` by every run.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }

    /// The host uid and gid the box's programs run as.
    pub fn user(&self) -> (u32, u32) {
        (self.record.uid, self.record.gid)
    }

    /// What the box may hold (`None` for a box initialized by a runbox without quotas,
    /// whose files are on the state root).
    pub fn quota(&self) -> Option<BoxQuota> {
        self.record.quota
    }

    /// A command running `program` in this box: as the box's user, with the work dir bound
    /// read-write at `/box` and as the working directory. Add limits, binds and streams, then
    /// [`WorkBox::run`] it.
    pub fn command(&self, program: impl Into<String>) -> Command {
        let mut cmd = Command::new(program);
        cmd.user(self.record.uid, self.record.gid)
            .bind_rw(self.source.clone(), "/box")
            .current_dir("/box");
        cmd
    }

    /// Runs `cmd` (made by [`WorkBox::command`]) to its end. The work dir's files are the
    /// box user's during the run and the owner's again after it; what the program left there
    /// that is neither a regular file nor a directory (symlinks, FIFOs, sockets) is removed,
    /// and no file keeps a setuid or setgid bit, so the caller reads back only plain files.
    /// The walks hold a bounded number of descriptors and never follow a symlink, so a tree
    /// of any depth is handed back; if the hand-back fails all the same, the work dir is
    /// emptied rather than left half scrubbed, and the error says so.
    ///
    /// # Errors
    /// As [`Root::run`]; [`ErrorKind::Io`] if the work dir cannot be handed over.
    pub fn run(&self, cmd: &Command) -> Result<Verdict> {
        let work = &self.source;
        let (uid, gid) = self.user();
        hand_over(work, Pass::Give { uid, gid })
            .map_err(|e| Error::io("give the box's files to its user", work, e))?;
        let (verdict, ended) = self.run_to_the_end(cmd);
        if !ended {
            // Something of the run may still write in the box: no walk of it now, and the
            // caller gets none of it.
            let what = if self.record.work.is_some() {
                match unmount_disk(&self.dir) {
                    Ok(()) => "its disk was detached: clean the box up",
                    Err(e) => {
                        tracing::warn!("detach the disk of box {}: {e}", self.dir.display());
                        "its disk could not be detached: clean the box up"
                    }
                }
            } else {
                "clean the box up"
            };
            let why = verdict.err().map_or_else(String::new, |e| e.chain());
            return Err(Error::new(ErrorKind::Io, format!("{why} ({what})")));
        }
        let (uid, gid) = (self.record.owner_uid, self.record.owner_gid);
        let back = match hand_over(work, Pass::Scrub { uid, gid }) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Never a half-scrubbed tree for the caller: empty it, else take the disk away.
                let what = match hand_over(work, Pass::Empty) {
                    Ok(()) => "give the box's files back to its owner (they were removed)",
                    Err(_) if self.record.work.is_some() => match unmount_disk(&self.dir) {
                        Ok(()) => "give the box's files back to its owner (its disk was detached: clean the box up)",
                        Err(u) => {
                            tracing::warn!("detach the disk of box {}: {u}", self.dir.display());
                            "give the box's files back to its owner (its disk could not be detached: clean the box up)"
                        }
                    },
                    Err(_) => "give the box's files back to its owner (clean the box up)",
                };
                Err(Error::io(what, work, e))
            }
        };
        let verdict = verdict?;
        back?;
        Ok(verdict)
    }

    /// [`Root::run`], returning only once no process of the run is left: a one-shot run's
    /// monitor reports the verdict before the sandbox's init has exited, and a program's
    /// background process must not write in the box while it is handed back. The init's
    /// exit completes only once every other process of its pid namespace is gone, so this
    /// waits for that (at most [`RUN_END_WAIT`]; the monitor kills an init that lingers a
    /// second), not for the monitor's teardown. Returns whether that happened in time.
    fn run_to_the_end(&self, cmd: &Command) -> (Result<Verdict>, bool) {
        let mut sandbox = match self.root.launch(cmd, LaunchMode::Run, true) {
            Ok(s) => s,
            // A failed launch leaves no process behind.
            Err(e) => return (Err(e), true),
        };
        let verdict = sandbox.wait_for_report().map(|r| r.verdict);
        let deadline = Some(Instant::now() + RUN_END_WAIT);
        let layout = Layout::new(&self.root.inner.dir, sandbox.id());
        let ended = match state::read_json::<MonitorRecord>(&layout.monitor()) {
            Ok(m) => m
                .init
                .map_or(Ok(true), |init| wait_for_exit(init, deadline)),
            // Removed: the monitor reaped the init and tore down.
            Err(_) if !layout.dir.exists() => Ok(true),
            Err(_) => match sandbox.finishing_one_shot() {
                Some(monitor) => wait_for_exit(monitor, deadline),
                None => Ok(true),
            },
        };
        // As `Root::run`: spares of the run's shape are parked once its verdict is in.
        let later = match self.root.inner.park_later.lock() {
            Ok(mut later) => std::mem::take(&mut *later),
            Err(_) => Vec::new(),
        };
        for (monitor, shape) in later {
            self.root.park_spares(&monitor, &shape);
        }
        match ended {
            Ok(true) => (verdict, true),
            Ok(false) => (
                Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "sandbox {} of box {} did not end within {RUN_END_WAIT:?} of its verdict",
                        sandbox.id(),
                        self.id()
                    ),
                )),
                false,
            ),
            Err(e) => (Err(e), false),
        }
    }
}

/// How long a box's run may take, after its verdict, to end its last processes.
const RUN_END_WAIT: Duration = Duration::from_secs(30);

impl Root {
    /// Creates box `id` (or empties it if it exists) for the owner `owner_uid:owner_gid`, who
    /// gets its work dir (mode 0700), and leases it uid `first + id` of the root's range
    /// (isolate's `--init`). The box's files live on a tmpfs of its own with the default
    /// [`BoxQuota`] (256 MiB, 65 536 inodes); [`Root::init_box_with_quota`] sets another.
    /// The box is locked by the returned value.
    ///
    /// # Errors
    /// As [`Root::init_box_with_quota`].
    pub fn init_box(&self, id: u32, owner_uid: u32, owner_gid: u32) -> Result<WorkBox> {
        self.init_box_with_quota(id, owner_uid, owner_gid, BoxQuota::default())
    }

    /// [`Root::init_box`] with the quota `quota`: the box's files live on a tmpfs of that
    /// size and inode count, mounted (in this process's mount namespace) at
    /// `<box>/disk` until [`Root::cleanup_box`]; `<box>/box` is a bind mount of the work dir
    /// on it. A run that fills it gets `ENOSPC` inside the box; its pages are memory, charged
    /// to the sandbox that wrote them while it runs.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] if `id` is outside the uid range or the quota is zero;
    /// [`ErrorKind::AlreadyExists`] if the box is in use by another process, or its uid is
    /// held by a sandbox that is not a box's (a spare holding it, parked or this root's, is
    /// evicted instead); [`ErrorKind::Io`] otherwise (the disk cannot be mounted, say).
    pub fn init_box_with_quota(
        &self,
        id: u32,
        owner_uid: u32,
        owner_gid: u32,
        quota: BoxQuota,
    ) -> Result<WorkBox> {
        quota.validate()?;
        let range = self.inner.uid_range;
        if id >= range.count {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "box id {id} is out of range (allowed: 0-{}, the uid range's size)",
                    range.count - 1
                ),
            ));
        }
        let uid = range.first + id;
        let dir = self.box_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create box", &dir, e))?;
        let lock = lock_box(&dir, false, true)?;
        // The record first: a box emptied halfway is never taken for a whole one.
        match fs::remove_file(dir.join(RECORD)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io("remove the box's record", dir.join(RECORD), e));
            }
            _ => {}
        }
        empty_box(&dir).map_err(|e| Error::io("empty box", &dir, e))?;
        let owner = format!("{BOX_LEASE_PREFIX}{id}");
        // A spare holding the uid (this root's, or one parked by any process) is a cache:
        // evicted, as often as it takes, until the uid is the box's.
        let evict = || {
            self.inner.spares.release_holding(uid)
                || super::parked::evict(&self.inner.dir, |u| u == uid)
        };
        let leased = loop {
            match UidLease::exact(&self.inner.dir, uid, &owner) {
                Ok(None) if evict() => continue,
                other => break other,
            }
        };
        let lease = match leased {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                cleanup::remove_tree(&dir, "a box that could not lease its uid");
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "uid {uid} of box {id} is held by a sandbox; remove it or pick another box"
                    ),
                ));
            }
            Err(e) => {
                cleanup::remove_tree(&dir, "a box that could not lease its uid");
                return Err(Error::io("lease the box's uid", &dir, e));
            }
        };
        let work = unique_work_name();
        let record = BoxRecord {
            format_version: BOX_FORMAT,
            id,
            uid,
            gid: uid,
            owner_uid,
            owner_gid,
            work: Some(work.clone()),
            quota: Some(quota),
        };
        let written = make_disk(&dir, &work, &quota, owner_uid, owner_gid)
            .map_err(|e| Error::io("make the box's disk", dir.join(DISK_DIR), e))
            .and_then(|()| state::write_json_atomic(&dir.join(RECORD), &record));
        if let Err(e) = written {
            drop(lease); // given back: nothing runs as it yet
                         // The launch's error is what the caller gets; what cannot be removed now is
                         // logged and left to `cleanup_box`.
            if let Err(u) = empty_box(&dir).and_then(|()| remove_tree(&dir)) {
                tracing::warn!(
                    "remove the box {} that failed to be made: {u}",
                    dir.display()
                );
            }
            return Err(e);
        }
        // The box holds its uid from now on (its record names it; `cleanup_box` gives it
        // back).
        lease.keep();
        // This root's idle spares stay: a run's work dir is attached from this process's
        // mount namespace when it starts (their own may predate the disk), not built in.
        let source = record.work_source(&dir);
        Ok(WorkBox {
            root: self.clone(),
            record,
            dir,
            source,
            _lock: lock,
        })
    }

    /// Opens the initialized box `id` for runs, locking it; with `wait`, waits while another
    /// process uses it (isolate's `--wait`), else fails.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if the box was not initialized (or its disk is gone: after a
    /// reboot, or a hand-back that failed); [`ErrorKind::AlreadyExists`]
    /// if it is in use and `wait` is false; [`ErrorKind::Io`] otherwise.
    pub fn open_box(&self, id: u32, wait: bool) -> Result<WorkBox> {
        let dir = self.box_dir(id);
        let not_found = || {
            Error::new(
                ErrorKind::NotFound,
                format!("box {id} does not exist (initialize it first)"),
            )
        };
        if !dir.is_dir() {
            return Err(not_found());
        }
        let lock = lock_box(&dir, wait, false)?;
        let record: BoxRecord = match state::read_json(&dir.join(RECORD)) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let bad_work = record
            .work
            .as_deref()
            .is_some_and(|w| w.is_empty() || w.contains('/') || w.starts_with('.'));
        if record.format_version > BOX_FORMAT || bad_work {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "box {id}'s record (format {}) is not one this runbox reads: clean it up",
                    record.format_version
                ),
            ));
        }
        if record.id != id || record.uid != self.inner.uid_range.first + id {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "box {id} was initialized for uid {} with another uid range",
                    record.uid
                ),
            ));
        }
        let source = record.work_source(&dir);
        // A disk gone with a reboot (a state root on a disk outlives its mounts), or detached
        // by a hand-back that failed: the box must be initialized again.
        if !source.is_dir() {
            return Err(not_found());
        }
        Ok(WorkBox {
            root: self.clone(),
            record,
            dir,
            source,
            _lock: lock,
        })
    }

    /// Removes box `id`: its disk (unmounted, which drops its files however many and deep),
    /// anything else in its directory, and its uid lease (isolate's `--cleanup`). Nothing to
    /// do if it does not exist; waits while a run uses it.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if its files cannot be removed.
    pub fn cleanup_box(&self, id: u32) -> Result<()> {
        let dir = self.box_dir(id);
        if !dir.is_dir() {
            return Ok(());
        }
        let lock = match lock_box(&dir, true, false) {
            Ok(lock) => lock,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let record: Option<BoxRecord> = state::read_json(&dir.join(RECORD)).ok();
        empty_box(&dir)
            .and_then(|()| remove_tree(&dir))
            .map_err(|e| Error::io("remove box", &dir, e))?;
        drop(lock);
        if let Some(r) = record {
            uids::release(&self.inner.dir, r.uid);
        }
        Ok(())
    }

    fn box_dir(&self, id: u32) -> PathBuf {
        self.inner.dir.join(BOXES_DIR).join(id.to_string())
    }
}

/// Locks the box directory `dir` through its `lock` file (`flock`, released with the file).
/// `create` makes the file (init); otherwise a missing file, or one removed by a cleanup
/// while this waited, means the box is gone.
fn lock_box(dir: &Path, wait: bool, create: bool) -> Result<Flock<File>> {
    let path = dir.join(LOCK);
    loop {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("box {} does not exist", dir.display()),
                ))
            }
            Err(e) => return Err(Error::io("open box lock", &path, e)),
        };
        let how = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let file = match Flock::lock(file, how) {
            Ok(locked) => locked,
            Err((_, nix::Error::EWOULDBLOCK)) => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("box {} is in use by another process", dir.display()),
                ))
            }
            Err((_, e)) => return Err(Error::io("lock box", &path, e.into())),
        };
        // A cleanup may have removed the box while this waited: the lock is on a dead file.
        let same = fs::metadata(&path).is_ok_and(|m| {
            file.metadata()
                .is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev())
        });
        if same {
            return Ok(file);
        }
        if !create {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("box {} does not exist", dir.display()),
            ));
        }
    }
}

/// A name for a box's work dir on its disk that no earlier initialization of the box used
/// (a process that kept an fd or a cwd of an old one never reaches the new one through it).
/// The work dir is attached to each run when it starts, so the name is not part of what a
/// pre-built spare fits.
fn unique_work_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("w{}-{nanos:x}", std::process::id())
}

/// Mounts the box's disk, a tmpfs capped at `quota`, at `<dir>/disk` (`nosuid`, `nodev`),
/// makes the work dir `work` on it for the owner (mode 0700) and binds it at `<dir>/box`.
fn make_disk(dir: &Path, work: &str, quota: &BoxQuota, uid: u32, gid: u32) -> io::Result<()> {
    let disk = dir.join(DISK_DIR);
    fs::DirBuilder::new().mode(0o700).create(&disk)?;
    nix::mount::mount(
        Some("runbox-box"),
        &disk,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(quota.mount_options().as_str()),
    )?;
    let source = disk.join(work);
    fs::DirBuilder::new().mode(0o700).create(&source)?;
    std::os::unix::fs::lchown(&source, Some(uid), Some(gid))?;
    let target = dir.join(WORK_DIR);
    fs::DirBuilder::new().mode(0o700).create(&target)?;
    nix::mount::mount(
        Some(&source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// Unmounts the box's work dir bind and its disk (and anything stacked on them; a box
/// without them is fine), detaching lazily: the disk's files go at once for the caller,
/// whatever their number or depth, and their memory once no spare still binds them.
fn unmount_disk(dir: &Path) -> io::Result<()> {
    for name in [WORK_DIR, DISK_DIR] {
        let path = dir.join(name);
        // Bounded: a box has one mount at each, a crashed init at most a few.
        for _ in 0..16 {
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => {}
                // Not (or no longer) a mount point, or absent.
                Err(nix::Error::EINVAL | nix::Error::ENOENT) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Empties the box directory `dir` but for its lock: the disk is unmounted, anything else
/// (a format-1 box's files, what a crashed init left) removed without following a link.
fn empty_box(dir: &Path) -> io::Result<()> {
    unmount_disk(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != OsStr::new(LOCK) {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes `path` and everything under it, symlinks never followed (nothing if it is
/// absent), with a bounded number of open descriptors however deep the tree.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            hand_over(path, Pass::Empty)?;
            fs::remove_dir(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a walk of a box's work dir does to what it finds.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// Gives everything, the top included, to `uid:gid` as it is (before a run).
    Give { uid: u32, gid: u32 },
    /// Gives regular files and directories, the top included, to `uid:gid` with their
    /// setuid and setgid bits cleared, and removes everything else (after a run).
    Scrub { uid: u32, gid: u32 },
    /// Removes everything under the top; the top stays.
    Empty,
}

/// Directories a walk keeps open below its top, at most. Deeper ones are closed on the way
/// down and reopened through `..` on the way back up, checked against the (device, inode)
/// they had; so a walk holds about 34 descriptors whatever the depth (a program's tree of
/// 5000 levels under systemd's 1024).
const WALK_OPEN_DIRS: usize = 32;

/// One directory on the walk's current path.
struct Level {
    /// Open while among the deepest [`WALK_OPEN_DIRS`] (the top always is).
    dir: Option<Dir>,
    /// (device, inode), to check a reopening through `..`.
    id: (u64, u64),
    /// Its name in its parent (empty for the top).
    name: CString,
    /// Its subdirectories not walked yet.
    subdirs: Vec<CString>,
}

/// How every directory of a walk is opened: never through a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn id_of(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Walks the directory `top` (not followed if it is a symlink) depth first and applies
/// `pass` to everything in it. Iterative, so a program's deep tree exhausts neither the
/// stack nor this process's descriptors ([`WALK_OPEN_DIRS`]); every name is resolved from its
/// parent's descriptor with `O_NOFOLLOW` or `AT_SYMLINK_NOFOLLOW`, so no symlink is followed.
/// Memory: the names of the subdirectories still to walk, bounded by the box's inodes. Runs
/// while no sandbox uses the box (under its lock, the run over), so nothing moves under it.
fn hand_over(top: &Path, pass: Pass) -> io::Result<()> {
    let mut dir = Dir::open(top, dir_flags(), Mode::empty())?;
    let st = nix::sys::stat::fstat(dir.as_raw_fd())?;
    apply_to_dir(dir.as_raw_fd(), &st, pass)?;
    let subdirs = scan(&mut dir, pass)?;
    let mut levels = vec![Level {
        dir: Some(dir),
        id: id_of(&st),
        name: CString::default(),
        subdirs,
    }];
    // levels[1..first_open] are closed, levels[0] and levels[first_open..] open.
    let mut first_open = 1;
    loop {
        let depth = levels.len() - 1;
        let here = open_fd(&levels[depth])?;
        if let Some(name) = levels[depth].subdirs.pop() {
            let mut child = Dir::openat(Some(here), name.as_c_str(), dir_flags(), Mode::empty())?;
            let st = nix::sys::stat::fstat(child.as_raw_fd())?;
            apply_to_dir(child.as_raw_fd(), &st, pass)?;
            let subdirs = scan(&mut child, pass)?;
            levels.push(Level {
                dir: Some(child),
                id: id_of(&st),
                name,
                subdirs,
            });
            if levels.len() - first_open > WALK_OPEN_DIRS {
                levels[first_open].dir = None;
                first_open += 1;
            }
            continue;
        }
        if depth == 0 {
            return Ok(());
        }
        let done = levels.pop().expect("depth > 0");
        let parent = &mut levels[depth - 1];
        if parent.dir.is_none() {
            let up = Dir::openat(Some(here), c"..", dir_flags(), Mode::empty())?;
            if id_of(&nix::sys::stat::fstat(up.as_raw_fd())?) != parent.id {
                return Err(io::Error::other(
                    "a directory moved while the box was walked",
                ));
            }
            parent.dir = Some(up);
            first_open = depth - 1;
        }
        drop(done.dir);
        if let Pass::Empty = pass {
            let fd = open_fd(parent)?;
            nix::unistd::unlinkat(
                Some(fd),
                done.name.as_c_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            )?;
        }
    }
}

/// The descriptor of a level the walk holds open.
fn open_fd(level: &Level) -> io::Result<RawFd> {
    level
        .dir
        .as_ref()
        .map(AsRawFd::as_raw_fd)
        .ok_or_else(|| io::Error::other("a walk lost track of an open directory"))
}

/// Applies `pass` to a directory the walk opened (`fd`, whose status is `st`).
fn apply_to_dir(fd: RawFd, st: &FileStat, pass: Pass) -> io::Result<()> {
    let (uid, gid, scrub) = match pass {
        Pass::Give { uid, gid } => (uid, gid, false),
        Pass::Scrub { uid, gid } => (uid, gid, true),
        Pass::Empty => return Ok(()),
    };
    nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    let mode = st.st_mode & 0o7777;
    if scrub && mode & 0o6000 != 0 {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode & 0o1777))?;
    }
    Ok(())
}

/// Reads the directory `dir` once: applies `pass` to each entry that is not a directory
/// (never following it) and returns the names of its subdirectories.
fn scan(dir: &mut Dir, pass: Pass) -> io::Result<Vec<CString>> {
    use nix::fcntl::AtFlags;
    let fd = dir.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = nix::sys::stat::fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            subdirs.push(name.to_owned());
            continue;
        }
        let owner = |uid, gid| {
            nix::unistd::fchownat(
                Some(fd),
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        };
        match pass {
            Pass::Give { uid, gid } => owner(uid, gid)?,
            Pass::Scrub { uid, gid } if kind == SFlag::S_IFREG => {
                owner(uid, gid)?;
                let mode = st.st_mode & 0o7777;
                if mode & 0o6000 != 0 {
                    // A regular file (just checked, and nothing runs in the box): no link
                    // to follow.
                    nix::sys::stat::fchmodat(
                        Some(fd),
                        name,
                        Mode::from_bits_truncate(mode & 0o1777),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )?;
                }
            }
            Pass::Scrub { .. } | Pass::Empty => {
                nix::unistd::unlinkat(Some(fd), name, nix::unistd::UnlinkatFlags::NoRemoveDir)?
            }
        }
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A tree `depth` directories deep under `top`, with a symlink out of it (to `target`),
    /// a FIFO-like stand-in (another symlink, to a directory) and a setuid file every 100
    /// levels, and a file at the bottom. Made with relative `*at` calls: its paths are far
    /// longer than PATH_MAX.
    fn deep_tree(top: &Path, depth: usize, target: &Path) {
        let mut dir = Dir::open(top, dir_flags(), Mode::empty()).unwrap();
        for level in 0..depth {
            let fd = dir.as_raw_fd();
            if level % 100 == 0 {
                nix::unistd::symlinkat(target, Some(fd), "out").unwrap();
                nix::unistd::symlinkat("/", Some(fd), "root").unwrap();
                let f = nix::fcntl::openat(
                    Some(fd),
                    "suid",
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o4755),
                )
                .unwrap();
                nix::unistd::close(f).unwrap();
                nix::sys::stat::fchmodat(
                    Some(fd),
                    "suid",
                    Mode::from_bits_truncate(0o4755),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .unwrap();
            }
            nix::sys::stat::mkdirat(Some(fd), "d", Mode::from_bits_truncate(0o755)).unwrap();
            dir = Dir::openat(Some(fd), "d", dir_flags(), Mode::empty()).unwrap();
        }
        let f = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            "bottom",
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        nix::unistd::close(f).unwrap();
    }

    /// (directories, regular files, anything else, files with setuid/setgid, entries not
    /// owned by `uid`) under `top`, counted with the walk's own bounded descent.
    fn census(top: &Path, uid: u32) -> (usize, usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0, 0);
        let mut stack = vec![Dir::open(top, dir_flags(), Mode::empty()).unwrap()];
        // Descends one chain at a time (the trees here are chains with leaves).
        while let Some(mut dir) = stack.pop() {
            counts.0 += 1;
            let fd = dir.as_raw_fd();
            let mut next = None;
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let st = nix::sys::stat::fstatat(
                    Some(fd),
                    name,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .unwrap();
                if st.st_uid != uid {
                    counts.4 += 1;
                }
                match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                    SFlag::S_IFDIR => next = Some(name.to_owned()),
                    SFlag::S_IFREG if st.st_mode & 0o6000 != 0 => {
                        counts.1 += 1;
                        counts.3 += 1;
                    }
                    SFlag::S_IFREG => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            }
            if let Some(name) = next {
                stack.push(
                    Dir::openat(Some(fd), name.as_c_str(), dir_flags(), Mode::empty()).unwrap(),
                );
            }
        }
        counts
    }

    /// Finding 6 of issue 21: a program's tree deeper than the descriptors a process may
    /// hold (systemd's soft limit is 1024) is handed over, scrubbed and removed, links never
    /// followed. `std::fs::remove_dir_all` (one descriptor per level) failed here with EMFILE.
    #[test]
    fn a_tree_deeper_than_the_descriptor_limit_is_scrubbed_and_removed() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if soft > 1024 {
            setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
        }
        // On a tmpfs where there is one, as a box's disk is (a disk that discards every
        // freed block makes 5000 rmdirs take seconds).
        let tmp = Path::new("/dev/shm");
        let tmp = if tmp.is_dir() {
            tmp.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let base = tmp.join(format!("runbox-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let top = base.join("work");
        fs::create_dir_all(&top).unwrap();
        let outside = base.join("outside");
        fs::write(&outside, "host secret").unwrap();
        let before = fs::symlink_metadata(&outside).unwrap();
        deep_tree(&top, 5000, &outside);

        hand_over(
            &top,
            Pass::Give {
                uid: 60_123,
                gid: 60_123,
            },
        )
        .unwrap();
        // (A chown by root may clear setuid bits already: not counted here.)
        let (dirs, files, others, _, foreign) = census(&top, 60_123);
        assert_eq!((dirs, files, others, foreign), (5001, 51, 100, 0));
        hand_over(&top, Pass::Scrub { uid: 0, gid: 0 }).unwrap();
        let (dirs, files, others, suid, foreign) = census(&top, 0);
        assert_eq!(
            (dirs, files, others, suid, foreign),
            (5001, 51, 0, 0, 0),
            "the tree stays, its links go, no setuid bit is left, all the owner's"
        );
        let after = fs::symlink_metadata(&outside).unwrap();
        assert_eq!(
            (after.uid(), after.permissions().mode()),
            (before.uid(), before.permissions().mode()),
            "a link's target is never changed"
        );
        let extra = top.join("extra");
        fs::create_dir(&extra).unwrap();
        deep_tree(&extra, 10, &outside);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host secret");
        fs::remove_dir_all(&base).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    }
}
