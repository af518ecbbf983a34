//! The container's init (pid 1 of the sandbox), run through libcontainer's executor hook in a
//! process libcontainer clones from the monitor, never exec'd. Runs under the seccomp filter
//! it installs itself; it only polls, reads, waits, kills, writes and spawns processes, and
//! imports nothing but the protocol, the seccomp filters and `host::sys`.
//!
//! It takes the program request, spawns the program, forwards signals to it, reaps orphans,
//! reports the program's wait status to the monitor, and kills everything if the monitor dies.
//! While the program runs it takes further requests on the same socket: execs, each started
//! in a process group of its own with its own limits and streams, whose ends it reports by
//! id, and kills of an exec's group. The program's end ends the init and with it every exec.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, killpg, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::host::sys;
use crate::policy::seccomp::Filters;
use crate::proto::frame::{FrameBuffer, ProtoError};
use crate::proto::{
    ExecEnd, InitRequest, InitStatus, ProgramRequest, MAX_EXECS, MAX_PROGRAM_REQUEST,
};

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

/// Where an exec looks for a program named without a `/` when its environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What can keep the init from doing what a request asks.
#[derive(Debug, thiserror::Error)]
enum InitError {
    /// The request channel failed or carried something that is not a request.
    #[error("the program request: {0}")]
    Request(#[from] ProtoError),
    /// A request other than the program's came first, or the program's came again.
    #[error("unexpected request: {0}")]
    Unexpected(&'static str),
    /// A string of the request cannot be passed to the kernel.
    #[error("nul byte in {0:?}")]
    Nul(String),
    /// A step of applying the request failed.
    #[error("{what}: {errno}")]
    Apply {
        /// The step.
        what: String,
        /// Why.
        errno: nix::Error,
    },
}

fn apply(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |errno| InitError::Apply { what, errno }
}

/// The descriptors the init inherits from the monitor, by their numbers there (valid in the
/// init: libcontainer clones it from the monitor, and its close_range only marks them
/// close-on-exec, so the program never holds them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InheritedFds {
    /// Write end of the status pipe ([`InitStatus`] frames for the monitor).
    pub status: RawFd,
    /// Read end of the lifeline pipe: hang-up means the monitor died.
    pub lifeline: RawFd,
    /// The init's end of the request socket (see [`InitRequest`]).
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
        // Nothing better can be done: a monitor that stopped reading is gone, and the
        // lifeline ends the init then.
        let _ = status.write_to(self.status.as_fd());
    }

