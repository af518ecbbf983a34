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
//! [`std::process::Command`]), [`Limits`], [`Sandbox`] (a handle on a sandbox, whose
//! lifecycle is a [`SandboxState`]) and [`Verdict`] (the grader's answer, stable JSON, whose
//! [`Status`] says how the run ended).
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
//!
//! # In an async program
//! [`monitor_main`] must run before any thread starts, so a tokio program does not use
//! `#[tokio::main]` (which starts the runtime's threads before `main`'s body): it calls
//! `monitor_main` in a plain `fn main` and builds the runtime after. The calls that wait
//! ([`Root::run`], [`Sandbox::wait`], [`Sandbox::delete`] with force) block the calling
//! thread: run them with `spawn_blocking`. A [`Root`] is `Send + Sync` and cheap to clone.
//! (A sketch, not compiled: runbox does not depend on tokio.)
//! ```text
//! fn main() -> anyhow::Result<()> {
//!     runbox::monitor_main(); // first: the process may be a monitor
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(serve())
//! }
//!
//! async fn serve() -> anyhow::Result<()> {
//!     let root = runbox::Root::open("/run/runbox")?;
//!     let cmd = runbox::Command::new("/bin/true");
//!     let verdict = tokio::task::spawn_blocking(move || root.run(&cmd)).await??;
//!     println!("{:?}", verdict.status);
//!     Ok(())
//! }
//! ```
//!
//! # Where code runs
//! The source tree is the process model: `controller/` runs in the caller's process,
//! `monitor/` in the monitor processes runbox starts, `init.rs` as the sandbox's pid 1;
//! `proto/` holds every message between them; `host/` and `policy/` are shared helpers.
#![deny(unsafe_code)]

mod config;
mod controller;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod images;
mod init;
mod layout;
mod monitor;
mod policy;
#[cfg(test)]
mod process_model;
mod process_spec;
mod proto;
mod signal;
mod verdict;
#[cfg(feature = "worker")]
mod worker;

pub use config::{Command, Limits, Output, Stdin, User, DEFAULT_PATH, MAX_RW_BINDS};
pub use controller::boxes::{BoxQuota, WorkBox};
pub use controller::exec::MONITOR_BIN;
pub use controller::execs::Exec;
pub use controller::gc::GcReport;
pub use controller::root::{Listing, Root, RootOptions, DEFAULT_ROOT};
pub use controller::sandbox::{Sandbox, SandboxInfo, SandboxState};
pub use error::{Error, ErrorKind, Result};
pub use host::check::{check_host, check_state_root, check_uid_range, HostCheck};
pub use host::proc::pids_ceiling;
pub use host::uids::{DEFAULT_COUNT as DEFAULT_UID_COUNT, DEFAULT_FIRST as DEFAULT_FIRST_UID};
#[cfg(feature = "registry")]
pub use images::PullOptions;
pub use images::{
    ImageDetails, ImageInfo, ImageStore, Progress, PruneReport, RemoveReport, DEFAULT_IMAGE_STORE,
};
pub use process_spec::ProcessSpec;
pub use proto::control::Stats;
pub use verdict::{LimitKind, Status, Usage, Verdict, SCHEMA_VERSION};
#[cfg(feature = "worker")]
pub use worker::{Event as WorkerEvent, Worker, WorkerOptions, JOB_SCHEMA_VERSION};

pub use signal::Signal;

/// Makes the current program usable as its own sandbox monitor. Call it first thing in `main`,
/// before any thread starts.
///
/// If the process was started as a monitor (by runbox, with its private command line), this
/// runs the monitor and never returns. Otherwise it returns at once, and sandboxes launched
/// by this process use this same executable as their monitor, so nothing has to be installed.
pub fn monitor_main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(args) = proto::MonitorArgs::parse(&argv) {
        monitor::main(args);
    }
    controller::exec::SELF_DISPATCH.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Benchmark plumbing (the `bench` feature): not part of the stable API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    /// A command that starts `monitor` in its `ping` mode: it forks, detaches and answers
    /// one line containing `pong`, doing no sandbox work (the cost of a monitor process).
    pub fn ping_command(monitor: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(monitor);
        cmd.args(crate::proto::MonitorArgs::Ping.to_args());
        cmd
    }
}
