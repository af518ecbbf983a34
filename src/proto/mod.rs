//! Every message that crosses a process boundary, each with its encoder and parser side by
//! side: the monitor's command line, the controller's requests to the spare factory and to a
//! spare, the monitor's reports, the program request to the container's init and the init's
//! statuses (`init.rs`). Both ends of each channel use these; nothing else formats or splits
//! them.
//!
//! ```text
//! controller ──argv: MonitorArgs──────────────▶ monitor / spare / factory
//! controller ──socket: FactoryRequest + 2 fds─▶ factory
//! controller ──socket: SpareRequest lines─────▶ spare (`park` first: it leaves, to wait in
//!                                               the state root)
//! controller ──socket: take line + fds────────▶ parked spare (claimed: report pipe, streams)
//! controller ──socket: StreamFds + fds────────▶ exec'd monitor (inherited streams)
//! monitor    ──pipe: Report lines (JSON)──────▶ controller
//! monitor    ──socket: InitRequest frames + fds▶ container init (the program, then execs)
//! init       ──pipe: InitStatus frames────────▶ monitor
//! ```

pub(crate) mod control;
pub(crate) mod exec;
pub(crate) mod frame;
mod init;

pub(crate) use init::{
    ExecEnd, InitRequest, InitStatus, ProgramRequest, StatusFrames, MAX_EXECS, MAX_PROGRAM_REQUEST,
};

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

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
}
