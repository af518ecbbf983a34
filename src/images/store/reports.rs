//! What the image store reports to its callers: images as listed and inspected, what a
//! removal and a prune did, and the progress of an import or a pull. Plain data, built in
//! the caller's process.

use std::path::PathBuf;

use serde::Serialize;

/// One image as `list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[non_exhaustive]
pub struct ImageInfo {
    /// Every name that points at it, sorted (none for an image reachable by digest only).
    pub names: Vec<String>,
    /// The manifest digest (`sha256:…`), which every image is reachable by.
    pub digest: String,
    /// Bytes of its unpacked layers (shared layers counted in every image that has them).
    pub size: u64,
    /// The config's `created` time, as the image says it.
    pub created: Option<String>,
    /// How many layers it has.
    pub layers: usize,
}

/// One image in full, as `inspect` shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ImageDetails {
    /// What `list` shows.
    #[serde(flatten)]
    pub info: ImageInfo,
    /// The config blob's digest.
    pub config_digest: String,
    /// The layers' diff_ids (sha256 of the uncompressed tar), bottom first.
    pub diff_ids: Vec<String>,
    /// The layers' directories in the store, bottom first.
    pub layer_dirs: Vec<PathBuf>,
    /// The image config (the OCI `config` object: `Env`, `Cmd`, `WorkingDir`, …), as stored.
    pub config: serde_json::Value,
    /// Sandbox directories using it now.
    pub in_use_by: Vec<PathBuf>,
}

/// What [`ImageStore::remove`](crate::ImageStore::remove) did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RemoveReport {
    /// The image's manifest digest.
    pub digest: String,
    /// The names removed.
    pub names: Vec<String>,
    /// The image record itself was removed (no name is left and no sandbox uses it); its
    /// layers go with the next `prune`. False if sandboxes use it: it stays until they are
    /// gone and a `prune` runs.
    pub removed: bool,
}

/// What [`ImageStore::prune`](crate::ImageStore::prune) freed.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// Images without a name and not in use, removed.
    pub images: Vec<String>,
    /// Layer directories no image has, removed.
    pub layers: usize,
    /// Blobs (manifests, configs) no image has, removed.
    pub blobs: usize,
    /// Leftovers of interrupted imports and pulls, removed.
    pub staging: usize,
    /// Pins of sandboxes that are gone, removed.
    pub stale_pins: usize,
    /// Bytes the removed files took.
    pub freed_bytes: u64,
}

/// What a long import or pull is doing, for a progress display. More kinds of progress,
/// and more fields of a layer, may come: match with `_` and `..`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress {
    /// Layer `index` (0-based) of `count` starts: `total` bytes to read, if known.
    #[non_exhaustive]
    Layer {
        /// Its position, bottom first.
        index: usize,
        /// How many the image has.
        count: usize,
        /// Its digest.
        digest: String,
        /// Its size as stored or sent, if known.
        total: Option<u64>,
        /// Already in the store: nothing to read.
        cached: bool,
    },
    /// Bytes of the current layer read so far.
    Bytes(u64),
}
