//! Parked spares as controllers see them: claiming one for a launch, parking new ones after
//! a launch, releasing them all. Any controller process of a state root may claim any of
//! its parked spares, so a fresh process (a CLI run) starts pre-built too. A spare left by
//! another binary (an older runbox after an upgrade, another program's own monitor) or
//! speaking another protocol version is ended, never served. Runs in the controller; the
//! spare's side is `monitor/parked.rs`.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::SandboxSpec;
use crate::error::{ErrorKind, Result};
use crate::host::proc::{self, ProcIdentity};
use crate::host::state::{self, ExeIdentity, ParkedRecord, PARKED_FORMAT_VERSION};
use crate::host::uids::{self, UidRange};
use crate::layout::{
    self, CLAIMED_PREFIX, PARKED_RECORD, PARKED_SOCKET, SEEN_MARKER, SPARES_DIR, SPARES_GENERATION,
    WARM_PREFIX,
};
use crate::proto::frame::{hello_client, Reader, PROTO_VERSION};
use crate::proto::{send_hello, MonitorArgs, Park, SpareRequest};

use super::exec::{reap, spawn_monitor, FirstProcess};
use super::spares::{send_request, Spare, Target};

/// How long releasing waits for parked spares to exit (one that is building finishes first).
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// The directory of the parked spares of `shape` under `root`.
fn group(root: &Path, shape: &SandboxSpec) -> PathBuf {
    root.join(SPARES_DIR).join(shape.shape_key())
}

/// The parked spares' directories in `group` (built or building), with their spares.
fn entries(group: &Path) -> Vec<(PathBuf, ProcIdentity)> {
    let Ok(rd) = fs::read_dir(group) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            layout::owner_of(&name, WARM_PREFIX).map(|spare| (e.path(), spare))
        })
        .collect()
}

/// Connects to the socket of the parked spare whose directory is `dir`, through the
/// directory's descriptor: a socket address holds at most 107 bytes, and the socket's path
/// outgrows that under a long state root.
fn connect(dir: &Path) -> std::io::Result<UnixStream> {
    let d = fs::File::open(dir)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{PARKED_SOCKET}", d.as_raw_fd()))
}

/// Renames the parked spare at `dir` away for this process: true if this claim won (no
/// other controller can have it, and it can no longer unpark itself). Its new name is
/// returned for the caller to remove once connected.
fn take_dir(root: &Path, dir: &Path) -> Option<PathBuf> {
    let claimed = root
        .join(SPARES_DIR)
        .join(state::owned_name(CLAIMED_PREFIX).ok()?);
    fs::rename(dir, &claimed).ok()?;
    Some(claimed)
}

/// How long a claim waits for a parked spare's hello (it answers at once).
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// True if the parked spare of `record` runs the monitor binary `ours` and speaks this
/// protocol version, in a record of this format: only such a spare may serve this
/// controller. A record of an older binary has neither field.
fn current(record: &ParkedRecord, ours: &ExeIdentity) -> bool {
    record.format_version == PARKED_FORMAT_VERSION
        && record.proto_version == Some(PROTO_VERSION)
        && record.monitor_binary.as_ref() == Some(ours)
}

