//! The store's records: committing staged layers, blobs and image records into place,
//! names, and reading records back. Runs in the caller's process.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::host::{cleanup, state};
use crate::images::reference;

use super::{disk_bytes, hex_of, now_ms, ImageInfo, ImageRecord, ImageStore, FORMAT_VERSION};

impl ImageStore {
    /// Moves a staged, verified layer into place; if another process got there first, ours
    /// is discarded (the content is the same, by its digest).
    pub(crate) fn commit_layer(&self, staged: &Path, diff_id: &str) -> Result<()> {
        let target = self.layer_dir(diff_id);
        if target.is_dir() {
            cleanup::remove_tree(staged, "a staged layer already in the store");
            return Ok(());
        }
        match fs::rename(staged, &target) {
            Ok(()) => Ok(()),
            Err(_) if target.is_dir() => {
                cleanup::remove_tree(staged, "a staged layer already in the store");
                Ok(())
            }
            Err(e) => Err(Error::io("move the layer into", &target, e)),
        }
    }

    /// Stores a verified blob (a manifest or a config) by its digest.
    pub(crate) fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        state::write_durable(&path, bytes)
    }

    pub(super) fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(digest))
    }

    /// Records an image whose blobs and layers are in place (layers made durable first), then
    /// points `names` at it. The record appears whole or not at all.
    pub(crate) fn commit_image(
        &self,
        digest: &str,
        config_digest: &str,
        diff_ids: &[String],
        created: Option<String>,
        names: &[String],
    ) -> Result<ImageInfo> {
        let mut size = 0;
        for id in diff_ids {
            let dir = self.layer_dir(id);
            if !dir.is_dir() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "layer {id} vanished from {} during the import",
                        dir.display()
                    ),
                ));
            }
            size += disk_bytes(&dir);
        }
        // Layers were written without fsync: one syncfs makes them durable before the record
        // that names them exists.
        let fd = File::open(&self.dir).map_err(|e| Error::io("open", &self.dir, e))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|e| Error::with_source(ErrorKind::Io, "sync the image store", e))?;
        let record = ImageRecord {
            format_version: FORMAT_VERSION,
            digest: digest.to_string(),
            config_digest: config_digest.to_string(),
            layers: diff_ids.to_vec(),
            size,
            created: created.clone(),
            stored_unix_ms: now_ms(),
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::with_source(ErrorKind::Io, "encode the image record", e))?;
        state::write_durable(&self.record_path(digest), &json)?;
        for name in names {
            self.set_name(name, digest)?;
        }
        Ok(ImageInfo {
            names: self.names_of(digest)?,
            digest: digest.to_string(),
            size,
            created,
            layers: diff_ids.len(),
        })
    }

    pub(super) fn record_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("images")
            .join(format!("{}.json", hex_of(digest)))
    }

    /// Points `name` at the image `digest` (moving it off another image if it named one).
    pub(crate) fn set_name(&self, name: &str, digest: &str) -> Result<()> {
        reference::check_name(name)?;
        let path = self.dir.join("names").join(reference::name_file(name));
        state::write_durable(&path, digest.as_bytes())
    }

    /// Every (name, digest) pair.
    pub(super) fn names(&self) -> Result<Vec<(String, String)>> {
        let dir = self.dir.join("names");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                continue;
            }
            if let Ok(digest) = fs::read_to_string(entry.path()) {
                out.push((reference::file_name(&file), digest.trim().to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    pub(super) fn names_of(&self, digest: &str) -> Result<Vec<String>> {
        Ok(self
            .names()?
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(n, _)| n)
            .collect())
    }

    pub(super) fn records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.dir.join("images");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            if let Ok(r) = state::read_json::<ImageRecord>(&entry.path()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(super) fn record(&self, digest: &str) -> Result<ImageRecord> {
        state::read_json(&self.record_path(digest)).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no image {digest} in the store"),
                )
            } else {
                e
            }
        })
    }
}