    /// A timestamp (CLOCK_MONOTONIC) for the monitor's phase breakdown (benchmarks).
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

/// A running exec: the monitor's number for it and its pid (also its process group's id).
#[derive(Debug, Clone, Copy)]
struct RunningExec {
    exec: u64,
    pid: i32,
}

/// The init's state while the program runs.
struct Supervision {
    ch: Channels,
    child: Pid,
    signals: SignalFd,
    /// The request socket and what was read of it; `None` once the monitor closed it.
    requests: Option<(OwnedFd, FrameBuffer)>,
    execs: Vec<RunningExec>,
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
    fn spawn_program(req: &ProgramRequest) -> Result<Result<Pid, nix::Error>, InitError> {
        let exe = c_string(&req.exe)?;
        let argv = c_strings(&req.args)?;
        let envp = c_strings(&req.env)?;
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
    /// rlimits (at most the hard limits the init has). Returns the request and the socket's
    /// reader, which goes on serving execs.
    fn take_request(
        request: OwnedFd,
    ) -> Result<(ProgramRequest, (OwnedFd, FrameBuffer)), InitError> {
        let mut buf = FrameBuffer::new(MAX_PROGRAM_REQUEST);
        let got = loop {
            if let Some(got) = buf.next::<InitRequest>()? {
                break got;
            }
            if !buf.fill_from_socket(request.as_fd())? {
                return Err(if buf.is_empty() {
                    ProtoError::Closed
                } else {
                    ProtoError::Truncated
                }
                .into());
            }
        };
        got.msg.check_fds(got.fds.len())?;
        let InitRequest::Program(req) = got.msg else {
            return Err(InitError::Unexpected(
                "the first request is not the program",
            ));
        };
        let streams = got.fds;
        let targets = [
            Some(0),
            req.stdout_fd.then_some(1),
            req.stderr_fd.then_some(2),
        ];
        for (fd, target) in streams.iter().zip(targets.into_iter().flatten()) {
            nix::unistd::dup2(fd.as_raw_fd(), target)
                .map_err(apply(format!("dup2 onto {target}")))?;
        }
        drop(streams);
        nix::unistd::chdir(req.cwd.as_str()).map_err(apply(format!("chdir {}", req.cwd)))?;
        Self::open_redirects(&req)?;
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // RLIMIT_STACK applies to the stack of the next exec'd image, not to the init's own;
        // RLIMIT_AS is set in the program's process (`sys::spawn_clean_limited`). Execs get
        // theirs in their own process (`sys::spawn_in_group`), never the init's.
        let lowered = [
            (Resource::RLIMIT_CPU, req.cpu_rlimit_secs, "RLIMIT_CPU"),
            (Resource::RLIMIT_STACK, req.stack_bytes, "RLIMIT_STACK"),
        ];
        for (res, value, name) in lowered {
            let Some(value) = value else { continue };
            // Lowering needs no privilege; the init has none left to raise a limit.
            let (_, hard) = getrlimit(res).unwrap_or((u64::MAX, u64::MAX));
            let value = value.min(hard);
            setrlimit(res, value, value).map_err(apply(format!("set {name}")))?;
        }
        // Further requests are read in the poll loop.
        nix::fcntl::fcntl(
            request.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(apply("make the request socket non-blocking"))?;
        Ok((req, (request, buf)))
    }

    /// Opens the redirected standard streams as the sandbox's user, inside the sandbox (as
    /// isolate does after its chroot): stdin, then stdout, then stderr or a copy of stdout.
    fn open_redirects(req: &ProgramRequest) -> Result<(), InitError> {
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
                .map_err(apply(format!("open {path:?}")))?;
            if fd != target {
                nix::unistd::dup2(fd, target).map_err(apply(format!("dup2 {path:?}")))?;
                // A failed close of a descriptor just duplicated cannot matter.
                let _ = nix::unistd::close(fd);
            }
        }
        if r.stderr_to_stdout {
            nix::unistd::dup2(1, 2).map_err(apply("dup2 stdout to stderr"))?;
        }
        Ok(())
    }
}

impl Supervision {
    /// The init's loop: forward signals, take exec requests, reap the program, execs and
    /// orphans, watch the monitor, until the program ends.
    fn run(mut self) -> ! {
        loop {
            let mut fds = vec![
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.ch.lifeline.as_fd(), PollFlags::POLLIN),
            ];
            if let Some((sock, _)) = &self.requests {
                fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            }
            if let Err(e) = sys::poll_until(&mut fds, None) {
                self.end_with(&InitStatus::failed(format!("init poll: {e}")), 125);
            }
            let ready: Vec<bool> = fds.iter().map(sys::has_event).collect();
            drop(fds);
            if ready[1] {
                // The monitor is gone: nobody could collect a result. End the sandbox.
                let _ = kill(self.child, Signal::SIGKILL);
                sys::exit_now(137);
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                let sig = i32::try_from(info.ssi_signo).map(Signal::try_from);
                if let Ok(Ok(sig)) = sig {
                    if sig != Signal::SIGCHLD {
                        // The program may be gone already: its end is reaped below.
                        let _ = kill(self.child, sig);
                    }
                }
            }
            if ready.get(2).copied().unwrap_or(false) {
                self.read_requests();
            }
            self.reap();
        }
    }

    /// Kills the program and ends the init with `status`.
    fn end_with(&self, status: &InitStatus, code: i32) -> ! {
        let _ = kill(self.child, Signal::SIGKILL);
        self.ch.fail(status, code)
    }