/// Claims a built parked spare of exactly `shape`, this uid range and this cgroup prefix,
/// run by the monitor executable `monitor` (the one this launch would exec), connected,
/// hellos exchanged, and ready for a [`SpareRequest::Take`], if one is parked under `root`.
/// A spare that would fit but runs another binary or speaks another version (or whose
/// record this binary cannot read) is ended on the way, as an eviction ends one.
pub(super) fn claim(
    root: &Path,
    shape: &SandboxSpec,
    uid_range: UidRange,
    prefix: &str,
    monitor: &Path,
) -> Option<Spare> {
    let ours = ExeIdentity::of(monitor).ok()?;
    for (dir, spare) in entries(&group(root, shape)) {
        let record = match state::read_json::<ParkedRecord>(&dir.join(PARKED_RECORD)) {
            Ok(record) => record,
            // No record yet: still building.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            // Written at once (renamed into place): a record this binary cannot read is
            // another binary's.
            Err(_) => {
                end(root, &dir, spare, "its record is of another binary");
                continue;
            }
        };
        let fits = record.shape.fits(shape)
            && record.uid_range == (uid_range.first, uid_range.count)
            && Path::new(&record.cgroup_path).parent() == Some(&Path::new("/").join(prefix));
        if !fits {
            continue;
        }
        if !current(&record, &ours) {
            end(
                root,
                &dir,
                spare,
                "it runs another monitor binary or protocol",
            );
            continue;
        }
        let Some(claimed) = take_dir(root, &dir) else {
            continue; // another controller won it, or it just went idle
        };
        let conn = connect(&claimed);
        let _ = fs::remove_dir_all(&claimed);
        // A spare that died parked: gc collects its cgroup and uid.
        let Ok(conn) = conn else {
            continue;
        };
        if let Err(e) = greet(&conn) {
            // Hung up on: it tears down and exits. Waited for as an eviction does, so its
            // uid is free for this launch if it needs one.
            tracing::debug!(spare = %spare.pid, error = %e, "a parked spare failed the handshake");
            drop(conn);
            wait_for_end(spare);
            continue;
        }
        let spare = Spare::claimed(
            OwnedFd::from(conn),
            record.cgroup_path,
            record.shape,
            record.uid,
        );
        if let Ok(spare) = spare {
            return Some(spare);
        }
    }
    None
}

/// The claimer's side of the handshake with a parked spare (a round trip: the spare may
/// have been left by another binary), waiting at most [`HELLO_WAIT`] for its answer.
fn greet(conn: &UnixStream) -> std::result::Result<(), crate::proto::frame::ProtoError> {
    conn.set_read_timeout(Some(HELLO_WAIT))?;
    hello_client(&mut Reader::new(conn.as_fd()))?;
    conn.set_read_timeout(None)?;
    Ok(())
}

/// Ends the parked spare `spare` at `dir` without serving it, as an eviction does: its
/// directory renamed away (unless a claim or its idle end came first), hung up on, and
/// waited for until it has torn down, given its uid back and exited (at most
/// [`EVICT_WAIT`]). True if this call ended it.
fn end(root: &Path, dir: &Path, spare: ProcIdentity, why: &str) -> bool {
    let Some(claimed) = take_dir(root, dir) else {
        return false; // claimed by another controller, or gone idle, just now
    };
    // End of file on the claim: it tears down, gives its uid back and exits.
    drop(connect(&claimed));
    if let Err(e) = fs::remove_dir_all(&claimed) {
        // Left for gc, which collects `.claimed-*` directories of dead claimers.
        tracing::debug!(dir = %claimed.display(), error = %e, "remove a claimed spare's directory");
    }
    tracing::debug!(spare = %spare.pid, why, "ended a parked spare");
    wait_for_end(spare);
    true
}

/// Waits (at most [`EVICT_WAIT`]) for a parked spare that was hung up on to exit: it tears
/// its container down and gives its uid back first.
fn wait_for_end(spare: ProcIdentity) {
    match proc::wait_for_exit(spare, Some(Instant::now() + EVICT_WAIT)) {
        Ok(true) => {}
        // Still tearing down (or not to be waited for): it finishes on its own, and what
        // it holds is its own until then, or gc's once it is dead.
        Ok(false) => tracing::debug!(spare = %spare.pid, "a parked spare still ends"),
        Err(e) => tracing::debug!(spare = %spare.pid, error = %e, "wait for a parked spare"),
    }
}

/// A spare this process asked to park, until it has: this process's end of its request
/// socket (at end of file once the spare has made its directory, or died) and the first
/// process of its double fork, reaped once it has parked, or when the root goes.
#[derive(Debug)]
pub(super) struct Parking {
    sock: OwnedFd,
    key: String,
    first: FirstProcess,
}

impl Parking {
    /// True once the spare has parked (or died): end of file, without waiting.
    fn done(&self) -> bool {
        let mut byte = [0u8; 1];
        match nix::sys::socket::recv(
            self.sock.as_raw_fd(),
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => true,
            Err(nix::Error::EAGAIN) => false,
            _ => true,
        }
    }
}

