//! The channel between a sandbox's monitor and its container init, both directions on the
//! one frame ([`super::frame`]): requests on the request socket (the sandbox's program first,
//! then execs and their kills, each with its standard streams as descriptors) and statuses on
//! the status pipe (ready, the program's end, each exec's end). Used by the monitor (sender
//! of requests, reader of statuses) and the init (the other way round).

use std::io;
use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};

use super::frame::{self, FrameBuffer, ProtoError};
use crate::config::{Output, Redirects, RunSpec};

/// Largest request the init accepts (argv and environment together).
pub(crate) const MAX_PROGRAM_REQUEST: usize = 16 << 20;

/// Largest status frame the monitor accepts from the init (an `error` names paths of at most
/// `PATH_MAX`): the bytes buffered from the status pipe stay within this plus one read.
pub(crate) const MAX_STATUS_FRAME: usize = 64 * 1024;

/// Most execs that may run in one sandbox at once: the monitor refuses more (a typed error),
/// and the init, which keeps a table of them, never holds more.
pub(crate) const MAX_EXECS: usize = 256;

/// Longest message the init puts in a [`InitStatus::Failed`] (cut on a character boundary).
const MAX_FAILURE_TEXT: usize = 4096;

/// A process the init starts: the sandbox's program (sent once the container is started;
/// nothing of it is fixed when the container is built, so a container can be built before
/// its program is known), or an exec'd process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProgramRequest {
    /// The executable inside the sandbox: resolved by the controller for the program; for an
    /// exec, a name without `/` is looked up in the request's `PATH` by the init.
    pub exe: String,
    /// argv, `argv[0]` included.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// RLIMIT_CPU (soft and hard) in seconds: for the program a per-process backstop behind
    /// the monitor's cgroup-wide CPU-time limit; for an exec, its CPU-time limit.
    pub cpu_rlimit_secs: Option<u64>,
    /// RLIMIT_AS for the process, set in its own process just before it starts (the init
    /// itself, cloned from the monitor, would not fit in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// RLIMIT_STACK for the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_bytes: Option<u64>,
    /// Standard streams the init opens inside the sandbox (the program only).
    #[serde(default, skip_serializing_if = "Redirects::is_empty")]
    pub redirects: Redirects,
    /// The request carries the program's stdout (the launcher's), after its stdin. Always
    /// true for an exec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_fd: bool,
    /// The request carries the program's stderr, after stdin and stdout. Always true for an
    /// exec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_fd: bool,
}

impl ProgramRequest {
    /// The request for `run`'s program.
    pub fn for_run(run: &RunSpec) -> Self {
        ProgramRequest {
            exe: run.exe.clone(),
            args: run.args.clone(),
            env: run.env.clone(),
            cwd: run.cwd.clone(),
            cpu_rlimit_secs: run.limits.cpu_rlimit_secs(),
            address_space_bytes: run.limits.address_space_bytes,
            stack_bytes: run.limits.stack_bytes,
            redirects: run.redirects.clone(),
            stdout_fd: run.stdout == Output::Inherit,
            stderr_fd: run.stderr == Output::Inherit,
        }
    }

    /// How many descriptors come with this request: stdin, then stdout and stderr if flagged.
    pub fn fd_count(&self) -> usize {
        1 + usize::from(self.stdout_fd) + usize::from(self.stderr_fd)
    }
}

/// One frame on the init's request socket, which the monitor keeps open for the sandbox's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InitRequest {
    /// The sandbox's program: first and once, with its streams (see
    /// [`ProgramRequest::fd_count`]). Its end ends the init and the sandbox.
    Program(ProgramRequest),
    /// A further process, with exactly three descriptors (stdin, stdout, stderr). Started in
    /// a process group of its own; its end is an [`InitStatus::ExecEnded`] with `exec`.
    Exec {
        /// The monitor's number for it, unique within the sandbox.
        exec: u64,
        /// What to run (`stdout_fd` and `stderr_fd` set).
        program: ProgramRequest,
    },
    /// Sends `signal` to the process group of exec `exec`, if it still runs.
    Kill {
        /// Which exec.
        exec: u64,
        /// The signal number.
        signal: i32,
    },
}

impl InitRequest {
    /// The descriptors this request must come with.
    pub fn fd_count(&self) -> usize {
        match self {
            InitRequest::Program(p) => p.fd_count(),
            InitRequest::Exec { .. } => 3,
            InitRequest::Kill { .. } => 0,
        }
    }

    /// Sends the request on the (blocking) request socket with `fds` on its first byte.
    pub fn send(&self, sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        if fds.len() != self.fd_count() {
            return Err(ProtoError::Descriptors(format!(
                "a request for {} descriptors sent with {}",
                self.fd_count(),
                fds.len()
            )));
        }
        frame::send_bounded(sock, self, fds, MAX_PROGRAM_REQUEST)
    }

