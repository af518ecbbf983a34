//! The sandbox's pid 1: a minimal init run through libcontainer's executor hook. It installs
//! the seccomp filter, spawns the program, forwards signals to it, reaps orphans, reports the
//! program's wait status to the monitor, and kills everything if the monitor dies.

use std::ffi::CString;
use std::os::fd::{AsFd, RawFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::SandboxConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::seccomp::Filters;
use crate::sys;

/// Signals the init passes on to the program (SIGKILL and SIGSTOP cannot be caught; a SIGKILL
/// of the init takes the whole pid namespace down).
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
    Signal::SIGTSTP,
];

/// The executor libcontainer calls in the container's init after pivot_root, capability drop
/// and no_new_privs. Everything it needs is allocated before the container is built.
#[derive(Clone)]
pub(crate) struct SandboxInit {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    filters: Filters,
    /// Write end of the status pipe: `exit N`, `signal N` or `error TEXT` for the monitor.
    status_fd: RawFd,
    /// Read end of the lifeline pipe: hang-up means the monitor died.
    lifeline_fd: RawFd,
    /// The monitor's write end of the lifeline, inherited through clone: closed at once.
    lifeline_monitor_fd: RawFd,
}

impl SandboxInit {
    /// Prepares the init for `cfg`. The fds are the monitor's numbers, valid in the init because
    /// libcontainer clones it from the monitor (its close_range only marks them close-on-exec).
    pub fn new(
        cfg: &SandboxConfig,
        filters: Filters,
        status_fd: RawFd,
        lifeline_fd: RawFd,
        lifeline_monitor_fd: RawFd,
    ) -> Result<Self> {
        let c = |s: &String| {
            CString::new(s.as_bytes())
                .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "nul in argument", e))
        };
        Ok(SandboxInit {
            exe: c(&cfg.exe)?,
            argv: cfg.args.iter().map(c).collect::<Result<_>>()?,
            envp: cfg.env.iter().map(c).collect::<Result<_>>()?,
            filters,
            status_fd,
            lifeline_fd,
            lifeline_monitor_fd,
        })
    }

    fn send_status(&self, line: &str) {
        let _ = sys::write_inherited_fd(self.status_fd, line.as_bytes());
    }

    /// Starts the program with `posix_spawn` (no copy of the init's address space), with an
    /// empty signal mask and default signal actions. The seccomp filter is already installed,
    /// so the program inherits it. Returns the program's pid.
    fn spawn_program(&self) -> std::result::Result<Pid, String> {
        sys::spawn_clean(&self.exe, &self.argv, &self.envp)
            .map(Pid::from_raw)
            .map_err(|e| format!("execve {}: {e}", self.exe.to_string_lossy()))
    }

    /// The init's loop: forward signals, reap orphans, watch the monitor, until the program ends.
    fn supervise(&self, child: Pid, signals: &SignalFd) -> ! {
        let lifeline = sys::borrow_inherited_fd(self.lifeline_fd);
        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(lifeline, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    self.send_status(&format!("error init poll: {e}\n"));
                    let _ = kill(child, Signal::SIGKILL);
                    sys::exit_now(125);
                }
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                // The monitor is gone: nobody could collect a result. End the sandbox.
                let _ = kill(child, Signal::SIGKILL);
                sys::exit_now(137);
            }
            while let Ok(Some(info)) = signals.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig != libc::SIGCHLD {
                    if let Ok(sig) = Signal::try_from(sig) {
                        let _ = kill(child, sig);
                    }
                }
            }
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                        self.send_status(&format!("exit {code}\n"));
                        sys::exit_now(code);
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        self.send_status(&format!("signal {}\n", sig as i32));
                        sys::exit_now(128 + sig as i32);
                    }
                    Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        self.send_status(&format!("error init waitpid: {e}\n"));
                        let _ = kill(child, Signal::SIGKILL);
                        sys::exit_now(125);
                    }
                }
            }
        }
    }
}

impl Executor for SandboxInit {
    fn exec(&self, _spec: &Spec) -> std::result::Result<(), ExecutorError> {
        // The init was cloned, never exec'd: with uid 0 it would still be dumpable, and a
        // program of the same uid could open /proc/1/fd/* (the status pipe) and forge its
        // verdict. Non-dumpable, its /proc entries are closed to the program.
        nix::sys::prctl::set_dumpable(false)
            .map_err(|e| ExecutorError::Other(format!("make the init non-dumpable: {e}")))?;
        sys::close_inherited_fd(self.lifeline_monitor_fd);
        let mut mask = SigSet::empty();
        for &s in FORWARDED {
            mask.add(s);
        }
        mask.add(Signal::SIGCHLD);
        // Blocked signals are queued even for a pid 1 without handlers; the signalfd reads them.
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(|e| ExecutorError::Other(format!("block signals: {e}")))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| ExecutorError::Other(format!("signalfd: {e}")))?;
        // The init runs under the filter too: it only polls, reads, waits, kills and writes.
        if let Err(e) = self.filters.install() {
            self.send_status(&format!("error install seccomp filters: {e}\n"));
            sys::exit_now(127);
        }
        match self.spawn_program() {
            Ok(child) => {
                // The init holds the sandbox's stdio only to pass it on: dropping it now lets
                // the monitor see end of output as soon as the program's side closes.
                for fd in 0..=2 {
                    let _ = nix::unistd::close(fd);
                }
                self.supervise(child, &signals)
            }
            Err(e) => {
                self.send_status(&format!("error {e}\n"));
                sys::exit_now(127)
            }
        }
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        // The controller resolved the program inside the image before any side effect.
        Ok(())
    }

    fn setup_envs(
        &self,
        _envs: std::collections::HashMap<String, String>,
    ) -> std::result::Result<(), ExecutorSetEnvsError> {
        // execve gets exactly the caller's environment; nothing is added (not even HOME).
        Ok(())
    }
}
