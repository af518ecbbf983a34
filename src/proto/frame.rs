//! The one frame every message between runbox's processes uses, and the version handshake
//! that opens every channel: a 4-byte little-endian length, then a JSON document of at most
//! a stated size; descriptors ride on the frame's first byte as `SCM_RIGHTS`, at most
//! [`MAX_FDS`] of them, and a message whose descriptors the kernel had to cut is an error.
//! Pure framing: what the documents mean is the business of the channel that uses them.
//!
//! On a stream socket the kernel ends a read right after the data that carried descriptors,
//! and a sender attaches them to the first byte of its frame, so the descriptors of a read
//! belong to the last frame that began in it; descriptors that arrive with no frame
//! beginning are a protocol error.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::host::sys;

/// The protocol version this binary speaks, sent first on every channel ([`Hello`]). Bumped
/// whenever a message changes meaning; peers of another version refuse each other.
pub(crate) const PROTO_VERSION: u32 = 2;

/// Most descriptors one frame may carry.
pub(crate) const MAX_FDS: usize = sys::MAX_FDS_PER_MESSAGE;

/// The default bound on a frame's document (a program request with a large environment is
/// the largest message runbox sends).
pub(crate) const MAX_FRAME: usize = 16 << 20;

/// Bytes of the length prefix.
const HEADER: usize = 4;

