//! A root's spare monitors: idle monitors made ahead of launches (forked by the root's spare
//! factory, else exec'd), each optionally pre-building a container shaped like the last
//! launch. Runs in the controller; spares and the factory are separate processes reached
//! only through [`SpareRequest`] and [`FactoryRequest`] messages, each channel opened by
//! this controller's hello, all written without waiting for the peer.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::config::{SandboxSpec, User};
use crate::error::{Error, ErrorKind, Result};
use crate::host::uids::{self, UidLease, UidRange};
use crate::host::{cgroup, state, sys};
use crate::layout::{Layout, WARM_PREFIX};
use crate::proto::{send_hello, FactoryRequest, Mode, MonitorArgs, ReportReader, SpareRequest};

use super::exec::{reap, spawn_monitor, FirstProcess};

/// Where spares are made: the monitor executable, the state root and its cgroup prefix.
pub(super) struct Target<'a> {
    /// The monitor executable.
    pub exe: &'a Path,
    /// The state root.
    pub root: &'a Path,
    /// The root's cgroup prefix.
    pub prefix: &'a str,
    /// The root's cgroup v2 monitors directory, if monitors are born there.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The uids pre-built containers get theirs from.
    pub uid_range: UidRange,
}

/// The spares of one root. Dropping it releases them (they tear down what they pre-built
/// and exit) and ends the factory.
#[derive(Debug)]
pub(super) struct Spares {
    idle: Mutex<Vec<Spare>>,
    target: usize,
    /// Spares pre-build a container shaped like the last launch.
    prebuild: bool,
    /// The build shape of the last launch (what new spares pre-build).
    last_shape: Mutex<Option<SandboxSpec>>,
    /// The spare factory, once started; `Err` once it could not be started.
    factory: Mutex<std::result::Result<Option<Factory>, ()>>,
    /// Bumped by every [`Spares::release`]: a spare started before a release (in the middle
    /// of being started while it ran) entered its mount namespace before whatever the release
    /// was for (a box's disk, mounted where the host's mounts do not propagate) and is never
    /// taken; the next release ends it.
    generation: AtomicU64,
}

/// A spare factory: the socket it takes fork requests on. Dropping it ends the factory.
#[derive(Debug)]
struct Factory {
    request: OwnedFd,
}

/// A spare monitor: its request socket, its report pipe, the short-lived first process of its
/// double fork if it was exec'd (reaped when the spare is taken or released; a factory reaps
/// those of the spares it forks), and what it pre-builds, if anything.
#[derive(Debug)]
pub(super) struct Spare {
    request: OwnedFd,
    report: ReportReader,
    first: Option<FirstProcess>,
    warm: Option<Warm>,
    /// A parked spare's report pipe write end, sent with the request (a spare started by
    /// this root has its own from the start).
    report_end: Option<OwnedFd>,
    /// The root's [`Spares::generation`] when this spare was asked for.
    generation: u64,
}

/// A container a spare builds ahead of its request: in this cgroup, of this build shape, as
/// this leased uid (when the shape asks for one of the range).
#[derive(Debug)]
struct Warm {
    cgroup_path: String,
    shape: SandboxSpec,
    uid: Option<u32>,
    /// The state root, for a container this controller asked its own spare to build: its
    /// cgroup and the uid leased for it are named after this controller (`_warm-*`), so gc
    /// sees them as live while this controller runs; they are given back here if the spare
    /// exits without doing so (killed, or never forked).
    root: Option<PathBuf>,
}

impl Warm {
    /// Once the spare has exited (its report pipe ended): removes the container's cgroup
    /// if it is still there (with what is left in it: a dead spare's init dies of its
    /// parent-death signal), and gives back the uid leased for it if the lease still names
    /// the container (nobody else can hold it under that name).
    fn give_back(&self) {
        let Some(root) = &self.root else {
            return;
        };
        let _ = cgroup::kill_and_remove(&self.cgroup_path);
        let Some(uid) = self.uid else {
            return;
        };
        if let Some(owner) = Path::new(&self.cgroup_path)
            .file_name()
            .and_then(|o| o.to_str())
        {
            uids::release_if_held_by(root, uid, owner);
        }
    }
}

/// How long releasing spares waits for them to exit: a spare in the middle of a build
/// finishes it, then tears it down.
const RELEASE_WAIT: Duration = Duration::from_secs(60);