impl Parking {
    /// Lets go without reaping the first process (see [`Root::stop_waiting_for_spares`]).
    ///
    /// [`Root::stop_waiting_for_spares`]: crate::Root::stop_waiting_for_spares
    pub(super) fn abandon(self) {
        // Neither a wait nor a close: the socket and the child go with this process.
        std::mem::forget(self);
    }
}

impl Drop for Parking {
    /// Reaps the first process (it exits as soon as it has forked the spare).
    fn drop(&mut self) {
        let _ = reap(&mut self.first);
    }
}

/// Parks new spares of `shape` under the target's root until `want` are parked or starting
/// there, counting those this process started that have not parked yet (`pending`, where
/// new ones go). Other controllers may race the count: a few more can be made, and idle
/// ones go after `idle`. Failures are ignored: launches then start cold. Returns without
/// waiting for the new spares (they exec, detach and build in the background).
pub(super) fn replenish(
    t: &Target<'_>,
    shape: &SandboxSpec,
    want: usize,
    idle: Duration,
    pending: &Mutex<Vec<Parking>>,
) {
    if !seen_again(
        &group(t.root, shape),
        idle.clamp(SEEN_WITHIN_MIN, SEEN_WITHIN),
    ) {
        return;
    }
    let Ok(mut pending) = pending.lock() else {
        return;
    };
    pending.retain(|p| !p.done());
    let key = shape.shape_key();
    let starting = pending.iter().filter(|p| p.key == key).count();
    // A killed spare's directory stays until gc: it is not one.
    let alive = entries(&group(t.root, shape))
        .into_iter()
        .filter(|(_, spare)| spare.is_alive())
        .count();
    let have = alive + starting;
    for _ in have..want {
        match park_one(t, shape, idle) {
            Ok((sock, first)) => pending.push(Parking {
                sock,
                key: key.clone(),
                first,
            }),
            Err(_) => return,
        }
    }
}

/// How recent a shape's last launch must be for a launch to count as its second, at most:
/// the spare's idle time bounds it, between this and [`SEEN_WITHIN_MIN`].
const SEEN_WITHIN: Duration = Duration::from_secs(600);

/// The least [`SEEN_WITHIN`] a short idle time makes it (a slow host's launches of one
/// shape may come seconds apart).
const SEEN_WITHIN_MIN: Duration = Duration::from_secs(60);

/// Marks the shape of `group` as launched now, and tells whether it was launched before,
/// less than `within` ago: a shape gets parked spares only from its second launch on, so a
/// one-off shape (a box used once, a command run once at a shell) costs no spare that
/// would only wait out its idle time; nor does a shape whose launches come further apart
/// than a spare waits (`within` is the idle time, within bounds: box ids taken in turn,
/// each its own shape through its uid, come back only after every other id).
fn seen_again(group: &Path, within: Duration) -> bool {
    let marker = group.join(SEEN_MARKER);
    let before = fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < within);
    let marked = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(group)
        .and_then(|()| fs::write(&marker, b""));
    before && marked.is_ok()
}

/// Execs a spare monitor and asks it to park itself for `shape`. Returns this end of its
/// request socket and its first process, unreaped.
fn park_one(
    t: &Target<'_>,
    shape: &SandboxSpec,
    idle: Duration,
) -> Result<(OwnedFd, FirstProcess)> {
    use crate::error::Error;
    let (ours, theirs) = crate::host::sys::stream_socket_pair()
        .map_err(|e| Error::with_source(ErrorKind::Io, "create the request socket", e))?;
    let args = MonitorArgs::Spare {
        root: t.root.to_path_buf(),
        prefix: t.prefix.to_string(),
    };
    // Read before the spare exists: see `release_all`.
    let generation = state::spares_generation(t.root);
    // The channel opens with this controller's hello, queued before the spare exists.
    send_hello(ours.as_fd())
        .map_err(|e| Error::with_source(ErrorKind::Io, "greet the spare", e))?;
    let first = spawn_monitor(t.exe, &args, Some(theirs), None, t.cgroup)?;
    let request = SpareRequest::Park(Box::new(Park {
        shape: shape.clone(),
        uid_range: (t.uid_range.first, t.uid_range.count),
        idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
        generation,
    }));
    // Whole into the socket's buffer, or the spare exits at end of file, cold.
    send_request(&ours, &request, &[]);
    Ok((ours, first))
}

