//! A parked spare: a spare monitor that left the controller that started it and waits in the
//! state root, its container built, for any controller process to claim it (a CLI run, a
//! restarted grader). Runs in a spare whose first request was `Park`.
//!
//! Its directory `<root>/.spares/<shape key>/<name>` (the spare's own [`WARM_PREFIX`] name,
//! which also names its cgroup and owns its uid lease, so `gc` knows them for its own once
//! it is dead) holds a listening socket from the start and `spare.json` once the container
//! is built, naming the protocol version it speaks and the monitor binary it runs (so that
//! a controller of another binary ends it instead of being served by it). A controller
//! claims it by renaming the directory away (only one rename wins), connects, exchanges
//! hellos ([`hello_server`]) and sends a [`SpareRequest::Take`] with the report pipe's write
//! end and the sandbox's inherited streams. Unclaimed for its idle time, the spare renames
//! its directory away itself (so no claim can follow), tears down and exits.
//!
//! No sandbox depends on a parked spare until it is claimed: its death loses nothing.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::config::User;
use crate::host::proc::ProcIdentity;
use crate::host::state::{self, ExeIdentity, ParkedRecord, PARKED_FORMAT_VERSION};
use crate::host::sys;
use crate::host::uids::{UidLease, UidRange};
use crate::layout::{GONE_PREFIX, PARKED_RECORD, PARKED_SOCKET, SPARES_DIR, WARM_PREFIX};
use crate::proto::frame::{hello_server, Received, PROTO_VERSION};
use crate::proto::{Park, SpareRequest};

use super::built::{Built, Streams};
use super::handover;
use super::process::Prepared;

/// How long a claimed spare waits for its claimer to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// A parked spare's holdings, given back in order when it ends unclaimed: its directory
/// (first, so no claim can come), its container, its uid.
struct Holdings {
    root: PathBuf,
    /// Its directory, while it is still where it parked it.
    dir: Option<PathBuf>,
    warm: Option<(Built, Streams)>,
    uid: Option<UidLease>,
}

impl Holdings {
    /// Gives everything back and exits with `code`.
    fn end(mut self, code: i32) -> ! {
        if let Some(dir) = self.dir.take() {
            let _ = unpark(&self.root, &dir);
        }
        handover::end(self.warm.take(), self.uid.take(), code)
    }
}

/// Parks this spare under `root` for `park.shape`, waits for a claim and becomes the
/// claimer's sandbox's monitor; or, unclaimed after `park.idle_ms`, tears down and exits.
pub(super) fn park(root: PathBuf, prefix: &str, prepared: &Prepared, park: Park) -> ! {
    let Ok(name) = state::owned_name(WARM_PREFIX) else {
        std::process::exit(1)
    };
    // The executable this spare runs, whatever its path names by the time of a claim.
    let Ok(monitor_binary) = ExeIdentity::own() else {
        std::process::exit(1)
    };
    let dir = root
        .join(SPARES_DIR)
        .join(park.shape.shape_key())
        .join(&name);
    let listener = match open_parking(&dir) {
        Ok(l) => l,
        Err(_) => {
            let _ = fs::remove_dir_all(&dir);
            std::process::exit(1)
        }
    };
    // Parked: nothing of the controller that parked it stays, and the end of file on its
    // request socket tells it that the directory is there.
    quiet_stdio();
    // A release since the launch that started this spare may have listed the spares before
    // this directory existed: leave then (a release bumps the generation first).
    if state::spares_generation(&root) != park.generation {
        let _ = unpark(&root, &dir);
        std::process::exit(0);
    }
    let mut held = Holdings {
        root,
        dir: Some(dir.clone()),
        warm: None,
        uid: None,
    };
    let mut built_shape = park.shape.clone();
    if park.shape.uid_leased {
        let (first, count) = park.uid_range;
        match (UidRange { first, count }).lease(&held.root, &name) {
            Ok(Some(lease)) => {
                built_shape.user = User {
                    uid: lease.uid(),
                    gid: lease.uid(),
                };
                held.uid = Some(lease);
            }
            _ => held.end(1), // no uid free: no spare
        }
    }
    let cgroup_path = format!("/{prefix}/{name}");
    match Built::new(&built_shape, &cgroup_path, &held.root, prepared) {
        Ok(built) => held.warm = Some(built),
        Err(_) => held.end(1),
    }
    let record = ParkedRecord {
        format_version: PARKED_FORMAT_VERSION,
        proto_version: Some(PROTO_VERSION),
        monitor_binary: Some(monitor_binary),
        spare: match ProcIdentity::own() {
            Ok(me) => me,
            Err(_) => held.end(1),
        },
        shape: park.shape,
        cgroup_path,
        uid: held.uid.as_ref().map(UidLease::uid),
        uid_range: park.uid_range,
    };
    if state::write_json_atomic(&dir.join(PARKED_RECORD), &record).is_err() {
        held.end(1);
    }
    let idle = Duration::from_millis(park.idle_ms);
    let Some(conn) = wait_for_claim(&listener, &mut held, idle) else {
        held.end(0)
    };
    drop(listener);
    // The claimer renamed the directory away and removes it.
    held.dir = None;
    // The claimer's hello comes at once (it then waits for ours); its request may take
    // as long as its launch does, and its death is an end of file.
    let mut reader = SpareRequest::reader(conn.as_fd());
    let greeted = conn
        .set_read_timeout(Some(CONNECT_WAIT))
        .is_ok_and(|()| hello_server(&mut reader).is_ok())
        && conn.set_read_timeout(None).is_ok();
    if !greeted {
        // A claimer of another version (it hangs up too), or one that died or stalled.
        held.end(0);
    }
    match reader.recv::<SpareRequest>() {
        Ok(Received {
            msg: SpareRequest::Take { mode, dir },
            mut fds,
        }) if !fds.is_empty() => {
            // The report pipe's write end comes first: it becomes this monitor's stdout.
            let report = fds.remove(0);
            if nix::unistd::dup2(report.as_raw_fd(), 1).is_err() {
                held.end(2);
            }
            drop(report);
            let (warm, uid) = (held.warm.take(), held.uid.take());
            handover::take(&dir, mode, prepared, warm, uid, fds)
        }
        // The claimer died, hung up (an eviction, a release, a claimer that found this
        // spare's record was not its own) or sent something else: nothing was handed over.
        _ => held.end(0),
    }
}

