//! Importing images from files: an OCI image layout directory (what `skopeo copy … oci:DIR:TAG`
//! and `umoci` write) and a `docker save` / `skopeo … docker-archive:` tar. Shared with pulls:
//! unpacking one layer into staging, verified, and committing a whole image at once.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::host::sys;

use super::manifest::{self, Kind, MAX_CONFIG, MAX_MANIFEST};
use super::reference::{check_name, sha256_hex};
use super::store::{ImageInfo, ImageStore, Progress};
use super::targuard;
use super::unpack::{unpack_layer, Compression, UnpackError, UnpackLimits};

/// Most entries a docker archive may have (one has a few per layer, and at most
/// [`MAX_LAYERS`](super::store::MAX_LAYERS) layers).
const MAX_ARCHIVE_ENTRIES: u64 = 65_536;
/// Most symlinks and hard links a docker archive may have, and the longest name or target
/// of one (bytes): they are kept in memory while it is read.
const MAX_ARCHIVE_LINKS: usize = 4096;
const MAX_ARCHIVE_LINK_NAME: usize = 1024;

/// Most images one import may bring, and most names it may set: each is a file in the
/// store.
const MAX_IMAGES_PER_IMPORT: usize = 1024;

/// The annotation naming a manifest in an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidImage, msg)
}

/// Layers unpacked into staging for one import: removed on drop unless committed.
pub(crate) struct Staged<'a> {
    store: &'a ImageStore,
    /// diff_id -> staging directory.
    layers: HashMap<String, PathBuf>,
}

impl<'a> Staged<'a> {
    pub(crate) fn new(store: &'a ImageStore) -> Staged<'a> {
        Staged {
            store,
            layers: HashMap::new(),
        }
    }

    /// True if the layer is in the store or staged already.
    pub(crate) fn has(&self, diff_id: &str) -> bool {
        self.layers.contains_key(diff_id) || self.store.layer_dir(diff_id).is_dir()
    }

    /// Unpacks one layer from `input` into staging and checks it: the compressed bytes
    /// against `blob` (digest, size) when given, the uncompressed tar against `diff_id` when
    /// given. Returns the layer's diff_id.
    pub(crate) fn unpack(
        &mut self,
        input: impl Read,
        compression: Option<Compression>,
        blob: Option<(&str, u64)>,
        diff_id: Option<&str>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<String> {
        let dir = self.store.stage("layer")?;
        let result = unpack_checked(input, compression, blob, diff_id, &dir, progress);
        match result {
            Ok(id) if !self.layers.contains_key(&id) => {
                self.layers.insert(id.clone(), dir);
                Ok(id)
            }
            Ok(id) => {
                crate::host::cleanup::remove_tree(&dir, "a staged copy of a layer staged already");
                Ok(id)
            }
            Err(e) => {
                crate::host::cleanup::remove_tree(&dir, "a layer that failed to unpack");
                Err(e)
            }
        }
    }

    /// Moves every staged layer into the store.
    pub(crate) fn commit(mut self) -> Result<()> {
        for (id, dir) in std::mem::take(&mut self.layers) {
            self.store.commit_layer(&dir, &id)?;
        }
        Ok(())
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for dir in self.layers.values() {
            crate::host::cleanup::remove_tree(dir, "a staged layer");
        }
    }
}

/// A reader that reports its byte count every 256 KiB.
struct Counting<'p, R> {
    inner: R,
    done: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(&Progress),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= 256 << 10 || n == 0 {
            self.reported = self.done;
            (self.progress)(&Progress::Bytes(self.done));
        }
        Ok(n)
    }
}

/// A reader that hashes and counts the raw bytes of a layer as they pass, so that a layer
/// that fails to unpack can still be checked against its descriptor.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.count += n as u64;
        Ok(n)
    }
}

/// At most this many characters of a name taken from image data are shown in an error.
const SHOWN: usize = 120;

/// `s` (a path or name from image data) as an error shows it: escaped, and cut at
/// [`SHOWN`] characters.
pub(crate) fn shown(s: &str) -> String {
    let escaped = format!("{s:?}");
    if escaped.chars().count() <= SHOWN {
        escaped
    } else {
        let cut: String = escaped.chars().take(SHOWN).collect();
        format!("{cut}…")
    }
}

