//! The controller's client of a sandbox's control socket: connect to `<sandbox dir>/control`,
//! exchange hellos, then one response per request on the same connection. It waits for an
//! answer only while the monitor lives (checked by pid and start time). Runs in the
//! controller.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::host::proc::ProcIdentity;
use crate::layout::{Layout, CONTROL_SOCKET};
use crate::proto::control::{ControlRequest, ControlResponse, MAX_CONTROL_FRAME};
use crate::proto::frame::{self, Hello, ProtoError, Reader};

/// How often a wait for an answer checks that the monitor still lives.
const LIVENESS_STEP: Duration = Duration::from_millis(500);

/// Longest wait for one answer from a live monitor (a pause may wait for the kernel to
/// freeze every process; the slow emulated guest is slower still).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Nobody listens: no socket (a monitor not yet or no longer serving, or one of an older
    /// runbox), or a socket left by a dead monitor.
    #[error("no monitor listens on the control socket: {0}")]
    NotListening(io::Error),
    /// The monitor died, or closed the connection (it ended), before answering.
    #[error("the monitor went away before answering")]
    Gone,
    /// The monitor lives but did not answer in time.
    #[error("the monitor did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The channel broke (another protocol version, an undecodable answer…).
    #[error(transparent)]
    Proto(ProtoError),
}

/// A failed connect: nobody listens (no socket, or one whose monitor died), or this side
/// failed (out of descriptors, say), which says nothing of the monitor.
fn not_listening(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotListening(e),
        _ => ClientError::Proto(e.into()),
    }
}

/// A connection to a sandbox's monitor, past the hello.
#[derive(Debug)]
pub(crate) struct Client {
    reader: Reader<UnixStream>,
    monitor: Option<ProcIdentity>,
}

impl Client {
    /// Connects to the control socket of the sandbox at `layout` and exchanges hellos.
    /// `monitor` is the monitor's recorded identity, for the liveness checks while waiting.
    pub fn connect(layout: &Layout, monitor: Option<ProcIdentity>) -> Result<Client, ClientError> {
        // Through the directory's descriptor: a socket address holds at most 107 bytes.
        let dir = std::fs::File::open(&layout.dir).map_err(not_listening)?;
        let sock = UnixStream::connect(format!(
            "/proc/self/fd/{}/{CONTROL_SOCKET}",
            dir.as_raw_fd()
        ))
        .map_err(not_listening)?;
        // Reads time out in steps (`recv_by`), checking the monitor's liveness between them.
        let mut client = Client {
            reader: Reader::bounded(sock, MAX_CONTROL_FRAME),
            monitor,
        };
        frame::send(client.reader.socket().as_fd(), &Hello::ours(), &[])
            .map_err(|e| client.broken(e))?;
        let hello: Hello = client.recv()?;
        hello.check().map_err(ClientError::Proto)?;
        Ok(client)
    }

    /// The monitor's recorded identity this client checks while waiting.
    pub fn monitor(&self) -> Option<ProcIdentity> {
        self.monitor
    }

    /// Sends `request` and reads its answer.
    pub fn request(&mut self, request: &ControlRequest) -> Result<ControlResponse, ClientError> {
        frame::send_bounded(
            self.reader.socket().as_fd(),
            request,
            &[],
            MAX_CONTROL_FRAME,
        )
        .map_err(|e| self.broken(e))?;
        self.recv()
    }

    /// Sends `request` with `fds` on its first byte (bounded by `max` bytes of document) and
    /// reads its answer.
    pub fn request_with_fds(
        &mut self,
        request: &ControlRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
        max: usize,
    ) -> Result<ControlResponse, ClientError> {
        frame::send_bounded(self.reader.socket().as_fd(), request, fds, max)
            .map_err(|e| self.broken(e))?;
        self.recv()
    }

    /// Sends `request` without reading its answer (one given later: [`Client::recv_until`]).
    pub fn send(&mut self, request: &ControlRequest) -> Result<(), ClientError> {
        frame::send_bounded(
            self.reader.socket().as_fd(),
            request,
            &[],
            MAX_CONTROL_FRAME,
        )
        .map_err(|e| self.broken(e))
    }

    /// The next answer if it comes before `deadline` (`None` then), waiting while the
    /// monitor lives. A wait cut short leaves the connection usable: the answer is read by a
    /// later call.
    pub fn recv_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<ControlResponse>, ClientError> {
        self.recv_by(deadline)
    }

    /// The next message, waiting while the monitor lives, at most [`ANSWER_WITHIN`].
    fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ClientError> {
        self.recv_by(Instant::now() + ANSWER_WITHIN)?
            .ok_or(ClientError::NoAnswer(ANSWER_WITHIN))
    }