/// Points stdin and stdout at /dev/null (best effort).
fn quiet_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// Makes the spare's directory (mode 0700) and its listening socket.
fn open_parking(dir: &Path) -> std::io::Result<UnixListener> {
    let group = dir.parent().unwrap_or(dir);
    let make = || {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(group)?;
        fs::DirBuilder::new().mode(0o700).create(dir)
    };
    // A release or gc may remove the (empty) group in between: once more then.
    if let Err(e) = make() {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        make()?;
    }
    // Bound through the directory's descriptor: a socket address holds at most 107 bytes,
    // and `<root>/.spares/<shape key>/<name>/sock` outgrows that under a long state root.
    let d = fs::File::open(dir)?;
    let listener = UnixListener::bind(format!("/proc/self/fd/{}/{PARKED_SOCKET}", d.as_raw_fd()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Renames `dir` away (to `<root>/.spares/.gone-…`) and removes it: true if it was still
/// there, so no claim can reach this spare any more.
fn unpark(root: &Path, dir: &Path) -> bool {
    let Ok(gone) = state::owned_name(GONE_PREFIX) else {
        return false;
    };
    let gone = root.join(SPARES_DIR).join(gone);
    if fs::rename(dir, &gone).is_err() {
        return false;
    }
    let _ = fs::remove_dir_all(&gone);
    true
}

/// Waits for a claimer's connection for at most `idle`; then unparks, unless a claim came
/// first (the directory is gone: a claimer renamed it), in which case the claimer gets
/// [`CONNECT_WAIT`] to connect.
fn wait_for_claim(
    listener: &UnixListener,
    held: &mut Holdings,
    idle: Duration,
) -> Option<UnixStream> {
    let mut deadline = Instant::now() + idle;
    let mut claimed = false;
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        // 0 only once the deadline has passed; an error ends the wait as the deadline would.
        if sys::poll_until(&mut fds, Some(deadline)).is_ok_and(|n| n > 0) {
            if let Ok((conn, _)) = listener.accept() {
                let _ = conn.set_nonblocking(false);
                return Some(conn);
            }
            continue;
        }
        if claimed {
            return None;
        }
        let dir = held.dir.take()?;
        if unpark(&held.root, &dir) {
            return None;
        }
        // Renamed by a claimer, who connects next.
        claimed = true;
        deadline = Instant::now() + CONNECT_WAIT;
    }
}
