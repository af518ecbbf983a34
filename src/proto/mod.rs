//! Every message that crosses a process boundary, each a serde type on the one frame
//! ([`frame`]) with its sender and receiver side by side: the monitor's command line, the
//! controller's requests to the spare factory and to a spare, the take after a claim of a
//! parked spare, an exec'd monitor's inherited streams and the monitor's reports
//! (`launch.rs`), the requests to the container's init (the program, then execs) and the
//! init's statuses (`init.rs`), the control channel of a running sandbox (`control.rs`,
//! `exec.rs`). Both ends of each channel use these; nothing else formats or splits them.
//!
//! ```text
//! controller ──argv: MonitorArgs (version in argv[1])──▶ monitor / spare / factory
//! controller ──socket: Hello, FactoryRequest + 2 fds──▶ factory
//! controller ──socket: Hello, SpareRequest (+ fds)────▶ spare (`Park` first: it leaves, to
//!                                                      wait in the state root)
//! controller ◀─socket: hello_client / hello_server───▶ parked spare, then Take + fds
//! controller ──socket: Hello, StreamFds + fds─────────▶ exec'd monitor (inherited streams,
//!                                                      then the work dirs' mount trees)
//! monitor    ──pipe: Report frames────────────────────▶ controller
//! monitor    ──socket: InitRequest frames + fds──────▶ container init (program, execs)
//! init       ──pipe: InitStatus frames────────────────▶ monitor
//! controller ◀─socket: hello, ControlRequest (+ fds)─▶ sandbox monitor (`<dir>/control`)
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
pub(crate) mod exec;
pub(crate) mod frame;
mod init;
pub(crate) mod launch;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

pub(crate) use init::{
    ExecEnd, InitRequest, InitStatus, ProgramRequest, StatusFrames, MAX_EXECS, MAX_PROGRAM_REQUEST,
};

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

/// Files with descriptors to pass in the channels' unit tests: one home for the helpers.
#[cfg(test)]
pub(crate) mod test_files {
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::fd::OwnedFd;

    /// An unlinked temporary file holding `text`, positioned at its start.
    pub fn temp_with(text: &str) -> File {
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

    /// What the file behind `fd` holds, from its start.
    pub fn contents(fd: OwnedFd) -> String {
        let mut text = String::new();
        let mut file = File::from(fd);
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        text
    }
}