/// The error for a layer that failed to unpack. The tar and decompression errors of the
/// crates below quote header bytes (a name field, a number that is not one): those never
/// reach a message. Entry paths are named only when the blob was checked against its
/// descriptor (`verified`): bytes that are the image's own, not some other file's.
fn unpack_error(e: UnpackError, verified: bool) -> Error {
    let cut = |text: String| -> String {
        if text.chars().count() <= 4 * SHOWN {
            text
        } else {
            text.chars().take(4 * SHOWN).collect::<String>() + "…"
        }
    };
    match e {
        UnpackError::Io { path, source } => {
            let full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
            let what = if full {
                "the image store is out of space while unpacking a layer"
            } else {
                "write a layer into the image store"
            };
            let msg = if verified {
                cut(format!("{what} (at {})", path.display()))
            } else {
                what.to_string()
            };
            Error::with_source(ErrorKind::Io, msg, source)
        }
        UnpackError::Read(source) if targuard::refusal(&source).is_some() => invalid(format!(
            "unpack a layer: {}",
            targuard::refusal(&source).unwrap_or_default()
        )),
        UnpackError::Read(source) => invalid(format!(
            "unpack a layer: its compression or tar data is corrupt or truncated ({:?})",
            source.kind()
        )),
        UnpackError::TooManyEntries(_) => invalid(format!("unpack a layer: {e}")),
        other if verified => invalid(cut(format!("unpack a layer: {other}"))),
        UnpackError::UnsafePath { reason, .. } => {
            invalid(format!("unpack a layer: an entry's path {reason}"))
        }
        UnpackError::TooLarge { limit, .. } => invalid(format!(
            "unpack a layer: an entry exceeds the limit of {limit} bytes"
        )),
        UnpackError::Unsupported { what, .. } => {
            invalid(format!("unpack a layer: an entry is an unsupported {what}"))
        }
    }
}

fn unpack_checked(
    input: impl Read,
    compression: Option<Compression>,
    blob: Option<(&str, u64)>,
    diff_id: Option<&str>,
    dir: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<String> {
    let counting = Counting {
        inner: input,
        done: 0,
        reported: 0,
        progress,
    };
    // Bounded by the size the descriptor gives (one byte more shows a longer blob).
    let limit = blob
        .map(|(_, size)| size.saturating_add(1))
        .unwrap_or(u64::MAX);
    let mut raw = Hashing {
        inner: counting.take(limit),
        hasher: Sha256::new(),
        count: 0,
    };
    let result = {
        let mut reader = BufReader::new(&mut raw);
        let compression = match compression {
            Some(c) => c,
            None => {
                let head = reader
                    .fill_buf()
                    .map_err(|e| unpack_error(UnpackError::Read(e), false))?;
                Compression::sniff(head)
            }
        };
        unpack_layer(reader, compression, dir, &UnpackLimits::default())
    };
    let mismatch = |digest: &str, size: u64, got_size: u64, got_digest: &str| -> Option<Error> {
        if got_size != size {
            Some(invalid(format!(
                "layer {digest}: {got_size} bytes where its descriptor says {size}"
            )))
        } else if got_digest != digest {
            Some(invalid(format!(
                "layer {digest}: content has digest {got_digest}"
            )))
        } else {
            None
        }
    };
    let unpacked = match result {
        Ok(u) => u,
        Err(e) => {
            let Some((digest, size)) = blob else {
                return Err(unpack_error(e, false));
            };
            // Read the rest (bounded by the descriptor's size) to learn whether the blob is
            // the one its descriptor names: if not, that is the error, and nothing of its
            // content is quoted.
            let drained = io::copy(&mut raw, &mut io::sink());
            let got = format!("sha256:{}", manifest::hex(&raw.hasher.finalize_reset()));
            if drained.is_ok() {
                if let Some(bad) = mismatch(digest, size, raw.count, &got) {
                    return Err(bad);
                }
            }
            return Err(unpack_error(e, drained.is_ok()));
        }
    };
    if let Some((digest, size)) = blob {
        if let Some(bad) = mismatch(
            digest,
            size,
            unpacked.compressed_size,
            &unpacked.compressed_digest,
        ) {
            return Err(bad);
        }
    }
    if let Some(want) = diff_id {
        if unpacked.diff_id != want {
            return Err(invalid(format!(
                "layer with diff_id {want} in the config: its tar has {}",
                unpacked.diff_id
            )));
        }
    }
    Ok(unpacked.diff_id)
}

/// Reads all of `file` (`len` bytes as `fstat` gave them), or an `InvalidImage` error if it
/// is larger than `max`. `shown` names it in errors.
fn read_bounded(file: File, len: u64, max: u64, what: &str, shown: &str) -> Result<Vec<u8>> {
    if len > max {
        return Err(invalid(format!(
            "{what} {shown} is {len} bytes, more than the {max} allowed"
        )));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| {
        Error::with_source(ErrorKind::InvalidImage, format!("read {what} {shown}"), e)
    })?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!(
            "{what} {shown} is larger than {max} bytes"
        )));
    }
    Ok(bytes)
}

