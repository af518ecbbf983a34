//! Removing images and pruning what no image or sandbox uses. Runs in the caller's process
//! (`runbox image rm` and `prune`).

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::host::cleanup;
use crate::images::reference::{self, Wanted};

use super::{disk_bytes, hex_of, unique, ImageStore, PruneReport, RemoveReport};

impl ImageStore {
    /// Removes `reference`: a name removes that name; a digest (or prefix) removes every name
    /// of that image. The image record goes once no name is left and no sandbox uses it; its
    /// layers and blobs go with the next [`prune`](ImageStore::prune).
    ///
    /// # Errors
    /// `NotFound` if nothing matches; `Io`.
    pub fn remove(&self, reference: &str) -> Result<RemoveReport> {
        let _lock = self.lock(true)?;
        let digest = self.find(reference)?;
        let names: Vec<String> = match reference::wanted(reference)? {
            Wanted::Name(name, also) => {
                // The name as stored (it may have been found in another spelling).
                let all = self.names_of(&digest)?;
                std::iter::once(&name)
                    .chain(&also)
                    .find(|n| all.contains(n))
                    .cloned()
                    .into_iter()
                    .collect()
            }
            _ => self.names_of(&digest)?,
        };
        for name in &names {
            let path = self.dir.join("names").join(reference::name_file(name));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &path, e)),
            }
        }
        let removed = self.names_of(&digest)?.is_empty() && self.live_pins(&digest).is_empty();
        if removed {
            let path = self.record_path(&digest);
            fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            // Its pins are stale (none is live): a failure leaves them to the next prune.
            cleanup::remove_tree(
                &self.dir.join("pins").join(hex_of(&digest)),
                "the pins of a removed image",
            );
        }
        Ok(RemoveReport {
            digest,
            names,
            removed,
        })
    }

    /// Removes what nothing needs: images with no name that no sandbox uses, then layers
    /// and blobs no image has, stale pins, and staging left by interrupted imports and pulls
    /// (of processes that are gone). Everything removed is first renamed into `tmp/`, so a
    /// half-removed layer never looks whole.
    ///
    /// # Errors
    /// `Io` if the store cannot be read.
    pub fn prune(&self) -> Result<PruneReport> {
        let _lock = self.lock(true)?;
        let mut report = PruneReport::default();
        let names = self.names()?;
        // Pins first: a stale pin must not keep an image.
        let pins = self.dir.join("pins");
        for entry in fs::read_dir(&pins)
            .map_err(|e| Error::io("read", &pins, e))?
            .flatten()
        {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let live: Vec<PathBuf> = self
                .live_pins(&digest)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            for pin in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if !live.contains(&pin.path()) && fs::remove_file(pin.path()).is_ok() {
                    report.stale_pins += 1;
                }
            }
            cleanup::remove_empty_dir(&entry.path(), "an image's pins");
        }
        let mut keep_layers = std::collections::HashSet::new();
        let mut keep_blobs = std::collections::HashSet::new();
        for r in self.records()? {
            let named = names.iter().any(|(_, d)| *d == r.digest);
            if !named && self.live_pins(&r.digest).is_empty() {
                let path = self.record_path(&r.digest);
                if fs::remove_file(&path).is_ok() {
                    report.images.push(r.digest);
                }
                continue;
            }
            keep_layers.extend(r.layers.iter().map(|d| hex_of(d).to_string()));
            keep_blobs.insert(hex_of(&r.digest).to_string());
            keep_blobs.insert(hex_of(&r.config_digest).to_string());
        }
        // Names pointing at nothing (their image record was lost).
        for (name, digest) in &names {
            if !self.record_path(digest).exists() {
                cleanup::remove_file(
                    &self.dir.join("names").join(reference::name_file(name)),
                    "a name of a lost image",
                );
            }
        }
        // Layers go to `tmp/` by a rename first (no new directory: a store out of space or
        // inodes can still be pruned), so a half-removed layer never looks whole.
        let tmp = self.dir.join("tmp");
        let trash_name = format!("prune-{}-{}", std::process::id(), unique());
        let mut trash: Vec<PathBuf> = Vec::new();
        let layers = self.dir.join("layers");
        for entry in fs::read_dir(&layers)
            .map_err(|e| Error::io("read", &layers, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep_layers.contains(&name) {
                continue;
            }
            report.freed_bytes += disk_bytes(&entry.path());
            let to = tmp.join(format!("{trash_name}-layer-{name}"));
            if fs::rename(entry.path(), &to).is_ok() {
                report.layers += usize::from(name != "empty");
                trash.push(to);
            }
        }
        let blobs = self.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs)
            .map_err(|e| Error::io("read", &blobs, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep_blobs.contains(&name) {
                continue;
            }
            report.freed_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(entry.path()).is_ok() {
                report.blobs += 1;
            }
        }
        // Staging of processes that are gone (an import in progress holds the shared lock,
        // so none runs now; the layers this prune moved there are the one exception).
        for entry in fs::read_dir(&tmp)
            .map_err(|e| Error::io("read", &tmp, e))?
            .flatten()
        {
            if trash.contains(&entry.path()) {
                continue;
            }
            report.freed_bytes += disk_bytes(&entry.path());
            let gone = if entry.path().is_dir() {
                fs::remove_dir_all(entry.path())
            } else {
                fs::remove_file(entry.path())
            };
            if gone.is_ok() {
                report.staging += 1;
            }
        }
        for t in &trash {
            fs::remove_dir_all(t).map_err(|e| Error::io("remove", t, e))?;
        }
        Ok(report)
    }

    /// Bytes the store takes on disk (every file once, hard links counted once).
    pub fn disk_usage(&self) -> u64 {
        disk_bytes(&self.dir)
    }
}
