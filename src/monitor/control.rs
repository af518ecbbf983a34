//! The monitor's control server: the listening socket `<sandbox dir>/control` and its
//! connections, served from inside the monitor's single-threaded poll loops (the created
//! phase's wait for start, and supervision). Each loop adds [`Server::poll_fds`] to its poll
//! set and hands what became ready to [`Server::handle`] with the phase's [`Handler`], which
//! is the one place requests are answered. Sockets are non-blocking, buffers bounded, the
//! number of clients bounded; a client that breaks the protocol or does not read its
//! answers is dropped, and none can block the monitor. A connection that owes its hello or
//! the rest of a frame it began is closed after [`IDLE_TIMEOUT`], and a listener whose
//! `accept` fails for want of descriptors or memory rests for [`ACCEPT_BACKOFF`] instead of
//! waking the loop at once again: each loop adds [`Server::deadline`] to its poll timeout and
//! calls [`Server::tick`] after each poll. Runs in the sandbox's monitor.

use std::fs;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::host::cgroup::{Cgroup, CpuUsage};
use crate::host::sys;
use crate::layout::{Layout, CONTROL_SOCKET};
use crate::proto::control::{ControlRequest, ControlResponse, Stats, MAX_CONTROL_FRAME};
use crate::proto::frame::{self, FrameBuffer, Hello, ProtoError};
use crate::proto::WireError;

/// Most clients served at once; further connections are closed at once. Each exec's handle
/// keeps the connection it was started on, waiting for its end, so there is room for one per
/// exec ([`crate::proto::MAX_EXECS`]) and as many again for everything else.
pub(super) const MAX_CLIENTS: usize = 2 * crate::proto::MAX_EXECS;

/// Most answer bytes a client may leave unread before it is dropped.
const MAX_UNREAD: usize = 256 << 10;

/// Most reads from one client per event, so that one busy client cannot starve the loop.
const READS_PER_EVENT: usize = 4;

/// How long a connection may owe its hello, the rest of a frame it began, or (once it closed
/// its side) the taking of its last answers, before it is closed: a client that says nothing
/// must not hold one of the [`MAX_CLIENTS`] slots for ever. One idle between requests (a
/// follower of stats) or waiting for an answer given later (an exec's end) has no deadline.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the listener is not polled after `accept` failed for want of descriptors or
/// memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): the connection stays queued and the listener
/// readable, so polling it at once again would spin the monitor's loop.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which connection asked: for an answer given later ([`Server::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClientId(u64);

/// What a phase of the monitor does with a request. Requests that carry descriptors (the
/// exec slice's) get them in `fds`; others drop them.
pub(super) trait Handler {
    /// Answers `request`.
    fn handle(&mut self, request: ControlRequest, fds: Vec<OwnedFd>) -> ControlResponse;

    /// Answers `request` of `client` now, or later (`None`): then the server reads nothing
    /// more from that client until [`Server::answer`] gives the answer, so each connection's
    /// answers keep the order of its requests (a wait for a process's end, say).
    fn handle_from(
        &mut self,
        _client: ClientId,
        request: ControlRequest,
        fds: Vec<OwnedFd>,
    ) -> Option<ControlResponse> {
        Some(self.handle(request, fds))
    }
}

/// The failure answer of `kind` with `message`.
pub(super) fn failed(kind: ErrorKind, message: impl Into<String>) -> ControlResponse {
    ControlResponse::Failed(WireError::from(&Error::new(kind, message)))
}

/// The `invalid_state` answer: the sandbox is not in a state for the request.
pub(super) fn invalid_state(message: impl Into<String>) -> ControlResponse {
    failed(ErrorKind::InvalidState, message)
}

/// The answer to `stats`: the cgroup's live figures, CPU time since `cpu_baseline` (the
/// cgroup's usage before start, libcontainer's setup), `paused` as the monitor knows it.
pub(super) fn stats(cgroup: &Cgroup, cpu_baseline: CpuUsage, paused: bool) -> ControlResponse {
    match cgroup.live() {
        Ok(live) => {
            let cpu = live.cpu.since(cpu_baseline);
            let stats = Stats {
                cpu_time_us: cpu.total_us,
                cpu_user_us: cpu.user_us,
                cpu_system_us: cpu.system_us,
                memory_bytes: live.memory_bytes,
                memory_peak_bytes: live.memory_peak_bytes,
                pids: live.pids,
                block_read_bytes: live.block_read_bytes,
                block_write_bytes: live.block_write_bytes,
                paused,
            };
            ControlResponse::Stats(stats)
        }
        Err(e) => failed(ErrorKind::Io, format!("read the sandbox's cgroup: {e}")),
    }
}

