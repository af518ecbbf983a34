//! The public error type: a small, stable set of kinds plus the detailed cause. Pure; used in
//! every process (the monitor sends its errors to the controller through `proto`).

use std::fmt;
use std::path::PathBuf;

/// What went wrong, at a level callers can match on. Stable across releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is wrong: a bad id, limit, path, missing image or program.
    InvalidConfig,
    /// No sandbox with that id exists in the state root (or no image by that reference in
    /// the image store).
    NotFound,
    /// A sandbox with that id already exists.
    AlreadyExists,
    /// The host lacks something runbox needs (root, cgroups, overlayfs, seccomp).
    UnsupportedHost,
    /// The sandbox could not be created or started; everything it set up was rolled back.
    LaunchFailed,
    /// The sandbox is not in a state that allows the call: starting one that is not created,
    /// signalling one that does not run, deleting a live one without force.
    InvalidState,
    /// An I/O error on runbox's own state.
    Io,
    /// Image data is unusable: a digest or size that does not match, a manifest, config or
    /// archive that does not parse, a layer with an unsafe path. Nothing of it was kept.
    InvalidImage,
    /// A registry could not be reached, refused the credentials, or answered an error.
    Registry,
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
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::Io => "io",
            ErrorKind::InvalidImage => "invalid_image",
            ErrorKind::Registry => "registry",
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

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind, the message and every cause, joined with `: ` (what the CLI prints).
    pub fn chain(&self) -> String {
        format!("{}: {}", self.kind, self.detail())
    }

    /// The message and every cause, joined with `: `, without the kind.
    pub(crate) fn detail(&self) -> String {
        let mut out = self.message.clone();
        for cause in self.causes() {
            out.push_str(": ");
            out.push_str(&cause);
        }
        out
    }

    /// Each cause's own message, outermost first.
    pub(crate) fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push(e.to_string());
            cur = e.source();
        }
        out
    }

    /// Rebuilds an error that crossed a process boundary as its parts (see
    /// [`Error::causes`]): the same kind, message and chain of causes.
    pub(crate) fn rebuilt(kind: ErrorKind, message: String, causes: Vec<String>) -> Self {
        let source = causes
            .into_iter()
            .rev()
            .fold(None, |inner: Option<Cause>, text| {
                Some(Cause {
                    text,
                    source: inner.map(Box::new),
                })
            });
        Error {
            kind,
            message,
            source: source.map(|c| Box::new(c) as Box<dyn std::error::Error + Send + Sync>),
        }
    }

    /// `self`, with the error of a failed cleanup after it appended to its message.
    pub(crate) fn with_cleanup_error(self, cleanup: &Error) -> Self {
        Error::new(
            self.kind,
            format!(
                "{}; cleanup also failed: {}",
                self.detail(),
                cleanup.detail()
            ),
        )
    }
}

/// One cause of an error rebuilt from its text (see [`Error::rebuilt`]).
#[derive(Debug)]
struct Cause {
    text: String,
    source: Option<Box<Cause>>,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_rebuilt_from_its_parts_prints_its_kind_once_and_every_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::with_source(ErrorKind::LaunchFailed, "prepare the rootfs", inner);
        assert_eq!(e.chain(), "launch_failed: prepare the rootfs: no such file");
        let back = Error::rebuilt(e.kind(), e.message().to_string(), e.causes());
        assert_eq!(back.kind(), ErrorKind::LaunchFailed);
        assert_eq!(back.chain(), e.chain());
        let cleanup = Error::new(ErrorKind::Io, "unmount x");
        assert_eq!(
            e.with_cleanup_error(&cleanup).chain(),
            "launch_failed: prepare the rootfs: no such file; cleanup also failed: unmount x"
        );
    }
}
