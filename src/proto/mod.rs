//! Every message that crosses a process boundary, each a serde type on the one frame
//! ([`frame`]) with its sender and receiver side by side: the monitor's command line, the
//! controller's requests to the spare factory and to a spare, the take after a claim of a
//! parked spare, an exec'd monitor's inherited streams and the monitor's reports
//! (`launch.rs`), the program request to the container's init and the init's status lines
//! (here). Both ends of each channel use these; nothing else formats or splits them.
//!
//! ```text
//! controller ──argv: MonitorArgs (version in argv[1])──▶ monitor / spare / factory
//! controller ──socket: Hello, FactoryRequest + 2 fds──▶ factory
//! controller ──socket: Hello, SpareRequest (+ fds)────▶ spare (`Park` first: it leaves, to
//!                                                      wait in the state root)
//! controller ◀─socket: hello_client / hello_server───▶ parked spare, then Take + fds
//! controller ──socket: Hello, StreamFds + fds─────────▶ exec'd monitor (inherited streams)
//! monitor    ──pipe: Report frames────────────────────▶ controller
//! monitor    ──socket: ProgramRequest + fds───────────▶ container init
//! init       ──pipe: InitStatus lines─────────────────▶ monitor
//! ```
//!
//! The version handshake ([`frame::Hello`]) opens every socket channel, in one of two ways:
//!
//! - **one-way** (the controller never blocks on the peer: the factory's and a spare's
//!   request sockets, an exec'd monitor's streams socket): the controller's hello is the
//!   first frame it writes, without waiting ([`launch::send_hello`]); the receiver checks it
//!   ([`launch::expect_hello`]) and hangs up on a mismatch (the factory and the spare exit,
//!   so the controller falls back to an exec'd monitor; a monitor fails its launch);
//! - **round trip** (a claim of a parked spare, which may have been left by another
//!   binary): the claimer's [`frame::hello_client`] against the spare's
//!   [`frame::hello_server`], both learning which versions met; the claim checks the spare's
//!   record (protocol version, monitor binary) before it even connects.
//!
//! The command line is not a socket: it carries the version in its first word
//! (`--runbox-monitor-v2`), and a monitor exec'd with another version's refuses to run. The
//! report pipe carries no hello: its writer is a monitor whose version was checked on its
//! command line or request socket.

pub(crate) mod control;
pub(crate) mod frame;
pub(crate) mod launch;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::config::{Output, Redirects, SandboxConfig};
use crate::error::{Error, ErrorKind};
use crate::host::sys;

pub(crate) use launch::{
    expect_hello, send_hello, FactoryRequest, Mode, MonitorArgs, Park, Report, ReportReader,
    SpareRequest, StreamFds, MAX_FACTORY_FRAME,
};

/// An error as it crosses a process boundary: kind, message and causes, rebuilt on the other
/// side into the same [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    /// The error kind.
    pub kind: ErrorKind,
    /// The error's own message.
    pub message: String,
    /// Its causes, outermost first.
    pub causes: Vec<String>,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        WireError {
            kind: e.kind(),
            message: e.message().to_string(),
            causes: e.causes(),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        Error::rebuilt(w.kind, w.message, w.causes)
    }
}

/// A line the container's init writes to the monitor over its status pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitStatus {
    /// `ready`: the program request was applied; the program is being started.
    Ready,
    /// `error TEXT`: the init could not do what it had to (before or after `ready`).
    Failed(String),
    /// `exit N`: the program exited with code N.
    Exited(i32),
    /// `signal N`: the program was killed by signal N.
    Signaled(i32),
    /// `t LABEL MICROSECONDS`: when the init passed a step (CLOCK_MONOTONIC; benchmarks).
    Mark {
        /// The step.
        label: String,
        /// When.
        us: u64,
    },
    /// A line this monitor does not know.
    Unknown(String),
}