impl Spare {
    /// Lets the spare go: end of file on its socket makes it tear down what it pre-built,
    /// give back the uid it held, if any, and exit. Returns its report pipe, whose end of
    /// file tells that it has exited.
    fn release(mut self) -> File {
        drop(self.request);
        // A claimed parked spare's write end is still here: the pipe must see only its own.
        drop(self.report_end.take());
        if let Some(first) = self.first.as_mut() {
            let _ = reap(first);
        }
        self.report.into_pipe()
    }

    /// A parked spare this controller claimed: connected at `request` (hellos exchanged),
    /// its container (in `cgroup_path`, of `shape`, as `uid`) built; reports come on a new
    /// pipe.
    pub fn claimed(
        request: OwnedFd,
        cgroup_path: String,
        shape: SandboxSpec,
        uid: Option<u32>,
    ) -> Result<Spare> {
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
        Ok(Spare {
            request,
            report: ReportReader::new(File::from(report_r)),
            first: None,
            warm: Some(Warm {
                cgroup_path,
                shape,
                uid,
                root: None,
            }),
            report_end: Some(report_w),
            // Made by another process at a time this root does not know: taken again only
            // if this root never released its spares (see `Spares::generation`).
            generation: 0,
        })
    }

    /// The leased uid of the spare's pre-built container, if it has one.
    pub fn warm_uid(&self) -> Option<u32> {
        self.warm.as_ref().and_then(|w| w.uid)
    }

    /// True if the spare's pre-built container can serve a sandbox of spec `shape`.
    pub fn fits(&self, shape: &SandboxSpec) -> bool {
        self.warm.as_ref().is_some_and(|w| w.shape.fits(shape))
    }

    /// The cgroup the spare pre-builds in, if it pre-builds.
    pub fn warm_cgroup(&self) -> Option<&str> {
        self.warm.as_ref().map(|w| w.cgroup_path.as_str())
    }

    /// The `_warm-*` cgroup this controller asked the spare to pre-build in, if a sandbox of
    /// build shape `shape` does not live in it (the spare does not fit): once the spare has
    /// taken the sandbox (its first report), nothing uses that cgroup any more. The spare
    /// tears its pre-built container down first; a build that failed may have left the
    /// cgroup without the spare knowing it (it stays cold), and nobody else removes it while
    /// this controller lives (gc sees a live owner), so the launch removes it.
    pub fn unused_warm_cgroup(&self, shape: &SandboxSpec) -> Option<String> {
        self.warm
            .as_ref()
            .filter(|w| w.root.is_some() && !w.shape.fits(shape))
            .map(|w| w.cgroup_path.clone())
    }

    /// Gives the sandbox at `layout` to the spare, with the launcher's descriptors it
    /// inherits (`streams`, sent with the request): its report reader, or `Err` if the spare
    /// is gone.
    pub fn hand_over(
        mut self,
        layout: &Layout,
        mode: Mode,
        streams: &[BorrowedFd<'_>],
    ) -> std::result::Result<ReportReader, ()> {
        if let Some(first) = self.first.as_mut() {
            let _ = reap(first);
        }
        let request = SpareRequest::Take {
            mode,
            dir: layout.dir.clone(),
        };
        let mut fds: Vec<BorrowedFd<'_>> = self.report_end.iter().map(AsFd::as_fd).collect();
        fds.extend_from_slice(streams);
        let sent = send_request(&self.request, &request, &fds);
        drop(fds);
        // Only the spare holds the report pipe's write end now: its end is end of file.
        drop(self.report_end.take());
        if sent {
            Ok(self.report)
        } else {
            Err(())
        }
    }
}

/// Writes `request` whole to a spare's socket without blocking or raising SIGPIPE; false if
/// it could not (the spare is gone, or the frame does not fit the socket's buffer).
pub(super) fn send_request(
    socket: &OwnedFd,
    request: &SpareRequest,
    fds: &[BorrowedFd<'_>],
) -> bool {
    match request.send(socket.as_fd(), fds) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "a spare request was not sent");
            false
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.release();
    }
}

