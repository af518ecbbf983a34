//! The registry client's typed errors (reference parsing, HTTP, digests, sizes, TLS).
//! Runs in the caller's process (the CLI, a grader) during a pull.

/// Errors from reference parsing and registry access.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference (or a tag / digest) is malformed.
    #[error("invalid image reference: {0}")]
    InvalidReference(String),
    /// The registry answered with an unexpected HTTP status.
    #[error("{url}: HTTP {status}: {body_excerpt}")]
    Http {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// At most 512 bytes of the response body, lossily decoded.
        body_excerpt: String,
    },
    /// Connecting, sending or receiving failed below HTTP.
    #[error("{url}: transport error: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Authentication was required and failed or was impossible.
    #[error("{url}: unauthorized: {detail}")]
    Unauthorized {
        /// The URL requested.
        url: String,
        /// Why authentication failed.
        detail: String,
    },
    /// Content did not hash to the expected digest.
    #[error("digest mismatch for {what}: expected {expected}, got {got}")]
    DigestMismatch {
        /// What was being verified.
        what: String,
        /// The expected digest.
        expected: String,
        /// The digest actually computed or announced.
        got: String,
    },
    /// Content was longer or shorter than announced.
    #[error("size mismatch for {what}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        /// What was being read.
        what: String,
        /// The expected size in bytes.
        expected: u64,
        /// The size received (for an overlong body: at least this much).
        got: u64,
    },
    /// A manifest of a kind this client does not handle (e.g. schema 1).
    #[error("unsupported manifest media type: {0}")]
    UnsupportedMediaType(String),
    /// An index offered no manifest for the wanted platform.
    #[error("no manifest for platform {wanted}; offered: {offered:?}")]
    NoMatchingPlatform {
        /// The wanted platform, `os/arch[/variant]`.
        wanted: String,
        /// The platforms the index offers.
        offered: Vec<String>,
    },
    /// A response body exceeded its size limit.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// TLS set-up or handshake failed (bad certificate, unknown CA, ...).
    #[error("TLS error: {0}")]
    Tls(String),
    /// Local I/O failed (e.g. writing to the blob sink).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
