//! The channels between a controller and the monitor processes it starts, each message a
//! serde type on the one frame ([`super::frame`]): the monitor's command line (the one
//! message not framed: it is argv, and carries the protocol version in its first word), the
//! spare factory's fork requests, a spare's requests (warm, park, take), the take that
//! follows a claim of a parked spare, an exec'd monitor's inherited streams, and the
//! monitor's reports. Both ends use these; nothing else formats or parses them. Pure
//! protocol: used by the controller and by every monitor role.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::frame::{self, FrameBuffer, Hello, ProtoError, Reader, Received, PROTO_VERSION};
use super::WireError;
use crate::config::SandboxSpec;
use crate::host::proc::ProcIdentity;
use crate::host::state::ExitRecord;
use crate::host::sys;

/// The first word of `argv[1]` that turns a host binary into a runbox monitor (see
/// [`crate::monitor_main`]); the protocol version follows it ([`monitor_arg`]).
pub(crate) const MONITOR_ARG_PREFIX: &str = "--runbox-monitor-v";

/// `argv[1]` of a monitor of this binary's protocol version: `--runbox-monitor-v2`.
pub(crate) fn monitor_arg() -> String {
    format!("{MONITOR_ARG_PREFIX}{PROTO_VERSION}")
}

/// Whether a monitor starts the program at once or waits for `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    /// Create and start.
    Run,
    /// Create, then wait for a write to the start FIFO.
    Create,
}

impl Mode {
    /// The word on the command line.
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
        let mut args = vec![OsString::from(monitor_arg())];
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

    /// Parses a whole `argv` (with `argv[0]`); `None` unless `argv[1]` is a monitor's first
    /// word ([`MONITOR_ARG_PREFIX`] and a version). A monitor's command line of another
    /// protocol version (a controller of another runbox exec'd this binary) is
    /// [`ProtoError::Version`]; one this version does not know is [`ProtoError::Unexpected`].
    pub fn parse(argv: &[OsString]) -> Option<Result<MonitorArgs, ProtoError>> {
        let first = argv.get(1)?.as_bytes();
        let version = first.strip_prefix(MONITOR_ARG_PREFIX.as_bytes())?;
        let theirs: u32 = std::str::from_utf8(version).ok()?.parse().ok()?;
        if theirs != PROTO_VERSION {
            return Some(Err(ProtoError::Version {
                ours: PROTO_VERSION,
                theirs,
            }));
        }
        let path = argv.get(2).map(PathBuf::from);
        let word = argv.get(3).and_then(|w| w.to_str());
        let prefix = argv.get(4).and_then(|p| p.to_str()).map(str::to_string);
        let parsed = match (path, word, prefix, argv.len()) {
            (Some(root), Some("spare"), Some(prefix), 5) => Ok(MonitorArgs::Spare { root, prefix }),
            (Some(root), Some("factory"), Some(prefix), 5) => {
                Ok(MonitorArgs::Factory { root, prefix })
            }
            #[cfg(feature = "bench")]
            (Some(_), Some("ping"), None, 4) => Ok(MonitorArgs::Ping),
            (Some(dir), Some(w), None, 4) => Mode::parse(w)
                .map(|mode| MonitorArgs::Sandbox { dir, mode })
                .ok_or_else(|| ProtoError::Unexpected(format!("unknown monitor mode {w:?}"))),
            _ => Err(ProtoError::Unexpected(format!(
                "usage: {} SANDBOX_DIR run|create, or ROOT spare|factory PREFIX",
                monitor_arg()
            ))),
        };
        Some(parsed)
    }
}

/// Sends `msg` whole on the stream socket `sock` with `fds` without blocking: the
/// controller never waits for a spare or the factory. A frame that does not fit the
/// socket's buffer now is an error (and the peer sees a cut frame, which ends it).
fn send_now(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
    max: usize,
) -> Result<(), ProtoError> {
    if fds.len() > frame::MAX_FDS {
        return Err(ProtoError::Descriptors(format!(
            "{} descriptors in one frame, at most {}",
            fds.len(),
            frame::MAX_FDS
        )));
    }
    let bytes = frame::encode(msg, max)?;
    match sys::send_with_fds(sock, &bytes, fds, true)? {
        n if n == bytes.len() => Ok(()),
        n => Err(ProtoError::Io(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{n} of a frame's {} bytes fit the socket", bytes.len()),
        ))),
    }
}

