//! A small blocking client for the OCI distribution spec (pull only).
//!
//! It resolves image references to manifests (following indexes / manifest
//! lists to the wanted platform) and streams blobs with size and digest
//! verification. Authentication follows the distribution spec and Docker:
//! anonymous first, then `Basic` or `Bearer` (token service) on a 401.
//!
//! Everything read from the network is treated as hostile: sizes are bounded
//! and every digest is checked.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2 media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const MANIFEST_LIMIT: u64 = 4 << 20;
const TOKEN_LIMIT: u64 = 1 << 20;
const EXCERPT_LIMIT: u64 = 512;
const PROGRESS_STEP: u64 = 64 << 10;
const MAX_REDIRECTS: usize = 5;

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

/// An image reference as a user writes it: `[REGISTRY/]REPO[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with optional port), e.g. `docker.io` or `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was written.
    pub tag: Option<String>,
    /// Digest, `sha256:<64 lowercase hex>`.
    pub digest: Option<String>,
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// One path component: `[a-z0-9]+` separated by `.`, `_`, `__` or `-`+.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0] as char) || !is_lower_alnum(b[b.len() - 1] as char) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i] as char) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i] as char) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_repository(r: &str) -> bool {
    !r.is_empty() && r.len() <= 255 && r.split('/').all(valid_component)
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    t.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn valid_digest(d: &str) -> bool {
    match d.strip_prefix("sha256:") {
        Some(hex) => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

fn valid_registry(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

impl Reference {
    /// Parses a reference by Docker's rules: the first `/`-component is a
    /// registry if it contains `.` or `:` or is `localhost`; otherwise the
    /// registry is `docker.io` and a one-component repository gets `library/`.
    /// The tag defaults to `latest` when there is no digest.
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::InvalidReference(format!("{s:?}: {why}"));
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) if valid_digest(d) => (n, Some(d.to_string())),
            Some(_) => return Err(bad("digest must be sha256:<64 lowercase hex>")),
            None => (s, None),
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest)
            }
            _ => ("docker.io".to_string(), name),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(bad("invalid registry host"));
        }
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad("invalid tag"));
            }
        }
        if !valid_repository(repo) {
            return Err(bad(
                "repository must be lowercase [a-z0-9] components separated by . _ __ - /",
            ));
        }
        let repository = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to: `registry-1.docker.io` for `docker.io`, else the registry.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    /// The canonical full form, `registry/repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// How a [`Client`] connects and which platform it pulls.
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
fn goarch(arch: &str) -> &str {
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

/// A fetched manifest, verified against its digest where one was known.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its media type (one of the four supported ones).
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// The raw manifest bytes, exactly as served.
    pub bytes: Vec<u8>,
}

/// A blocking registry client; cheap to share between threads by reference.
pub struct Client {
    agent: ureq::Agent,
    opts: ClientOptions,
    /// Bearer tokens by (realm, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// The last auth challenge seen per `host/repository`, to authenticate
    /// later requests up front.
    challenges: Mutex<HashMap<String, Challenge>>,
}