    /// Checks that a received request came with exactly its descriptors.
    pub fn check_fds(&self, got: usize) -> Result<(), ProtoError> {
        if got == self.fd_count() {
            Ok(())
        } else {
            Err(ProtoError::Descriptors(format!(
                "the request came with {got} descriptors, not {}",
                self.fd_count()
            )))
        }
    }
}

/// How an exec'd process ended, as the init saw it in `wait4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecEnd {
    /// Which exec.
    pub exec: u64,
    /// Its exit code, if it exited (127 if it could not be started; its stderr says why).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// User CPU time of the process and the descendants it waited for (`wait4`'s rusage).
    pub cpu_user_us: u64,
    /// System CPU time, likewise.
    pub cpu_system_us: u64,
}

/// A frame the container's init writes to the monitor over its status pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InitStatus {
    /// The program request was applied; the program is being started.
    Ready,
    /// The init could not do what it had to (before or after `ready`); it ends.
    Failed(String),
    /// The program exited with this code (the init ends).
    Exited(i32),
    /// The program was killed by this signal (the init ends).
    Signaled(i32),
    /// When the init passed a step (CLOCK_MONOTONIC; benchmarks).
    Mark {
        /// The step.
        label: String,
        /// When.
        us: u64,
    },
    /// An exec'd process ended (its group was then killed).
    ExecEnded(ExecEnd),
}

impl InitStatus {
    /// A failure status with `why` cut to a bounded length.
    pub fn failed(why: impl Into<String>) -> Self {
        let mut why = why.into();
        if why.len() > MAX_FAILURE_TEXT {
            let mut at = MAX_FAILURE_TEXT;
            while !why.is_char_boundary(at) {
                at -= 1;
            }
            why.truncate(at);
        }
        InitStatus::Failed(why)
    }

    /// Writes the status as one frame to the (blocking) pipe `pipe`.
    pub fn write_to(&self, pipe: BorrowedFd<'_>) -> Result<(), ProtoError> {
        let bytes = frame::encode(self, MAX_STATUS_FRAME)?;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match nix::unistd::write(pipe, rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(())
    }
}

/// The monitor's side of the status pipe: bytes in, [`InitStatus`] frames out, at most
/// [`MAX_STATUS_FRAME`] bytes of one frame held (a larger one is an error, never a buffer
/// that grows with what the writer sends).
#[derive(Debug)]
pub(crate) struct StatusFrames {
    buf: FrameBuffer,
}

impl Default for StatusFrames {
    fn default() -> Self {
        StatusFrames {
            buf: FrameBuffer::new(MAX_STATUS_FRAME),
        }
    }
}

impl StatusFrames {
    /// Reads once from the (non-blocking) pipe. `Ok(false)` at end of file; `WouldBlock`
    /// comes back as `Ok(true)` (nothing more now).
    pub fn fill_from(&mut self, pipe: BorrowedFd<'_>) -> Result<bool, ProtoError> {
        match self.buf.fill_from_pipe(pipe) {
            Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            other => other,
        }
    }

