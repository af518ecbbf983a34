//! The sandbox's pid 1: a minimal init run through libcontainer's executor hook. It installs
//! the seccomp filter, spawns the program, forwards signals to it, reaps orphans, reports the
//! program's wait status to the monitor, and kills everything if the monitor dies.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::seccomp::Filters;
use crate::sys;

/// Largest program request the init accepts (argv and environment together).
const MAX_REQUEST: usize = 16 << 20;

/// The program the init starts, sent by the monitor over the request socket once the
/// container is started, with the program's stdin as an `SCM_RIGHTS` descriptor. Nothing of
/// the program is fixed when the container is built, so a container can be built before its
/// program is known (a pre-built spare).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProgramRequest {
    /// The resolved executable inside the sandbox.
    pub exe: String,
    /// argv, argv[0] included.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<String>,
    /// The working directory, which the monitor has created.
    pub cwd: String,
    /// RLIMIT_CPU (soft and hard) in seconds: a per-process backstop behind the monitor's
    /// cgroup-wide CPU-time limit.
    pub cpu_rlimit_secs: Option<u64>,
}

impl ProgramRequest {
    /// The request for `cfg`'s program.
    pub fn for_config(cfg: &SandboxConfig) -> Self {
        ProgramRequest {
            exe: cfg.exe.clone(),
            args: cfg.args.clone(),
            env: cfg.env.clone(),
            cwd: cfg.cwd.clone(),
            cpu_rlimit_secs: cfg.limits.cpu_time.map(|c| c.as_secs() + 2),
        }
    }

    /// Sends the request, length-prefixed JSON, with `stdin` attached to its first byte.
    /// The init reads it only once started: call this after `start`.
    pub fn send(&self, sock: &OwnedFd, stdin: &OwnedFd) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let body = serde_json::to_vec(self).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        let fds = [stdin.as_raw_fd()];
        let iov = [io::IoSlice::new(&frame)];
        let sent = sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        let mut rest = &frame[sent..];
        while !rest.is_empty() {
            match nix::sys::socket::send(sock.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads one request from the inherited socket `fd`: the request and its stdin.
    fn receive(fd: RawFd) -> std::result::Result<(Self, OwnedFd), String> {
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        let mut stdin = None;
        let mut want = None;
        loop {
            if have == buf.len() {
                // Grow to the announced frame (or by doubling until its header is in).
                let next = want.unwrap_or(buf.len() * 2).max(buf.len() + 1);
                buf.resize(next, 0);
            }
            let (n, fds) = sys::recv_with_fds(fd, &mut buf[have..])
                .map_err(|e| format!("read the program request: {e}"))?;
            if stdin.is_none() {
                stdin = fds.into_iter().next();
            }
            if n == 0 {
                return Err("the monitor closed the request socket".to_string());
            }
            have += n;
            if want.is_none() && have >= 4 {
                let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if len > MAX_REQUEST {
                    return Err(format!("program request of {len} bytes is too large"));
                }
                want = Some(4 + len);
            }
            if want.is_some_and(|w| have >= w) {
                break;
            }
        }
        let end = want.unwrap_or(have);
        let req: ProgramRequest = serde_json::from_slice(&buf[4..end])
            .map_err(|e| format!("decode the program request: {e}"))?;
        let stdin = stdin.ok_or("the program request came without stdin")?;
        Ok((req, stdin))
    }
}

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
    filters: Filters,
    /// Write end of the status pipe: `ready` once the program request is applied, then
    /// `exit N`, `signal N` or `error TEXT` for the monitor (and `t LABEL US` timestamps).
    status_fd: RawFd,
    /// Read end of the lifeline pipe: hang-up means the monitor died.
    lifeline_fd: RawFd,
    /// The init's end of the request socket (see [`ProgramRequest`]).
    request_fd: RawFd,
    /// The monitor's ends of the lifeline and the request socket, inherited through clone:
    /// closed at once.
    monitor_fds: [RawFd; 2],
}

impl SandboxInit {
    /// Prepares the init. The fds are the monitor's numbers, valid in the init because
    /// libcontainer clones it from the monitor (its close_range only marks them close-on-exec).
    pub fn new(
        filters: Filters,
        status_fd: RawFd,
        lifeline: (RawFd, RawFd),
        request: (RawFd, RawFd),
    ) -> Self {
        SandboxInit {
            filters,
            status_fd,
            lifeline_fd: lifeline.0,
            request_fd: request.0,
            monitor_fds: [lifeline.1, request.1],
        }
    }

    fn send_status(&self, line: &str) {
        let _ = sys::write_inherited_fd(self.status_fd, line.as_bytes());
    }

    /// A timestamp line (`t LABEL MICROSECONDS`, CLOCK_MONOTONIC) for the monitor's phases.
    fn send_mark(&self, label: &str) {
        self.send_status(&format!("t {label} {}\n", crate::monitor::monotonic_us()));
    }

