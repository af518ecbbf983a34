//! The container's init (pid 1 of the sandbox), run through libcontainer's executor hook in a
//! process libcontainer clones from the monitor, never exec'd. Runs under the seccomp filter
//! it installs itself; it only polls, reads, waits, kills, writes and spawns the program, and
//! imports nothing but the protocol, the seccomp filters and `host::sys`.
//!
//! It takes the program request, spawns the program, forwards signals to it, reaps orphans,
//! reports the program's wait status to the monitor, and kills everything if the monitor dies.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::host::sys;
use crate::policy::seccomp::Filters;
use crate::proto::{InitStatus, ProgramRequest};

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

/// The descriptors the init inherits from the monitor, by their numbers there (valid in the
/// init: libcontainer clones it from the monitor, and its close_range only marks them
/// close-on-exec, so the program never holds them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InheritedFds {
    /// Write end of the status pipe ([`InitStatus`] lines for the monitor).
    pub status: RawFd,
    /// Read end of the lifeline pipe: hang-up means the monitor died.
    pub lifeline: RawFd,
    /// The init's end of the request socket (see [`ProgramRequest`]).
    pub request: RawFd,
    /// The monitor's ends of the lifeline and the request socket: closed at once.
    pub monitor_ends: [RawFd; 2],
}

/// The executor libcontainer calls in the container's init after pivot_root, capability drop
/// and no_new_privs. Everything it needs is allocated before the container is built.
#[derive(Clone)]
pub(crate) struct SandboxInit {
    filters: Filters,
    fds: InheritedFds,
    /// The monitor's command line (which names the state root), blanked in the init.
    cmdline: Option<sys::CmdlineArea>,
}

/// The init's own descriptors, once adopted in `exec`.
struct Channels {
    status: OwnedFd,
    lifeline: OwnedFd,
}

impl Channels {
    fn send(&self, status: &InitStatus) {
        let _ = nix::unistd::write(&self.status, status.encode().as_bytes());
    }

    /// A timestamp line (CLOCK_MONOTONIC) for the monitor's phase breakdown (benchmarks).
    fn mark(&self, label: &str) {
        if cfg!(feature = "bench") {
            self.send(&InitStatus::Mark {
                label: label.to_string(),
                us: sys::monotonic_us(),
            });
        }
    }

    /// Reports `status`, then ends the init (and with it the pid namespace).
    fn fail(&self, status: &InitStatus, code: i32) -> ! {
        self.send(status);
        sys::exit_now(code)
    }
}

impl SandboxInit {
    /// Prepares the init: it will install `filters` and use the descriptors `fds`.
    pub fn new(filters: Filters, fds: InheritedFds) -> Self {
        SandboxInit {
            filters,
            fds,
            cmdline: sys::CmdlineArea::own(),
        }
    }