    /// The next message if it comes before `deadline`, reading in steps of at most
    /// [`LIVENESS_STEP`] with a liveness check of the monitor between them.
    fn recv_by<T: serde::de::DeserializeOwned>(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<T>, ClientError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let step = (deadline - now)
                .min(LIVENESS_STEP)
                .max(Duration::from_millis(1));
            self.reader
                .socket()
                .set_read_timeout(Some(step))
                .map_err(|e| ClientError::Proto(e.into()))?;
            match self.reader.recv_plain::<T>() {
                Ok(msg) => return Ok(Some(msg)),
                Err(ProtoError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.monitor.is_some_and(|m| !m.is_alive()) {
                        return Err(ClientError::Gone);
                    }
                }
                Err(e) => return Err(self.broken(e)),
            }
        }
    }

    /// A failed send or receive: the monitor ended (closed or reset), or the channel broke.
    fn broken(&self, e: ProtoError) -> ClientError {
        match &e {
            ProtoError::Closed | ProtoError::Truncated => ClientError::Gone,
            ProtoError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                ClientError::Gone
            }
            _ => ClientError::Proto(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::proto::WireError;
    use std::os::unix::net::UnixListener;

    fn temp_layout() -> Layout {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rb-client-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Layout { dir }
    }

    /// A stand-in monitor: answers the hello with `version`, then each request per `answer`.
    fn serve(
        layout: &Layout,
        version: u32,
        answer: fn(ControlRequest) -> Option<ControlResponse>,
    ) -> std::thread::JoinHandle<Vec<ControlRequest>> {
        let listener = UnixListener::bind(layout.control()).unwrap();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut r = Reader::bounded(sock, MAX_CONTROL_FRAME);
            let _hello: Hello = r.recv_plain().unwrap();
            frame::send(
                r.socket().as_fd(),
                &Hello {
                    runbox_proto: version,
                },
                &[],
            )
            .unwrap();
            let mut seen = Vec::new();
            while let Ok(req) = r.recv_plain::<ControlRequest>() {
                seen.push(req.clone());
                match answer(req) {
                    Some(a) => frame::send(r.socket().as_fd(), &a, &[]).unwrap(),
                    None => break, // hang up without answering
                }
            }
            seen
        })
    }

    #[test]
    fn requests_get_their_answers_on_one_connection() {
        let layout = temp_layout();
        let server = serve(&layout, frame::PROTO_VERSION, |req| {
            Some(match req {
                ControlRequest::Resume => ControlResponse::Failed(WireError {
                    kind: ErrorKind::InvalidState,
                    message: "not paused".into(),
                    causes: Vec::new(),
                }),
                _ => ControlResponse::Done,
            })
        });
        let mut c = Client::connect(&layout, ProcIdentity::own().ok()).unwrap();
        assert_eq!(
            c.request(&ControlRequest::Kill { signal: 15 }).unwrap(),
            ControlResponse::Done
        );
        assert!(matches!(
            c.request(&ControlRequest::Resume).unwrap(),
            ControlResponse::Failed(w) if w.kind == ErrorKind::InvalidState
        ));
        drop(c);
        assert_eq!(
            server.join().unwrap(),
            [ControlRequest::Kill { signal: 15 }, ControlRequest::Resume]
        );
        std::fs::remove_dir_all(&layout.dir).unwrap();
    }

    #[test]
    fn no_listener_another_version_or_a_hang_up_are_told_apart() {
        let layout = temp_layout();
        assert!(matches!(
            Client::connect(&layout, None),
            Err(ClientError::NotListening(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        let server = serve(&layout, frame::PROTO_VERSION + 1, |_| None);
        assert!(matches!(
            Client::connect(&layout, None),
            Err(ClientError::Proto(ProtoError::Version { .. }))
        ));
        server.join().unwrap();
        std::fs::remove_file(layout.control()).unwrap();
        // A socket nobody listens on any more (its monitor died).
        drop(UnixListener::bind(layout.control()).unwrap());
        assert!(matches!(
            Client::connect(&layout, None),
            Err(ClientError::NotListening(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED)
        ));
        std::fs::remove_file(layout.control()).unwrap();
        let server = serve(&layout, frame::PROTO_VERSION, |_| None);
        let mut c = Client::connect(&layout, None).unwrap();
        assert!(matches!(
            c.request(&ControlRequest::Stats),
            Err(ClientError::Gone)
        ));
        server.join().unwrap();
        std::fs::remove_dir_all(&layout.dir).unwrap();
    }
}