/// What a file's type is, for an error.
fn type_name(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// An OCI layout being imported: its directory, opened once. Every file in it is opened
/// one component at a time, each without following a symlink (`O_NOFOLLOW`, beneath this
/// directory: `openat2` with `RESOLVE_IN_ROOT`) and without blocking on a FIFO
/// (`O_NONBLOCK`), and must then be a regular file: a layout's blob that is a symlink to
/// a host file, or a FIFO, is refused before a byte of it is read.
struct LayoutRoot {
    dir: File,
    path: PathBuf,
}

impl LayoutRoot {
    /// Opens `rel` (`/`-separated, no `.` or `..`), which must be a regular file: the file
    /// and its size.
    fn open_raw(&self, rel: &str) -> io::Result<(File, fs::Metadata)> {
        let mut parts: Vec<&str> = rel.split('/').collect();
        let last = parts.pop().unwrap_or_default();
        let mut parent: Option<File> = None;
        for part in parts {
            let d = sys::open_in_root(parent.as_ref().unwrap_or(&self.dir), part)?;
            if !d.metadata()?.is_dir() {
                return Err(io::Error::from(io::ErrorKind::NotADirectory));
            }
            parent = Some(d);
        }
        let file = sys::open_in_root(parent.as_ref().unwrap_or(&self.dir), last)?;
        let meta = file.metadata()?;
        Ok((file, meta))
    }

    /// [`open_raw`](Self::open_raw), with errors of kind `InvalidImage` naming `what`.
    fn open(&self, rel: &str, what: &str) -> Result<(File, u64)> {
        let shown = format!("{}/{rel}", self.path.display());
        let (file, meta) = self.open_raw(rel).map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::ELOOP) {
                " (it or a directory on its way is a symlink, which a layout must not have)"
            } else {
                ""
            };
            Error::with_source(
                ErrorKind::InvalidImage,
                format!("{what} {shown} cannot be opened{why}"),
                e,
            )
        })?;
        if !meta.is_file() {
            return Err(invalid(format!(
                "{what} {shown} is {}, not a regular file",
                type_name(meta.file_type())
            )));
        }
        Ok((file, meta.len()))
    }

    /// Reads the regular file `rel`, at most `max` bytes.
    fn read(&self, rel: &str, max: u64, what: &str) -> Result<Vec<u8>> {
        let (file, len) = self.open(rel, what)?;
        read_bounded(
            file,
            len,
            max,
            what,
            &format!("{}/{rel}", self.path.display()),
        )
    }
}

/// Imports `path`: an OCI image layout directory, or a docker archive (tar). `tag` picks
/// one image: a layout's `ref.name`, an archive's `RepoTags` entry.
pub(crate) fn import(
    store: &ImageStore,
    path: &Path,
    tag: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ImageInfo>> {
    let _lock = store.lock(false)?;
    // The path the caller names is followed (it is theirs); nothing inside it is. Opened
    // without blocking (a FIFO), then looked at: a directory or a regular file.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("{} cannot be imported", path.display()),
                e,
            )
        })?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if meta.is_dir() {
        let root = LayoutRoot {
            dir: file,
            path: path.to_path_buf(),
        };
        import_layout(store, &root, tag, progress)
    } else if meta.is_file() {
        import_archive(store, path, file, tag, progress)
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{} cannot be imported: it is {}, neither a layout directory nor an archive file",
                path.display(),
                type_name(meta.file_type())
            ),
        ))
    }
}

