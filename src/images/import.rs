//! Importing images from files: an OCI image layout directory (what `skopeo copy … oci:DIR:TAG`
//! and `umoci` write) and a `docker save` / `skopeo … docker-archive:` tar. Shared with pulls:
//! unpacking one layer into staging, verified, and committing a whole image at once.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

use super::manifest::{self, Kind, MAX_CONFIG, MAX_MANIFEST};
use super::reference::{check_name, sha256_hex};
use super::store::{ImageInfo, ImageStore, Progress};
use super::unpack::{unpack_layer, Compression, UnpackLimits};

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
                let _ = fs::remove_dir_all(&dir);
                Ok(id)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
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
            let _ = fs::remove_dir_all(dir);
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
    let mut reader = BufReader::new(counting.take(limit));
    let compression = match compression {
        Some(c) => c,
        None => {
            let head = reader
                .fill_buf()
                .map_err(|e| Error::with_source(ErrorKind::InvalidImage, "read a layer", e))?;
            Compression::sniff(head)
        }
    };
    let unpacked = unpack_layer(reader, compression, dir, &UnpackLimits::default())
        .map_err(|e| Error::with_source(ErrorKind::InvalidImage, "unpack a layer", e))?;
    if let Some((digest, size)) = blob {
        if unpacked.compressed_size != size {
            return Err(invalid(format!(
                "layer {digest}: {} bytes where its descriptor says {size}",
                unpacked.compressed_size
            )));
        }
        if unpacked.compressed_digest != digest {
            return Err(invalid(format!(
                "layer {digest}: content has digest {}",
                unpacked.compressed_digest
            )));
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

/// Reads at most `max` bytes of `path`, or an `InvalidImage` error if it is larger.
fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidImage,
            format!("{what} {} cannot be read", path.display()),
            e,
        )
    })?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!(
            "{what} {} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
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
    let meta = fs::metadata(path).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            format!("{} cannot be imported", path.display()),
            e,
        )
    })?;
    if meta.is_dir() {
        import_layout(store, path, tag, progress)
    } else {
        import_archive(store, path, tag, progress)
    }
}

fn import_layout(
    store: &ImageStore,
    dir: &Path,
    tag: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ImageInfo>> {
    let header =
        read_bounded(&dir.join("oci-layout"), 4096, "OCI layout header").map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{} is not an OCI image layout (no oci-layout file)",
                    dir.display()
                ),
            )
        })?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let h: Header = serde_json::from_slice(&header)
        .map_err(|e| Error::with_source(ErrorKind::InvalidImage, "oci-layout is not JSON", e))?;
    if !h.version.starts_with("1.") {
        return Err(invalid(format!(
            "OCI layout version {:?} is not 1.x",
            h.version
        )));
    }
    let index_bytes = read_bounded(&dir.join("index.json"), MAX_MANIFEST, "index.json")?;
    let index: libcontainer::oci_spec::image::ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| Error::with_source(ErrorKind::InvalidImage, "index.json does not parse", e))?;
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
    let blob = |digest: &str, size: u64, max: u64, what: &str| -> Result<Vec<u8>> {
        let hex = sha256_hex(digest, what)?;
        if size > max {
            return Err(invalid(format!(
                "{what} {digest} is larger than {max} bytes"
            )));
        }
        let bytes = read_bounded(&dir.join("blobs/sha256").join(hex), max, what)?;
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
            let path = dir.join("blobs/sha256").join(hex);
            let file = File::open(&path).map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidImage,
                    format!("layer blob {} cannot be read", path.display()),
                    e,
                )
            })?;
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

fn open_archive(path: &Path) -> Result<tar::Archive<File>> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    Ok(tar::Archive::new(f))
}

/// Walks every entry of the archive at `path` (seeking over contents), with `f` given the
/// normalized path and the entry.
fn walk_archive(
    path: &Path,
    mut f: impl FnMut(PathBuf, &mut tar::Entry<'_, File>) -> Result<()>,
) -> Result<()> {
    let mut archive = open_archive(path)?;
    let bad = |e: std::io::Error| {
        Error::with_source(
            ErrorKind::InvalidImage,
            format!("{} is not a readable tar archive", path.display()),
            e,
        )
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
    tag: Option<&str>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ImageInfo>> {
    // Pass 1: manifest.json and the links (old archives link repeated layers).
    let mut manifest_json = None;
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    walk_archive(path, |name, entry| {
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = if kind.is_symlink() {
                    name.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                if let Some(t) = archive_path(&base.join(target)) {
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
    let images: Vec<ArchiveImage> = serde_json::from_slice(&bytes).map_err(|e| {
        Error::with_source(ErrorKind::InvalidImage, "manifest.json does not parse", e)
    })?;
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
    let resolve = |p: &str| -> Result<PathBuf> {
        let mut cur = archive_path(Path::new(p))
            .ok_or_else(|| invalid(format!("archive path {p:?} leaves the archive")))?;
        for _ in 0..16 {
            match links.get(&cur) {
                Some(next) => cur = next.clone(),
                None => return Ok(cur),
            }
        }
        Err(invalid(format!("archive path {p:?}: too many links")))
    };
    // Pass 2: the configs.
    let mut configs: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    for i in &images {
        configs.insert(resolve(&i.config)?, Vec::new());
    }
    walk_archive(path, |name, entry| {
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
            .ok_or_else(|| invalid(format!("config {} is missing from the archive", i.config)))?;
        if config.len() as u64 > MAX_CONFIG {
            return Err(invalid(format!("config {} is too large", i.config)));
        }
        let (diff_ids, created) = manifest::parse_config(config)?;
        if diff_ids.len() != i.layers.len() {
            return Err(invalid(format!(
                "image {} lists {} layers, its config {} diff_ids",
                i.config,
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
                        file.display()
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
    walk_archive(path, |name, entry| {
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
