//! The public error type: a small, stable set of kinds plus the detailed cause.

use std::fmt;
use std::path::PathBuf;

/// What went wrong, at a level callers can match on. Stable across releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is wrong: a bad id, limit, path, missing image or program.
    InvalidConfig,
    /// No sandbox with that id exists in the state root.
    NotFound,
    /// A sandbox with that id already exists.
    AlreadyExists,
    /// The host lacks something runbox needs (root, cgroups, overlayfs, seccomp).
    UnsupportedHost,
    /// The sandbox could not be created or started; everything it set up was rolled back.
    LaunchFailed,
    /// An I/O error on runbox's own state.
    Io,
}

impl ErrorKind {
    /// The kind as a stable lower-case word (`invalid_config`, `not_found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::UnsupportedHost => "unsupported_host",
            ErrorKind::LaunchFailed => "launch_failed",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned by every public runbox call.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// Creates an error of `kind` with a lower-case message and no further cause.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Creates an error of `kind` caused by `source`.
    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An I/O error on `path` while doing `what`.
    pub(crate) fn io(what: &str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        let path = path.into();
        Error::with_source(ErrorKind::Io, format!("{what} {}", path.display()), err)
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message and every cause, joined with `: ` (what the CLI prints).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Shorthand for results of public runbox calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