/// Opens a one-way channel (the controller writes, never waiting): its [`Hello`], sent
/// without blocking. The receiver checks it with [`expect_hello`] and hangs up on a
/// mismatch.
pub(crate) fn send_hello(sock: BorrowedFd<'_>) -> Result<(), ProtoError> {
    send_now(sock, &Hello::ours(), &[], frame::MAX_FRAME)
}

/// The receiving end of a one-way channel: its first frame must be a [`Hello`] of this
/// protocol version.
pub(crate) fn expect_hello<F: AsFd>(reader: &mut Reader<F>) -> Result<(), ProtoError> {
    reader.recv_plain::<Hello>()?.check()
}

/// The one message the spare factory takes: fork a spare whose request socket and report
/// pipe are the two descriptors sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FactoryRequest {
    /// Fork a spare.
    Spare,
}

/// Largest factory request frame (it is a word).
pub(crate) const MAX_FACTORY_FRAME: usize = 64;

impl FactoryRequest {
    /// Sends the request with the new spare's `request` socket end and `report` pipe end,
    /// without blocking.
    pub fn send(
        sock: BorrowedFd<'_>,
        request: BorrowedFd<'_>,
        report: BorrowedFd<'_>,
    ) -> Result<(), ProtoError> {
        send_now(
            sock,
            &FactoryRequest::Spare,
            &[request, report],
            MAX_FACTORY_FRAME,
        )
    }

    /// The descriptors of a received request: exactly the request socket and report pipe.
    pub fn descriptors(got: Received<FactoryRequest>) -> Result<[OwnedFd; 2], ProtoError> {
        let count = got.fds.len();
        got.fds
            .try_into()
            .map_err(|_| ProtoError::Descriptors(format!("{count} descriptors, not 2")))
    }
}

/// Largest [`SpareRequest`] frame: it must go whole into the socket's buffer, since the
/// controller never blocks on a spare.
pub(crate) const MAX_SPARE_FRAME: usize = 64 * 1024;

/// A message a controller writes to a spare monitor's request socket, after its [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum SpareRequest {
    /// Optional, first: build a container of this sandbox spec in this cgroup ahead of time.
    Warm {
        /// The cgroup to build in, `/<prefix>/_warm-…`.
        cgroup_path: String,
        /// The sandbox spec to build (a leased uid: the one leased for the container).
        shape: Box<SandboxSpec>,
    },
    /// Only first: leave the controller and become a parked spare of the state root, which
    /// any controller process may claim (`monitor/parked.rs`).
    Park(Box<Park>),
    /// Become this sandbox's monitor. Descriptors: a claimed parked spare's report pipe
    /// first (a spare started by its controller has its own), then the launcher's streams
    /// the sandbox inherits ([`crate::config::RunSpec::inherited_streams`]), in the order 0,
    /// 1, 2, then one detached mount tree per read-write bind, in order (attached to the
    /// container at start).
    Take {
        /// Run at once, or wait for start.
        mode: Mode,
        /// The sandbox directory.
        dir: PathBuf,
    },
}

impl SpareRequest {
    /// Sends the request with `fds` without blocking (see [`MAX_SPARE_FRAME`]).
    pub fn send(&self, sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        send_now(sock, self, fds, MAX_SPARE_FRAME)
    }

    /// A reader of a spare's request socket, bounded to [`MAX_SPARE_FRAME`].
    pub fn reader<F: AsFd>(sock: F) -> Reader<F> {
        Reader::bounded(sock, MAX_SPARE_FRAME)
    }
}

/// What a parked spare is asked to be: a container of `shape` built ahead, under the
/// spare's own name, waiting at most `idle_ms` for a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Park {
    /// The sandbox spec's shape ([`SandboxSpec::shape`]).
    pub shape: SandboxSpec,
    /// The root's uid range (first, count): the spare leases its container's uid itself
    /// when the shape asks for one of the range.
    pub uid_range: (u32, u32),
    /// How long the spare waits for a claim before it tears its container down and exits.
    pub idle_ms: u64,
    /// The release generation when the spare was started: once its directory exists, a
    /// spare that finds another leaves (a release came meanwhile and could not see it).
    pub generation: u64,
}

/// The message an exec'd monitor reads on its stdin (a socket), after the [`Hello`], when
/// its sandbox inherits some of the launcher's descriptors
/// ([`crate::config::RunSpec::inherited_streams`]), which come with it in the order 0, 1, 2,
/// or has read-write binds (one detached mount tree each follows the streams). A spare gets
/// them with its [`SpareRequest::Take`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamFds {
    /// How many descriptors come with the message.
    pub count: usize,
}

