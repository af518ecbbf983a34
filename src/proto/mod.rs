//! Every message that crosses a process boundary, each with its encoder and parser side by
//! side: the monitor's command line, the controller's requests to the spare factory and to a
//! spare, the monitor's reports, the program request to the container's init and the init's
//! status lines. Both ends of each channel use these; nothing else formats or splits them.
//!
//! ```text
//! controller ──argv: MonitorArgs──────────────▶ monitor / spare / factory
//! controller ──socket: FactoryRequest + 2 fds─▶ factory
//! controller ──socket: SpareRequest lines─────▶ spare (`park` first: it leaves, to wait in
//!                                               the state root)
//! controller ──socket: take line + fds────────▶ parked spare (claimed: report pipe, streams)
//! controller ──socket: StreamFds + fds────────▶ exec'd monitor (inherited streams)
//! monitor    ──pipe: Report lines (JSON)──────▶ controller
//! monitor    ──socket: ProgramRequest + fds───▶ container init
//! init       ──pipe: InitStatus lines─────────▶ monitor
//! ```

pub(crate) mod control;
pub(crate) mod frame;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Output, Redirects, SandboxConfig};
use crate::error::{Error, ErrorKind};
use crate::host::proc::ProcIdentity;
use crate::host::state::ExitRecord;
use crate::host::sys;

/// `argv[1]` that turns a host binary into a runbox monitor (see [`crate::monitor_main`]).
pub(crate) const MONITOR_ARG: &str = "--runbox-monitor-v1";

/// Whether a monitor starts the program at once or waits for `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Create and start.
    Run,
    /// Create, then wait for a write to the start FIFO.
    Create,
}

impl Mode {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Create => "create",
        }
    }

    fn parse(word: &str) -> Option<Mode> {
        match word {
            "run" => Some(Mode::Run),
            "create" => Some(Mode::Create),
            _ => None,
        }
    }
}

/// What a monitor process is started to be: its command line after `argv[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MonitorArgs {
    /// `MONITOR_ARG SANDBOX_DIR run|create`: the monitor of one sandbox.
    Sandbox {
        /// The sandbox directory.
        dir: PathBuf,
        /// Run at once, or wait for start.
        mode: Mode,
    },
    /// `MONITOR_ARG ROOT spare PREFIX`: an exec'd spare monitor (requests on stdin).
    Spare {
        /// The state root.
        root: PathBuf,
        /// The root's cgroup prefix.
        prefix: String,
    },
    /// `MONITOR_ARG ROOT factory PREFIX`: the spare factory (fork requests on stdin).
    Factory {
        /// The state root.
        root: PathBuf,
        /// The root's cgroup prefix.
        prefix: String,
    },
    /// `MONITOR_ARG DIR ping`: start, fork, detach, answer [`Report::Pong`] (benchmarks).
    #[cfg(feature = "bench")]
    Ping,
}

impl MonitorArgs {
    /// The arguments after `argv[0]`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from(MONITOR_ARG)];
        match self {
            MonitorArgs::Sandbox { dir, mode } => {
                args.push(dir.clone().into_os_string());
                args.push(mode.as_str().into());
            }
            MonitorArgs::Spare { root, prefix } | MonitorArgs::Factory { root, prefix } => {
                let word = if matches!(self, MonitorArgs::Spare { .. }) {
                    "spare"
                } else {
                    "factory"
                };
                args.push(root.clone().into_os_string());
                args.push(word.into());
                args.push(prefix.into());
            }
            #[cfg(feature = "bench")]
            MonitorArgs::Ping => {
                args.push("/".into());
                args.push("ping".into());
            }
        }
        args
    }

    /// Parses a whole `argv` (with `argv[0]`); `None` unless `argv[1]` is [`MONITOR_ARG`].
    pub fn parse(argv: &[OsString]) -> Option<Result<MonitorArgs, String>> {
        if argv.get(1).map(OsString::as_os_str) != Some(OsStr::new(MONITOR_ARG)) {
            return None;
        }
        let path = argv.get(2).map(PathBuf::from);
        let word = argv.get(3).and_then(|w| w.to_str());
        let prefix = argv.get(4).and_then(|p| p.to_str()).map(str::to_string);
        let parsed = match (path, word, prefix) {
            (Some(root), Some("spare"), Some(prefix)) => Ok(MonitorArgs::Spare { root, prefix }),
            (Some(root), Some("factory"), Some(prefix)) => {
                Ok(MonitorArgs::Factory { root, prefix })
            }
            #[cfg(feature = "bench")]
            (Some(_), Some("ping"), None) => Ok(MonitorArgs::Ping),
            (Some(dir), Some(w), None) => Mode::parse(w)
                .map(|mode| MonitorArgs::Sandbox { dir, mode })
                .ok_or_else(|| format!("unknown monitor mode {w:?}")),
            _ => Err(format!(
                "usage: {MONITOR_ARG} SANDBOX_DIR run|create, or ROOT spare|factory PREFIX"
            )),
        };
        Some(parsed)
    }
}

