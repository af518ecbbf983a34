//! The image store on disk: opening it, its lock, records, names, pins, listing, removal
//! and pruning, and committing what an import or a pull staged (see the module docs of
//! [`crate::images`] for the layout).

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::host::state;

use super::reference::{self, Wanted};

/// The default image store: images must outlive reboots, so not under `/run`.
pub const DEFAULT_IMAGE_STORE: &str = "/var/lib/runbox";

/// The on-disk format of the store (`store.json`, image records).
const FORMAT_VERSION: u32 = 1;

/// Most layers an image may have: overlayfs stacks at most 500 lower dirs, and each costs a
/// descriptor and a `/proc/self/fd/N` in the mount options (one page).
pub(crate) const MAX_LAYERS: usize = 128;

/// A store of OCI images (its layout: ARCHITECTURE.md, "The image store"). Cheap to clone; any number
/// of processes may use one store at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

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

/// What [`ImageStore::remove`] did.
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

/// What [`ImageStore::prune`] freed.
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

/// An image record: `images/<hex>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    format_version: u32,
    digest: String,
    config_digest: String,
    /// diff_ids, bottom first.
    layers: Vec<String>,
    size: u64,
    created: Option<String>,
    stored_unix_ms: u64,
}

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

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A number unique in this process, for staging names.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create", dir, e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Bytes of the regular files under `path` (not following symlinks), each inode once.
pub(crate) fn disk_bytes(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = fs::symlink_metadata(p) else {
            return 0;
        };
        if meta.is_dir() {
            let Ok(entries) = fs::read_dir(p) else {
                return 0;
            };
            entries.flatten().map(|e| walk(&e.path(), seen)).sum()
        } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            meta.len()
        } else {
            0
        }
    }
    walk(path, &mut std::collections::HashSet::new())
}

impl ImageStore {
    /// Opens the store at `dir`, creating it if needed.
    ///
    /// # Errors
    /// `Io` if it cannot be created; `UnsupportedHost` if it has another format version.
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageStore> {
        let dir = dir.as_ref();
        if !dir.is_absolute() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("image store {} must be an absolute path", dir.display()),
            ));
        }
        let store = ImageStore {
            dir: dir.to_path_buf(),
        };
        mkdir(dir)?;
        // A layer's whiteouts are 0/0 character devices and its opaque directories carry a
        // `trusted.overlay.` attribute: on an overlayfs (a container's root) the first would
        // hide the file from the store itself and the second is refused.
        let fs = nix::sys::statfs::statfs(dir).map_err(|e| {
            Error::with_source(ErrorKind::Io, format!("statfs {}", dir.display()), e)
        })?;
        if fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC {
            return Err(Error::new(
                ErrorKind::UnsupportedHost,
                format!(
                    "image store {} is on an overlayfs, which cannot hold image layers (their whiteouts); put it on another file system (--image-store)",
                    dir.display()
                ),
            ));
        }
        let marker = dir.join("store.json");
        if !marker.exists() {
            for sub in ["blobs/sha256", "layers", "images", "names", "pins", "tmp"] {
                mkdir(&dir.join(sub))?;
            }
            let version = format!("{{\"format_version\":{FORMAT_VERSION}}}\n");
            state::write_durable(&marker, version.as_bytes())?;
        }
        #[derive(Deserialize)]
        struct Marker {
            format_version: u32,
        }
        let m: Marker = state::read_json(&marker)?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedHost,
                format!(
                    "image store {} has format version {} (this runbox reads {FORMAT_VERSION})",
                    dir.display(),
                    m.format_version
                ),
            ));
        }
        Ok(store)
    }

    /// The store named by `RUNBOX_IMAGE_STORE`, else [`DEFAULT_IMAGE_STORE`].
    pub fn default_dir() -> PathBuf {
        std::env::var_os("RUNBOX_IMAGE_STORE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_STORE))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's lock: shared (imports, pulls, launches: they only add) or exclusive
    /// (`rm`, `prune`: they take away).
    pub(crate) fn lock(&self, exclusive: bool) -> Result<Flock<File>> {
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(file, arg).map_err(|(_, e)| {
            Error::with_source(ErrorKind::Io, format!("lock {}", path.display()), e)
        })
    }

    /// A new empty staging directory under `tmp/`.
    pub(crate) fn stage(&self, what: &str) -> Result<PathBuf> {
        let dir = self
            .dir
            .join("tmp")
            .join(format!("{what}-{}-{}", std::process::id(), unique()));
        mkdir(&dir)?;
        Ok(dir)
    }

    /// The directory of the layer with `diff_id`.
    pub(crate) fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.dir.join("layers").join(hex_of(diff_id))
    }

    /// Moves a staged, verified layer into place; if another process got there first, ours
    /// is discarded (the content is the same, by its digest).
    pub(crate) fn commit_layer(&self, staged: &Path, diff_id: &str) -> Result<()> {
        let target = self.layer_dir(diff_id);
        if target.is_dir() {
            let _ = fs::remove_dir_all(staged);
            return Ok(());
        }
        match fs::rename(staged, &target) {
            Ok(()) => Ok(()),
            Err(_) if target.is_dir() => {
                let _ = fs::remove_dir_all(staged);
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

    fn blob_path(&self, digest: &str) -> PathBuf {
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

    fn record_path(&self, digest: &str) -> PathBuf {
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
    fn names(&self) -> Result<Vec<(String, String)>> {
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

    fn names_of(&self, digest: &str) -> Result<Vec<String>> {
        Ok(self
            .names()?
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(n, _)| n)
            .collect())
    }

    fn records(&self) -> Result<Vec<ImageRecord>> {
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

    fn record(&self, digest: &str) -> Result<ImageRecord> {
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

    fn config_json(&self, config_digest: &str) -> Result<serde_json::Value> {
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
    fn live_pins(&self, digest: &str) -> Vec<(PathBuf, PathBuf)> {
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
            let _ = fs::remove_dir_all(self.dir.join("pins").join(hex_of(&digest)));
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
            let _ = fs::remove_dir(entry.path());
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
                let _ = fs::remove_file(self.dir.join("names").join(reference::name_file(name)));
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