/// Largest [`StreamFds`] frame.
const MAX_STREAMS_FRAME: usize = 256;

impl StreamFds {
    /// Opens the channel and sends the streams `fds` on `sock` without blocking (a small
    /// message into an empty socket buffer).
    pub fn send(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        send_hello(sock)?;
        let msg = StreamFds { count: fds.len() };
        send_now(sock, &msg, fds, MAX_STREAMS_FRAME)
    }

    /// Reads the hello and the message from `sock` and returns exactly `wanted`
    /// descriptors.
    pub fn receive(sock: BorrowedFd<'_>, wanted: usize) -> Result<Vec<OwnedFd>, ProtoError> {
        let mut reader = Reader::bounded(sock, MAX_STREAMS_FRAME);
        expect_hello(&mut reader)?;
        let got = reader.recv::<StreamFds>()?;
        if got.msg.count != got.fds.len() || got.fds.len() != wanted {
            return Err(ProtoError::Descriptors(format!(
                "{} descriptors came, announced {}, wanted {wanted}",
                got.fds.len(),
                got.msg.count
            )));
        }
        Ok(got.fds)
    }
}

/// One message the monitor writes to its controller over its stdout pipe.
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
    /// Writes the report as one frame to `w` (the monitor's stdout).
    pub fn write(&self, w: &mut impl io::Write) -> Result<(), ProtoError> {
        frame::write(w, self)?;
        w.flush()?;
        Ok(())
    }
}

/// The controller's end of a monitor's report pipe: frames in, [`Report`]s out.
#[derive(Debug)]
pub(crate) struct ReportReader {
    pipe: File,
    buf: FrameBuffer,
}

impl ReportReader {
    /// A reader of the pipe's read end.
    pub fn new(pipe: File) -> Self {
        ReportReader {
            pipe,
            buf: FrameBuffer::new(frame::MAX_FRAME),
        }
    }

    /// The pipe (to poll it, or to tell whether a writer is left).
    pub fn pipe(&self) -> &File {
        &self.pipe
    }

    /// The pipe, for a caller that only waits for its end of file.
    pub fn into_pipe(self) -> File {
        self.pipe
    }

    /// Reads once (blocking if nothing is there); false at end of file.
    pub fn fill(&mut self) -> Result<bool, ProtoError> {
        self.buf.fill_from_pipe(self.pipe.as_fd())
    }

    /// The next report already read, if a whole one has arrived.
    pub fn next(&mut self) -> Result<Option<Report>, ProtoError> {
        Ok(self.buf.next::<Report>()?.map(|r| r.msg))
    }