impl InitStatus {
    /// The line, newline included.
    pub fn encode(&self) -> String {
        match self {
            InitStatus::Ready => "ready\n".to_string(),
            InitStatus::Failed(why) => format!("error {}\n", why.replace('\n', " ")),
            InitStatus::Exited(code) => format!("exit {code}\n"),
            InitStatus::Signaled(sig) => format!("signal {sig}\n"),
            InitStatus::Mark { label, us } => format!("t {label} {us}\n"),
            InitStatus::Unknown(line) => format!("{line}\n"),
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> InitStatus {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let number = rest.parse::<i32>();
        match (word, number) {
            ("ready", _) if rest.is_empty() => InitStatus::Ready,
            ("error", _) => InitStatus::Failed(rest.to_string()),
            ("exit", Ok(code)) => InitStatus::Exited(code),
            ("signal", Ok(sig)) => InitStatus::Signaled(sig),
            ("t", _) => match rest.split_once(' ').map(|(l, t)| (l, t.parse::<u64>())) {
                Some((label, Ok(us))) => InitStatus::Mark {
                    label: label.to_string(),
                    us,
                },
                _ => InitStatus::Unknown(line.to_string()),
            },
            _ => InitStatus::Unknown(line.to_string()),
        }
    }
}

/// The monitor's side of the status pipe: bytes in, complete [`InitStatus`] lines out. Bytes
/// are kept as they came until their line is complete, so a character split across two
/// reads is decoded whole.
#[derive(Debug, Default)]
pub(crate) struct StatusLines {
    bytes: Vec<u8>,
    /// The line being read went past [`MAX_STATUS_LINE`]: its bytes are dropped up to its
    /// newline, and it comes out as [`InitStatus::Unknown`].
    overlong: bool,
}

/// Longest status line the monitor keeps (an `error` line names paths of at most
/// `PATH_MAX`): the bytes buffered from the status pipe stay within this plus one read.
pub(crate) const MAX_STATUS_LINE: usize = 64 * 1024;

impl StatusLines {
    /// Appends bytes read from the pipe. A line still open past [`MAX_STATUS_LINE`] is
    /// dropped as it comes, so the buffer stays bounded whatever the writer sends.
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > MAX_STATUS_LINE && !self.bytes.contains(&b'\n') {
            self.bytes.clear();
            self.overlong = true;
        }
    }

    /// The next complete line, if one has arrived.
    pub fn next_line(&mut self) -> Option<InitStatus> {
        let end = self.bytes.iter().position(|&b| b == b'\n')?;
        let line = if std::mem::take(&mut self.overlong) {
            InitStatus::Unknown(format!("(a status line over {MAX_STATUS_LINE} bytes)"))
        } else {
            InitStatus::parse(&String::from_utf8_lossy(&self.bytes[..end]))
        };
        self.bytes.drain(..=end);
        Some(line)
    }
}

/// Largest program request the init accepts (argv and environment together).
pub(crate) const MAX_PROGRAM_REQUEST: usize = 16 << 20;

/// The program the init starts, sent by the monitor over the request socket once the
/// container is started, with the program's stdin as an `SCM_RIGHTS` descriptor. Nothing of
/// the program is fixed when the container is built, so a container can be built before its
/// program is known (a pre-built spare). Framed as a 4-byte little-endian length and JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProgramRequest {
    /// The resolved executable inside the sandbox.
    pub exe: String,
    /// argv, `argv[0]` included.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<String>,
    /// The working directory, which the monitor has created.
    pub cwd: String,
    /// RLIMIT_CPU (soft and hard) in seconds: a per-process backstop behind the monitor's
    /// cgroup-wide CPU-time limit.
    pub cpu_rlimit_secs: Option<u64>,
    /// RLIMIT_AS and RLIMIT_STACK for the program, set by the init just before it starts
    /// the program (the init itself, cloned from the monitor, would not fit in them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// See `address_space_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_bytes: Option<u64>,
    /// Standard streams the init opens inside the sandbox.
    #[serde(default, skip_serializing_if = "Redirects::is_empty")]
    pub redirects: Redirects,
    /// The request carries the program's stdout (the launcher's), after its stdin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_fd: bool,
    /// The request carries the program's stderr, after stdin and stdout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_fd: bool,
}

impl ProgramRequest {
    /// The request for `cfg`'s program.
    pub fn for_config(cfg: &SandboxConfig) -> Self {
        ProgramRequest {
            exe: cfg.exe.clone(),
            args: cfg.args.clone(),
            env: cfg.env.clone(),
            cwd: cfg.cwd.clone(),
            cpu_rlimit_secs: cfg.limits.cpu_rlimit_secs(),
            address_space_bytes: cfg.limits.address_space_bytes,
            stack_bytes: cfg.limits.stack_bytes,
            redirects: cfg.redirects.clone(),
            stdout_fd: cfg.stdout == Output::Inherit,
            stderr_fd: cfg.stderr == Output::Inherit,
        }
    }

