//! Boxes: numbered work dirs that keep their files between runs, as isolate's are
//! (`--init`, many `--run`s, `--cleanup`). Box `N` of a state root is the directory
//! `<root>/.boxes/N`; its `box/` subdirectory is the caller's to fill and appears read-write
//! as `/box` in every run. Box `N` runs as host uid and gid `first + N` of the root's uid
//! range, leased to the box from `init` to `cleanup`, so two boxes never share an owner and
//! no other sandbox gets that uid meanwhile. Between runs everything in `box/` belongs to
//! the caller (the box's owner); during a run, to the box's uid. Runs in the controller.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::Command;
use crate::error::{Error, ErrorKind, Result};
use crate::host::{state, uids};
use crate::layout::{BOXES_DIR, BOX_LEASE_PREFIX};
use crate::verdict::Verdict;

use super::root::Root;

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
}

/// A box, locked for the caller's exclusive use while this value lives (isolate's box lock:
/// one run at a time per box). Made by [`Root::init_box`] or [`Root::open_box`].
#[derive(Debug)]
pub struct WorkBox {
    root: Root,
    record: BoxRecord,
    dir: PathBuf,
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
        self.dir.join("box")
    }

    /// The host uid and gid the box's programs run as.
    pub fn user(&self) -> (u32, u32) {
        (self.record.uid, self.record.gid)
    }

    /// A command running `program` in this box: as the box's user, with the work dir bound
    /// read-write at `/box` and as the working directory. Add limits, binds and streams, then
    /// [`WorkBox::run`] it.
    pub fn command(&self, program: impl Into<String>) -> Command {
        let mut cmd = Command::new(program);
        cmd.user(self.record.uid, self.record.gid)
            .bind_rw(self.work_dir(), "/box")
            .current_dir("/box");
        cmd
    }

    /// Runs `cmd` (made by [`WorkBox::command`]) to its end. The work dir's files are the
    /// box user's during the run and the owner's again after it; what the program left there
    /// that is neither a regular file nor a directory (symlinks, FIFOs, sockets) is removed,
    /// and no file keeps a setuid or setgid bit, so the caller reads back only plain files.
    ///
    /// # Errors
    /// As [`Root::run`]; [`ErrorKind::Io`] if the work dir cannot be handed over.
    pub fn run(&self, cmd: &Command) -> Result<Verdict> {
        let work = self.work_dir();
        let (uid, gid) = self.user();
        hand_over(&work, uid, gid, false)
            .map_err(|e| Error::io("give the box's files to its user", &work, e))?;
        let verdict = self.root.run(cmd);
        let back = hand_over(&work, self.record.owner_uid, self.record.owner_gid, true)
            .map_err(|e| Error::io("give the box's files back to its owner", &work, e));
        let verdict = verdict?;
        back?;
        Ok(verdict)
    }
}

impl Root {
    /// Creates box `id` (or empties it if it exists) for the owner `owner_uid:owner_gid`, who
    /// gets its work dir (mode 0700), and leases it uid `first + id` of the root's range
    /// (isolate's `--init`). The box is locked by the returned value.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] if `id` is outside the uid range;
    /// [`ErrorKind::AlreadyExists`] if the box is in use by another process, or its uid is
    /// held by a sandbox that is not a box's; [`ErrorKind::Io`] otherwise.
    pub fn init_box(&self, id: u32, owner_uid: u32, owner_gid: u32) -> Result<WorkBox> {
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
        let _ = fs::remove_file(dir.join("box.json"));
        let work = dir.join("box");
        remove_tree(&work).map_err(|e| Error::io("empty box", &work, e))?;
        let owner = format!("{BOX_LEASE_PREFIX}{id}");
        match uids::lease_exact(&self.inner.dir, uid, &owner) {
            Ok(true) => {}
            Ok(false) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "uid {uid} of box {id} is held by a sandbox; remove it or pick another box"
                    ),
                ));
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(Error::io("lease the box's uid", &dir, e));
            }
        }
        let made = (|| {
            fs::DirBuilder::new().mode(0o700).create(&work)?;
            std::os::unix::fs::lchown(&work, Some(owner_uid), Some(owner_gid))?;
            io::Result::Ok(())
        })();
        let record = BoxRecord {
            format_version: 1,
            id,
            uid,
            gid: uid,
            owner_uid,
            owner_gid,
        };
        let written = made
            .map_err(|e| Error::io("create box", &work, e))
            .and_then(|()| state::write_json_atomic(&dir.join("box.json"), &record));
        if let Err(e) = written {
            uids::release(&self.inner.dir, uid);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(WorkBox {
            root: self.clone(),
            record,
            dir,
            _lock: lock,
        })
    }

    /// Opens the initialized box `id` for runs, locking it; with `wait`, waits while another
    /// process uses it (isolate's `--wait`), else fails.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if the box was not initialized; [`ErrorKind::AlreadyExists`]
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
        let record: BoxRecord = match state::read_json(&dir.join("box.json")) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e),
        };
        if record.id != id || record.uid != self.inner.uid_range.first + id {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "box {id} was initialized for uid {} with another uid range",
                    record.uid
                ),
            ));
        }
        Ok(WorkBox {
            root: self.clone(),
            record,
            dir,
            _lock: lock,
        })
    }

    /// Removes box `id`, its files and its uid lease (isolate's `--cleanup`). Nothing to do
    /// if it does not exist; waits while a run uses it.
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
        let record: Option<BoxRecord> = state::read_json(&dir.join("box.json")).ok();
        fs::remove_dir_all(&dir).map_err(|e| Error::io("remove box", &dir, e))?;
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
    let path = dir.join("lock");
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

/// Removes `path` and everything under it, symlinks never followed (nothing if it is absent).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Gives every file and directory under `top` (itself included) to `uid:gid`, without
/// following a symlink. With `scrub` (after a run), removes what is neither a regular file
/// nor a directory, clears setuid and setgid bits, and removes a subtree too deep to walk.
/// Iterative: a program's deep tree cannot exhaust this process's stack.
fn hand_over(top: &Path, uid: u32, gid: u32, scrub: bool) -> io::Result<()> {
    let mut pending = vec![top.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir()) {
            if scrub {
                fs::remove_file(&path)?;
            } else {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            }
            continue;
        }
        if path.as_os_str().len() > 3800 {
            // Deeper than a path this walk can name: the program's, and gone.
            remove_tree(&path)?;
            continue;
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        let mode = meta.permissions().mode();
        if scrub && mode & 0o6000 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o1777))?;
        }
        if ft.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}