impl Spares {
    /// Keeps `target` spares (0: none, and no factory), pre-building if `prebuild`.
    pub fn new(target: usize, prebuild: bool) -> Self {
        Spares {
            idle: Mutex::new(Vec::new()),
            target,
            prebuild,
            last_shape: Mutex::new(None),
            factory: Mutex::new(Ok(None)),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether launches use pre-built containers ([`crate::RootOptions::prebuild`]).
    pub fn prebuilds(&self) -> bool {
        self.prebuild
    }

    /// Takes a spare, preferring one whose pre-built container fits `shape`; with
    /// `fitting_only`, only such a one.
    pub fn take(&self, shape: &SandboxSpec, fitting_only: bool) -> Option<Spare> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut idle = self.idle.lock().ok()?;
        let current = |s: &Spare| s.generation == generation;
        let fitting = idle.iter().rposition(|s| current(s) && s.fits(shape));
        let i = match fitting {
            Some(i) => i,
            None if fitting_only => return None,
            None => idle.iter().rposition(current)?,
        };
        Some(idle.swap_remove(i))
    }

    /// Returns an unused spare.
    pub fn put_back(&self, spare: Spare) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(spare);
        }
    }

    /// Releases every spare and ends the factory; returns once the spares have exited (their
    /// report pipes reach end of file: a spare being forked or building when released
    /// finishes, tears down and exits first), or after [`RELEASE_WAIT`]. New ones are made
    /// on the next launch.
    pub fn release(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let (reports, warm): (Vec<File>, Vec<Option<Warm>>) = match self.idle.lock() {
            Ok(mut idle) => idle
                .drain(..)
                .map(|mut s| {
                    let warm = s.warm.take();
                    (s.release(), warm)
                })
                .unzip(),
            Err(_) => (Vec::new(), Vec::new()),
        };
        if let Ok(mut factory) = self.factory.lock() {
            // End of file: the factory exits once it has forked what it was asked to (those
            // spares are among the ones waited for below).
            if let Ok(f) = factory.as_mut() {
                *f = None;
            }
        }
        let ended = wait_for_end_of_file(reports, Instant::now() + RELEASE_WAIT);
        for (warm, ended) in warm.iter().zip(ended) {
            if let (Some(warm), true) = (warm, ended) {
                warm.give_back();
            }
        }
    }

    /// Releases this root's idle spares whose pre-built container holds `uid` (a box needs
    /// exactly that uid) and returns once they have given it back and exited (or after
    /// [`RELEASE_WAIT`]). True if there was one.
    pub fn release_holding(&self, uid: u32) -> bool {
        let holding: Vec<Spare> = match self.idle.lock() {
            Ok(mut idle) => {
                let (holding, keep) = idle
                    .drain(..)
                    .partition(|s| s.warm.as_ref().is_some_and(|w| w.uid == Some(uid)));
                *idle = keep;
                holding
            }
            Err(_) => Vec::new(),
        };
        let found = !holding.is_empty();
        let (reports, warm): (Vec<File>, Vec<Option<Warm>>) = holding
            .into_iter()
            .map(|mut s| {
                let warm = s.warm.take();
                (s.release(), warm)
            })
            .unzip();
        let ended = wait_for_end_of_file(reports, Instant::now() + RELEASE_WAIT);
        // As `release`: what a spare that exited left (a cgroup its failed build could not
        // remove, or the uid of one that was killed) goes now.
        for (warm, ended) in warm.iter().zip(ended) {
            if let (Some(warm), true) = (warm, ended) {
                warm.give_back();
            }
        }
        found
    }

    /// Remembers the build shape of a launch: the next spares pre-build it.
    pub fn remember_shape(&self, shape: SandboxSpec) {
        if self.prebuild {
            if let Ok(mut last) = self.last_shape.lock() {
                *last = Some(shape);
            }
        }
    }

    /// Starts the spares now, each pre-building `shape`; idle spares of another shape are
    /// released. Does nothing without spares or pre-building.
    pub fn warm_up(&self, shape: SandboxSpec, t: &Target<'_>) {
        if !self.prebuild || self.target == 0 {
            return;
        }
        let stale: Vec<Spare> = match self.idle.lock() {
            Ok(mut idle) => {
                let (keep, stale) = idle.drain(..).partition(|s| s.fits(&shape));
                *idle = keep;
                stale
            }
            Err(_) => Vec::new(),
        };
        self.remember_shape(shape);
        for spare in stale {
            drop(spare.release()); // they exit on their own; nobody waits for them
        }
        self.replenish(t);
    }

    /// Starts spares up to the target; failures are ignored (a launch then execs a monitor).
    pub fn replenish(&self, t: &Target<'_>) {
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            let have = self.idle.lock().map_or(usize::MAX, |s| {
                s.iter().filter(|s| s.generation == generation).count()
            });
            if have >= self.target {
                return;
            }
            match self.spawn(t) {
                Ok(spare) => self.put_back(spare),
                Err(_) => return,
            }
        }
    }

    /// A new spare: forked by the factory if there is one, else exec'd; told to pre-build
    /// the last launch's shape.
    fn spawn(&self, t: &Target<'_>) -> Result<Spare> {
        // Read before the spare exists: it enters its mount namespace after this.
        let generation = self.generation.load(Ordering::SeqCst);
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
        // A socket, not a pipe: writing to a spare that died must not raise SIGPIPE in the caller.
        let (request_r, request_w) = sys::stream_socket_pair()
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the request socket", e))?;
        // The channel opens with this controller's hello, queued before the spare exists.
        send_hello(request_w.as_fd())
            .map_err(|e| Error::with_source(ErrorKind::Io, "greet the spare", e))?;
        let first = if self.fork(t, &request_r, &report_w) {
            drop((request_r, report_w));
            None
        } else {
            let args = MonitorArgs::Spare {
                root: t.root.to_path_buf(),
                prefix: t.prefix.to_string(),
            };
            Some(spawn_monitor(
                t.exe,
                &args,
                Some(request_r),
                Some(report_w),
                t.cgroup,
            )?)
        };
        let mut spare = Spare {
            request: request_w,
            report: ReportReader::new(File::from(report_r)),
            first,
            warm: None,
            report_end: None,
            generation,
        };
        // Set only when pre-building is on.
        let shape = self.last_shape.lock().ok().and_then(|s| s.clone());
        if let Some(shape) = shape {
            send_warm(&mut spare, shape, t);
        }
        Ok(spare)
    }

    /// Has the factory fork a spare with these ends of its request socket and report pipe,
    /// starting the factory first if needed. False if there is no working factory (the
    /// caller execs the spare instead).
    fn fork(&self, t: &Target<'_>, request: &OwnedFd, report: &OwnedFd) -> bool {
        let Ok(mut slot) = self.factory.lock() else {
            return false;
        };
        let Ok(factory) = slot.as_mut() else {
            return false; // could not be started before: exec spares
        };
        if factory.is_none() {
            match start_factory(t) {
                Ok(f) => *factory = Some(f),
                Err(_) => {
                    *slot = Err(());
                    return false;
                }
            }
        }
        let Some(f) = factory.as_ref() else {
            return false;
        };
        if FactoryRequest::send(f.request.as_fd(), request.as_fd(), report.as_fd()).is_ok() {
            return true;
        }
        // The factory died (or is stuck): start another next time.
        *factory = None;
        false
    }
}

