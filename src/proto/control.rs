//! The messages of a sandbox's control channel: what a controller asks a sandbox's monitor
//! on `<sandbox dir>/control` (start, signal, pause, resume, figures) and what it answers,
//! one response per request, framed by [`super::frame`] after a [`super::frame::Hello`]
//! each way. Both ends use these (the monitor's server, `monitor/control.rs`; the
//! controller's client, `controller/control.rs`); pure data.

use serde::{Deserialize, Serialize};

use super::exec::ExecProcess;
use super::WireError;

/// Bound on one control frame's document: requests and answers are a few hundred bytes.
pub(crate) const MAX_CONTROL_FRAME: usize = 64 << 10;

/// Bound on a frame the monitor accepts from a client: an exec request carries an
/// environment and arguments.
pub(crate) const MAX_EXEC_FRAME: usize = 1 << 20;

/// What a controller asks a sandbox's monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ControlRequest {
    /// Start the program of a created sandbox.
    Start,
    /// Send `signal` to the sandbox's init (a created sandbox is ended by any signal).
    Kill {
        /// The signal number.
        signal: i32,
    },
    /// Freeze every process of the sandbox.
    Pause,
    /// Thaw a paused sandbox.
    Resume,
    /// The sandbox's live figures.
    Stats,
    /// Run a further process in the running sandbox, through its init. Descriptors: stdin,
    /// then stdout and stderr where inherited ([`ExecProcess::fd_count`]). Answered with
    /// [`ControlResponse::ExecStarted`] once the init has the request.
    Exec {
        /// What to run.
        process: ExecProcess,
    },
    /// Send `signal` to exec `exec`'s process group (nothing if it has ended).
    ExecKill {
        /// Which exec.
        exec: u64,
        /// The signal number.
        signal: i32,
    },
    /// Waits for exec `exec`'s end: answered with [`ControlResponse::ExecExited`] once its
    /// verdict is written (`execs/<n>/exit.json`, which outlives the monitor and any
    /// controller); the connection's later requests are answered after it.
    ExecWait {
        /// Which exec.
        exec: u64,
    },
}

/// The monitor's answer to one [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ControlResponse {
    /// Done as asked.
    Done,
    /// Refused or failed, with why (`invalid_state` for a request the sandbox's state does
    /// not allow, `invalid_config` for one the monitor cannot read).
    Failed(WireError),
    /// The answer to [`ControlRequest::Stats`].
    Stats(Stats),
    /// The exec runs, with this number (its files are `execs/<n>/`).
    ExecStarted {
        /// Its number.
        exec: u64,
    },
    /// The exec has ended; its verdict is written (`execs/<n>/exit.json`; verdicts carry
    /// output and may be larger than a control frame).
    ExecExited {
        /// Its number.
        exec: u64,
    },
}

/// A running sandbox's live figures, read from its cgroup by its monitor
/// ([`crate::Sandbox::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// CPU time of every process of the sandbox so far (user and system), microseconds.
    pub cpu_time_us: u64,
    /// User-mode CPU time, microseconds.
    pub cpu_user_us: u64,
    /// Kernel-mode CPU time, microseconds.
    pub cpu_system_us: u64,
    /// Memory charged to the sandbox now, bytes.
    pub memory_bytes: u64,
    /// The most memory charged to it at once so far, bytes (0 where the kernel does not
    /// keep it: cgroup v2 before Linux 5.19).
    pub memory_peak_bytes: u64,
    /// Processes (tasks) in the sandbox now.
    pub pids: u64,
    /// Bytes read from block devices.
    pub block_read_bytes: u64,
    /// Bytes written to block devices.
    pub block_write_bytes: u64,
    /// The sandbox is paused (frozen).
    pub paused: bool,
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::error::ErrorKind;
    use crate::host::sys;
    use crate::proto::frame::{self, Hello, ProtoError, Reader};

    #[test]
    fn every_message_survives_the_frame() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        let requests = [
            ControlRequest::Start,
            ControlRequest::Kill { signal: 15 },
            ControlRequest::Pause,
            ControlRequest::Resume,
            ControlRequest::Stats,
        ];
        for r in &requests {
            frame::send_bounded(a.as_fd(), r, &[], MAX_CONTROL_FRAME).unwrap();
        }
        let responses = [
            ControlResponse::Done,
            ControlResponse::Failed(WireError {
                kind: ErrorKind::InvalidState,
                message: "sandbox x is created".into(),
                causes: vec!["a cause".into()],
            }),
            ControlResponse::Stats(Stats {
                cpu_time_us: 3,
                memory_bytes: 4096,
                paused: true,
                ..Stats::default()
            }),
        ];
        for r in &responses {
            frame::send_bounded(a.as_fd(), r, &[], MAX_CONTROL_FRAME).unwrap();
        }
        let mut reader = Reader::bounded(b, MAX_CONTROL_FRAME);
        for r in &requests {
            assert_eq!(&reader.recv_plain::<ControlRequest>().unwrap(), r);
        }
        for r in &responses {
            assert_eq!(&reader.recv_plain::<ControlResponse>().unwrap(), r);
        }
    }

    #[test]
    fn an_unknown_request_is_a_decode_error_and_the_channel_goes_on() {
        let (a, b) = sys::stream_socket_pair().unwrap();
        frame::send(a.as_fd(), &serde_json::json!({"reboot": {}}), &[]).unwrap();
        frame::send(a.as_fd(), &ControlRequest::Pause, &[]).unwrap();
        let mut reader = Reader::bounded(b, MAX_CONTROL_FRAME);
        assert!(matches!(
            reader.recv_plain::<ControlRequest>(),
            Err(ProtoError::Decode(_))
        ));
        assert_eq!(
            reader.recv_plain::<ControlRequest>().unwrap(),
            ControlRequest::Pause
        );
        // The hello's shape is not a request's.
        frame::send(a.as_fd(), &Hello::ours(), &[]).unwrap();
        assert!(reader.recv_plain::<ControlRequest>().is_err());
    }
}
