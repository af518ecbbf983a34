//! How a registry client connects (TLS, credentials) and which platform it pulls.
//! Runs in the caller's process (the CLI, a grader) during a pull.

use std::fmt;
use std::path::PathBuf;

/// How a [`super::Client`] connects and which platform it pulls.
#[derive(Clone)]
pub struct ClientOptions {
    /// Use `http://` instead of `https://` (also permits an http token realm).
    pub plain_http: bool,
    /// A PEM file of extra CA certificates, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// `(user, password)` for Basic auth or for the token service.
    pub credentials: Option<(String, String)>,
    /// Wanted OS, as in OCI platforms (`linux`).
    pub os: String,
    /// Wanted architecture, GOARCH spelling (`amd64`, `arm64`, ...).
    pub arch: String,
    /// Wanted architecture variant (`v8`, ...); `None` accepts any.
    pub variant: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl fmt::Debug for ClientOptions {
    /// Like a derived `Debug`, but never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("plain_http", &self.plain_http)
            .field("ca_file", &self.ca_file)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("os", &self.os)
            .field("arch", &self.arch)
            .field("variant", &self.variant)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// Maps a Rust `std::env::consts::ARCH` name to its GOARCH spelling.
pub(super) fn goarch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

impl Default for ClientOptions {
    /// https, system roots, no credentials, `linux` on the host's architecture.
    fn default() -> Self {
        ClientOptions {
            plain_http: false,
            ca_file: None,
            credentials: None,
            os: "linux".to_string(),
            arch: goarch(std::env::consts::ARCH).to_string(),
            variant: None,
            user_agent: format!("runbox/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}
