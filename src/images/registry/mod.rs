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
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

mod auth;
mod error;
mod http;
mod options;
mod reference;

pub use error::RegistryError;
pub use options::ClientOptions;
pub use reference::Reference;
use reference::{valid_digest, valid_tag};

use auth::{basic_auth, parse_challenges, Challenge, TokenResponse};
use http::{
    hex, http_error, origin, read_limited, resolve_location, sha256_digest, tls_config,
    transport_error,
};

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
        // Hostile input: no panic is all that is asked.
        parse_challenges("=\"unterminated");
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
mod against_registries;