    /// Sends the request, with the program's streams attached to its first byte: stdin,
    /// then stdout if [`ProgramRequest::stdout_fd`], then stderr if
    /// [`ProgramRequest::stderr_fd`]. The init reads it only once started: call this after
    /// `start`.
    pub fn send(&self, sock: &OwnedFd, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use nix::sys::socket::MsgFlags;
        let body = serde_json::to_vec(self).map_err(io::Error::other)?;
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        let sent = sys::send_with_fds(sock.as_fd(), &frame, fds, false)?;
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

    /// Reads one request from the socket `sock`: the request and its streams (stdin first,
    /// then those the request says were sent).
    pub fn receive(sock: &impl AsFd) -> Result<(Self, Vec<OwnedFd>), String> {
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        let mut streams = Vec::new();
        let mut want = None;
        loop {
            if have == buf.len() {
                // Grow to the announced frame (or by doubling until its header is in).
                let next = want.unwrap_or(buf.len() * 2).max(buf.len() + 1);
                buf.resize(next, 0);
            }
            let (n, fds) = sys::recv_with_fds(sock.as_fd(), &mut buf[have..])
                .map_err(|e| format!("read the program request: {e}"))?;
            streams.extend(fds);
            if n == 0 {
                return Err("the monitor closed the request socket".to_string());
            }
            have += n;
            if want.is_none() && have >= 4 {
                let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_PROGRAM_REQUEST {
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
        let expected = 1 + usize::from(req.stdout_fd) + usize::from(req.stderr_fd);
        if streams.len() != expected {
            return Err(format!(
                "the program request came with {} descriptors, not {expected}",
                streams.len()
            ));
        }
        Ok((req, streams))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn init_status_lines_round_trip_and_split_across_reads() {
        let all = [
            InitStatus::Ready,
            InitStatus::Failed("chdir /x: ENOENT".into()),
            InitStatus::Exited(3),
            InitStatus::Signaled(9),
            InitStatus::Mark {
                label: "spawned".into(),
                us: 12,
            },
            InitStatus::Unknown("bogus".into()),
        ];
        let mut wire = String::new();
        for s in &all {
            let line = s.encode();
            assert_eq!(InitStatus::parse(line.trim_end_matches('\n')), *s);
            wire.push_str(&line);
        }
        let mut lines = StatusLines::default();
        let mut got = Vec::new();
        for chunk in wire.as_bytes().chunks(3) {
            lines.push(chunk);
            while let Some(s) = lines.next_line() {
                got.push(s);
            }
        }
        assert_eq!(got, all);
        assert_eq!(
            InitStatus::parse("exit x"),
            InitStatus::Unknown("exit x".into())
        );
    }

    /// Found by the `proto_frames` fuzz target: a character split across two reads of the
    /// status pipe came out as two replacement characters.
    #[test]
    fn a_character_split_across_reads_of_the_status_pipe_arrives_whole() {
        let wire = "error chdir /tmp/ü: ENOENT\n".as_bytes();
        let split = wire.iter().position(|&b| b == 0xc3).unwrap() + 1;
        let mut lines = StatusLines::default();
        lines.push(&wire[..split]);
        assert_eq!(lines.next_line(), None);
        lines.push(&wire[split..]);
        assert_eq!(
            lines.next_line(),
            Some(InitStatus::Failed("chdir /tmp/ü: ENOENT".into()))
        );
    }

    /// The status pipe is the init's, but its bytes are bounded anyway: an endless line
    /// keeps at most one line's worth buffered and comes out as unknown, and the lines after
    /// it parse as usual.
    #[test]
    fn an_endless_status_line_stays_bounded() {
        let mut lines = StatusLines::default();
        for _ in 0..4096 {
            lines.push(&[b'x'; 512]);
            assert!(lines.bytes.len() <= MAX_STATUS_LINE + 512);
            assert_eq!(lines.next_line(), None);
        }
        lines.push(b"xx\nexit 3\n");
        assert!(matches!(lines.next_line(), Some(InitStatus::Unknown(_))));
        assert_eq!(lines.next_line(), Some(InitStatus::Exited(3)));
        assert_eq!(lines.next_line(), None);
    }

    /// An unlinked temporary file holding `text`, positioned at its start.
    fn temp_with(text: &str) -> std::fs::File {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rb-proto-{}-{n}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.rewind().unwrap();
        file
    }

    fn contents(fd: OwnedFd) -> String {
        let mut text = String::new();
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn a_program_request_crosses_the_socket_whole_with_its_streams() {
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
            address_space_bytes: Some(64 << 20),
            stack_bytes: None,
            redirects: Redirects {
                stdout: Some("/box/out".into()),
                stderr_to_stdout: true,
                ..Redirects::default()
            },
            stdout_fd: false,
            stderr_fd: true,
        };
        let stdin = OwnedFd::from(temp_with("the stdin"));
        let stderr = OwnedFd::from(temp_with("the stderr"));
        let sender = {
            let req = req.clone();
            std::thread::spawn(move || req.send(&monitor, &[stdin.as_fd(), stderr.as_fd()]))
        };
        let (got, fds) = ProgramRequest::receive(&init).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got, req);
        let texts: Vec<String> = fds.into_iter().map(contents).collect();
        assert_eq!(texts, ["the stdin", "the stderr"]);
    }

    #[test]
    fn a_truncated_or_oversized_request_is_an_error_not_a_hang() {
        let too_big = u32::try_from(MAX_PROGRAM_REQUEST + 1).unwrap();
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &too_big.to_le_bytes()).unwrap();
        assert!(ProgramRequest::receive(&init)
            .unwrap_err()
            .contains("too large"));
        let (monitor, init) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&monitor, &[10, 0, 0, 0, b'{']).unwrap();
        drop(monitor);
        assert!(ProgramRequest::receive(&init)
            .unwrap_err()
            .contains("closed"));
    }
}