/// Reads each pipe until end of file (every writer gone) or the deadline.
/// Waits until every pipe is at end of file, or `deadline`; tells which reached it.
fn wait_for_end_of_file(pipes: Vec<File>, deadline: Instant) -> Vec<bool> {
    let mut ended = vec![false; pipes.len()];
    let mut pipes: Vec<(usize, File)> = pipes.into_iter().enumerate().collect();
    while !pipes.is_empty() {
        let mut fds: Vec<PollFd<'_>> = pipes
            .iter()
            .map(|(_, p)| PollFd::new(p.as_fd(), PollFlags::POLLIN))
            .collect();
        if !matches!(sys::poll_until(&mut fds, Some(deadline)), Ok(n) if n > 0) {
            break;
        }
        let ready: Vec<bool> = fds.iter().map(sys::has_event).collect();
        drop(fds);
        let mut i = 0;
        pipes.retain_mut(|(at, p)| {
            let at_end = ready[i] && {
                let mut buf = [0u8; 512];
                !matches!(p.read(&mut buf), Ok(n) if n > 0)
            };
            i += 1;
            if at_end {
                ended[*at] = true;
            }
            !at_end
        });
    }
    ended
}

/// Execs the spare factory (it detaches at once) and reaps its first process.
fn start_factory(t: &Target<'_>) -> Result<Factory> {
    let (ours, theirs) = sys::stream_socket_pair()
        .map_err(|e| Error::with_source(ErrorKind::Io, "create the factory socket", e))?;
    send_hello(ours.as_fd())
        .map_err(|e| Error::with_source(ErrorKind::Io, "greet the spare factory", e))?;
    let args = MonitorArgs::Factory {
        root: t.root.to_path_buf(),
        prefix: t.prefix.to_string(),
    };
    let mut first = spawn_monitor(t.exe, &args, Some(theirs), None, t.cgroup)?;
    let status = reap(&mut first)?;
    if !status.success() {
        return Err(Error::new(
            ErrorKind::LaunchFailed,
            format!("the spare factory failed to start ({status})"),
        ));
    }
    Ok(Factory { request: ours })
}