    /// Starts the program with `posix_spawn` (no copy of the init's address space), with an
    /// empty signal mask and default signal actions. The seccomp filter is already installed,
    /// so the program inherits it. Returns the program's pid, or `Ok(Err(errno))` if the
    /// program could not be executed (missing, not executable, too big for its limits).
    fn spawn_program(req: &ProgramRequest) -> Result<Result<Pid, nix::Error>, String> {
        let c = |s: &String| CString::new(s.as_bytes()).map_err(|_| format!("nul byte in {s:?}"));
        let exe = c(&req.exe)?;
        let argv = req.args.iter().map(c).collect::<Result<Vec<_>, _>>()?;
        let envp = req.env.iter().map(c).collect::<Result<Vec<_>, _>>()?;
        let spawned = match req.address_space_bytes {
            Some(limit) => sys::spawn_clean_limited(&exe, &argv, &envp, limit),
            None => sys::spawn_clean(&exe, &argv, &envp),
        };
        Ok(spawned
            .map(Pid::from_raw)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::Error::EIO as i32))))
    }

    /// Takes the program request and makes the init's state the program's: stdin (and
    /// stdout and stderr when the request brings them), working directory (entered as the
    /// sandbox's user, who must be able to search it), streams opened inside, CPU and stack
    /// rlimits (at most the hard limits the init has).
    fn take_request(request: OwnedFd) -> Result<ProgramRequest, String> {
        let (req, streams) = ProgramRequest::receive(&request)?;
        drop(request);
        let targets = [
            Some(0),
            req.stdout_fd.then_some(1),
            req.stderr_fd.then_some(2),
        ];
        for (fd, target) in streams.iter().zip(targets.into_iter().flatten()) {
            nix::unistd::dup2(fd.as_raw_fd(), target)
                .map_err(|e| format!("dup2 onto {target}: {e}"))?;
        }
        drop(streams);
        nix::unistd::chdir(req.cwd.as_str()).map_err(|e| format!("chdir {}: {e}", req.cwd))?;
        Self::open_redirects(&req)?;
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // RLIMIT_STACK applies to the stack of the next exec'd image, not to the init's own;
        // RLIMIT_AS is set in the program's process (`sys::spawn_clean_limited`).
        let lowered = [
            (Resource::RLIMIT_CPU, req.cpu_rlimit_secs, "RLIMIT_CPU"),
            (Resource::RLIMIT_STACK, req.stack_bytes, "RLIMIT_STACK"),
        ];
        for (res, value, name) in lowered {
            let Some(value) = value else { continue };
            // Lowering needs no privilege; the init has none left to raise a limit.
            let (_, hard) = getrlimit(res).unwrap_or((u64::MAX, u64::MAX));
            let value = value.min(hard);
            setrlimit(res, value, value).map_err(|e| format!("set {name}: {e}"))?;
        }
        Ok(req)
    }

    /// Opens the redirected standard streams as the sandbox's user, inside the sandbox (as
    /// isolate does after its chroot): stdin, then stdout, then stderr or a copy of stdout.
    fn open_redirects(req: &ProgramRequest) -> Result<(), String> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::stat::Mode;
        let r = &req.redirects;
        let write = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
        let streams = [
            (r.stdin.as_deref(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, 0),
            (r.stdout.as_deref(), write, 1),
            (r.stderr.as_deref(), write, 2),
        ];
        for (path, flags, target) in streams {
            let Some(path) = path else { continue };
            let fd = open(path, flags, Mode::from_bits_truncate(0o666))
                .map_err(|e| format!("open {path:?}: {e}"))?;
            if fd != target {
                nix::unistd::dup2(fd, target).map_err(|e| format!("dup2 {path:?}: {e}"))?;
                let _ = nix::unistd::close(fd);
            }
        }
        if r.stderr_to_stdout {
            nix::unistd::dup2(1, 2).map_err(|e| format!("dup2 stdout to stderr: {e}"))?;
        }
        Ok(())
    }

    /// The init's loop: forward signals, reap orphans, watch the monitor, until the program ends.
    fn supervise(ch: &Channels, child: Pid, signals: &SignalFd) -> ! {
        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(ch.lifeline.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = sys::poll_until(&mut fds, None) {
                let _ = kill(child, Signal::SIGKILL);
                ch.fail(&InitStatus::Failed(format!("init poll: {e}")), 125);
            }
            if sys::has_event(&fds[1]) {
                // The monitor is gone: nobody could collect a result. End the sandbox.
                let _ = kill(child, Signal::SIGKILL);
                sys::exit_now(137);
            }
            while let Ok(Some(info)) = signals.read_signal() {
                let sig = i32::try_from(info.ssi_signo).map(Signal::try_from);
                if let Ok(Ok(sig)) = sig {
                    if sig != Signal::SIGCHLD {
                        let _ = kill(child, sig);
                    }
                }
            }
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                        ch.mark("reaped");
                        ch.fail(&InitStatus::Exited(code), code);
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        let sig = sig as i32;
                        ch.fail(&InitStatus::Signaled(sig), 128 + sig);
                    }
                    Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        let _ = kill(child, Signal::SIGKILL);
                        ch.fail(&InitStatus::Failed(format!("init waitpid: {e}")), 125);
                    }
                }
            }
        }
    }
}