/// One connection.
struct Client {
    id: ClientId,
    sock: UnixStream,
    buf: FrameBuffer,
    /// Its hello came and was answered.
    greeted: bool,
    /// Encoded answers not yet taken by the client.
    out: Vec<u8>,
    /// Drop it once `out` is flushed (it broke the protocol, or closed its side).
    closing: bool,
    /// Drop it now.
    dead: bool,
    /// A request of it waits for an answer given later.
    awaiting: bool,
    /// When it is closed unless it goes on ([`IDLE_TIMEOUT`]).
    deadline: Option<Instant>,
}

impl Client {
    /// A new connection: it owes its hello from `now`.
    fn new(id: ClientId, sock: UnixStream, max_frame: usize, now: Instant, idle: Duration) -> Self {
        Client {
            id,
            sock,
            buf: FrameBuffer::new(max_frame),
            greeted: false,
            out: Vec::new(),
            closing: false,
            dead: false,
            awaiting: false,
            deadline: Some(now + idle),
        }
    }

    /// Arms or clears its idle deadline after it was served at `now`: one that owes its hello,
    /// the rest of a frame or (closing) the taking of its answers has until the moment that
    /// began plus `idle` (more bytes of the same frame do not extend it); one waiting for an
    /// answer given later, or idle between requests, has none.
    fn rearm(&mut self, now: Instant, idle: Duration) {
        let owes = !self.awaiting && (!self.greeted || !self.buf.is_empty() || self.closing);
        if owes {
            self.deadline.get_or_insert(now + idle);
        } else {
            self.deadline = None;
        }
    }

    fn queue(&mut self, msg: &impl serde::Serialize) {
        match frame::encode(msg, MAX_CONTROL_FRAME) {
            Ok(bytes) => self.out.extend_from_slice(&bytes),
            Err(e) => {
                eprintln!("runbox monitor: encode a control answer: {e}");
                self.dead = true;
            }
        }
        if self.out.len() > MAX_UNREAD {
            self.dead = true;
        }
    }