/// Asks `spare` to pre-build a container of `shape` in a cgroup of its own,
/// `/<prefix>/_warm-<controller pid>-<start time>-<n>` (ids cannot start with `_`).
/// A shape that asks for a uid of the range gets one leased for the container (owned by the
/// cgroup's name, so gc can tell when its controller died).
fn send_warm(spare: &mut Spare, shape: SandboxSpec, t: &Target<'_>) {
    let Ok(name) = state::owned_name(WARM_PREFIX) else {
        return;
    };
    let cgroup_path = format!("/{}/{name}", t.prefix);
    let mut built = shape.clone();
    let lease = if shape.uid_leased {
        let Ok(Some(lease)) = t.uid_range.lease(t.root, &name) else {
            return; // no uid free: the spare stays cold
        };
        built.user = User {
            uid: lease.uid(),
            gid: lease.uid(),
        };
        Some(lease)
    } else {
        None
    };
    let request = SpareRequest::Warm {
        cgroup_path: cgroup_path.clone(),
        shape: Box::new(built),
    };
    // The frame must go whole into the socket's buffer (the spare reads it when it can); one
    // that does not fit is not sent, and the spare stays cold (the lease's guard gives the
    // uid back).
    if send_request(&spare.request, &request, &[]) {
        // The spare holds the lease now, and gives it back (or `Warm::give_back` does).
        spare.warm = Some(Warm {
            cgroup_path,
            shape,
            uid: lease.map(UidLease::keep),
            root: Some(t.root.to_path_buf()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;

    fn spare(warm: Option<SandboxSpec>) -> Spare {
        let (request, _) = sys::stream_socket_pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        Spare {
            request,
            report: ReportReader::new(File::from(r)),
            first: None,
            warm: warm.map(|shape| Warm {
                cgroup_path: "/p/_warm-1-2-3".into(),
                shape,
                uid: None,
                root: None,
            }),
            report_end: None,
            generation: 0,
        }
    }

    /// A spare asked for before a release (a box's disk was mounted since: where mounts do
    /// not propagate, its mount namespace lacks it) is never taken after it.
    #[test]
    fn a_spare_started_before_a_release_is_never_taken_after_it() {
        let pool = Spares::new(1, true);
        let shape = SandboxConfig::for_tests().sandbox;
        pool.put_back(spare(None));
        pool.generation.fetch_add(1, Ordering::SeqCst); // a release ran while it started
        assert!(pool.take(&shape, false).is_none());
        let mut fresh = spare(None);
        fresh.generation = 1;
        pool.put_back(fresh);
        assert!(pool.take(&shape, false).is_some());
    }

    #[test]
    fn a_spare_fits_only_the_shape_it_pre_builds_and_a_launch_prefers_it() {
        let a = SandboxConfig::for_tests().sandbox.shape();
        let mut b = a.clone();
        b.limits.memory_bytes /= 2;
        assert!(spare(Some(a.clone())).fits(&a));
        assert!(!spare(Some(a.clone())).fits(&b));
        assert!(!spare(None).fits(&a), "a cold spare fits nothing");
        assert_eq!(spare(Some(a.clone())).warm_cgroup(), Some("/p/_warm-1-2-3"));

        let pool = Spares::new(3, true);
        pool.put_back(spare(Some(a.clone())));
        pool.put_back(spare(Some(b.clone())));
        pool.put_back(spare(None));
        // The one of the launch's shape first, wherever it is; else any.
        assert!(pool.take(&a, true).unwrap().fits(&a));
        assert!(pool.take(&b, false).unwrap().fits(&b));
        assert!(pool.take(&a, true).is_none(), "none fits any more");
        assert!(pool.take(&a, false).is_some_and(|s| !s.fits(&a)));
        assert!(pool.take(&a, false).is_none());
    }
}