/// How long an eviction waits for the evicted spare to give its uid back (one still
/// building finishes first, then tears down).
const EVICT_WAIT: Duration = Duration::from_secs(60);

/// Evicts one parked spare that holds a uid for which `wanted` is true, so that a launch or
/// a box that needs a uid of the range gets one: parked spares are a cache, and a real
/// launch never fails for a uid one of them holds. Only a spare still parked is taken (its
/// directory renamed away, as a claim does: no other controller can claim it then), hung
/// up on, and waited for until it has torn its container down, given its uid back and
/// exited (at most [`EVICT_WAIT`]). A uid held by anything else (a sandbox, a box, a spare
/// of a live `Root`, a spare being claimed) is never touched. True if one was evicted: the
/// caller tries its lease again (another launch may have been quicker; it evicts again).
pub(super) fn evict(root: &Path, wanted: impl Fn(u32) -> bool) -> bool {
    let Ok(groups) = fs::read_dir(root.join(SPARES_DIR)) else {
        return false;
    };
    let groups: Vec<PathBuf> = groups
        .flatten()
        .filter(|g| !g.file_name().to_string_lossy().starts_with('.'))
        .map(|g| g.path())
        .collect();
    for (uid, owner) in uids::holders(root) {
        if !wanted(uid) {
            continue;
        }
        // A spare's lease is owned by its own name, which also names its directory.
        let Some(spare) = layout::owner_of(&owner, WARM_PREFIX) else {
            continue;
        };
        for group in &groups {
            let dir = group.join(&owner);
            if !dir.is_dir() {
                continue;
            }
            if end(root, &dir, spare, "evicted for its uid") {
                tracing::debug!(uid, spare = %owner, "evicted a parked spare for its uid");
                return true;
            }
        }
    }
    false
}

/// Claims every parked spare under `root`, of every shape (built or building), and lets it
/// go: end of file makes it tear down and exit. Returns once they have exited, or after
/// [`RELEASE_WAIT`].
pub(super) fn release_all(root: &Path) {
    let spares = root.join(SPARES_DIR);
    if !spares.is_dir() {
        return;
    }
    // First a new generation: a spare still starting, whose directory the listing below
    // cannot see yet, finds it changed once it has made its directory, and leaves.
    let next = (state::spares_generation(root) + 1).to_string();
    let _ = state::write_atomic(&spares.join(SPARES_GENERATION), next.as_bytes());
    let Ok(groups) = fs::read_dir(&spares) else {
        return;
    };
    let mut released = Vec::new();
    for group in groups.flatten() {
        if group.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for (dir, spare) in entries(&group.path()) {
            if let Some(claimed) = take_dir(root, &dir) {
                // Connecting and hanging up is the end of file it waits for; a spare still
                // building finds its directory gone and ends when it is done.
                drop(connect(&claimed));
                let _ = fs::remove_dir_all(&claimed);
                released.push(spare);
            }
        }
        let _ = fs::remove_file(group.path().join(SEEN_MARKER));
        let _ = fs::remove_dir(group.path()); // only if empty
    }
    let deadline = Instant::now() + RELEASE_WAIT;
    for spare in released {
        let _ = proc::wait_for_exit(spare, Some(deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_counts_as_seen_again_only_within_the_window() {
        let group = std::env::temp_dir().join(format!("runbox-seen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&group);
        let within = Duration::from_secs(60);
        assert!(!seen_again(&group, within), "a first launch");
        assert!(seen_again(&group, within), "a second one at once");
        // The last launch longer ago than the window: not a second launch, but marked.
        let old = std::time::SystemTime::now() - Duration::from_secs(90);
        let marker = fs::File::options()
            .write(true)
            .open(group.join(SEEN_MARKER))
            .unwrap();
        marker.set_modified(old).unwrap();
        assert!(!seen_again(&group, within));
        assert!(seen_again(&group, within));
        fs::remove_dir_all(&group).unwrap();
    }
}