impl Executor for SandboxInit {
    fn exec(&self, _spec: &Spec) -> Result<(), ExecutorError> {
        // What the program sees as pid 1's command line.
        if let Some(area) = self.cmdline {
            area.blank(b"runbox-init");
        }
        let f = self.fds;
        #[allow(unsafe_code)]
        // SAFETY: these are the monitor's descriptor numbers, open when libcontainer cloned
        // this process from it (its close_range only marks them close-on-exec); no object in
        // this process owns them, each is listed once, and this is the only adoption.
        let [status, lifeline, request, monitor_lifeline, monitor_request] = unsafe {
            sys::adopt_inherited_fds([
                f.status,
                f.lifeline,
                f.request,
                f.monitor_ends[0],
                f.monitor_ends[1],
            ])
        };
        drop((monitor_lifeline, monitor_request));
        let ch = Channels { status, lifeline };
        let req = match Self::take_request(request) {
            Ok(req) => {
                // The monitor reports the launch only after this line: a request the init
                // cannot apply (a working directory hidden by a mount…) fails the launch.
                ch.send(&InitStatus::Ready);
                req
            }
            Err(e) => ch.fail(&InitStatus::Failed(e), 127),
        };
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
        // The seccomp filter (installed in `validate`) is inherited by the program.
        match Self::spawn_program(&req) {
            Ok(Ok(child)) => {
                ch.mark("spawned");
                // The init holds the sandbox's stdio only to pass it on: dropping it now lets
                // the monitor see end of output as soon as the program's side closes.
                for fd in 0..=2 {
                    let _ = nix::unistd::close(fd);
                }
                drop(req);
                sys::release_free_heap();
                Self::supervise(&ch, child, &signals)
            }
            // As a shell (and isolate) reports it: the program's stderr says why, and it
            // "exited" with 127 (a program in a work dir is looked up only now).
            Ok(Err(errno)) => {
                let why = format!("execve(\"{}\"): {}\n", req.exe, errno.desc());
                let _ = nix::unistd::write(std::io::stderr(), why.as_bytes());
                ch.fail(&InitStatus::Exited(127), 127)
            }
            Err(e) => ch.fail(&InitStatus::Failed(e), 127),
        }
    }

    /// Runs in the init before it waits for start, where libcontainer would install a
    /// seccomp profile itself: after pivot_root, the user switch, the capability drop and
    /// no_new_privs. The filter goes on here, so it costs nothing at start and covers the
    /// init's own remaining steps (its start handshake, the program request, the spawn).
    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        // The init was cloned, never exec'd: with uid 0 it would still be dumpable, and a
        // program of the same uid could open /proc/1/fd/* (the status pipe) and forge its
        // verdict. Non-dumpable, its /proc entries are closed to the program.
        nix::sys::prctl::set_dumpable(false).map_err(|e| {
            ExecutorValidationError::ArgValidationError(format!("make the init non-dumpable: {e}"))
        })?;
        // The monitor is the init's parent (libcontainer clones it with CLONE_PARENT). If the
        // monitor dies while the init waits for start (a created sandbox, a pre-built one)
        // nothing else would end the init: SIGKILL it then (set after the user switch, which
        // clears it; a signal from the dying parent in the ancestor pid namespace is forced
        // even on a namespace's pid 1).
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| {
            ExecutorValidationError::ArgValidationError(format!("set the parent-death signal: {e}"))
        })?;
        // The init runs under the filter too: it only polls, reads, waits, kills and writes.
        // The program was resolved inside the image by the controller.
        self.filters.install().map_err(|e| {
            ExecutorValidationError::ArgValidationError(format!("install seccomp filters: {e}"))
        })
    }

    fn setup_envs(
        &self,
        _envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        // execve gets exactly the caller's environment; nothing is added (not even HOME).
        Ok(())
    }
}
