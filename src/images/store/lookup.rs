//! Finding images in the store: by name or digest, listing, inspecting, and resolving one
//! for a launch (pinned while a sandbox uses it). Runs in the caller's process.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use crate::error::{Error, ErrorKind, Result};
use crate::host::state;
use crate::images::reference::{self, Wanted};

use super::{hex_of, mkdir, unique, ImageDetails, ImageInfo, ImageStore};

/// An image resolved for a run: its layers and the config's defaults. Holds the store's
/// shared lock until it is pinned to the sandbox using it (or dropped).
#[derive(Debug)]
pub(crate) struct ResolvedImage {
    /// The manifest digest.
    pub digest: String,
    /// Layer directories, top first (overlay's `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// The config's `Env`.
    pub env: Vec<String>,
    /// The config's `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// The config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
    store: PathBuf,
    lock: Option<Flock<File>>,
}

impl ResolvedImage {
    /// Records that the sandbox at `sandbox_dir` uses the image, and lets the store's lock go:
    /// `rm` and `prune` keep the image's layers while that directory exists.
    pub fn pin(mut self, sandbox_dir: &Path) -> Result<()> {
        let dir = self.store.join("pins").join(hex_of(&self.digest));
        mkdir(&dir)?;
        let name = format!("{}-{}", std::process::id(), unique());
        state::write_atomic(&dir.join(name), sandbox_dir.as_os_str().as_encoded_bytes())?;
        self.lock = None;
        Ok(())
    }
}

impl ImageStore {
    /// The manifest digest a user's reference means: a name (or the name with `:latest`),
    /// a digest, or a unique digest prefix.
    pub(crate) fn find(&self, reference: &str) -> Result<String> {
        let not_found = || {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no image {reference:?} in the image store {}",
                    self.dir.display()
                ),
            )
        };
        match reference::wanted(reference)? {
            Wanted::Name(name, also) => {
                let names = self.names()?;
                let hit = |n: &str| names.iter().find(|(m, _)| m == n).map(|(_, d)| d.clone());
                hit(&name)
                    .or_else(|| also.iter().find_map(|n| hit(n)))
                    .ok_or_else(not_found)
            }
            Wanted::Digest(hex) => {
                let digest = format!("sha256:{hex}");
                if self.record_path(&digest).exists() {
                    Ok(digest)
                } else {
                    Err(not_found())
                }
            }
            Wanted::Prefix(prefix) => {
                let hits: Vec<String> = self
                    .records()?
                    .into_iter()
                    .map(|r| r.digest)
                    .filter(|d| hex_of(d).starts_with(&prefix))
                    .collect();
                match hits.as_slice() {
                    [one] => Ok(one.clone()),
                    [] => Err(not_found()),
                    _ => Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "{reference:?} matches {} images: give more digits",
                            hits.len()
                        ),
                    )),
                }
            }
        }
    }

    /// Every image, sorted by its first name (unnamed ones last, by digest).
    ///
    /// # Errors
    /// `Io` if the store cannot be read.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let names = self.names()?;
        let mut out: Vec<ImageInfo> = self
            .records()?
            .into_iter()
            .map(|r| ImageInfo {
                names: names
                    .iter()
                    .filter(|(_, d)| *d == r.digest)
                    .map(|(n, _)| n.clone())
                    .collect(),
                digest: r.digest,
                size: r.size,
                created: r.created,
                layers: r.layers.len(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.names.is_empty(), a.names.first(), &a.digest).cmp(&(
                b.names.is_empty(),
                b.names.first(),
                &b.digest,
            ))
        });
        Ok(out)
    }

    /// One image in full.
    ///
    /// # Errors
    /// `NotFound` if no image matches `reference`; `Io` if its files cannot be read.
    pub fn inspect(&self, reference: &str) -> Result<ImageDetails> {
        let digest = self.find(reference)?;
        let r = self.record(&digest)?;
        let config = self.config_json(&r.config_digest)?;
        Ok(ImageDetails {
            info: ImageInfo {
                names: self.names_of(&digest)?,
                digest: digest.clone(),
                size: r.size,
                created: r.created.clone(),
                layers: r.layers.len(),
            },
            config_digest: r.config_digest.clone(),
            layer_dirs: r.layers.iter().map(|d| self.layer_dir(d)).collect(),
            diff_ids: r.layers,
            config: config.get("config").cloned().unwrap_or_default(),
            in_use_by: self
                .live_pins(&digest)
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
        })
    }

    pub(super) fn config_json(&self, config_digest: &str) -> Result<serde_json::Value> {
        let path = self.blob_path(config_digest);
        let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidImage,
                format!("image config {config_digest} is not JSON"),
                e,
            )
        })
    }

    /// The pins of `digest` whose sandbox directory still exists: (pin file, sandbox dir).
    pub(super) fn live_pins(&self, digest: &str) -> Vec<(PathBuf, PathBuf)> {
        let dir = self.dir.join("pins").join(hex_of(digest));
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let bytes = fs::read(e.path()).ok()?;
                let sandbox = PathBuf::from(std::ffi::OsString::from(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
                Some((e.path(), sandbox))
            })
            .filter(|(_, sandbox)| sandbox.is_dir())
            .collect()
    }

    /// Resolves `reference` for a run: its layers (top first) and config defaults, holding
    /// the store's shared lock until [`ResolvedImage::pin`].
    pub(crate) fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let lock = self.lock(false)?;
        let digest = self.find(reference)?;
        let r = self.record(&digest)?;
        let config = self.config_json(&r.config_digest)?;
        let c = config.get("config").cloned().unwrap_or_default();
        let strings = |key: &str| -> Vec<String> {
            c.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |key: &str| {
            c.get(key)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut layers: Vec<PathBuf> = r.layers.iter().map(|d| self.layer_dir(d)).collect();
        for dir in &layers {
            if !dir.is_dir() {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    format!(
                        "image {digest}: layer {} is missing from the store",
                        dir.display()
                    ),
                ));
            }
        }
        if layers.is_empty() {
            // An image with no layer is an empty root: one empty directory.
            let empty = self.dir.join("layers").join("empty");
            mkdir(&empty)?;
            layers.push(empty);
        }
        layers.reverse();
        Ok(ResolvedImage {
            digest,
            layers,
            env: strings("Env"),
            working_dir: text("WorkingDir"),
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            store: self.dir.clone(),
            lock: Some(lock),
        })
    }
}
