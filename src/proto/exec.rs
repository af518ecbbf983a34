//! What a controller asks of an exec (a further process in a running sandbox): the part of
//! the control channel's `Exec` request that the monitor turns into the init's
//! [`super::InitRequest::Exec`]. Pure data, used by the controller's client and the
//! monitor's exec table.

use serde::{Deserialize, Serialize};

/// Where an exec's stdout or stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExecStream {
    /// Captured by the monitor into the exec's directory, within the exec's output cap.
    Capture,
    /// A descriptor the request brings (the caller's own stream): not captured, not capped.
    Inherit,
}

/// One exec, as a controller asks for it. The request brings its stdin as its first
/// descriptor, then stdout if [`ExecStream::Inherit`], then stderr if so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecProcess {
    /// The program: a path inside the sandbox, or a name looked up in `PATH`.
    pub program: String,
    /// argv, `argv[0]` included.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs laid over the sandbox's environment.
    pub env: Vec<String>,
    /// The working directory inside the sandbox; the sandbox's own if `None`.
    pub cwd: Option<String>,
    /// CPU-time limit of the process, milliseconds (enforced as `RLIMIT_CPU`, whole seconds
    /// rounded up).
    pub cpu_time_ms: Option<u64>,
    /// Wall-time limit, milliseconds (paused spans do not count).
    pub wall_time_ms: Option<u64>,
    /// Cap on captured stdout and stderr together; the sandbox's output limit if `None`.
    pub output_bytes: Option<u64>,
    /// Where stdout goes.
    pub stdout: ExecStream,
    /// Where stderr goes.
    pub stderr: ExecStream,
}

impl ExecProcess {
    /// How many descriptors the request brings: stdin, and each inherited stream.
    pub fn fd_count(&self) -> usize {
        1 + usize::from(self.stdout == ExecStream::Inherit)
            + usize::from(self.stderr == ExecStream::Inherit)
    }
}