fn import_layout(
    store: &ImageStore,
    root: &LayoutRoot,
    tag: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ImageInfo>> {
    let dir = root.path.as_path();
    if let Err(e) = root.open_raw("oci-layout") {
        if e.kind() == io::ErrorKind::NotFound {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{} is not an OCI image layout (no oci-layout file)",
                    dir.display()
                ),
            ));
        }
    }
    let header = root.read("oci-layout", 4096, "OCI layout header")?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let h: Header =
        serde_json::from_slice(&header).map_err(|e| manifest::json_error("oci-layout", &e))?;
    if !h.version.starts_with("1.") {
        return Err(invalid(format!(
            "OCI layout version {} is not 1.x",
            shown(&h.version)
        )));
    }
    let index_bytes = root.read("index.json", MAX_MANIFEST, "index.json")?;
    let index: libcontainer::oci_spec::image::ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|e| manifest::json_error("index.json", &e))?;
    let named = |d: &libcontainer::oci_spec::image::Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let chosen: Vec<_> = match tag {
        Some(t) => index
            .manifests()
            .iter()
            .filter(|d| named(d).as_deref() == Some(t))
            .collect(),
        None => {
            let tagged: Vec<_> = index
                .manifests()
                .iter()
                .filter(|d| named(d).is_some())
                .collect();
            if tagged.is_empty() && index.manifests().len() == 1 {
                index.manifests().iter().collect()
            } else {
                tagged
            }
        }
    };
    if chosen.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            match tag {
                Some(t) => format!("{} has no image tagged {t:?}", dir.display()),
                None => format!(
                    "{} has no tagged image (name one with PATH:TAG)",
                    dir.display()
                ),
            },
        ));
    }
    if chosen.len() > MAX_IMAGES_PER_IMPORT {
        return Err(invalid(format!(
            "{} names {} images: at most {MAX_IMAGES_PER_IMPORT} are imported at once (name one with PATH:TAG)",
            dir.display(),
            chosen.len()
        )));
    }
    let blob = |digest: &str, size: u64, max: u64, what: &str| -> Result<Vec<u8>> {
        let hex = sha256_hex(digest, what)?;
        if size > max {
            return Err(invalid(format!(
                "{what} {digest} is larger than {max} bytes"
            )));
        }
        let bytes = root.read(&format!("blobs/sha256/{hex}"), max, what)?;
        manifest::verify(&bytes, digest, Some(size), what)?;
        Ok(bytes)
    };
    let mut out = Vec::new();
    for d in chosen {
        let mut digest = d.digest().to_string();
        let mut bytes = blob(&digest, d.size(), MAX_MANIFEST, "manifest")?;
        if manifest::kind_of_bytes(&bytes, d.media_type().as_ref())? == Kind::Index {
            let entry = manifest::pick_platform(&bytes)?;
            digest = entry.digest().to_string();
            bytes = blob(&digest, entry.size(), MAX_MANIFEST, "manifest")?;
            if manifest::kind_of_bytes(&bytes, entry.media_type().as_ref())? != Kind::Manifest {
                return Err(invalid("an index inside an index is not supported"));
            }
        }
        let parsed = manifest::parse_manifest(&bytes)?;
        let config_digest = parsed.config.digest().to_string();
        let config = blob(&config_digest, parsed.config.size(), MAX_CONFIG, "config")?;
        let (diff_ids, created) = manifest::parse_config(&config)?;
        if diff_ids.len() != parsed.layers.len() {
            return Err(invalid(format!(
                "manifest {digest} has {} layers, its config {} diff_ids",
                parsed.layers.len(),
                diff_ids.len()
            )));
        }
        let mut staged = Staged::new(store);
        let count = diff_ids.len();
        for (i, ((layer, compression), diff_id)) in parsed.layers.iter().zip(&diff_ids).enumerate()
        {
            let layer_digest = layer.digest().to_string();
            let cached = staged.has(diff_id);
            progress(&Progress::Layer {
                index: i,
                count,
                digest: layer_digest.clone(),
                total: Some(layer.size()),
                cached,
            });
            if cached {
                continue;
            }
            let hex = sha256_hex(&layer_digest, "layer digest")?;
            let (file, len) = root.open(&format!("blobs/sha256/{hex}"), "layer blob")?;
            if len != layer.size() {
                return Err(invalid(format!(
                    "layer {layer_digest}: {len} bytes where its descriptor says {}",
                    layer.size()
                )));
            }
            staged.unpack(
                file,
                Some(*compression),
                Some((&layer_digest, layer.size())),
                Some(diff_id),
                progress,
            )?;
        }
        staged.commit()?;
        store.put_blob(&config_digest, &config)?;
        store.put_blob(&digest, &bytes)?;
        let names: Vec<String> = named(d).into_iter().collect();
        for n in &names {
            check_name(n)?;
        }
        out.push(store.commit_image(&digest, &config_digest, &diff_ids, created, &names)?);
    }
    Ok(out)
}

