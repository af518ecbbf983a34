//! The monitor side: every process runbox starts from the monitor executable, which never
//! imports the controller side. Dispatches on the command line ([`MonitorArgs`]):
//!
//! - `factory`: one per `Root`; forks spares (`factory.rs`);
//! - `spare`: an idle monitor that may pre-build a container, then becomes a sandbox's
//!   monitor (`spare.rs`, `handover.rs`); a parked spare waits in the state root for any
//!   controller (`parked.rs`);
//! - a sandbox's monitor: `run.rs` (open, launch), `built.rs` (the container),
//!   `supervise.rs` (limits and output while the program runs), `execs.rs` (the execs
//!   run beside it), `finish.rs` (verdict, teardown); `control.rs` serves the sandbox's
//!   control socket inside both waits.
//!
//! Every monitor is single-threaded (it forks, and libcontainer clones from it) and detached
//! from its spawner (`process.rs`).

mod built;
mod control;
mod execs;
mod factory;
mod finish;
mod handover;
mod parked;
mod phases;
mod process;
mod run;
mod sink;
mod spare;
mod supervise;

use crate::proto::frame::ProtoError;
use crate::proto::MonitorArgs;

use process::Prepared;

/// Entry point of a monitor process, for the parsed command line. Never returns.
pub(crate) fn main(args: Result<MonitorArgs, ProtoError>) -> ! {
    phases::mark("monitor_exec");
    match args {
        // Another version's command line (a controller of another runbox exec'd this
        // binary), or a malformed one: refuse, saying why, before doing anything.
        Err(e) => {
            eprintln!("runbox monitor: refusing to run: {e}");
            std::process::exit(2)
        }
        Ok(MonitorArgs::Sandbox { dir, mode }) => {
            process::detach();
            process::redirect_stderr(&dir.join("monitor.log"));
            let result =
                Prepared::new(None).and_then(|p| run::run(&dir, mode, &p, None, None, None));
            process::exit_with(result)
        }
        Ok(MonitorArgs::Spare { root, prefix }) => spare::exec(root, &prefix),
        Ok(MonitorArgs::Factory { root, prefix }) => factory::run(root, &prefix),
        #[cfg(feature = "bench")]
        Ok(MonitorArgs::Ping) => {
            // Measures what a monitor costs before it does any work (benches/cycle.rs).
            if crate::host::sys::fork_and_detach().is_ok() {
                let _ = nix::unistd::setsid();
                let _ = process::report(&crate::proto::Report::Pong);
            }
            std::process::exit(0)
        }
    }
}