    /// Reads what the request socket holds and serves every complete request.
    fn read_requests(&mut self) {
        let Some((sock, buf)) = self.requests.as_mut() else {
            return;
        };
        let filled = buf.fill_from_socket(sock.as_fd());
        let open = match filled {
            Ok(open) => open,
            Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(e) => self.end_with(&InitStatus::failed(format!("exec request: {e}")), 125),
        };
        loop {
            let got = match self.requests.as_mut().map(|(_, b)| b.next::<InitRequest>()) {
                Some(Ok(Some(got))) => got,
                Some(Ok(None)) | None => break,
                Some(Err(e)) => {
                    self.end_with(&InitStatus::failed(format!("exec request: {e}")), 125)
                }
            };
            if let Err(e) = got.msg.check_fds(got.fds.len()) {
                self.end_with(&InitStatus::failed(format!("exec request: {e}")), 125);
            }
            match got.msg {
                InitRequest::Program(_) => self.end_with(
                    &InitStatus::failed("exec request: a second program request"),
                    125,
                ),
                InitRequest::Exec { exec, program } => self.start_exec(exec, &program, got.fds),
                InitRequest::Kill { exec, signal } => self.kill_exec(exec, signal),
            }
        }
        if !open {
            // The monitor closed its end: no more requests (the lifeline says if it died).
            self.requests = None;
        }
    }

    /// Starts exec `exec` with its three streams `fds`, which the init does not keep. A
    /// process that cannot be started "exits" with 127 (not found) or 126 (any other
    /// reason), its stderr saying why, as a shell reports it.
    fn start_exec(&mut self, exec: u64, req: &ProgramRequest, fds: Vec<OwnedFd>) {
        let stderr = fds.get(2).map(AsFd::as_fd);
        let refused = |why: String, code: i32| {
            if let Some(err) = stderr {
                // The caller's stream may be closed already; the exit code still tells.
                let _ = nix::unistd::write(err, format!("runbox exec: {why}\n").as_bytes());
            }
            ExecEnd {
                exec,
                exit_code: Some(code),
                signal: None,
                cpu_user_us: 0,
                cpu_system_us: 0,
            }
        };
        let end = if self.execs.len() >= MAX_EXECS {
            Some(refused(format!("more than {MAX_EXECS} execs at once"), 126))
        } else {
            match spawn_exec(req, &fds) {
                Ok(Ok(pid)) => {
                    self.execs.push(RunningExec { exec, pid });
                    None
                }
                Ok(Err(f)) => {
                    let errno = nix::Error::from_raw(f.errno);
                    let what = match f.step {
                        "execve" => format!("execve(\"{}\")", req.exe),
                        "chdir" => format!("chdir(\"{}\")", req.cwd),
                        other => other.to_string(),
                    };
                    let code = if f.step == "execve" && errno == nix::Error::ENOENT {
                        127
                    } else {
                        126
                    };
                    Some(refused(format!("{what}: {}", errno.desc()), code))
                }
                Err(e) => Some(refused(e.to_string(), 126)),
            }
        };
        drop(fds);
        if let Some(end) = end {
            self.ch.send(&InitStatus::ExecEnded(end));
        }
    }

    /// Signals exec `exec`'s process group; nothing if it has ended (the monitor learns
    /// that from its status).
    fn kill_exec(&self, exec: u64, signal: i32) {
        let Some(run) = self.execs.iter().find(|e| e.exec == exec) else {
            return;
        };
        if let Ok(sig) = Signal::try_from(signal) {
            // ESRCH: the group ended between the request and now; its end is reported.
            let _ = killpg(Pid::from_raw(run.pid), sig);
        }
    }