/// A path inside an archive, normalized: no leading `./` or `/`, no `..`.
fn archive_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// One entry of `manifest.json` in a docker archive.
#[derive(serde::Deserialize)]
struct ArchiveImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Walks every entry of the archive `file` (named `path` in errors) from its start, seeking
/// over contents, with `f` given the normalized path and the entry. The archive is the one
/// file opened once by [`import`]: each pass reads the same inode.
fn walk_archive(
    path: &Path,
    file: &File,
    mut f: impl FnMut(PathBuf, &mut tar::Entry<'_, File>) -> Result<()>,
) -> Result<()> {
    let mut file = file.try_clone().map_err(|e| Error::io("reopen", path, e))?;
    file.rewind().map_err(|e| Error::io("rewind", path, e))?;
    let mut archive = tar::Archive::new(file);
    // The tar crate's errors quote header bytes: only their kind is shown.
    let bad = |e: std::io::Error| {
        invalid(format!(
            "{} is not a readable tar archive ({:?})",
            path.display(),
            e.kind()
        ))
    };
    for entry in archive.entries_with_seek().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let Some(name) = entry.path().ok().and_then(|p| archive_path(&p)) else {
            continue;
        };
        f(name, &mut entry)?;
    }
    Ok(())
}

fn import_archive(
    store: &ImageStore,
    path: &Path,
    file: File,
    tag: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ImageInfo>> {
    // Every header first, without the tar crate: it would read a huge long name or PAX
    // header whole into memory.
    targuard::scan_archive(&file, MAX_ARCHIVE_ENTRIES).map_err(|e| {
        match targuard::refusal(&e) {
            Some(why) => invalid(format!("{}: {why}", path.display())),
            None => Error::io("read", path, e),
        }
    })?;
    // Pass 1: manifest.json and the links (old archives link repeated layers).
    let mut manifest_json = None;
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    walk_archive(path, &file, |name, entry| {
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = if kind.is_symlink() {
                    name.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                let long = name.as_os_str().len() > MAX_ARCHIVE_LINK_NAME
                    || target.as_os_str().len() > MAX_ARCHIVE_LINK_NAME;
                if let Some(t) = archive_path(&base.join(target)).filter(|_| !long) {
                    if links.len() >= MAX_ARCHIVE_LINKS {
                        return Err(invalid(format!(
                            "{} has more than {MAX_ARCHIVE_LINKS} links",
                            path.display()
                        )));
                    }
                    links.insert(name, t);
                }
            }
        } else if name == Path::new("manifest.json") && kind.is_file() {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MANIFEST + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("read manifest.json in", path, e))?;
            manifest_json = Some(bytes);
        }
        Ok(())
    })?;
    let Some(bytes) = manifest_json else {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{} is not a docker archive (no manifest.json); for an OCI layout, import its directory",
                path.display()
            ),
        ));
    };
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(invalid("manifest.json is too large"));
    }
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&bytes).map_err(|e| manifest::json_error("manifest.json", &e))?;
    let images: Vec<ArchiveImage> = match tag {
        Some(t) => images
            .into_iter()
            .filter(|i| i.repo_tags.iter().flatten().any(|r| r == t))
            .collect(),
        None => images,
    };
    if images.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "{} has no image{}",
                path.display(),
                tag.map(|t| format!(" tagged {t:?}")).unwrap_or_default()
            ),
        ));
    }
    let tags: usize = images
        .iter()
        .map(|i| i.repo_tags.as_ref().map_or(0, Vec::len))
        .sum();
    if images.len() > MAX_IMAGES_PER_IMPORT || tags > MAX_IMAGES_PER_IMPORT {
        return Err(invalid(format!(
            "{} has {} images and {tags} tags: at most {MAX_IMAGES_PER_IMPORT} of each are imported at once",
            path.display(),
            images.len()
        )));
    }
    let resolve = |p: &str| -> Result<PathBuf> {
        let mut cur = archive_path(Path::new(p))
            .ok_or_else(|| invalid(format!("archive path {} leaves the archive", shown(p))))?;
        for _ in 0..16 {
            match links.get(&cur) {
                Some(next) => cur = next.clone(),
                None => return Ok(cur),
            }
        }
        Err(invalid(format!(
            "archive path {}: too many links",
            shown(p)
        )))
    };
    // Pass 2: the configs.
    let mut configs: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    for i in &images {
        configs.insert(resolve(&i.config)?, Vec::new());
    }
    walk_archive(path, &file, |name, entry| {
        if let Some(slot) = configs.get_mut(&name) {
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                entry
                    .take(MAX_CONFIG + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io("read a config in", path, e))?;
                *slot = bytes;
            }
        }
        Ok(())
    })?;
    // Each image's config, its diff_ids, and which archive file holds which diff_id.
    let mut wanted: HashMap<PathBuf, String> = HashMap::new();
    let mut parsed = Vec::new();
    for i in &images {
        let config = configs
            .get(&resolve(&i.config)?)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "config {} is missing from the archive",
                    shown(&i.config)
                ))
            })?;
        if config.len() as u64 > MAX_CONFIG {
            return Err(invalid(format!("config {} is too large", shown(&i.config))));
        }
        let (diff_ids, created) = manifest::parse_config(config)?;
        if diff_ids.len() != i.layers.len() {
            return Err(invalid(format!(
                "image {} lists {} layers, its config {} diff_ids",
                shown(&i.config),
                i.layers.len(),
                diff_ids.len()
            )));
        }
        for (layer, id) in i.layers.iter().zip(&diff_ids) {
            let file = resolve(layer)?;
            if let Some(other) = wanted.insert(file.clone(), id.clone()) {
                if other != *id {
                    return Err(invalid(format!(
                        "archive file {} is named for two diff_ids",
                        shown(&file.to_string_lossy())
                    )));
                }
            }
        }
        let names: Vec<String> = i.repo_tags.clone().unwrap_or_default();
        for n in &names {
            check_name(n)?;
        }
        parsed.push((
            manifest::digest_of(config),
            config.clone(),
            diff_ids,
            created,
            names,
        ));
    }
    // Pass 3: the layers not in the store yet, each unpacked and checked once.
    let mut staged = Staged::new(store);
    let count = wanted.len();
    let mut index = 0;
    walk_archive(path, &file, |name, entry| {
        let Some(id) = wanted.get(&name) else {
            return Ok(());
        };
        if !entry.header().entry_type().is_file() {
            return Ok(());
        }
        let cached = staged.has(id);
        progress(&Progress::Layer {
            index,
            count,
            digest: id.clone(),
            total: entry.header().size().ok(),
            cached,
        });
        index += 1;
        if !cached {
            staged.unpack(entry, None, None, Some(id), progress)?;
        }
        Ok(())
    })?;
    let mut out = Vec::new();
    for (_, _, diff_ids, _, _) in &parsed {
        if let Some(missing) = diff_ids.iter().find(|id| !staged.has(id)) {
            return Err(invalid(format!(
                "layer {missing} is missing from the archive"
            )));
        }
    }
    staged.commit()?;
    for (digest, config, diff_ids, created, names) in parsed {
        // An image from an archive has no registry manifest: its digest is its config's
        // (docker's image id).
        store.put_blob(&digest, &config)?;
        out.push(store.commit_image(&digest, &digest, &diff_ids, created, &names)?);
    }
    Ok(out)
}