    /// Reads the pipe until it is empty for now or at end of file; `Ok(false)` at end of file.
    pub fn drain(&mut self, pipe: BorrowedFd<'_>) -> Result<bool, ProtoError> {
        loop {
            match self.buf.fill_from_pipe(pipe) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends bytes read elsewhere.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        self.buf.push(bytes, Vec::new())
    }

    /// The next complete status, if one has arrived.
    pub fn next_status(&mut self) -> Result<Option<InitStatus>, ProtoError> {
        Ok(self.buf.next::<InitStatus>()?.map(|r| r.msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sys;
    use crate::proto::test_files::{contents, temp_with};
    use std::os::fd::AsFd;

    fn program() -> ProgramRequest {
        ProgramRequest {
            exe: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "echo ü".into()],
            // Larger than a socket buffer: the frame arrives in many reads.
            env: (0..20_000)
                .map(|i| format!("VAR{i}={}", "x".repeat(20)))
                .collect(),
            cwd: "/work".into(),
            cpu_rlimit_secs: Some(5),
            address_space_bytes: Some(64 << 20),
            stack_bytes: None,
            redirects: Redirects {
                stdout: Some("/box/out".into()),
                stderr_to_stdout: true,
                ..Redirects::default()
            },
            stdout_fd: false,
            stderr_fd: true,
        }
    }

    #[test]
    fn requests_cross_the_socket_whole_with_their_streams_in_order() {
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        let first = InitRequest::Program(program());
        let exec = InitRequest::Exec {
            exec: 7,
            program: ProgramRequest {
                stdout_fd: true,
                redirects: Redirects::default(),
                ..program()
            },
        };
        let kill = InitRequest::Kill { exec: 7, signal: 9 };
        let sender = {
            let (first, exec, kill) = (first.clone(), exec.clone(), kill.clone());
            std::thread::spawn(move || {
                let (a, b) = (temp_with("in"), temp_with("err"));
                first.send(monitor.as_fd(), &[a.as_fd(), b.as_fd()])?;
                let (c, d, e) = (temp_with("0"), temp_with("1"), temp_with("2"));
                exec.send(monitor.as_fd(), &[c.as_fd(), d.as_fd(), e.as_fd()])?;
                kill.send(monitor.as_fd(), &[])?;
                // A request with the wrong descriptors is refused before it is sent.
                assert!(matches!(
                    kill.send(monitor.as_fd(), &[a.as_fd()]),
                    Err(ProtoError::Descriptors(_))
                ));
                Ok::<_, ProtoError>(())
            })
        };
        let mut r = frame::Reader::bounded(init, MAX_PROGRAM_REQUEST);
        let one = r.recv::<InitRequest>().unwrap();
        one.msg.check_fds(one.fds.len()).unwrap();
        assert_eq!(one.msg, first);
        let texts: Vec<String> = one.fds.into_iter().map(contents).collect();
        assert_eq!(texts, ["in", "err"]);
        let two = r.recv::<InitRequest>().unwrap();
        assert_eq!(two.msg, exec);
        assert_eq!(
            two.fds.into_iter().map(contents).collect::<Vec<_>>(),
            ["0", "1", "2"]
        );
        let three = r.recv::<InitRequest>().unwrap();
        assert_eq!((three.msg, three.fds.len()), (kill, 0));
        sender.join().unwrap().unwrap();
        assert!(matches!(r.recv::<InitRequest>(), Err(ProtoError::Closed)));
        assert!(InitRequest::Kill { exec: 1, signal: 9 }
            .check_fds(1)
            .is_err());
    }

    #[test]
    fn a_truncated_or_oversized_request_is_a_typed_error_not_a_hang() {
        let too_big = u32::try_from(MAX_PROGRAM_REQUEST + 1).unwrap();
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &too_big.to_le_bytes()).unwrap();
        let mut r = frame::Reader::bounded(init, MAX_PROGRAM_REQUEST);
        assert!(matches!(
            r.recv::<InitRequest>(),
            Err(ProtoError::TooLarge { .. })
        ));
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &[10, 0, 0, 0, b'{']).unwrap();
        drop(monitor);
        let mut r = frame::Reader::bounded(init, MAX_PROGRAM_REQUEST);
        assert!(matches!(
            r.recv::<InitRequest>(),
            Err(ProtoError::Truncated)
        ));
    }

    #[test]
    fn statuses_cross_the_pipe_split_anywhere() {
        let all = [
            InitStatus::Ready,
            InitStatus::failed("chdir /tmp/ü: ENOENT"),
            InitStatus::Exited(3),
            InitStatus::Signaled(9),
            InitStatus::Mark {
                label: "spawned".into(),
                us: 12,
            },
            InitStatus::ExecEnded(ExecEnd {
                exec: 4,
                exit_code: None,
                signal: Some(9),
                cpu_user_us: 10,
                cpu_system_us: 20,
            }),
        ];
        let (r, w) = nix::unistd::pipe().unwrap();
        for s in &all {
            s.write_to(w.as_fd()).unwrap();
        }
        drop(w);
        let mut wire = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut wire).unwrap();
        for step in [1, 3, 7, 4096] {
            let mut frames = StatusFrames::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                frames.push(chunk).unwrap();
                while let Some(s) = frames.next_status().unwrap() {
                    got.push(s);
                }
            }
            assert_eq!(got, all, "chunks of {step}");
        }
    }

    /// The status pipe is the init's, but its bytes are bounded anyway: a frame announced
    /// larger than the bound is an error at once, and a long failure text is cut to fit.
    #[test]
    fn status_frames_stay_bounded() {
        let mut frames = StatusFrames::default();
        let len = u32::try_from(MAX_STATUS_FRAME + 1).unwrap();
        frames.push(&len.to_le_bytes()).unwrap();
        assert!(matches!(
            frames.next_status(),
            Err(ProtoError::TooLarge { .. })
        ));
        let InitStatus::Failed(text) = InitStatus::failed("é".repeat(10_000)) else {
            panic!()
        };
        assert!(text.len() <= MAX_FAILURE_TEXT && text.starts_with('é'));
        let (r, w) = nix::unistd::pipe().unwrap();
        InitStatus::failed("x".repeat(1 << 20))
            .write_to(w.as_fd())
            .unwrap();
        drop(w);
        let mut frames = StatusFrames::default();
        assert!(!frames.drain(r.as_fd()).unwrap());
        assert!(matches!(
            frames.next_status().unwrap(),
            Some(InitStatus::Failed(_))
        ));
    }
}