/// One `WWW-Authenticate` challenge: lowercased scheme and parameters.
#[derive(Debug, Clone, PartialEq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate` values (RFC 7235), tolerating several
/// challenges per header and quoted values containing commas or escapes.
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s: Vec<char> = header.chars().collect();
    let mut i = 0;
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !s[*i].is_whitespace() && s[*i] != '=' && s[*i] != ',' {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    while i < s.len() {
        if s[i].is_whitespace() || s[i] == ',' {
            i += 1;
            continue;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1; // a stray '='
            continue;
        }
        let mut j = i;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if j < s.len() && s[j] == '=' {
            i = j + 1;
            while i < s.len() && s[i].is_whitespace() {
                i += 1;
            }
            let value = if i < s.len() && s[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote (or past the end)
                v
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct Versioned {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

fn sha256_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(hash: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Splits `scheme://authority/...` into `(scheme, authority)`.
fn origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    Some((scheme, authority))
}

/// Resolves a `Location` header against the URL that produced it.
fn resolve_location(base: &str, loc: &str) -> Option<String> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Some(loc.to_string());
    }
    let (scheme, authority) = origin(base)?;
    if let Some(rest) = loc.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if loc.starts_with('/') {
        return Some(format!("{scheme}://{authority}{loc}"));
    }
    let path = base.split(['?', '#']).next().unwrap_or(base);
    let dir = &path[..path.rfind('/')? + 1];
    Some(format!("{dir}{loc}"))
}

fn basic_auth(user: &str, pass: &str) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {enc}")
}

/// Reads at most `limit` bytes; `TooLarge` if there is more.
fn read_limited(r: impl Read, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let mut buf = Vec::new();
    r.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(RegistryError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    Ok(buf)
}

fn http_error(url: &str, resp: ureq::Response) -> RegistryError {
    let status = resp.status();
    let mut body = Vec::new();
    // Best effort: the body is only for the message.
    let _ = resp
        .into_reader()
        .take(EXCERPT_LIMIT)
        .read_to_end(&mut body);
    RegistryError::Http {
        url: url.to_string(),
        status,
        body_excerpt: String::from_utf8_lossy(&body).trim().to_string(),
    }
}

fn transport_error(url: &str, t: ureq::Transport) -> RegistryError {
    // TLS failures are wrapped as rustls::Error inside an io::Error.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&t);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return RegistryError::Tls(format!("{url}: {tls}"));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return RegistryError::Tls(format!("{url}: {inner}"));
        }
        cur = e.source();
    }
    RegistryError::Transport {
        url: url.to_string(),
        source: Box::new(t),
    }
}

/// PEM bundles that hold the system roots on common distributions.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn tls_config(ca_file: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // System roots: $SSL_CERT_FILE or the distribution bundle (what
    // rustls-native-certs reads on Linux).
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let system = env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file());
    if let Some(p) = system {
        if let Ok(pem) = std::fs::read(&p) {
            let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
            roots.add_parsable_certificates(certs);
        }
    }
    let pem = std::fs::read(ca_file)
        .map_err(|e| RegistryError::Tls(format!("reading CA file {}: {e}", ca_file.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| RegistryError::Tls(format!("CA file {}: {e}", ca_file.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(RegistryError::Tls(format!(
            "CA file {} holds no usable certificate",
            ca_file.display()
        )));
    }
    // ring, as ureq 2 itself uses; its deprecation only notes the lack of
    // post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Client {
    /// Builds a client: connect timeout 10 s, read timeout 60 s, redirects
    /// handled by the client itself.
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .redirects(0)
            .user_agent(&opts.user_agent);
        if let Some(ca) = &opts.ca_file {
            builder = builder.tls_config(tls_config(ca)?);
        }
        Ok(Client {
            agent: builder.build(),
            opts,
            tokens: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.opts.plain_http {
            "http"
        } else {
            "https"
        }
    }

    /// One GET, following redirects; the Authorization header is dropped
    /// once a redirect leaves the original scheme://host:port.
    fn get_following(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<ureq::Response, RegistryError> {
        let first_origin = origin(url);
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(a) = auth.filter(|_| origin(&url) == first_origin) {
                req = req.set("Authorization", a);
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => return Err(transport_error(&url, t)),
            };
            if !(300..400).contains(&resp.status()) || resp.status() == 304 {
                return Ok(resp);
            }
            let next = resp
                .header("Location")
                .and_then(|loc| resolve_location(&url, loc));
            match next {
                // Never downgrade to plain http unless it was asked for.
                Some(n)
                    if hops < MAX_REDIRECTS
                        && (n.starts_with("https://") || self.opts.plain_http) =>
                {
                    url = n;
                    hops += 1;
                }
                _ => return Err(http_error(&url, resp)),
            }
        }
    }

    /// The Authorization value answering `ch`, fetching a token if needed.
    fn authorization(
        &self,
        url: &str,
        r: &Reference,
        ch: &Challenge,
        fresh: bool,
    ) -> Result<String, RegistryError> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            url: url.to_string(),
            detail,
        };
        match ch.scheme.as_str() {
            "basic" => match &self.opts.credentials {
                Some((u, p)) => Ok(basic_auth(u, p)),
                None => Err(unauthorized(
                    "registry wants Basic auth; no credentials given".into(),
                )),
            },
            "bearer" => {
                let realm = ch
                    .params
                    .get("realm")
                    .ok_or_else(|| unauthorized("Bearer challenge without realm".into()))?;
                let scope = ch
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                let key = (realm.clone(), scope.clone());
                let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                if fresh {
                    tokens.remove(&key);
                }
                if let Some(t) = tokens.get(&key) {
                    return Ok(format!("Bearer {t}"));
                }
                let token = self.fetch_token(realm, ch.params.get("service"), &scope)?;
                tokens.insert(key, token.clone());
                Ok(format!("Bearer {token}"))
            }
            other => Err(unauthorized(format!("unsupported auth scheme {other:?}"))),
        }
    }

    /// GETs a token from a token service (distribution token auth spec).
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&String>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            url: realm.to_string(),
            detail,
        };
        let secure = realm.starts_with("https://");
        let plain_ok = self.opts.plain_http && realm.starts_with("http://");
        if !secure && !plain_ok {
            return Err(unauthorized("token realm is not an https URL".into()));
        }
        let mut req = self.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some((u, p)) = &self.opts.credentials {
            req = req.set("Authorization", &basic_auth(u, p));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, r)) => {
                let e = http_error(realm, r);
                return Err(unauthorized(format!("token service refused: {e}")));
            }
            Err(ureq::Error::Status(_, r)) => return Err(http_error(realm, r)),
            Err(ureq::Error::Transport(t)) => return Err(transport_error(realm, t)),
        };
        let body = read_limited(resp.into_reader(), TOKEN_LIMIT, "token response")?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            unauthorized(format!(
                "bad token response: {}",
                super::manifest::json_detail(&e)
            ))
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| unauthorized("token response holds no usable token".into()))
    }

    /// GET `/v2/<repo>/<path>` with authentication: anonymous (or with the
    /// auth learnt earlier for this repository), then once more after a 401.
    /// Returns only 2xx responses.
    fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::Response, RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/{}",
            self.scheme(),
            r.api_host(),
            r.repository,
            path
        );
        let key = format!("{}/{}", r.api_host(), r.repository);
        let known = self
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let auth = match &known {
            Some(ch) => Some(self.authorization(&url, r, ch, false)?),
            None => None,
        };
        let mut resp = self.get_following(&url, accept, auth.as_deref())?;
        if resp.status() == 401 {
            let header = resp.all("WWW-Authenticate").join(", ");
            let challenges = parse_challenges(&header);
            let ch = challenges
                .iter()
                .find(|c| c.scheme == "bearer")
                .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
                .cloned()
                .ok_or_else(|| RegistryError::Unauthorized {
                    url: url.clone(),
                    detail: format!("no usable WWW-Authenticate challenge in {header:?}"),
                })?;
            let auth = self.authorization(&url, r, &ch, known.is_some())?;
            self.challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, ch);
            resp = self.get_following(&url, accept, Some(&auth))?;
            if resp.status() == 401 {
                let e = http_error(&url, resp);
                return Err(RegistryError::Unauthorized {
                    url,
                    detail: format!("credentials rejected: {e}"),
                });
            }
        }
        if !(200..300).contains(&resp.status()) {
            return Err(http_error(&url, resp));
        }
        Ok(resp)
    }

    /// GET `/v2/<repo>/manifests/<tag or digest>` with Accept for: OCI manifest, OCI index, Docker v2 schema2 manifest, Docker manifest list. Max 4 MiB body. Verifies the sha256 of the body against the reference's digest when given (and against Docker-Content-Digest header when present). Refuses schema1.
    ///
    /// "The reference's digest" is `tag_or_digest` when it is a digest.
    pub fn fetch_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
    ) -> Result<Manifest, RegistryError> {
        let by_digest = valid_digest(tag_or_digest);
        if !by_digest && !valid_tag(tag_or_digest) {
            return Err(RegistryError::InvalidReference(format!(
                "{tag_or_digest:?} is neither a tag nor a sha256 digest"
            )));
        }
        let accept = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self.get(r, &format!("manifests/{tag_or_digest}"), Some(&accept))?;
        let what = format!("manifest {}@{tag_or_digest}", r.repository);
        if let Some(len) = resp
            .header("Content-Length")
            .and_then(|l| l.parse::<u64>().ok())
        {
            if len > MANIFEST_LIMIT {
                return Err(RegistryError::TooLarge {
                    what,
                    limit: MANIFEST_LIMIT,
                });
            }
        }
        let content_type = resp
            .header("Content-Type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let header_digest = resp.header("Docker-Content-Digest").map(str::to_string);
        let bytes = read_limited(resp.into_reader(), MANIFEST_LIMIT, &what)?;
        let digest = sha256_digest(&bytes);
        let expected = by_digest.then_some(tag_or_digest.to_string());
        let announced = header_digest.filter(|d| d.starts_with("sha256:"));
        for want in expected.iter().chain(announced.iter()) {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: want.clone(),
                    got: digest,
                });
            }
        }
        let versioned: Versioned = serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::UnsupportedMediaType(format!(
                "{what}: {}",
                super::manifest::json_detail(&e)
            ))
        })?;
        if versioned.schema_version != Some(2) {
            return Err(RegistryError::UnsupportedMediaType(format!(
                "{what}: schemaVersion {:?} (schema 1 is not supported)",
                versioned.schema_version
            )));
        }
        let media_type = match content_type.as_str() {
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST => content_type,
            "" | "application/json" | "application/octet-stream" | "text/plain" => {
                versioned.media_type.unwrap_or_default()
            }
            other => return Err(RegistryError::UnsupportedMediaType(other.to_string())),
        };
        match media_type.as_str() {
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST => Ok(Manifest {
                media_type,
                digest,
                bytes,
            }),
            other => Err(RegistryError::UnsupportedMediaType(other.to_string())),
        }
    }

    /// fetch_manifest, then if it is an index / manifest list, pick the entry whose platform matches os/arch(/variant when set) and fetch that by digest (verified); returns the image manifest and, separately, the digest of the top-level index if there was one. Error NoMatchingPlatform listing the platforms offered.
    pub fn resolve_image(
        &self,
        r: &Reference,
    ) -> Result<(Manifest, Option<String>), RegistryError> {
        let top_ref = r.digest.as_deref().or(r.tag.as_deref()).unwrap_or("latest");
        let top = self.fetch_manifest(r, top_ref)?;
        if top.media_type != OCI_INDEX && top.media_type != DOCKER_MANIFEST_LIST {
            return Ok((top, None));
        }
        let index: Index = serde_json::from_slice(&top.bytes).map_err(|e| {
            RegistryError::UnsupportedMediaType(format!(
                "index {}: {}",
                top.digest,
                super::manifest::json_detail(&e)
            ))
        })?;
        let o = &self.opts;
        let matches = |p: &Platform| {
            p.os == o.os
                && p.architecture == o.arch
                && (o.variant.is_none() || p.variant == o.variant)
        };
        let is_image =
            |e: &IndexEntry| e.media_type == OCI_MANIFEST || e.media_type == DOCKER_MANIFEST;
        let chosen = index
            .manifests
            .iter()
            .find(|e| is_image(e) && e.platform.as_ref().is_some_and(matches));
        let Some(entry) = chosen else {
            let describe = |p: &Platform| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            };
            let wanted = describe(&Platform {
                os: o.os.clone(),
                architecture: o.arch.clone(),
                variant: o.variant.clone(),
            });
            let offered = index
                .manifests
                .iter()
                .filter_map(|e| e.platform.as_ref().map(describe))
                .collect();
            return Err(RegistryError::NoMatchingPlatform { wanted, offered });
        };
        if !valid_digest(&entry.digest) {
            return Err(RegistryError::UnsupportedMediaType(format!(
                "index {} names unsupported digest {:?}",
                top.digest, entry.digest
            )));
        }
        let m = self.fetch_manifest(r, &entry.digest)?;
        if m.bytes.len() as u64 != entry.size {
            return Err(RegistryError::SizeMismatch {
                what: format!("manifest {}", entry.digest),
                expected: entry.size,
                got: m.bytes.len() as u64,
            });
        }
        if m.media_type != OCI_MANIFEST && m.media_type != DOCKER_MANIFEST {
            return Err(RegistryError::UnsupportedMediaType(format!(
                "{} (nested index)",
                m.media_type
            )));
        }
        Ok((m, Some(top.digest)))
    }

    /// GET `/v2/<repo>/blobs/<digest>`, following redirects (to any host: presigned URLs; but drop the Authorization header when the redirect goes to another host), streaming into `sink`, counting bytes and hashing with sha256; error if the size exceeds `size` (stop reading at size+1) or ends short, or the digest differs (DigestMismatch{expected, got}). `progress` is called with the byte count so far, at most every 64 KiB.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RegistryError> {
        if !valid_digest(digest) {
            return Err(RegistryError::InvalidReference(format!(
                "{digest:?} is not a sha256 digest"
            )));
        }
        let resp = self.get(r, &format!("blobs/{digest}"), None)?;
        let what = format!("blob {digest}");
        let mut reader = resp.into_reader().take(size.saturating_add(1));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let (mut count, mut reported) = (0u64, 0u64);
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            count += n as u64;
            if count > size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    got: count,
                });
            }
            let chunk = buf.get(..n).unwrap_or(&[]);
            hasher.update(chunk);
            sink.write_all(chunk)?;
            if count - reported >= PROGRESS_STEP {
                progress(count);
                reported = count;
            }
        }
        if count != size {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: size,
                got: count,
            });
        }
        if reported != count {
            progress(count);
        }
        let got = hex(&hasher.finalize());
        if got != digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_string(),
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_references() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("localhost:5000/a/b-c__d:v1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b-c__d")
        );
        assert_eq!(r.tag.as_deref(), Some("v1.0"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = Reference::parse("user/app:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/user/app:1");
        for bad in [
            "",
            "Alpine",
            "a//b",
            "a:",
            "a:-x",
            "a@sha256:abc",
            "a@md5:00",
            "-a",
            "a..b",
            "reg.io/",
        ] {
            assert!(
                matches!(
                    Reference::parse(bad),
                    Err(RegistryError::InvalidReference(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_www_authenticate() {
        let c = parse_challenges(
            r#"Bearer realm="https://a.io/token",service="reg",scope="repository:x/y:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["scope"], "repository:x/y:pull,push");
        assert_eq!(c[0].params["realm"], "https://a.io/token");
        let c = parse_challenges(r#"Basic realm="a \"q\", b", Bearer realm=x , service = s"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], r#"a "q", b"#);
        assert_eq!(
            (
                c[1].params["realm"].as_str(),
                c[1].params["service"].as_str()
            ),
            ("x", "s")
        );
        assert!(parse_challenges("").is_empty());
        let _ = parse_challenges("=\"unterminated");
    }

    #[test]
    fn redirects_resolve() {
        let b = "http://h:1/v2/x/blobs/sha256:a?q=1";
        assert_eq!(resolve_location(b, "/p").unwrap(), "http://h:1/p");
        assert_eq!(resolve_location(b, "//o/p").unwrap(), "http://o/p");
        assert_eq!(resolve_location(b, "z").unwrap(), "http://h:1/v2/x/blobs/z");
        assert_eq!(origin("https://a:2/x"), Some(("https", "a:2")));
    }
}

/// Against real registries (Debian's `docker-registry`, images made with umoci and pushed
/// with skopeo) and small fake servers, all on 127.0.0.1.
#[cfg(test)]
#[path = "registry_tests.rs"]
mod registry_tests;