impl ImageStore {
    /// Imports the images of an OCI image layout directory (what `skopeo copy … oci:DIR:TAG`
    /// and `umoci` write) or of a `docker save` / `skopeo … docker-archive:` tar. `tag` picks
    /// one: a layout's `org.opencontainers.image.ref.name`, an archive's `RepoTags` entry.
    /// Without one, a layout gives every tagged manifest (or its only manifest), an archive
    /// every image. Images are named by those tags and reachable by digest (an archive's
    /// image by its config digest, docker's image id). Layers the store has are not read
    /// again; every blob is checked against its digest and size, every layer's tar against
    /// its config's diff_id, before anything of the image is kept.
    ///
    /// # Errors
    /// `InvalidConfig` if `path` is neither; `NotFound` if `tag` names nothing;
    /// `InvalidImage` for data that does not check out; `Io`.
    pub fn import(
        &self,
        path: impl AsRef<Path>,
        tag: Option<&str>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<ImageInfo>> {
        import(self, path.as_ref(), tag, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(
            archive_path(Path::new("./a/b/../layer.tar")),
            Some(PathBuf::from("a/layer.tar"))
        );
        assert_eq!(archive_path(Path::new("/x")), Some(PathBuf::from("x")));
        assert_eq!(archive_path(Path::new("../x")), None);
        assert_eq!(archive_path(Path::new("a/../../x")), None);
    }
}