    /// Starts the program with `posix_spawn` (no copy of the init's address space), with an
    /// empty signal mask and default signal actions. The seccomp filter is already installed,
    /// so the program inherits it. Returns the program's pid.
    fn spawn_program(req: &ProgramRequest) -> std::result::Result<Pid, String> {
        let c = |s: &String| CString::new(s.as_bytes()).map_err(|_| format!("nul byte in {s:?}"));
        let exe = c(&req.exe)?;
        let argv = req
            .args
            .iter()
            .map(c)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let envp = req
            .env
            .iter()
            .map(c)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        sys::spawn_clean(&exe, &argv, &envp)
            .map(Pid::from_raw)
            .map_err(|e| format!("execve {}: {e}", req.exe))
    }

    /// Takes the program request and makes the init's state the program's: stdin, working
    /// directory (entered as the sandbox's user, who must be able to search it), CPU rlimit
    /// (at most the hard limit the init has).
    fn take_request(&self) -> std::result::Result<ProgramRequest, String> {
        let (req, stdin) = ProgramRequest::receive(self.request_fd)?;
        sys::close_inherited_fd(self.request_fd);
        nix::unistd::dup2(stdin.as_raw_fd(), 0).map_err(|e| format!("dup2 stdin: {e}"))?;
        drop(stdin);
        nix::unistd::chdir(req.cwd.as_str()).map_err(|e| format!("chdir {}: {e}", req.cwd))?;
        if let Some(secs) = req.cpu_rlimit_secs {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            // Lowering needs no privilege; the init has none left to raise it.
            let (_, hard) = getrlimit(Resource::RLIMIT_CPU).unwrap_or((u64::MAX, u64::MAX));
            let secs = secs.min(hard);
            setrlimit(Resource::RLIMIT_CPU, secs, secs)
                .map_err(|e| format!("set RLIMIT_CPU: {e}"))?;
        }
        Ok(req)
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
                        self.send_mark("reaped");
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
        for fd in self.monitor_fds {
            sys::close_inherited_fd(fd);
        }
        let req = match self.take_request() {
            Ok(req) => {
                // The monitor reports the launch only after this line: a request the init
                // cannot apply (a working directory hidden by a mount…) fails the launch.
                self.send_status("ready\n");
                req
            }
            Err(e) => {
                self.send_status(&format!("error {e}\n"));
                sys::exit_now(127);
            }
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
            Ok(child) => {
                self.send_mark("spawned");
                // The init holds the sandbox's stdio only to pass it on: dropping it now lets
                // the monitor see end of output as soon as the program's side closes.
                for fd in 0..=2 {
                    let _ = nix::unistd::close(fd);
                }
                drop(req);
                sys::release_free_heap();
                self.supervise(child, &signals)
            }
            Err(e) => {
                self.send_status(&format!("error {e}\n"));
                sys::exit_now(127)
            }
        }
    }

    /// Runs in the init before it waits for start, where libcontainer would install a
    /// seccomp profile itself: after pivot_root, the user switch, the capability drop and
    /// no_new_privs. The filter goes on here, so it costs nothing at start and covers the
    /// init's own remaining steps (its start handshake, the program request, the spawn).
    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
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
    ) -> std::result::Result<(), ExecutorSetEnvsError> {
        // execve gets exactly the caller's environment; nothing is added (not even HOME).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_program_request_crosses_the_socket_whole_with_its_stdin() {
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        let req = ProgramRequest {
            exe: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "echo ü".into()],
            // Larger than a socket buffer: the frame arrives in many reads.
            env: (0..20_000)
                .map(|i| format!("VAR{i}={}", "x".repeat(20)))
                .collect(),
            cwd: "/work".into(),
            cpu_rlimit_secs: Some(5),
        };
        let path = std::env::temp_dir().join(format!("rb-req-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(b"the stdin").unwrap();
        file.rewind().unwrap();
        let stdin = OwnedFd::from(file);
        let sender = {
            let req = req.clone();
            std::thread::spawn(move || req.send(&monitor, &stdin))
        };
        let (got, fd) = ProgramRequest::receive(init.as_raw_fd()).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got, req);
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        assert_eq!(text, "the stdin");
    }

    #[test]
    fn a_truncated_or_oversized_request_is_an_error_not_a_hang() {
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &(MAX_REQUEST as u32 + 1).to_le_bytes()).unwrap();
        assert!(ProgramRequest::receive(init.as_raw_fd())
            .unwrap_err()
            .contains("too large"));
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &[10, 0, 0, 0, b'{']).unwrap();
        drop(monitor);
        assert!(ProgramRequest::receive(init.as_raw_fd())
            .unwrap_err()
            .contains("closed"));
    }
}
