//! Pulling an image from an OCI distribution registry into the store (feature `registry`):
//! the manifest for this host's platform, the config, then each layer the store lacks,
//! downloaded into staging, verified, unpacked and verified again.

use std::fs::File;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

use super::import::Staged;
use super::manifest::{self, Kind, MAX_CONFIG};
use super::reference::check_name;
use super::registry::{Client, ClientOptions, Reference, RegistryError};
use super::store::{ImageInfo, ImageStore, Progress};

/// How to reach a registry: `PullOptions::default()` (HTTPS, the system's CAs, anonymous)
/// and its setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PullOptions {
    /// Plain HTTP instead of HTTPS (only when asked: a local test registry, say).
    pub plain_http: bool,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// User name and password, for basic auth or a token service.
    pub credentials: Option<(String, String)>,
}

impl PullOptions {
    /// Plain HTTP instead of HTTPS (only for a registry that has no TLS: a local test one).
    pub fn plain_http(&mut self, yes: bool) -> &mut Self {
        self.plain_http = yes;
        self
    }

    /// Trusts the CA certificates of the PEM file `path` besides the system's.
    pub fn ca_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Authenticates as `user` with `password` (basic auth or a token service).
    pub fn credentials(
        &mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> &mut Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Error {
        let kind = match &e {
            RegistryError::InvalidReference(_) => ErrorKind::InvalidConfig,
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::UnsupportedMediaType(_)
            | RegistryError::NoMatchingPlatform { .. }
            | RegistryError::TooLarge { .. } => ErrorKind::InvalidImage,
            RegistryError::Io(_) => ErrorKind::Io,
            _ => ErrorKind::Registry,
        };
        Error::with_source(kind, "pull", e)
    }
}

/// A staging directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        crate::host::cleanup::remove_tree(&self.0, "a pull's staging directory");
    }
}

impl ImageStore {
    /// Pulls `reference` (`[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, docker's rules:
    /// `busybox` is `docker.io/library/busybox:latest`) and names the image by the reference
    /// as written. A manifest list or index gives the entry for linux and this host's
    /// architecture. Layers the store has are not downloaded; every blob is checked against
    /// its digest and size, and every layer's tar against its config's diff_id, before
    /// anything of the image is kept.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad reference; `Registry` if the registry cannot be reached,
    /// refuses the credentials or answers an error; `InvalidImage` for data that does not
    /// check out (digest, size, media type, no image for this platform); `Io`.
    pub fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<ImageInfo> {
        let r = Reference::parse(reference)?;
        check_name(reference)?;
        let client = Client::new(ClientOptions {
            plain_http: opts.plain_http,
            ca_file: opts.ca_file.clone(),
            credentials: opts.credentials.clone(),
            ..ClientOptions::default()
        })?;
        let _lock = self.lock(false)?;
        let (m, _index) = client.resolve_image(&r)?;
        if manifest::kind_of_bytes(&m.bytes, &m.media_type)? != Kind::Manifest {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                format!("{reference}: the registry's answer is not an image manifest"),
            ));
        }
        manifest::verify(&m.bytes, &m.digest, None, "manifest")?;
        let parsed = manifest::parse_manifest(&m.bytes)?;
        let config_digest = parsed.config.digest().to_string();
        let config_size = parsed.config.size();
        if config_size > MAX_CONFIG {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                format!("config {config_digest} is larger than {MAX_CONFIG} bytes"),
            ));
        }
        let mut config = Vec::new();
        client.fetch_blob(&r, &config_digest, config_size, &mut config, &mut |_| {})?;
        manifest::verify(&config, &config_digest, Some(config_size), "config")?;
        let (diff_ids, created) = manifest::parse_config(&config)?;
        if diff_ids.len() != parsed.layers.len() {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                format!(
                    "manifest {} has {} layers, its config {} diff_ids",
                    m.digest,
                    parsed.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut staged = Staged::new(self);
        let count = diff_ids.len();
        for (i, ((layer, compression), diff_id)) in parsed.layers.iter().zip(&diff_ids).enumerate()
        {
            let digest = layer.digest().to_string();
            let cached = staged.has(diff_id);
            progress(&Progress::Layer {
                index: i,
                count,
                digest: digest.clone(),
                total: Some(layer.size()),
                cached,
            });
            if cached {
                continue;
            }
            // Downloaded whole and verified before it is unpacked.
            let tmp = TempDir(self.stage("blob")?);
            let path = tmp.0.join("blob");
            let mut file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            client.fetch_blob(&r, &digest, layer.size(), &mut file, &mut |n| {
                progress(&Progress::Bytes(n))
            })?;
            drop(file);
            let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            staged.unpack(
                file,
                Some(*compression),
                Some((&digest, layer.size())),
                Some(diff_id),
                &mut |_| {},
            )?;
        }
        staged.commit()?;
        self.put_blob(&config_digest, &config)?;
        self.put_blob(&m.digest, &m.bytes)?;
        self.commit_image(
            &m.digest,
            &config_digest,
            &diff_ids,
            created,
            &[reference.to_string()],
        )
    }
}
