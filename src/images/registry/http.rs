//! The registry client's HTTP plumbing: digests, redirects, bounded reads, errors from
//! answers and transport, and the TLS configuration with extra CAs.
//! Runs in the caller's process (the CLI, a grader) during a pull.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{RegistryError, EXCERPT_LIMIT};

pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(super) fn hex(hash: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Splits `scheme://authority/...` into `(scheme, authority)`.
pub(super) fn origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    Some((scheme, authority))
}

/// Resolves a `Location` header against the URL that produced it.
pub(super) fn resolve_location(base: &str, loc: &str) -> Option<String> {
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

/// Reads at most `limit` bytes; `TooLarge` if there is more.
pub(super) fn read_limited(r: impl Read, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
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

pub(super) fn http_error(url: &str, resp: ureq::Response) -> RegistryError {
    let status = resp.status();
    let mut body = Vec::new();
    // Best effort: the body is only for the message, which names the status without it.
    if let Err(e) = resp
        .into_reader()
        .take(EXCERPT_LIMIT)
        .read_to_end(&mut body)
    {
        tracing::debug!("registry: read the body of an error answer from {url}: {e}");
    }
    RegistryError::Http {
        url: url.to_string(),
        status,
        body_excerpt: String::from_utf8_lossy(&body).trim().to_string(),
    }
}

pub(super) fn transport_error(url: &str, t: ureq::Transport) -> RegistryError {
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
pub(super) const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

pub(super) fn tls_config(
    ca_file: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
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