    /// Reaps every ended child: the program's end ends the init; an exec's end is reported
    /// and what is left of its group killed; orphans are just reaped.
    fn reap(&mut self) {
        loop {
            match sys::reap_any() {
                Ok(Some(r)) if r.pid == self.child.as_raw() => {
                    self.ch.mark("reaped");
                    match (r.exit_code, r.signal) {
                        (Some(code), _) => self.ch.fail(&InitStatus::Exited(code), code),
                        (None, Some(sig)) => self.ch.fail(&InitStatus::Signaled(sig), 128 + sig),
                        (None, None) => continue,
                    }
                }
                Ok(Some(r)) => {
                    let Some(at) = self.execs.iter().position(|e| e.pid == r.pid) else {
                        continue;
                    };
                    let run = self.execs.swap_remove(at);
                    // An exec lives as long as its first process: what it left behind in
                    // its group goes with it (the group's id stays reserved while any
                    // member lives, so this reaches no other process).
                    let _ = killpg(Pid::from_raw(run.pid), Signal::SIGKILL);
                    self.ch.send(&InitStatus::ExecEnded(ExecEnd {
                        exec: run.exec,
                        exit_code: r.exit_code,
                        signal: r.signal,
                        cpu_user_us: r.user_us,
                        cpu_system_us: r.system_us,
                    }));
                }
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => self.end_with(&InitStatus::failed(format!("init wait4: {e}")), 125),
            }
        }
    }
}

fn c_string(s: &str) -> Result<CString, InitError> {
    CString::new(s.as_bytes()).map_err(|_| InitError::Nul(s.to_string()))
}

fn c_strings(all: &[String]) -> Result<Vec<CString>, InitError> {
    all.iter().map(|s| c_string(s)).collect()
}

/// Starts an exec's process ([`sys::spawn_in_group`]): a name without `/` is looked up in
/// the request's `PATH`.
fn spawn_exec(
    req: &ProgramRequest,
    fds: &[OwnedFd],
) -> Result<Result<i32, sys::SpawnFailure>, InitError> {
    let candidates: Vec<CString> = if req.exe.contains('/') {
        vec![c_string(&req.exe)?]
    } else {
        let path = req
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| c_string(&format!("{}/{}", d.trim_end_matches('/'), req.exe)))
            .collect::<Result<_, _>>()?
    };
    let argv = c_strings(&req.args)?;
    let envp = c_strings(&req.env)?;
    let cwd = c_string(&req.cwd)?;
    let [stdin, stdout, stderr] = [0, 1, 2].map(|i| fds.get(i).map_or(-1, AsRawFd::as_raw_fd));
    let mut rlimits = Vec::with_capacity(3);
    if let Some(secs) = req.cpu_rlimit_secs {
        // SIGXCPU at the limit (only RLIMIT_CPU sends it: the monitor reads it as the
        // exec's time limit), SIGKILL a second later for a process that ignores it.
        rlimits.push((libc::RLIMIT_CPU, secs, secs.saturating_add(1)));
    }
    if let Some(bytes) = req.address_space_bytes {
        rlimits.push((libc::RLIMIT_AS, bytes, bytes));
    }
    if let Some(bytes) = req.stack_bytes {
        rlimits.push((libc::RLIMIT_STACK, bytes, bytes));
    }
    sys::spawn_in_group(&sys::GroupSpawn {
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
        cwd: &cwd,
        stdio: [stdin, stdout, stderr],
        rlimits: &rlimits,
    })
    .map_err(|e| InitError::Apply {
        what: "spawn".into(),
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
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
        let (req, requests) = match Self::take_request(request) {
            Ok(taken) => {
                // The monitor reports the launch only after this status: a request the init
                // cannot apply (a working directory hidden by a mount…) fails the launch.
                ch.send(&InitStatus::Ready);
                taken
            }
            Err(e) => ch.fail(&InitStatus::failed(e.to_string()), 127),
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
                    // Nothing to do about a stream that was not open.
                    let _ = nix::unistd::close(fd);
                }
                drop(req);
                sys::release_free_heap();
                Supervision {
                    ch,
                    child,
                    signals,
                    requests: Some(requests),
                    execs: Vec::new(),
                }
                .run()
            }
            // As a shell (and isolate) reports it: the program's stderr says why, and it
            // "exited" with 127 (a program in a work dir is looked up only now).
            Ok(Err(errno)) => {
                let why = format!("execve(\"{}\"): {}\n", req.exe, errno.desc());
                let _ = nix::unistd::write(std::io::stderr(), why.as_bytes());
                ch.fail(&InitStatus::Exited(127), 127)
            }
            Err(e) => ch.fail(&InitStatus::failed(e.to_string()), 127),
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
