//! The controller side: what runs in the process that links runbox (a grader, the CLI), which
//! may be multi-threaded and may exit or be upgraded at any moment. It never runs
//! libcontainer or forks into Rust code: it writes state, execs monitors and talks to them
//! through `proto`. It never imports the monitor side.
//!
//! - `root.rs`: the state root and the public calls on it;
//! - `launch.rs`: launching a sandbox (stage, claim, hand over, first report);
//! - `resolve.rs`: a `Command` checked and resolved into a `SandboxConfig`;
//! - `spares.rs`: spare monitors and the spare factory;
//! - `parked.rs`: parked spares, which any controller process of the root may claim;
//! - `exec.rs`: finding and exec'ing the monitor executable;
//! - `sandbox.rs`: the handle on one sandbox (state, wait, kill, pause, stats, delete);
//! - `control.rs`: the client of a sandbox monitor's control socket;
//! - `gc.rs`: collecting what crashes left;
//! - `boxes.rs`: isolate-style boxes (numbered work dirs with a uid of their own).

pub(crate) mod boxes;
mod control;
pub(crate) mod exec;
pub(crate) mod execs;
pub(crate) mod gc;
mod launch;
mod parked;
pub(crate) mod resolve;
pub(crate) mod root;
pub(crate) mod sandbox;
mod spares;