/// The one message the spare factory takes: fork a spare whose request socket and report
/// pipe are the two descriptors sent with it (`SCM_RIGHTS`).
pub(crate) struct FactoryRequest;

impl FactoryRequest {
    /// The bytes of the message.
    pub const WIRE: &'static [u8] = b"spare\n";

    /// True if `bytes` (received with exactly two descriptors) is the message.
    pub fn is(bytes: &[u8]) -> bool {
        bytes == Self::WIRE
    }
}

/// Largest [`SpareRequest`] line: it must go whole into the socket's buffer, since the
/// controller never blocks on a spare.
pub(crate) const MAX_SPARE_LINE: usize = 64 * 1024;

/// A line a controller writes to a spare monitor's request socket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpareRequest {
    /// `warm CGROUP_PATH CONFIG_JSON` (optional, first): build a container of this build
    /// shape in this cgroup ahead of time.
    Warm {
        /// The cgroup to build in, `/<prefix>/_warm-…`.
        cgroup_path: String,
        /// The build shape ([`SandboxConfig::build_shape`]).
        shape: Box<SandboxConfig>,
    },
    /// `park PARK_JSON` (only as the first line): leave the controller and become a parked
    /// spare of the state root, which any controller process may claim (`monitor/parked.rs`).
    Park(Box<Park>),
    /// `run|create SANDBOX_DIR`: become that sandbox's monitor.
    Take {
        /// Run at once, or wait for start.
        mode: Mode,
        /// The sandbox directory.
        dir: PathBuf,
    },
}

impl SpareRequest {
    /// The line, newline included.
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        Ok(match self {
            SpareRequest::Warm { cgroup_path, shape } => {
                format!("warm {cgroup_path} {}\n", serde_json::to_string(shape)?)
            }
            SpareRequest::Park(park) => format!("park {}\n", serde_json::to_string(park)?),
            SpareRequest::Take { mode, dir } => format!("{} {}\n", mode.as_str(), dir.display()),
        })
    }

    /// Parses a line (with or without its newline).
    pub fn parse(line: &str) -> Result<SpareRequest, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "warm" {
            let (cgroup_path, json) = rest
                .split_once(' ')
                .ok_or_else(|| "warm line without a shape".to_string())?;
            let shape = serde_json::from_str(json).map_err(|e| format!("warm shape: {e}"))?;
            return Ok(SpareRequest::Warm {
                cgroup_path: cgroup_path.to_string(),
                shape: Box::new(shape),
            });
        }
        if word == "park" {
            let park = serde_json::from_str(rest).map_err(|e| format!("park: {e}"))?;
            return Ok(SpareRequest::Park(Box::new(park)));
        }
        match (Mode::parse(word), rest.is_empty()) {
            (Some(mode), false) => Ok(SpareRequest::Take {
                mode,
                dir: PathBuf::from(rest),
            }),
            _ => Err(format!("unknown spare request {line:?}")),
        }
    }
}

/// What a parked spare is asked to be: a container of `shape` built ahead, under the
/// spare's own name, waiting at most `idle_ms` for a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Park {
    /// The build shape ([`SandboxConfig::build_shape`]).
    pub shape: SandboxConfig,
    /// The root's uid range (first, count): the spare leases its container's uid itself
    /// when the shape asks for one of the range.
    pub uid_range: (u32, u32),
    /// How long the spare waits for a claim before it tears its container down and exits.
    pub idle_ms: u64,
    /// The release generation when the spare was started: once its directory exists, a
    /// spare that finds another leaves (a release came meanwhile and could not see it).
    pub generation: u64,
}