    /// Writes what it can of the pending answers without blocking.
    fn flush(&mut self) {
        while !self.out.is_empty() && !self.dead {
            match sys::send_with_fds(self.sock.as_fd(), &self.out, &[], true) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.dead = true,
            }
        }
        if self.out.is_empty() && self.closing {
            self.dead = true;
        }
    }

    /// Reads what arrived and answers each complete frame.
    fn serve(&mut self, handler: &mut dyn Handler) {
        for _ in 0..READS_PER_EVENT {
            if self.closing || self.dead || self.awaiting {
                return;
            }
            match self.buf.fill_from_socket(self.sock.as_fd()) {
                Ok(true) => {}
                Ok(false) => {
                    // The client closed its side: answer what came, then drop it.
                    self.closing = true;
                }
                Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
            self.answer(handler);
        }
    }

    /// Answers every complete frame in the buffer.
    fn answer(&mut self, handler: &mut dyn Handler) {
        while !self.dead && !self.awaiting {
            if !self.greeted {
                match self.buf.next::<Hello>() {
                    Ok(None) => return,
                    Ok(Some(hello)) => {
                        self.deadline = None;
                        // Answered also to a peer of another version, so it learns why.
                        self.queue(&Hello::ours());
                        if hello.msg.check().is_err() || !hello.fds.is_empty() {
                            self.closing = true;
                            return;
                        }
                        self.greeted = true;
                    }
                    Err(_) => {
                        self.dead = true;
                        return;
                    }
                }
                continue;
            }
            match self.buf.next::<ControlRequest>() {
                Ok(None) => return,
                Ok(Some(r)) => {
                    self.deadline = None;
                    match handler.handle_from(self.id, r.msg, r.fds) {
                        Some(answer) => self.queue(&answer),
                        None => self.awaiting = true,
                    }
                }
                Err(ProtoError::Decode(e)) => {
                    // The frame was whole and is gone: the channel goes on.
                    self.deadline = None;
                    self.queue(&failed(
                        ErrorKind::InvalidConfig,
                        format!("not a control request of this runbox: {e}"),
                    ));
                }
                Err(e @ ProtoError::TooLarge { .. }) => {
                    self.queue(&failed(ErrorKind::InvalidConfig, e.to_string()));
                    self.closing = true;
                    return;
                }
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }
}

/// True if the peer of `sock` hung up or the socket failed (a poll that asks for nothing).
fn hung_up(sock: &UnixStream) -> bool {
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::empty())];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

/// The listening socket and its connections.
pub(super) struct Server {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    max_frame: usize,
    next_id: u64,
    /// The listener is not polled until then (`accept` failed for want of resources).
    resting_until: Option<Instant>,
    /// The last `accept` failed so (logged once per spell).
    accept_failing: bool,
    /// [`IDLE_TIMEOUT`], shorter in tests.
    idle: Duration,
    /// [`MAX_CLIENTS`], fewer in tests.
    max_clients: usize,
}

impl Server {
    /// Binds `<sandbox dir>/control` (mode 0600), non-blocking. Reached through the
    /// directory's descriptor: a socket address holds at most 107 bytes.
    pub fn bind(layout: &Layout) -> Result<Server> {
        let fail = |e: io::Error| {
            Error::with_source(ErrorKind::LaunchFailed, "create the control socket", e)
        };
        let path = layout.control();
        // A socket left by a monitor of this sandbox that died: nobody listens on it.
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        let dir = fs::File::open(&layout.dir).map_err(fail)?;
        let at = format!("/proc/self/fd/{}/{CONTROL_SOCKET}", dir.as_raw_fd());
        let listener = UnixListener::bind(&at).map_err(fail)?;
        let server = Server {
            listener,
            path,
            clients: Vec::new(),
            max_frame: MAX_CONTROL_FRAME,
            next_id: 0,
            resting_until: None,
            accept_failing: false,
            idle: IDLE_TIMEOUT,
            max_clients: MAX_CLIENTS,
        };
        fs::set_permissions(&at, fs::Permissions::from_mode(0o600)).map_err(fail)?;
        server.listener.set_nonblocking(true).map_err(fail)?;
        Ok(server)
    }

    /// Lets requests of up to `max` bytes in (the exec slice's requests carry environments).
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    /// Adds the listener and every connection to a poll set; returns where they are in it.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Range<usize> {
        let start = fds.len();
        // Resting, it stays in the set (the positions do not move) but asks for nothing.
        let listen = if self.resting_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        fds.push(PollFd::new(self.listener.as_fd(), listen));
        for c in &self.clients {
            // One awaiting an answer is not read (its next requests wait their turn).
            let mut flags = if c.awaiting {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            if !c.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.sock.as_fd(), flags));
        }
        start..fds.len()
    }

    /// Serves what became ready: `ready[i]` tells whether the i-th descriptor of
    /// [`Server::poll_fds`] had an event. New connections are accepted, requests answered by
    /// `handler`, answers written as far as the clients take them.
    pub fn handle(&mut self, ready: &[bool], handler: &mut dyn Handler) {
        let known = self.clients.len();
        let now = Instant::now();
        for (i, client) in self.clients.iter_mut().enumerate() {
            if ready.get(i + 1).copied().unwrap_or(false) {
                client.serve(handler);
                client.flush();
                // Not read while it awaits an answer, so only a hang-up (or room for the
                // pending answers) woke it: a hang-up, reported on every poll, ends it.
                if client.awaiting && hung_up(&client.sock) {
                    client.dead = true;
                }
                client.rearm(now, self.idle);
            }
        }
        self.clients.retain(|c| !c.dead);
        debug_assert!(self.clients.len() <= known);
        if self.resting_until.is_none() && ready.first().copied().unwrap_or(false) {
            self.accept(now);
        }
    }

    /// The next moment [`Server::tick`] has something to do: a client's idle deadline, or
    /// the end of the listener's rest. The loop's poll must not sleep past it.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .filter_map(|c| c.deadline)
            .chain(self.resting_until)
            .min()
    }

    /// Does what is due at `now`: closes the connections past their idle deadline, and ends
    /// the listener's rest (the next poll asks for it again). Called after every poll.
    pub fn tick(&mut self, now: Instant) {
        if self.resting_until.is_some_and(|t| t <= now) {
            self.resting_until = None;
        }
        // Closed without a word: it owes a hello or a frame, nothing is answered to it.
        self.clients.retain(|c| c.deadline.is_none_or(|d| d > now));
    }

    /// Accepts what waits; past [`MAX_CLIENTS`] a connection is closed at once.
    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    self.accept_failing = false;
                    if self.clients.len() >= self.max_clients || sock.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: closed
                    }
                    self.next_id += 1;
                    let id = ClientId(self.next_id);
                    let client = Client::new(id, sock, self.max_frame, now, self.idle);
                    self.clients.push(client);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or a connection reset before it was accepted (that one is
                // gone from the queue): the next one may be fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                // EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything else: the connection stays
                // queued and the listener readable; retried after a rest, not at once.
                Err(e) => {
                    if !self.accept_failing {
                        eprintln!(
                            "runbox monitor: accept a control connection: {e} \
                             (retried every {ACCEPT_BACKOFF:?})"
                        );
                    }
                    self.accept_failing = true;
                    self.resting_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Gives `client` the answer [`Handler::handle_from`] left for later, then answers what
    /// it sent meanwhile. False if that client is gone.
    pub fn answer(
        &mut self,
        client: ClientId,
        answer: &ControlResponse,
        handler: &mut dyn Handler,
    ) -> bool {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == client) else {
            return false;
        };
        c.awaiting = false;
        c.queue(answer);
        c.answer(handler);
        c.flush();
        c.rearm(Instant::now(), self.idle);
        self.clients.retain(|c| !c.dead);
        true
    }

    /// Writes what is pending without waiting (before the monitor moves on or ends).
    pub fn flush(&mut self) {
        for c in &mut self.clients {
            c.flush();
        }
        self.clients.retain(|c| !c.dead);
    }
}