    /// The next report, waiting for it; [`ProtoError::Closed`] at a clean end of file.
    pub fn recv(&mut self) -> Result<Report, ProtoError> {
        loop {
            if let Some(report) = self.next()? {
                return Ok(report);
            }
            if !self.fill()? {
                return Err(if self.buf.is_empty() {
                    ProtoError::Closed
                } else {
                    ProtoError::Truncated
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;
    use crate::error::{Error, ErrorKind};
    use crate::proto::test_files::{contents, temp_with};
    use std::io::Write;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn monitor_args_round_trip_and_carry_the_protocol_version() {
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
            assert_eq!(
                argv[1],
                OsString::from(format!("--runbox-monitor-v{PROTO_VERSION}"))
            );
            assert!(matches!(MonitorArgs::parse(&argv), Some(Ok(a)) if a == args));
        }
        assert!(
            MonitorArgs::parse(&argv(&["exe", "run"])).is_none(),
            "not a monitor"
        );
        assert!(matches!(
            MonitorArgs::parse(&argv(&["exe", &monitor_arg(), "/d", "dance"])),
            Some(Err(ProtoError::Unexpected(_)))
        ));
        // The command line an older controller (protocol 1) would exec this binary with.
        let old = MonitorArgs::parse(&argv(&["exe", "--runbox-monitor-v1", "/d", "run"]));
        let Some(Err(err)) = old else {
            panic!("another version's monitor arguments accepted: {old:?}")
        };
        assert!(
            matches!(err, ProtoError::Version { theirs: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 1"), "{err}");
    }

    #[test]
    fn a_spare_reads_its_hello_then_requests_with_their_own_descriptors() {
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        let warm = SpareRequest::Warm {
            cgroup_path: "/runbox/_warm-1".into(),
            shape: Box::new(SandboxConfig::for_tests().sandbox),
        };
        let take = SpareRequest::Take {
            mode: Mode::Run,
            dir: "/run/runbox/a b".into(),
        };
        let (a, b) = (temp_with("zero"), temp_with("one"));
        // All queued before the first read: each frame keeps its own descriptors.
        send_hello(controller.as_fd()).unwrap();
        warm.send(controller.as_fd(), &[]).unwrap();
        take.send(controller.as_fd(), &[a.as_fd(), b.as_fd()])
            .unwrap();
        let mut reader = SpareRequest::reader(spare.as_fd());
        expect_hello(&mut reader).unwrap();
        let first = reader.recv::<SpareRequest>().unwrap();
        assert_eq!((first.msg, first.fds.len()), (warm, 0));
        let second = reader.recv::<SpareRequest>().unwrap();
        assert_eq!(second.msg, take);
        let texts: Vec<String> = second.fds.into_iter().map(contents).collect();
        assert_eq!(texts, ["zero", "one"]);
        drop(controller);
        assert!(matches!(
            reader.recv::<SpareRequest>(),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn a_park_request_round_trips_and_a_spare_refuses_another_version() {
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        let park = SpareRequest::Park(Box::new(Park {
            shape: SandboxConfig::for_tests().sandbox.shape(),
            uid_range: (60000, 1000),
            idle_ms: 60_000,
            generation: 3,
        }));
        send_hello(controller.as_fd()).unwrap();
        park.send(controller.as_fd(), &[]).unwrap();
        let mut reader = SpareRequest::reader(spare.as_fd());
        expect_hello(&mut reader).unwrap();
        assert_eq!(reader.recv_plain::<SpareRequest>().unwrap(), park);

        // A controller of protocol 1 (or a stray writer): the spare learns why it hangs up.
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        frame::send(controller.as_fd(), &Hello { runbox_proto: 1 }, &[]).unwrap();
        let mut reader = SpareRequest::reader(spare.as_fd());
        assert!(matches!(
            expect_hello(&mut reader),
            Err(ProtoError::Version { theirs: 1, .. })
        ));
        // Requests in the old line format are not a hello either.
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&controller, b"run /run/runbox/x\n").unwrap();
        drop(controller);
        let err = expect_hello(&mut SpareRequest::reader(spare.as_fd())).unwrap_err();
        assert!(
            matches!(err, ProtoError::TooLarge { .. } | ProtoError::Truncated),
            "{err}"
        );
    }

    #[test]
    fn a_request_too_large_for_the_spare_socket_is_refused_before_sending() {
        let (controller, spare) = sys::stream_socket_pair().unwrap();
        let mut shape = SandboxConfig::for_tests().sandbox;
        shape.hostname = "x".repeat(MAX_SPARE_FRAME);
        let warm = SpareRequest::Warm {
            cgroup_path: "/runbox/_warm-1".into(),
            shape: Box::new(shape),
        };
        assert!(matches!(
            warm.send(controller.as_fd(), &[]),
            Err(ProtoError::TooLarge { .. })
        ));
        // Nothing was sent: the spare sees a clean end of file.
        drop(controller);
        assert!(matches!(
            SpareRequest::reader(spare.as_fd()).recv::<SpareRequest>(),
            Err(ProtoError::Closed)
        ));
    }

    /// A claim of a parked spare: a round-trip handshake, then the take with the report
    /// pipe and the streams; a claimer of another version is refused by the spare, and
    /// learns why.
    #[test]
    fn a_claim_shakes_hands_then_hands_over_its_descriptors() {
        let (claimer, spare) = sys::stream_socket_pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut reader = SpareRequest::reader(spare.as_fd());
            frame::hello_server(&mut reader)?;
            reader.recv::<SpareRequest>().map(|r| {
                let texts: Vec<String> = r.fds.into_iter().map(contents).collect();
                (r.msg, texts)
            })
        });
        frame::hello_client(&mut Reader::new(claimer.as_fd())).unwrap();
        let take = SpareRequest::Take {
            mode: Mode::Create,
            dir: "/run/runbox/c".into(),
        };
        let (pipe, stdin) = (temp_with("report"), temp_with("stdin"));
        take.send(claimer.as_fd(), &[pipe.as_fd(), stdin.as_fd()])
            .unwrap();
        let (msg, texts) = server.join().unwrap().unwrap();
        assert_eq!(msg, take);
        assert_eq!(texts, ["report", "stdin"]);

        let (claimer, spare) = sys::stream_socket_pair().unwrap();
        let server = std::thread::spawn(move || {
            frame::hello_server(&mut SpareRequest::reader(spare.as_fd()))
        });
        frame::send(claimer.as_fd(), &Hello { runbox_proto: 3 }, &[]).unwrap();
        let answer = Reader::new(claimer.as_fd()).recv_plain::<Hello>().unwrap();
        assert_eq!(answer, Hello::ours());
        assert!(matches!(
            server.join().unwrap(),
            Err(ProtoError::Version { theirs: 3, .. })
        ));
    }

    #[test]
    fn a_factory_request_brings_exactly_two_descriptors() {
        let (controller, factory) = sys::stream_socket_pair().unwrap();
        let (x, y) = (temp_with("request"), temp_with("report"));
        send_hello(controller.as_fd()).unwrap();
        FactoryRequest::send(controller.as_fd(), x.as_fd(), y.as_fd()).unwrap();
        frame::send(controller.as_fd(), &FactoryRequest::Spare, &[x.as_fd()]).unwrap();
        frame::send(controller.as_fd(), &"fork", &[]).unwrap();
        let mut reader = Reader::bounded(factory.as_fd(), MAX_FACTORY_FRAME);
        expect_hello(&mut reader).unwrap();
        let got = reader.recv::<FactoryRequest>().unwrap();
        let [a, b] = FactoryRequest::descriptors(got).unwrap();
        assert_eq!(
            (contents(a), contents(b)),
            ("request".into(), "report".into())
        );
        let one = reader.recv::<FactoryRequest>().unwrap();
        assert!(matches!(
            FactoryRequest::descriptors(one),
            Err(ProtoError::Descriptors(_))
        ));
        assert!(matches!(
            reader.recv::<FactoryRequest>(),
            Err(ProtoError::Decode(_))
        ));
        drop(controller);
        assert!(matches!(
            reader.recv::<FactoryRequest>(),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn streams_arrive_with_their_message_and_a_wrong_count_is_typed() {
        let (controller, monitor) = sys::stream_socket_pair().unwrap();
        let out = temp_with("out");
        StreamFds::send(controller.as_fd(), &[out.as_fd()]).unwrap();
        let fds = StreamFds::receive(monitor.as_fd(), 1).unwrap();
        assert_eq!(fds.into_iter().map(contents).collect::<Vec<_>>(), ["out"]);

        let (controller, monitor) = sys::stream_socket_pair().unwrap();
        StreamFds::send(controller.as_fd(), &[out.as_fd()]).unwrap();
        assert!(matches!(
            StreamFds::receive(monitor.as_fd(), 2),
            Err(ProtoError::Descriptors(_))
        ));
        let (controller, monitor) = sys::stream_socket_pair().unwrap();
        drop(controller);
        assert!(matches!(
            StreamFds::receive(monitor.as_fd(), 1),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn reports_cross_the_pipe_as_frames_with_typed_errors() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = File::from(w);
        let me = ProcIdentity {
            pid: 7,
            start_time: 9,
        };
        Report::Started { monitor: me }.write(&mut w).unwrap();
        let err = Error::with_source(
            ErrorKind::LaunchFailed,
            "copy /etc/hosts to /bin/x",
            io::Error::other("a symlink"),
        );
        Report::Failed {
            error: WireError::from(&err),
        }
        .write(&mut w)
        .unwrap();
        drop(w);
        let mut reader = ReportReader::new(File::from(r));
        assert!(matches!(reader.recv(), Ok(Report::Started { monitor }) if monitor == me));
        let Ok(Report::Failed { error }) = reader.recv() else {
            panic!("not a failure report");
        };
        let back = Error::from(error);
        assert_eq!(back.kind(), ErrorKind::LaunchFailed);
        assert_eq!(
            back.chain(),
            "launch_failed: copy /etc/hosts to /bin/x: a symlink"
        );
        assert!(matches!(reader.recv(), Err(ProtoError::Closed)));

        // A frame that is not a report, and one cut by the writer's death.
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = File::from(w);
        frame::write(&mut w, &serde_json::json!({"event": "nonsense"})).unwrap();
        w.write_all(&[10, 0, 0, 0, b'{']).unwrap();
        drop(w);
        let mut reader = ReportReader::new(File::from(r));
        assert!(matches!(reader.recv(), Err(ProtoError::Decode(_))));
        assert!(matches!(reader.recv(), Err(ProtoError::Truncated)));
    }
}