/// What can go wrong on a channel, typed so each end can tell a peer that left from a peer
/// that broke the protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtoError {
    /// End of file between frames: the peer closed the channel.
    #[error("the peer closed the channel")]
    Closed,
    /// End of file inside a frame.
    #[error("the peer closed the channel in the middle of a frame")]
    Truncated,
    /// The channel failed (a reset, a descriptor the kernel had to cut…).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A frame announced (or would need) more than the channel's bound.
    #[error("a frame of {len} bytes is larger than the {max} allowed")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The channel's bound.
        max: usize,
    },
    /// Descriptors that break the framing: too many, or not at a frame's start.
    #[error("descriptors: {0}")]
    Descriptors(String),
    /// A frame whose document is not a message of this channel.
    #[error("an undecodable message: {0}")]
    Decode(#[from] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {theirs}, this binary {ours}")]
    Version {
        /// [`PROTO_VERSION`].
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// A well-formed message that makes no sense here (a reply to a question not asked…).
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// A message with the descriptors that came with it, in the order they were sent.
#[derive(Debug)]
pub(crate) struct Received<T> {
    /// The message.
    pub msg: T,
    /// Its descriptors.
    pub fds: Vec<OwnedFd>,
}

/// The frame of `msg`: length prefix and JSON document, at most `max` bytes of document.
pub(crate) fn encode(msg: &impl Serialize, max: usize) -> Result<Vec<u8>, ProtoError> {
    let mut frame = vec![0u8; HEADER];
    serde_json::to_writer(&mut frame, msg)?;
    let len = frame.len() - HEADER;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| ProtoError::TooLarge { len, max })?;
    frame[..HEADER].copy_from_slice(&prefix.to_le_bytes());
    Ok(frame)
}

/// Sends `msg` on the stream socket `sock` with `fds` on its first byte, whole (a blocking
/// socket; never SIGPIPE).
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtoError> {
    send_bounded(sock, msg, fds, MAX_FRAME)
}

/// [`send`] with a bound of `max` bytes of document.
pub(crate) fn send_bounded(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
    max: usize,
) -> Result<(), ProtoError> {
    if fds.len() > MAX_FDS {
        return Err(ProtoError::Descriptors(format!(
            "{} descriptors in one frame, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let frame = encode(msg, max)?;
    send_frame(sock, &frame, fds)
}

/// Sends an encoded frame (see [`encode`]) whole, `fds` on its first byte.
pub(crate) fn send_frame(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtoError> {
    let mut sent = loop {
        match sys::send_with_fds(sock, frame, fds, false) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    while sent < frame.len() {
        match sys::send_with_fds(sock, &frame[sent..], &[], false) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `msg` as one frame to a pipe or file (no descriptors).
pub(crate) fn write(w: &mut impl io::Write, msg: &impl Serialize) -> Result<(), ProtoError> {
    let frame = encode(msg, MAX_FRAME)?;
    w.write_all(&frame)?;
    Ok(())
}

/// Bytes in, frames out: what a reader has received and not yet taken, with the descriptors
/// that came with it. Bounded: it never holds more than one frame of at most its `max`
/// bytes plus one read.
#[derive(Debug)]
pub(crate) struct FrameBuffer {
    max: usize,
    bytes: Vec<u8>,
    /// The stream offset of `bytes[0]` (always a frame's start).
    base: u64,
    /// Descriptors by the stream offset of the frame they came with.
    fds: VecDeque<(u64, Vec<OwnedFd>)>,
    /// A frame too large was announced: the channel is unusable.
    poisoned: bool,
}

impl FrameBuffer {
    /// An empty buffer for frames of at most `max` bytes of document.
    pub fn new(max: usize) -> Self {
        FrameBuffer {
            max,
            bytes: Vec::new(),
            base: 0,
            fds: VecDeque::new(),
            poisoned: false,
        }
    }

    /// True if no byte of a frame is waiting (end of file here is a clean close).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends what one read returned: `bytes`, and the descriptors that came with them,
    /// which belong to the last frame that begins within `bytes`.
    pub fn push(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(), ProtoError> {
        let start = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(bytes);
        if fds.is_empty() {
            return Ok(());
        }
        if fds.len() > MAX_FDS {
            return Err(ProtoError::Descriptors(format!(
                "{} descriptors in one read, at most {MAX_FDS}",
                fds.len()
            )));
        }
        // Walk the frame starts from the first unread one to the end of the bytes.
        let mut at = 0usize;
        let mut last_start = None;
        while at < self.bytes.len() {
            let offset = self.base + at as u64;
            if offset >= start {
                last_start = Some(offset);
            }
            let Some(len) = self.length_at(at) else { break };
            at = at.saturating_add(HEADER).saturating_add(len);
        }
        match last_start {
            Some(offset) if self.fds.back().is_none_or(|(o, _)| *o < offset) => {
                self.fds.push_back((offset, fds));
                Ok(())
            }
            _ => Err(ProtoError::Descriptors(
                "descriptors arrived in the middle of a frame".into(),
            )),
        }
    }

    /// The length announced by the header at `at`, if all of it has arrived.
    fn length_at(&self, at: usize) -> Option<usize> {
        let header = self.bytes.get(at..at + HEADER)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        Some(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// The next complete frame, decoded, with its descriptors; `None` until it has arrived.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Received<T>>, ProtoError> {
        let Some(len) = self.length_at(0) else {
            return Ok(None);
        };
        if len > self.max || self.poisoned {
            self.poisoned = true;
            return Err(ProtoError::TooLarge { len, max: self.max });
        }
        if self.bytes.len() < HEADER + len {
            return Ok(None);
        }
        let fds = match self.fds.front() {
            Some((offset, _)) if *offset == self.base => {
                self.fds.pop_front().map(|(_, fds)| fds).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let decoded = serde_json::from_slice(&self.bytes[HEADER..HEADER + len]);
        self.bytes.drain(..HEADER + len);
        self.base += (HEADER + len) as u64;
        Ok(Some(Received { msg: decoded?, fds }))
    }

    /// Reads once from the stream socket `sock` into the buffer. Returns false at end of
    /// file. A non-blocking socket with nothing to read gives `WouldBlock`.
    pub fn fill_from_socket(&mut self, sock: BorrowedFd<'_>) -> Result<bool, ProtoError> {
        let mut chunk = [0u8; 64 * 1024];
        let (n, fds) = loop {
            match sys::recv_with_fds(sock, &mut chunk) {
                Ok(got) => break got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            // A frame's descriptors come with its bytes: with no byte, nothing came.
            return Ok(false);
        }
        self.push(&chunk[..n], fds)?;
        Ok(true)
    }

    /// Reads once from a pipe or file `fd` into the buffer. Returns false at end of file.
    pub fn fill_from_pipe(&mut self, fd: BorrowedFd<'_>) -> Result<bool, ProtoError> {
        let mut chunk = [0u8; 64 * 1024];
        let n = loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut chunk) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        };
        if n == 0 {
            return Ok(false);
        }
        self.push(&chunk[..n], Vec::new())?;
        Ok(true)
    }
}

/// A blocking reader of frames from a stream socket.
#[derive(Debug)]
pub(crate) struct Reader<F> {
    sock: F,
    buf: FrameBuffer,
}

impl<F: AsFd> Reader<F> {
    /// A reader of `sock` for frames of at most [`MAX_FRAME`] bytes.
    pub fn new(sock: F) -> Self {
        Self::bounded(sock, MAX_FRAME)
    }

    /// A reader of `sock` for frames of at most `max` bytes.
    pub fn bounded(sock: F, max: usize) -> Self {
        Reader {
            sock,
            buf: FrameBuffer::new(max),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &F {
        &self.sock
    }

    /// The next message and its descriptors; [`ProtoError::Closed`] at a clean end of file.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Received<T>, ProtoError> {
        loop {
            if let Some(got) = self.buf.next()? {
                return Ok(got);
            }
            if !self.buf.fill_from_socket(self.sock.as_fd())? {
                return Err(if self.buf.is_empty() {
                    ProtoError::Closed
                } else {
                    ProtoError::Truncated
                });
            }
        }
    }

    /// The next message, which must come without descriptors.
    pub fn recv_plain<T: DeserializeOwned>(&mut self) -> Result<T, ProtoError> {
        let got = self.recv()?;
        if !got.fds.is_empty() {
            return Err(ProtoError::Descriptors(format!(
                "{} unexpected descriptors",
                got.fds.len()
            )));
        }
        Ok(got.msg)
    }

    /// The buffer, for a caller that reads in a poll loop.
    #[allow(dead_code)] // for the control channel's poll loops (issue 22), not yet merged
    pub fn buffer(&mut self) -> &mut FrameBuffer {
        &mut self.buf
    }
}

/// The first frame in each direction of every channel: the sender's protocol version. Its
/// shape never changes, so peers of any two versions can tell each other apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The sender's [`PROTO_VERSION`].
    pub runbox_proto: u32,
}

impl Hello {
    /// This binary's hello.
    pub fn ours() -> Self {
        Hello {
            runbox_proto: PROTO_VERSION,
        }
    }

    /// Checks a peer's hello.
    pub fn check(self) -> Result<(), ProtoError> {
        if self.runbox_proto == PROTO_VERSION {
            Ok(())
        } else {
            Err(ProtoError::Version {
                ours: PROTO_VERSION,
                theirs: self.runbox_proto,
            })
        }
    }
}

/// The connecting side's handshake: sends its hello, reads and checks the peer's.
pub(crate) fn hello_client<F: AsFd>(reader: &mut Reader<F>) -> Result<(), ProtoError> {
    send(reader.socket().as_fd(), &Hello::ours(), &[])?;
    reader.recv_plain::<Hello>()?.check()
}

/// The accepting side's handshake: reads the peer's hello, answers with its own (also to a
/// peer of another version, so it learns why), then checks it.
pub(crate) fn hello_server<F: AsFd>(reader: &mut Reader<F>) -> Result<(), ProtoError> {
    let theirs = reader.recv_plain::<Hello>()?;
    send(reader.socket().as_fd(), &Hello::ours(), &[])?;
    theirs.check()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_files::{contents, temp_with};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        word: String,
        n: u64,
    }

    fn msg(word: &str, n: u64) -> Msg {
        Msg {
            word: word.into(),
            n,
        }
    }

    #[test]
    fn frames_cross_a_socket_with_their_own_descriptors() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let (x, y, z) = (temp_with("x"), temp_with("y"), temp_with("z"));
        // Three frames queued before the first read: each keeps its own descriptors.
        send(a.as_fd(), &msg("first", 1), &[x.as_fd(), y.as_fd()]).unwrap();
        send(a.as_fd(), &msg("second", 2), &[]).unwrap();
        send(a.as_fd(), &msg("third", 3), &[z.as_fd()]).unwrap();
        let mut r = Reader::new(b);
        let one = r.recv::<Msg>().unwrap();
        assert_eq!(one.msg, msg("first", 1));
        let texts: Vec<String> = one.fds.into_iter().map(contents).collect();
        assert_eq!(texts, ["x", "y"]);
        let two = r.recv::<Msg>().unwrap();
        assert_eq!((two.msg, two.fds.len()), (msg("second", 2), 0));
        let three = r.recv::<Msg>().unwrap();
        assert_eq!(three.msg, msg("third", 3));
        assert_eq!(
            three.fds.into_iter().map(contents).collect::<Vec<_>>(),
            ["z"]
        );
        drop(a);
        assert!(matches!(r.recv::<Msg>(), Err(ProtoError::Closed)));
    }

    #[test]
    fn a_frame_larger_than_a_socket_buffer_arrives_whole() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let big = msg(&"ü".repeat(3 << 20), 7);
        let f = temp_with("fd");
        let sender = {
            let big = big.clone();
            std::thread::spawn(move || send(a.as_fd(), &big, &[f.as_fd()]))
        };
        let got = Reader::new(b).recv::<Msg>().unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got.msg, big);
        assert_eq!(got.fds.len(), 1);
    }

    #[test]
    fn more_descriptors_than_a_frame_may_carry_are_refused_by_both_ends() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let files: Vec<std::fs::File> = (0..=MAX_FDS).map(|_| temp_with("")).collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        assert!(matches!(
            send(a.as_fd(), &msg("m", 0), &fds),
            Err(ProtoError::Descriptors(_))
        ));
        // A sender that ignores the bound: the receiver closes what came and says so
        // instead of passing on part of it.
        let frame = encode(&msg("m", 0), MAX_FRAME).unwrap();
        let many: Vec<BorrowedFd<'_>> = files.iter().take(MAX_FDS + 1).map(AsFd::as_fd).collect();
        sys::send_with_fds(a.as_fd(), &frame, &many, false).unwrap();
        let err = Reader::new(b).recv::<Msg>().unwrap_err();
        assert!(
            matches!(&err, ProtoError::Io(e) if e.to_string().contains("more than the 16 allowed")),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_truncated_or_undecodable_frame_is_a_typed_error_not_a_hang() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&a, &(1025u32).to_le_bytes()).unwrap();
        let mut r = Reader::bounded(b, 1024);
        assert!(matches!(
            r.recv::<Msg>(),
            Err(ProtoError::TooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(matches!(
            encode(&msg(&"x".repeat(2000), 0), 1024),
            Err(ProtoError::TooLarge { .. })
        ));
        let (a, b) = sys::stream_socket_pair().unwrap();
        nix::unistd::write(&a, &[10, 0, 0, 0, b'{']).unwrap();
        drop(a);
        assert!(matches!(
            Reader::new(b).recv::<Msg>(),
            Err(ProtoError::Truncated)
        ));
        let (a, b) = sys::stream_socket_pair().unwrap();
        send(a.as_fd(), &"a string, not a Msg", &[]).unwrap();
        assert!(matches!(
            Reader::new(b).recv::<Msg>(),
            Err(ProtoError::Decode(_))
        ));
    }

    #[test]
    fn descriptors_in_the_middle_of_a_frame_break_the_framing() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let frame = encode(&msg("split", 1), MAX_FRAME).unwrap();
        let f = temp_with("");
        // The head without descriptors, the rest with one: not a frame's start.
        sys::send_with_fds(a.as_fd(), &frame[..6], &[], false).unwrap();
        let mut buf = FrameBuffer::new(MAX_FRAME);
        assert!(buf.fill_from_socket(b.as_fd()).unwrap());
        sys::send_with_fds(a.as_fd(), &frame[6..], &[f.as_fd()], false).unwrap();
        assert!(matches!(
            buf.fill_from_socket(b.as_fd()),
            Err(ProtoError::Descriptors(_))
        ));
    }

    #[test]
    fn frames_split_anywhere_across_reads_decode_whole() {
        let mut wire = Vec::new();
        let all = [msg("ü-one", 1), msg("", 2), msg("three", u64::MAX)];
        for m in &all {
            wire.extend(encode(m, MAX_FRAME).unwrap());
        }
        for step in [1, 2, 3, 5, 7, 64] {
            let mut buf = FrameBuffer::new(MAX_FRAME);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                buf.push(chunk, Vec::new()).unwrap();
                while let Some(r) = buf.next::<Msg>().unwrap() {
                    got.push(r.msg);
                }
            }
            assert_eq!(got, all, "chunks of {step}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn frames_cross_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        write(&mut w, &msg("piped", 9)).unwrap();
        drop(w);
        let mut buf = FrameBuffer::new(MAX_FRAME);
        while buf.fill_from_pipe(r.as_fd()).unwrap() {}
        assert_eq!(buf.next::<Msg>().unwrap().unwrap().msg, msg("piped", 9));
    }

    #[test]
    fn the_handshake_admits_the_same_version_and_names_another() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let server = std::thread::spawn(move || hello_server(&mut Reader::new(b)));
        hello_client(&mut Reader::new(a)).unwrap();
        server.join().unwrap().unwrap();

        // A peer of another version (an older monitor, a newer controller): both ends learn
        // which versions met.
        let (a, b) = sys::stream_socket_pair().unwrap();
        let server = std::thread::spawn(move || hello_server(&mut Reader::new(b)));
        send(a.as_fd(), &Hello { runbox_proto: 1 }, &[]).unwrap();
        let answer = Reader::new(a.try_clone().unwrap())
            .recv_plain::<Hello>()
            .unwrap();
        assert_eq!(answer, Hello::ours());
        assert!(matches!(
            server.join().unwrap(),
            Err(ProtoError::Version { theirs: 1, .. })
        ));
    }
}
