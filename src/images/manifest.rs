//! Manifests, indexes and configs as imports and pulls read them (oci-spec's image types):
//! what a media type is, which platform entry of an index is this host's, and checking
//! bytes against the digest and size their descriptor gives.

use libcontainer::oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind, Result};

use super::reference::sha256_hex;
use super::store::MAX_LAYERS;
use super::unpack::Compression;

/// Largest manifest or index read (bytes).
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config read (bytes).
pub(crate) const MAX_CONFIG: u64 = 16 << 20;
/// Largest layer blob a manifest may name (bytes): the unpacker's limit on a layer's
/// unpacked files ([`UnpackLimits`](super::unpack::UnpackLimits)), which a compressed blob
/// never needs to exceed. A pull downloads at most this much per layer into staging.
pub(crate) const MAX_LAYER_BLOB: u64 = 32 << 30;

/// Docker's media types, which oci-spec keeps as `MediaType::Other`.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a descriptor points at.
#[derive(Debug, PartialEq)]
pub(crate) enum Kind {
    /// An image manifest (OCI or Docker v2 schema 2).
    Manifest,
    /// An index or a Docker manifest list.
    Index,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidImage, msg)
}

/// The error for JSON `what` that does not parse or has the wrong shape: see
/// [`json_detail`].
pub(crate) fn json_error(what: &str, e: &serde_json::Error) -> Error {
    invalid(format!("{what} is {}", json_detail(e)))
}

/// What is wrong with JSON that does not parse or has the wrong shape, without quoting it:
/// serde's own message can quote the offending value (`invalid type: string "…"`), so only
/// its category and position are shown, and the field a message names when one is missing.
pub(crate) fn json_detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let detail = match text.strip_prefix("missing field `") {
        Some(rest) if e.classify() == serde_json::error::Category::Data => {
            let field: String = rest.chars().take_while(|c| *c != '`').take(64).collect();
            format!("missing field {field:?}, ")
        }
        _ => String::new(),
    };
    let category = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!(
        "{category} ({detail}at line {} column {})",
        e.line(),
        e.column()
    )
}

/// The kind of a manifest-ish media type; schema 1 and anything else are refused.
pub(crate) fn kind(media_type: &str) -> Result<Kind> {
    match MediaType::from(media_type) {
        MediaType::ImageManifest => Ok(Kind::Manifest),
        MediaType::ImageIndex => Ok(Kind::Index),
        MediaType::Other(m) if m == DOCKER_MANIFEST => Ok(Kind::Manifest),
        MediaType::Other(m) if m == DOCKER_LIST => Ok(Kind::Index),
        _ => Err(invalid(format!(
            "media type {} is not an image manifest or index runbox reads (OCI, or Docker v2 schema 2)",
            super::import::shown(media_type)
        ))),
    }
}

/// The manifest's kind from its bytes, when the transport did not say (an OCI layout's
/// `index.json` entries do; a manifest may carry its own `mediaType`).
pub(crate) fn kind_of_bytes(bytes: &[u8], said: &str) -> Result<Kind> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let peek: Peek = serde_json::from_slice(bytes).map_err(|e| json_error("manifest", &e))?;
    if peek.schema_version != Some(2) {
        return Err(invalid(
            "manifest schema version is not 2 (Docker schema 1 is not supported)",
        ));
    }
    match (peek.media_type.as_deref(), said) {
        (Some(m), _) => kind(m),
        (None, s) if !s.is_empty() => kind(s),
        (None, _) if peek.manifests.is_some() => Ok(Kind::Index),
        (None, _) => Ok(Kind::Manifest),
    }
}

