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

mod cleanup;
mod lookup;
mod records;
mod reports;

pub(crate) use lookup::ResolvedImage;
pub use reports::{ImageDetails, ImageInfo, Progress, PruneReport, RemoveReport};

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
}