impl Drop for Server {
    /// Removes the socket: nobody answers on it any more.
    fn drop(&mut self) {
        self.flush();
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("runbox monitor: remove {}: {e}", self.path.display());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Reader;

    /// Answers every request with `Done`, counting them.
    struct Count(usize);

    impl Handler for Count {
        fn handle(&mut self, request: ControlRequest, _fds: Vec<OwnedFd>) -> ControlResponse {
            self.0 += 1;
            match request {
                ControlRequest::Pause => invalid_state("not running"),
                _ => ControlResponse::Done,
            }
        }
    }

    fn temp_layout() -> Layout {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rb-control-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Layout { dir }
    }

    /// Runs the server's loop until `done` says so (or 10 s pass).
    fn serve_until(server: &mut Server, handler: &mut Count, done: impl Fn(&Count) -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(handler) && std::time::Instant::now() < end {
            let mut fds = Vec::new();
            let range = server.poll_fds(&mut fds);
            let step = std::time::Instant::now() + std::time::Duration::from_millis(20);
            sys::poll_until(&mut fds, Some(step)).unwrap();
            let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
            drop(fds);
            server.handle(&ready, handler);
        }
    }

    fn connect(layout: &Layout) -> UnixStream {
        let dir = fs::File::open(&layout.dir).unwrap();
        UnixStream::connect(format!(
            "/proc/self/fd/{}/{CONTROL_SOCKET}",
            dir.as_raw_fd()
        ))
        .unwrap()
    }

    #[test]
    fn a_client_is_greeted_answered_and_the_socket_goes_with_the_server() {
        let layout = temp_layout();
        let mut server = Server::bind(&layout).unwrap();
        let mode = fs::metadata(layout.control()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sock = connect(&layout);
        let client = std::thread::spawn(move || {
            let mut r = Reader::bounded(sock, MAX_CONTROL_FRAME);
            frame::hello_client(&mut r).unwrap();
            let mut answers = Vec::new();
            for req in [ControlRequest::Start, ControlRequest::Pause] {
                frame::send(r.socket().as_fd(), &req, &[]).unwrap();
                answers.push(r.recv_plain::<ControlResponse>().unwrap());
            }
            // Something that is no request: a typed failure, and the channel goes on.
            frame::send(
                r.socket().as_fd(),
                &serde_json::json!({"format": "c:"}),
                &[],
            )
            .unwrap();
            answers.push(r.recv_plain::<ControlResponse>().unwrap());
            frame::send(r.socket().as_fd(), &ControlRequest::Stats, &[]).unwrap();
            answers.push(r.recv_plain::<ControlResponse>().unwrap());
            answers
        });
        let mut count = Count(0);
        serve_until(&mut server, &mut count, |c| c.0 == 3);
        let answers = client.join().unwrap();
        assert_eq!(answers[0], ControlResponse::Done);
        assert!(
            matches!(&answers[1], ControlResponse::Failed(w) if w.kind == ErrorKind::InvalidState)
        );
        assert!(
            matches!(&answers[2], ControlResponse::Failed(w) if w.kind == ErrorKind::InvalidConfig)
        );
        assert_eq!(answers[3], ControlResponse::Done);
        drop(server);
        assert!(!layout.control().exists());
        fs::remove_dir(&layout.dir).unwrap();
    }

    /// Leaves `Stats` for later; answers the rest at once.
    struct Later(Option<ClientId>);

    impl Handler for Later {
        fn handle(&mut self, _request: ControlRequest, _fds: Vec<OwnedFd>) -> ControlResponse {
            ControlResponse::Done
        }
        fn handle_from(
            &mut self,
            client: ClientId,
            request: ControlRequest,
            fds: Vec<OwnedFd>,
        ) -> Option<ControlResponse> {
            if request == ControlRequest::Stats {
                self.0 = Some(client);
                return None;
            }
            Some(self.handle(request, fds))
        }
    }

    #[test]
    fn an_answer_given_later_keeps_the_order_of_the_connections_answers() {
        let layout = temp_layout();
        let mut server = Server::bind(&layout).unwrap();
        let sock = connect(&layout);
        let mut r = Reader::bounded(sock, MAX_CONTROL_FRAME);
        frame::send(r.socket().as_fd(), &Hello::ours(), &[]).unwrap();
        frame::send(r.socket().as_fd(), &ControlRequest::Stats, &[]).unwrap();
        frame::send(r.socket().as_fd(), &ControlRequest::Pause, &[]).unwrap();
        let mut later = Later(None);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while later.0.is_none() && std::time::Instant::now() < end {
            let mut fds = Vec::new();
            let range = server.poll_fds(&mut fds);
            let step = std::time::Instant::now() + std::time::Duration::from_millis(20);
            sys::poll_until(&mut fds, Some(step)).unwrap();
            let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
            drop(fds);
            server.handle(&ready, &mut later);
        }
        let who = later.0.unwrap();
        assert_eq!(r.recv_plain::<Hello>().unwrap(), Hello::ours());
        // Nothing more until the late answer: the Pause waits behind it.
        r.socket().set_nonblocking(true).unwrap();
        assert!(r.recv_plain::<ControlResponse>().is_err());
        r.socket().set_nonblocking(false).unwrap();
        let late = ControlResponse::Failed(WireError::from(&Error::new(ErrorKind::Io, "late")));
        assert!(server.answer(who, &late, &mut later));
        assert_eq!(r.recv_plain::<ControlResponse>().unwrap(), late);
        assert_eq!(
            r.recv_plain::<ControlResponse>().unwrap(),
            ControlResponse::Done
        );
        // One that hangs up while it awaits its answer is dropped, not polled forever.
        frame::send(r.socket().as_fd(), &ControlRequest::Stats, &[]).unwrap();
        later.0 = None;
        while later.0.is_none() && std::time::Instant::now() < end {
            let mut fds = Vec::new();
            let range = server.poll_fds(&mut fds);
            let step = std::time::Instant::now() + std::time::Duration::from_millis(20);
            sys::poll_until(&mut fds, Some(step)).unwrap();
            let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
            drop(fds);
            server.handle(&ready, &mut later);
        }
        drop(r);
        let mut fds = Vec::new();
        let range = server.poll_fds(&mut fds);
        let step = std::time::Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(sys::poll_until(&mut fds, Some(step)).unwrap(), 1);
        let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
        drop(fds);
        server.handle(&ready, &mut later);
        assert!(server.clients.is_empty());
        assert!(!server.answer(later.0.unwrap(), &ControlResponse::Done, &mut later));
        drop(server);
        fs::remove_dir(&layout.dir).unwrap();
    }

    #[test]
    fn another_version_an_oversized_frame_or_too_many_clients_are_refused_without_blocking() {
        let layout = temp_layout();
        let mut server = Server::bind(&layout).unwrap();
        let mut count = Count(0);

        // Another version: it gets this side's hello, then the end.
        let old = connect(&layout);
        frame::send(old.as_fd(), &Hello { runbox_proto: 1 }, &[]).unwrap();
        frame::send(old.as_fd(), &ControlRequest::Start, &[]).unwrap();
        // An oversized frame after a good hello: a typed failure, then the end.
        let big = connect(&layout);
        frame::send(big.as_fd(), &Hello::ours(), &[]).unwrap();
        nix::unistd::write(&big, &(u32::MAX).to_le_bytes()).unwrap();
        // A client that says nothing holds a slot but blocks nobody.
        let silent = connect(&layout);
        let (old_r, big_r) = (old.try_clone().unwrap(), big.try_clone().unwrap());
        let readers = std::thread::spawn(move || {
            let mut old = Reader::bounded(old_r, MAX_CONTROL_FRAME);
            let hello = old.recv_plain::<Hello>().unwrap();
            let after = old.recv_plain::<ControlResponse>();
            let mut big = Reader::bounded(big_r, MAX_CONTROL_FRAME);
            big.recv_plain::<Hello>().unwrap();
            let refusal = big.recv_plain::<ControlResponse>().unwrap();
            let end = big.recv_plain::<ControlResponse>();
            (hello, after, refusal, end)
        });
        let started = std::time::Instant::now();
        serve_until(&mut server, &mut count, |_| readers.is_finished());
        let (hello, after, refusal, end) = readers.join().unwrap();
        assert_eq!(hello, Hello::ours());
        assert!(matches!(after, Err(ProtoError::Closed)), "{after:?}");
        assert!(
            matches!(&refusal, ControlResponse::Failed(w) if w.kind == ErrorKind::InvalidConfig),
            "{refusal:?}"
        );
        assert!(matches!(end, Err(ProtoError::Closed)), "{end:?}");
        assert_eq!(count.0, 0, "no request of theirs reached the handler");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // Past the bound, connections are closed at once (a lower bound than the monitor's,
        // MAX_CLIENTS, which would take more descriptors than a test process may have).
        server.max_clients = server.clients.len() + 6;
        let extra: Vec<UnixStream> = (0..8).map(|_| connect(&layout)).collect();
        let mut fds = Vec::new();
        let range = server.poll_fds(&mut fds);
        let ready = vec![true; range.len()];
        drop(fds);
        server.handle(&ready, &mut count);
        assert_eq!(server.clients.len(), server.max_clients);
        let closed = extra
            .iter()
            .filter(|s| {
                let mut b = [0u8; 1];
                s.set_nonblocking(true).unwrap();
                matches!(nix::unistd::read(s.as_raw_fd(), &mut b), Ok(0))
            })
            .count();
        assert!(closed >= 2, "{closed} closed");
        drop(silent);
        drop(server);
        fs::remove_dir(&layout.dir).unwrap();
    }

    /// The monitor's loop in small: polls until the server's deadline (or `end`), serves,
    /// ticks, until `stop` or `end`. Returns how many polls woke with an event.
    fn run_loop(
        server: &mut Server,
        handler: &mut dyn Handler,
        end: std::time::Instant,
        mut stop: impl FnMut(&Server) -> bool,
    ) -> usize {
        let mut woken = 0;
        while !stop(server) && std::time::Instant::now() < end {
            let mut fds = Vec::new();
            let range = server.poll_fds(&mut fds);
            let until = server.deadline().map_or(end, |d| d.min(end));
            if sys::poll_until(&mut fds, Some(until)).unwrap() > 0 {
                woken += 1;
            }
            let ready: Vec<bool> = fds[range].iter().map(sys::has_event).collect();
            drop(fds);
            server.handle(&ready, handler);
            server.tick(std::time::Instant::now());
        }
        woken
    }

    /// True if the server closed `sock` (end of file once what it was sent is read).
    fn closed_by_server(sock: &UnixStream) -> bool {
        sock.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4096];
        loop {
            match nix::unistd::read(sock.as_raw_fd(), &mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn a_client_that_owes_its_hello_or_a_frame_is_closed_but_not_one_awaiting_an_answer() {
        let layout = temp_layout();
        let mut server = Server::bind(&layout).unwrap();
        server.idle = std::time::Duration::from_millis(300);
        let mut later = Later(None);
        // Connects and says nothing.
        let silent = connect(&layout);
        // Says hello, then stops in the middle of a frame.
        let partial = connect(&layout);
        frame::send(partial.as_fd(), &Hello::ours(), &[]).unwrap();
        nix::unistd::write(&partial, &100u32.to_le_bytes()).unwrap();
        nix::unistd::write(&partial, b"{\"Kill").unwrap();
        // Greeted and idle between requests: it keeps its slot.
        let idle = connect(&layout);
        frame::send(idle.as_fd(), &Hello::ours(), &[]).unwrap();
        // Greeted, waiting for an answer given later (as an exec's wait): it keeps its slot.
        let waiting = connect(&layout);
        frame::send(waiting.as_fd(), &Hello::ours(), &[]).unwrap();
        frame::send(waiting.as_fd(), &ControlRequest::Stats, &[]).unwrap();

        // Every connection is in, and the deadline is armed for the two that owe something.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        run_loop(&mut server, &mut later, end, |s| {
            s.clients.len() == 4 && s.clients.iter().any(|c| c.awaiting)
        });
        assert_eq!(server.clients.len(), 4);
        assert!(server.deadline().is_some());
        // Well past the idle timeout (in the slow guest, too).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        run_loop(&mut server, &mut later, end, |_| false);
        assert!(closed_by_server(&silent), "a silent client keeps its slot");
        assert!(
            closed_by_server(&partial),
            "a client stopped mid-frame keeps its slot"
        );
        assert!(!closed_by_server(&idle));
        assert!(!closed_by_server(&waiting));
        assert_eq!(server.clients.len(), 2);
        assert_eq!(server.deadline(), None, "nothing is owed any more");
        // The one waiting still gets its answer.
        let who = later.0.unwrap();
        assert!(server.answer(who, &ControlResponse::Done, &mut later));
        waiting.set_nonblocking(false).unwrap();
        // (Its hello's answer was read by the check above.)
        let mut r = Reader::bounded(waiting, MAX_CONTROL_FRAME);
        assert_eq!(
            r.recv_plain::<ControlResponse>().unwrap(),
            ControlResponse::Done
        );
        drop(server);
        fs::remove_dir(&layout.dir).unwrap();
    }

    /// Set in the child process [`accept_failing_for_want_of_descriptors_rests_the_listener`]
    /// starts: it alone lowers its descriptor limit.
    const EMFILE_CHILD: &str = "RUNBOX_TEST_CONTROL_EMFILE_CHILD";

    #[test]
    fn accept_failing_for_want_of_descriptors_rests_the_listener() {
        let name = "accept_failing_for_want_of_descriptors_rests_the_listener";
        if std::env::var_os(EMFILE_CHILD).is_none() {
            // The descriptor limit is the process's: run the test in a child of its own.
            let path = module_path!().split_once("::").unwrap().1;
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &format!("{path}::{name}"), "--test-threads=1"])
                .arg("--nocapture")
                .env(EMFILE_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "the child: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let layout = temp_layout();
        let mut server = Server::bind(&layout).unwrap();
        let mut count = Count(0);
        let client = connect(&layout);
        frame::send(client.as_fd(), &Hello::ours(), &[]).unwrap();
        // Use up every descriptor: the queued connection cannot be accepted (EMFILE).
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 256.min(hard), hard).unwrap();
        let mut fillers = Vec::new();
        loop {
            match fs::File::open("/dev/null") {
                Ok(f) => fillers.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("open /dev/null: {e}"),
            }
        }
        let end = std::time::Instant::now() + std::time::Duration::from_millis(600);
        let woken = run_loop(&mut server, &mut count, end, |_| false);
        // Once per rest of 100 ms at most (and some slack); without the rest, thousands.
        assert!(woken <= 15, "the loop woke {woken} times in 600 ms");
        assert!(server.clients.is_empty());
        // Descriptors again: the connection waiting in the queue is taken and greeted.
        drop(fillers);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        run_loop(&mut server, &mut count, end, |s| {
            s.clients
                .first()
                .is_some_and(|c| c.greeted && c.out.is_empty())
        });
        let mut r = Reader::bounded(client, MAX_CONTROL_FRAME);
        assert_eq!(r.recv_plain::<Hello>().unwrap(), Hello::ours());
        drop(server);
        fs::remove_dir(&layout.dir).unwrap();
    }
}
