//! The spare factory: one per `Root`, exec'd once. It detaches, compiles the seccomp filter
//! and leaves the controller's cgroups, then for each [`FactoryRequest`] on stdin (with the
//! new spare's request socket and report pipe as `SCM_RIGHTS` descriptors) forks a spare
//! that starts from that state: no exec, no dynamic linking, no filter compilation and no
//! cgroup migration per spare. The spare forks once more so that, like an exec'd monitor, it
//! is reparented to init and the factory reaps only the short-lived middle process. End of
//! file (the controller released its spares or died) ends the factory; its spares live on.
//! Runs in the factory process (single-threaded; it forks).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::wait::waitpid;

use crate::host::sys;
use crate::policy::seccomp::Filters;
use crate::proto::FactoryRequest;

use super::phases;
use super::process::{self, Prepared};
use super::spare;

/// The factory's loop (`MONITOR_ARG ROOT factory PREFIX`).
pub(super) fn run(root: PathBuf, prefix: &str) -> ! {
    process::detach();
    let Ok(filters) = Filters::compile_default() else {
        std::process::exit(1); // the controller falls back to exec'd spares
    };
    let left_cgroups = !prefix.is_empty() && process::leave_cgroups(prefix);
    let stdin = io::stdin();
    loop {
        let mut buf = [0u8; 64];
        let (n, fds) = match sys::recv_with_fds(stdin.as_fd(), &mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => std::process::exit(1),
        };
        if n == 0 {
            std::process::exit(0);
        }
        let [request, report]: [OwnedFd; 2] = match fds.try_into() {
            Ok(pair) if FactoryRequest::is(&buf[..n]) => pair,
            _ => continue, // malformed: ignored (its descriptors are closed)
        };
        match sys::fork_single_threaded() {
            Ok(Some(child)) => {
                drop((request, report));
                let _ = waitpid(nix::unistd::Pid::from_raw(child), None);
            }
            Ok(None) => become_spare(root, prefix, &filters, left_cgroups, request, report),
            Err(_) => drop((request, report)),
        }
    }
}

/// In the forked child: the new descriptors become its stdin and stdout, it detaches once
/// more and serves as a spare.
fn become_spare(
    root: PathBuf,
    prefix: &str,
    filters: &Filters,
    left_cgroups: bool,
    request: OwnedFd,
    report: OwnedFd,
) -> ! {
    let ok = nix::unistd::dup2(request.as_raw_fd(), 0).is_ok()
        && nix::unistd::dup2(report.as_raw_fd(), 1).is_ok();
    drop((request, report));
    if !ok || sys::fork_and_detach().is_err() {
        sys::exit_now(1);
    }
    phases::clear();
    match Prepared::with_filters(filters.clone(), left_cgroups) {
        Ok(prepared) => spare::serve(root, prefix, &prepared),
        Err(_) => std::process::exit(1),
    }
}
