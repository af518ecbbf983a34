//! The spare factory: one per `Root`, exec'd once. It detaches, compiles the seccomp filter
//! and leaves the controller's cgroups, then checks the controller's hello and, for each
//! [`FactoryRequest`] frame on stdin (with the new spare's request socket and report pipe as
//! its two descriptors), forks a spare
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
use crate::proto::frame::{ProtoError, Reader};
use crate::proto::{expect_hello, FactoryRequest, MAX_FACTORY_FRAME};

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
    let mut reader = Reader::bounded(stdin.as_fd(), MAX_FACTORY_FRAME);
    // A controller of another protocol version: the factory ends, and the controller, seeing
    // its socket closed, execs its spares instead.
    if expect_hello(&mut reader).is_err() {
        std::process::exit(2);
    }
    loop {
        let [request, report]: [OwnedFd; 2] = match reader.recv::<FactoryRequest>() {
            Ok(got) => match FactoryRequest::descriptors(got) {
                Ok(pair) => pair,
                Err(_) => continue, // malformed: ignored (its descriptors are closed)
            },
            Err(ProtoError::Closed) => std::process::exit(0),
            Err(ProtoError::Decode(_)) => continue, // a message it does not know: ignored
            Err(_) => std::process::exit(1), // the framing broke: nothing after can be trusted
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
