//! runbox runs untrusted programs in Linux containers it launches itself, with no daemon.
//!
//! Each sandbox is an OCI bundle over an overlayfs root (a shared read-only image plus a
//! size-capped private layer), launched through youki's `libcontainer` by a small monitor
//! process of its own. The monitor is exec'd in its own session, so the caller (a grader, a
//! workspace host, the CLI) can exit, crash or be upgraded while sandboxes run; their results
//! stay in the state root for any later caller.
//!
//! Confinement is on by default: pid, mount, ipc, uts, network and cgroup namespaces; no
//! capabilities at all; `no_new_privs`; a seccomp filter; uid 65534; cgroup limits on memory
//! (no swap), pids and CPU (10 ms CFS period); rlimits; only fds 0-2.
//!
//! The main types: [`Root`] (a state root), [`Command`] (what to run, built like
//! [`std::process::Command`]), [`Limits`], [`Sandbox`] (a handle on a running sandbox) and
//! [`Verdict`] (the grader's answer, stable JSON).
//!
//! # Privileges
//! Root on Linux with cgroups (v1, hybrid or v2), overlayfs, seccomp and namespaces.
//!
//! # Finding the monitor
//! A program that links runbox calls [`monitor_main`] first thing in `main`; then the library
//! re-executes the program itself as the monitor and nothing needs installing. Otherwise the
//! `runbox-monitor` binary of this package is used (see [`Root::open`] for the lookup order).
//!
//! # Example
//! ```no_run
//! fn main() -> Result<(), runbox::Error> {
//!     runbox::monitor_main();
//!     let root = runbox::Root::open("/run/runbox")?;
//!     let mut cmd = runbox::Command::new("/bin/echo");
//!     cmd.arg("hello");
//!     cmd.limits_mut().memory_bytes = 64 << 20;
//!     let verdict = root.run(&cmd)?;
//!     assert_eq!(verdict.stdout, "hello\n");
//!     println!("{}", serde_json::to_string(&verdict).unwrap());
//!     Ok(())
//! }
//! ```
#![deny(unsafe_code)]

mod cgroup;
mod check;
mod config;
mod error;
mod gc;
mod image;
mod init;
mod monitor;
mod root;
mod rootfs;
mod sandbox;
mod seccomp;
mod spec;
mod state;
mod sys;
mod verdict;

pub use check::{check_host, check_state_root, HostCheck};
pub use config::{Command, Limits, Stdin, User, DEFAULT_PATH};
pub use error::{Error, ErrorKind, Result};
pub use monitor::MONITOR_ARG;
pub use root::{GcReport, Listing, Root, RootOptions, DEFAULT_ROOT, MONITOR_BIN};
pub use sandbox::{Sandbox, SandboxInfo, SandboxStatus};
pub use verdict::{LimitKind, Status, Usage, Verdict, SCHEMA_VERSION};

/// The OCI runtime spec types runbox builds bundles with (libcontainer's own copy).
pub use libcontainer::oci_spec;

/// Makes the current program usable as its own sandbox monitor. Call it first thing in `main`,
/// before any thread starts.
///
/// If the process was started as a monitor (`argv[1] == MONITOR_ARG`), this runs the monitor
/// and never returns. Otherwise it returns at once, and sandboxes launched by this process
/// use this same executable as their monitor, so nothing has to be installed.
pub fn monitor_main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == MONITOR_ARG) {
        monitor::main(args);
    }
    root::SELF_DISPATCH.store(true, std::sync::atomic::Ordering::Relaxed);
}