/// Checks `bytes` against `digest` (sha256 only) and, if given, `size`.
pub(crate) fn verify(bytes: &[u8], digest: &str, size: Option<u64>, what: &str) -> Result<()> {
    let want = sha256_hex(digest, what)?;
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(invalid(format!(
                "{what} {digest}: {} bytes where its descriptor says {size}",
                bytes.len()
            )));
        }
    }
    let got = hex(&Sha256::digest(bytes));
    if got != want {
        return Err(invalid(format!(
            "{what} {digest}: content has digest sha256:{got}"
        )));
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// This host's platform as OCI names it: (`linux`, GOARCH).
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Parses an index and picks the entry for this host (linux and its architecture).
pub(crate) fn pick_platform(bytes: &[u8]) -> Result<Descriptor> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| json_error("index", &e))?;
    let arch = host_arch();
    let mut offered = Vec::new();
    for d in index.manifests() {
        match d.platform() {
            Some(p) => {
                let (os, a) = (p.os().to_string(), p.architecture().to_string());
                if os == "linux" && a == arch && kind(d.media_type().as_ref()).is_ok() {
                    return Ok(d.clone());
                }
                if offered.len() < 16 {
                    offered.push(super::import::shown(&format!("{os}/{a}")));
                }
            }
            None if offered.len() < 16 => offered.push("(no platform)".to_string()),
            None => {}
        }
    }
    Err(invalid(format!(
        "the index has no image for linux/{arch} (it has: {})",
        offered.join(", ")
    )))
}

/// An image manifest parsed and checked: a config descriptor and at most [`MAX_LAYERS`]
/// layers of known compression.
pub(crate) struct Parsed {
    /// The config's descriptor.
    pub config: Descriptor,
    /// The layers' descriptors and compression, bottom first.
    pub layers: Vec<(Descriptor, Compression)>,
}

/// Parses an image manifest.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Parsed> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| json_error("manifest", &e))?;
    match m.config().media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == DOCKER_CONFIG => {}
        other => {
            return Err(invalid(format!(
                "config media type {} is not an image config",
                super::import::shown(other.as_ref())
            )))
        }
    }
    if m.layers().len() > MAX_LAYERS {
        return Err(invalid(format!(
            "{} layers: at most {MAX_LAYERS} are supported",
            m.layers().len()
        )));
    }
    let layers = m
        .layers()
        .iter()
        .map(|d| {
            if d.size() > MAX_LAYER_BLOB {
                return Err(invalid(format!(
                    "layer {} is {} bytes, more than the {MAX_LAYER_BLOB} allowed",
                    d.digest(),
                    d.size()
                )));
            }
            let c = Compression::from_media_type(d.media_type().as_ref()).ok_or_else(|| {
                invalid(format!(
                    "layer media type {} is not supported",
                    super::import::shown(d.media_type().as_ref())
                ))
            })?;
            Ok((d.clone(), c))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Parsed {
        config: m.config().clone(),
        layers,
    })
}

/// The parts of an image config an import needs: its diff_ids (checked) and `created`.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<(Vec<String>, Option<String>)> {
    let c: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| json_error("image config", &e))?;
    let ids = c.rootfs().diff_ids().clone();
    for id in &ids {
        sha256_hex(id, "layer diff_id")?;
    }
    if ids.len() > MAX_LAYERS {
        return Err(invalid(format!(
            "{} layers: at most {MAX_LAYERS} are supported",
            ids.len()
        )));
    }
    Ok((ids, c.created().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_digests_are_checked() {
        assert_eq!(
            kind("application/vnd.oci.image.index.v1+json").unwrap(),
            Kind::Index
        );
        assert_eq!(kind(DOCKER_MANIFEST).unwrap(), Kind::Manifest);
        assert!(kind("application/vnd.docker.distribution.manifest.v1+prettyjws").is_err());
        let d = digest_of(b"x");
        verify(b"x", &d, Some(1), "blob").unwrap();
        assert!(verify(b"y", &d, None, "blob").is_err());
        assert!(verify(b"x", &d, Some(2), "blob").is_err());
        assert!(verify(b"x", "sha512:00", None, "blob").is_err());
    }

    #[test]
    fn an_index_yields_this_hosts_platform_or_says_what_it_has() {
        let entry = |arch: &str, n: u8| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                format!("{n:02x}").repeat(32)
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
            entry("arm64", 1),
            entry(host_arch(), 2)
        );
        let d = pick_platform(index.as_bytes()).unwrap();
        assert_eq!(d.digest().digest(), "02".repeat(32));
        let only_arm = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entry("arm64", 1)
        );
        let e = pick_platform(only_arm.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("linux/arm64"), "{e}");
    }
}