/// The line an exec'd monitor reads on its stdin (a socket) when its sandbox inherits some
/// of the launcher's descriptors ([`SandboxConfig::inherited_streams`]), which come with it
/// as `SCM_RIGHTS`, in the order 0, 1, 2. A spare gets them with its [`SpareRequest::Take`]
/// line instead.
pub(crate) struct StreamFds;

impl StreamFds {
    /// The bytes of the line.
    pub const WIRE: &'static [u8] = b"streams\n";

    /// Sends the line with `fds` on `sock`.
    pub fn send(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        match sys::send_with_fds(sock, Self::WIRE, fds, true)? {
            n if n == Self::WIRE.len() => Ok(()),
            _ => Err(io::Error::other("streams line sent in part")),
        }
    }

    /// Reads the line from `lines` and returns the `count` descriptors sent with it.
    pub fn receive(lines: &mut LineReader<'_>, count: usize) -> Result<Vec<OwnedFd>, String> {
        match lines.next_line() {
            Ok(Some(line)) if line.as_bytes() == Self::WIRE => {}
            Ok(Some(line)) => return Err(format!("expected the streams line, got {line:?}")),
            Ok(None) => return Err("the launcher closed the socket before the streams".into()),
            Err(e) => return Err(format!("read the streams: {e}")),
        }
        let fds = lines.take_fds();
        if fds.len() != count {
            return Err(format!("{} descriptors came, not {count}", fds.len()));
        }
        Ok(fds)
    }
}

