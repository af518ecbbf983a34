//! What a monitor process does with itself before and after its sandbox: detach from its
//! spawner, enter its own mount namespace, leave the controller's cgroups, hide limit-less
//! hierarchies, report to the controller on stdout, end. Runs in every monitor role (factory,
//! spare, sandbox monitor); single-threaded, so it may fork.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::host::{cgroup, mounts, sys};
use crate::policy::seccomp::Filters;
use crate::proto::{Report, WireError};

use super::phases;

/// What a monitor sets up before it knows its sandbox.
pub(super) struct Prepared {
    /// The compiled seccomp filters the container's init installs.
    pub filters: Filters,
    /// The monitor already left the cgroups it inherited from its controller.
    pub left_cgroups: bool,
}

impl Prepared {
    /// Compiles the filters, enters a private mount namespace and, if `prefix` (the root's
    /// cgroup prefix) is known yet, leaves the controller's cgroups.
    pub fn new(prefix: Option<&str>) -> Result<Prepared> {
        let filters = Filters::compile_default().map_err(|e| {
            Error::with_source(ErrorKind::UnsupportedHost, "compile seccomp filters", e)
        })?;
        phases::mark("seccomp_compiled");
        let mut prepared = Prepared::with_filters(filters, false)?;
        prepared.left_cgroups = prefix.is_some_and(leave_cgroups);
        Ok(prepared)
    }

    /// The state of a monitor forked from one that compiled `filters` (and left its cgroups):
    /// only the mount namespace is its own.
    pub fn with_filters(filters: Filters, left_cgroups: bool) -> Result<Prepared> {
        private_mount_namespace()?;
        phases::mark("mount_namespace");
        Ok(Prepared {
            filters,
            left_cgroups,
        })
    }
}

/// Forks away from the spawner (which reaps only the short-lived first process) and starts a
/// new session. A failure is reported and ends the process.
///
/// First it closes any descriptor above 2 it inherited (the spawner passes none: a
/// controller's descriptors must never stay open in a monitor, or a spare parked for a
/// minute) and raises its open-files soft limit to the hard one: a controller that ran
/// short of descriptors must not leave its monitors, and the parked spares that later
/// serve other controllers, short too.
pub(super) fn detach() {
    sys::close_inherited_fds();
    raise_open_files_limit();
    if let Err(e) = sys::fork_and_detach() {
        fail(&Error::with_source(
            ErrorKind::LaunchFailed,
            "fork the monitor",
            e,
        ));
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    phases::mark("detached");
}

/// Sets the open-files soft limit to the hard limit (best effort). The sandbox's own limit
/// comes from its config, applied by libcontainer: this is the monitor's.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Moves the monitor into its own mount namespace, so its mounts vanish with it. The
/// namespace is a slave of the host's: mounts made on the host later (a spare monitor waits
/// for its sandbox) still appear in it, and none of the monitor's leak out.
fn private_mount_namespace() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::with_source(ErrorKind::UnsupportedHost, "unshare the mount namespace", e)
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| Error::with_source(ErrorKind::UnsupportedHost, "make mounts private", e))
}

/// Leaves the controller's cgroups (best effort: a failure is logged, the sandbox still runs).
pub(super) fn leave_cgroups(prefix: &str) -> bool {
    match cgroup::leave_inherited_cgroups(prefix) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("runbox monitor: could not leave the controller's cgroups: {e}");
            false
        }
    }
}

/// In the monitor's own mount namespace only, unmounts the cgroup hierarchies that carry
/// nothing of the sandbox's ([`cgroup::limitless_hierarchies`]), so that libcontainer neither
/// creates, joins nor removes a cgroup in each of them for every sandbox. The sandbox's
/// processes stay in the monitor's cgroup there. Idempotent; failures are ignored
/// (libcontainer then uses the hierarchy as before). The host's mounts are untouched.
pub(super) fn hide_limitless_hierarchies() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    for target in cgroup::limitless_hierarchies(&mounts::read().unwrap_or_default()) {
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Sends the monitor's stderr to `path` (the sandbox's `monitor.log`).
pub(super) fn redirect_stderr(path: &Path) {
    if let Ok(f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = nix::unistd::dup2(f.as_raw_fd(), 2);
    }
}

/// Writes one report frame to the controller; true if it was written. A controller that went
/// away is not an error.
pub(super) fn report(r: &Report) -> bool {
    r.write(&mut io::stdout().lock()).is_ok()
}

/// Reports `e` to the controller and ends the monitor with status 1.
pub(super) fn fail(e: &Error) -> ! {
    let _ = report(&Report::Failed {
        error: WireError::from(e),
    });
    std::process::exit(1)
}

/// Ends the monitor: status 0, or 1 after reporting the error to the controller.
pub(super) fn exit_with(result: Result<()>) -> ! {
    if let Err(e) = result {
        fail(&e);
    }
    std::process::exit(0)
}

/// Waits (at most 10 s) for the controller to close its end of the report pipe, then tells
/// whether it had read everything written to it: the result reached a live controller.
pub(super) fn result_delivered() -> bool {
    let out = io::stdout();
    let fd = out.as_fd();
    // A pipe's write end reports POLLERR once no reader is left.
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = matches!(sys::poll_until(&mut fds, Some(deadline)), Ok(n) if n > 0);
    closed && sys::pipe_unread(fd).is_ok_and(|n| n == 0)
}