/// Reads newline-ended lines from a stream socket with `recvmsg`, keeping the descriptors
/// that come along (a buffered reader's `read` would close them). Descriptors are not tied
/// to a line: the protocols above send them only with the last line a reader takes.
pub(crate) struct LineReader<'a> {
    sock: BorrowedFd<'a>,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl<'a> LineReader<'a> {
    /// A reader of `sock`.
    pub fn new(sock: BorrowedFd<'a>) -> Self {
        LineReader {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The next line, newline included; `None` at end of file (a partial last line is
    /// dropped). Lines longer than [`MAX_SPARE_LINE`] are an error.
    pub fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_SPARE_LINE {
                return Err(io::Error::other("line too long"));
            }
            let mut chunk = [0u8; 16 * 1024];
            match sys::recv_with_fds(self.sock, &mut chunk) {
                Ok((0, _)) => return Ok(None),
                Ok((n, fds)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.fds.extend(fds);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptors received so far, in order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

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

/// One line the monitor writes to its controller over its stdout pipe (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The container is built and waits for `start` (create mode).
    Created {
        /// The monitor's identity.
        monitor: ProcIdentity,
    },
    /// The program is running; the monitor is this process.
    Started {
        /// The monitor's identity.
        monitor: ProcIdentity,
    },
    /// The run ended (sandboxes removed on exit): the result, sent before cleanup.
    Exited {
        /// The exit record, as also written to `exit.json`.
        record: Box<ExitRecord>,
    },
    /// Answer to [`MonitorArgs::Ping`].
    #[cfg(feature = "bench")]
    Pong,
    /// The launch failed and everything was rolled back.
    Failed {
        /// The error.
        error: WireError,
    },
}

impl Report {
    /// The line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        // A report is plain data: encoding cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parses one line; `None` if it is not a report.
    pub fn parse(line: &str) -> Option<Report> {
        serde_json::from_str(line).ok()
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
    fn monitor_args_round_trip() {
        let cases = [
            MonitorArgs::Sandbox {
                dir: "/run/runbox/a".into(),
                mode: Mode::Run,
            },
            MonitorArgs::Sandbox {
                dir: "/r/b c".into(),
                mode: Mode::Create,
            },
            MonitorArgs::Spare {
                root: "/r".into(),
                prefix: "runbox".into(),
            },
            MonitorArgs::Factory {
                root: "/r".into(),
                prefix: "p/q".into(),
            },
        ];
        for args in cases {
            let mut argv = vec![OsString::from("exe")];
            argv.extend(args.to_args());
            assert_eq!(MonitorArgs::parse(&argv), Some(Ok(args)));
        }
        let argv: Vec<OsString> = ["exe", "run"].iter().map(OsString::from).collect();
        assert_eq!(MonitorArgs::parse(&argv), None, "not a monitor");
        let argv: Vec<OsString> = ["exe", MONITOR_ARG, "/d", "dance"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(matches!(MonitorArgs::parse(&argv), Some(Err(_))));
    }

    #[test]
    fn spare_requests_round_trip() {
        let shape = SandboxConfig::for_tests().build_shape();
        let warm = SpareRequest::Warm {
            cgroup_path: "/runbox/_warm-1-2-3".into(),
            shape: Box::new(shape),
        };
        let take = SpareRequest::Take {
            mode: Mode::Create,
            dir: "/run/runbox/my box".into(),
        };
        let park = SpareRequest::Park(Box::new(Park {
            shape: SandboxConfig::for_tests().build_shape(),
            uid_range: (60000, 1000),
            idle_ms: 60_000,
            generation: 3,
        }));
        for req in [warm, take, park] {
            let line = req.encode().unwrap();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(SpareRequest::parse(&line).unwrap(), req);
        }
        for bad in ["", "warm /x", "warm /x {", "run", "dance /x", "park {}"] {
            assert!(SpareRequest::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FactoryRequest::is(FactoryRequest::WIRE));
        assert!(!FactoryRequest::is(b"spare"));
    }

    #[test]
    fn reports_round_trip_with_typed_errors() {
        let me = ProcIdentity {
            pid: 7,
            start_time: 9,
        };
        let line = Report::Started { monitor: me }.encode();
        assert!(matches!(
            Report::parse(std::str::from_utf8(&line).unwrap()),
            Some(Report::Started { monitor }) if monitor == me
        ));
        let err = Error::with_source(
            ErrorKind::LaunchFailed,
            "copy /etc/hosts to /bin/x",
            io::Error::other("a symlink"),
        );
        let line = Report::Failed {
            error: WireError::from(&err),
        }
        .encode();
        let Some(Report::Failed { error }) = Report::parse(std::str::from_utf8(&line).unwrap())
        else {
            panic!("not a failure report");
        };
        let back = Error::from(error);
        assert_eq!(back.kind(), ErrorKind::LaunchFailed);
        assert_eq!(
            back.chain(),
            "launch_failed: copy /etc/hosts to /bin/x: a symlink"
        );
        assert!(Report::parse("{\"event\":\"nonsense\"}").is_none());
    }

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
    fn streams_sent_with_a_spare_line_arrive_with_it_after_a_warm_line() {
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        let warm = SpareRequest::Warm {
            cgroup_path: "/runbox/_warm-1".into(),
            shape: Box::new(SandboxConfig::for_tests()),
        };
        let take = SpareRequest::Take {
            mode: Mode::Run,
            dir: "/run/runbox/a b".into(),
        };
        let (a, b) = (temp_with("zero"), temp_with("one"));
        sys::send_with_fds(
            controller.as_fd(),
            warm.encode().unwrap().as_bytes(),
            &[],
            false,
        )
        .unwrap();
        sys::send_with_fds(
            controller.as_fd(),
            take.encode().unwrap().as_bytes(),
            &[a.as_fd(), b.as_fd()],
            false,
        )
        .unwrap();
        // Both lines are queued before the first read: the descriptors must survive it.
        let mut lines = LineReader::new(spare.as_fd());
        let first = lines.next_line().unwrap().unwrap();
        assert_eq!(SpareRequest::parse(&first).unwrap(), warm);
        let second = lines.next_line().unwrap().unwrap();
        assert_eq!(SpareRequest::parse(&second).unwrap(), take);
        let fds = lines.take_fds();
        assert_eq!(fds.len(), 2);
        let texts: Vec<String> = fds.into_iter().map(contents).collect();
        assert_eq!(texts, ["zero", "one"]);
        drop(controller);
        assert!(lines.next_line().unwrap().is_none(), "end of file");
    }

    #[test]
    fn a_streams_line_brings_exactly_its_descriptors() {
        let (controller, monitor) = sys::stream_socket_pair().unwrap();
        let out = temp_with("");
        StreamFds::send(controller.as_fd(), &[out.as_fd()]).unwrap();
        let mut lines = LineReader::new(monitor.as_fd());
        let fds = StreamFds::receive(&mut lines, 1).unwrap();
        assert_eq!(fds.len(), 1);
        StreamFds::send(controller.as_fd(), &[out.as_fd()]).unwrap();
        let err = StreamFds::receive(&mut lines, 2).unwrap_err();
        assert!(err.contains("not 2"), "{err}");
        drop(controller);
        assert!(StreamFds::receive(&mut lines, 1)
            .unwrap_err()
            .contains("closed"));
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
