//! Unpacking one OCI/Docker image layer (a tar stream, maybe gzip- or zstd-compressed) into a
//! fresh, empty directory that later serves as an overlayfs lower dir.
//!
//! The archive is hostile. Nothing in it may write, create, chmod, chown or link anything
//! outside `dest`, and its size is bounded by [`UnpackLimits`]. The rules follow what
//! containerd, umoci and Docker do:
//!
//! - Entry paths are taken relative to the layer root: a leading `/` or `./` is stripped, and a
//!   `..` component is refused.
//! - Every parent of an entry must be a real directory inside `dest` (checked with `lstat`, so
//!   no symlink is ever followed). Missing parents are created with mode 0755.
//! - A later entry replaces an earlier one at the same path. Files are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, so an existing symlink is removed and never written through.
//! - Device nodes, FIFOs and other special entries are skipped. OCI whiteouts (`.wh.NAME`,
//!   `.wh..wh..opq`) become overlayfs whiteouts: a 0/0 character device, or the
//!   `trusted.overlay.opaque=y` xattr on the directory.
//! - Ownership comes from the numeric uid and gid. Setuid and setgid bits are cleared unless
//!   [`UnpackLimits::keep_setuid`] is set. Xattrs in the archive are ignored.
//!
//! `dest` is assumed to have only this function as its writer while it runs, so checking with
//! `lstat` and then creating (without following symlinks) is race-free enough.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha256};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (one or more concatenated members).
    Gzip,
    /// Zstandard (one or more frames; skippable frames are ignored).
    Zstd,
}

impl Compression {
    /// The compression that an OCI or Docker layer media type names, or `None` for a media
    /// type that is not a layer this module can unpack.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Guesses the compression from the first bytes of a blob: gzip magic `1f 8b`, zstd
    /// magic `28 b5 2f fd`, else [`Compression::None`]. Meant for `docker save` archives, whose
    /// `layer.tar` may be anything.
    pub fn sniff(first_bytes: &[u8]) -> Compression {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Bounds on what one layer may put on disk.
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Largest size of one regular file (for sparse files, the expanded size).
    pub max_file_bytes: u64,
    /// Largest sum of the sizes of all regular files in the layer.
    pub max_total_bytes: u64,
    /// Largest number of tar entries.
    pub max_entries: u64,
    /// Keep the setuid and setgid mode bits (they are cleared by default).
    pub keep_setuid: bool,
}

impl Default for UnpackLimits {
    /// 8 GiB per file, 32 GiB in all, 1,000,000 entries, setuid and setgid cleared.
    fn default() -> Self {
        UnpackLimits {
            max_file_bytes: 8 << 30,
            max_total_bytes: 32 << 30,
            max_entries: 1_000_000,
            keep_setuid: false,
        }
    }
}

/// What [`unpack_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of every byte read from the input (the blob as stored), read to EOF.
    pub compressed_digest: String,
    /// Number of bytes read from the input.
    pub compressed_size: u64,
    /// `sha256:<hex>` of the whole uncompressed tar stream, padding and trailer included.
    pub diff_id: String,
    /// Number of tar entries processed.
    pub entries: u64,
    /// Sum of the sizes of the regular files written.
    pub bytes: u64,
    /// Paths of the entries skipped (device nodes, FIFOs, aufs metadata); at most 100 kept.
    pub skipped: Vec<String>,
}

/// Why a layer could not be unpacked. `dest` is left as it is; the caller removes it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A filesystem operation inside `dest` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path in `dest` that the operation was on.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// The input could not be read, or its compression or tar framing is corrupt or truncated.
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    /// An entry would reach outside `dest` or through something it must not cross.
    #[error("unsafe path {}: {reason}", path.display())]
    UnsafePath {
        /// The entry's path as it appears in the archive (or after normalization).
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file, or all files together, exceed a limit.
    #[error("{}: exceeds the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The entry that went over the limit.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The archive has more entries than allowed.
    #[error("the layer has more than {0} entries")]
    TooManyEntries(u64),
    /// An entry uses a feature this module does not support.
    #[error("{}: unsupported {what}", path.display())]
    Unsupported {
        /// The entry's path.
        path: PathBuf,
        /// What is unsupported.
        what: &'static str,
    },
}

/// Unpacks one layer read from `input`, compressed as `compression`, into the existing
/// directory `dest` (normally empty), within `limits`.
///
/// The input is read to EOF so that [`Unpacked::compressed_digest`] covers the whole blob,
/// and the decompressed stream to its end so that [`Unpacked::diff_id`] covers the whole tar.
/// The caller compares both digests with what the manifest and config say.
///
/// # Errors
///
/// Any [`UnpackError`]. `dest` is then left as it is, possibly half filled: the caller
/// removes it.
pub fn unpack_layer(
    input: impl Read,
    compression: Compression,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    let meta = fs::symlink_metadata(dest).map_err(io_at(dest))?;
    if !meta.is_dir() {
        return Err(UnpackError::UnsafePath {
            path: dest.to_path_buf(),
            reason: "destination is not a directory",
        });
    }
    let mut raw = HashReader::new(input);
    let mut unpacker = Unpacker {
        dest,
        limits,
        entries: 0,
        bytes: 0,
        skipped: Vec::new(),
        dirs: BTreeMap::new(),
    };
    let diff_id = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
            Compression::Zstd => Box::new(ZstdReader::new(&mut raw)?),
        };
        let mut plain = HashReader::new(decoder);
        {
            // The tar crate reads long names and PAX headers whole into memory: bounded.
            let mut archive = tar::Archive::new(super::targuard::TarGuard::new(&mut plain));
            for entry in archive.entries().map_err(UnpackError::Read)? {
                unpacker.entry(entry.map_err(UnpackError::Read)?)?;
            }
        }
        io::copy(&mut plain, &mut io::sink()).map_err(UnpackError::Read)?;
        plain.digest()
    };
    io::copy(&mut raw, &mut io::sink()).map_err(UnpackError::Read)?;
    unpacker.finish_dirs()?;
    Ok(Unpacked {
        compressed_digest: raw.digest(),
        compressed_size: raw.count,
        diff_id,
        entries: unpacker.entries,
        bytes: unpacker.bytes,
        skipped: unpacker.skipped,
    })
}

/// Most entries recorded in [`Unpacked::skipped`].
const MAX_SKIPPED: usize = 100;

/// Reason given when a hard link names something that this layer did not create.
const NOT_IN_LAYER: &str = "hard link target not in this layer";

/// Metadata of an entry, from its tar header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// State of one unpacking run.
struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a UnpackLimits,
    entries: u64,
    bytes: u64,
    skipped: Vec<String>,
    /// Directories whose owner, mode and mtime are applied at the end, children first.
    dirs: BTreeMap<PathBuf, Meta>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.entries = self.entries.saturating_add(1);
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries(self.limits.max_entries));
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let Some(rel) = normalize(&raw_path).map_err(|reason| unsafe_path(&raw_path, reason))?
        else {
            return Ok(()); // The layer root itself: nothing to apply.
        };
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if let Some(victim) = name.strip_prefix(b".wh.") {
            return self.whiteout(&rel, victim);
        }
        let meta = self.meta(entry.header(), &rel)?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
                if raw_path.ends_with(b"/") =>
            {
                self.dir(&rel, meta)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&rel, &mut entry, meta)
            }
            tar::EntryType::Directory => self.dir(&rel, meta),
            tar::EntryType::Symlink => self.symlink(&rel, link, meta),
            tar::EntryType::Link => self.hard_link(&rel, link),
            _ => {
                self.skip(&rel);
                Ok(())
            }
        }
    }

    fn meta(&self, header: &tar::Header, rel: &Path) -> Result<Meta, UnpackError> {
        let old = header.as_old();
        let mut mode = numeric(&old.mode, header.mode().map(u64::from))? & 0o7777;
        if !self.limits.keep_setuid {
            mode &= !u64::from(libc::S_ISUID | libc::S_ISGID);
        }
        let id = |field: &[u8], v: io::Result<u64>| -> Result<u32, UnpackError> {
            u32::try_from(numeric(field, v)?).map_err(|_| UnpackError::Unsupported {
                path: rel.to_path_buf(),
                what: "uid or gid above 2^32",
            })
        };
        Ok(Meta {
            mode: u32::try_from(mode).unwrap_or(0),
            uid: id(&old.uid, header.uid())?,
            gid: id(&old.gid, header.gid())?,
            mtime: numeric(&old.mtime, header.mtime())?,
        })
    }

    fn file<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        if size > self.limits.max_file_bytes {
            return Err(too_large(rel, self.limits.max_file_bytes));
        }
        let total = self
            .bytes
            .checked_add(size)
            .filter(|t| *t <= self.limits.max_total_bytes)
            .ok_or_else(|| too_large(rel, self.limits.max_total_bytes))?;
        let full = self.create_parents(rel)?;
        self.clear(rel, &full, false)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&full)
            .map_err(io_at(&full))?;
        copy_contents(entry, &file, size, &full)?;
        self.bytes = total;
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)).map_err(io_at(&full))?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(io_at(&full))?;
        drop(file);
        set_mtime(&full, meta.mtime)
    }

    fn dir(&mut self, rel: &Path, meta: Meta) -> Result<(), UnpackError> {
        let full = self.create_parents(rel)?;
        if !self.clear(rel, &full, true)? {
            DirBuilder::new()
                .mode(0o700)
                .create(&full)
                .map_err(io_at(&full))?;
        }
        self.dirs.insert(rel.to_path_buf(), meta);
        Ok(())
    }

    fn symlink(
        &mut self,
        rel: &Path,
        target: Option<Vec<u8>>,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let target = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unsupported(rel, "symlink without a target"))?;
        let full = self.create_parents(rel)?;
        self.clear(rel, &full, false)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full).map_err(io_at(&full))?;
        std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid)).map_err(io_at(&full))?;
        set_mtime(&full, meta.mtime)
    }

    fn hard_link(&mut self, rel: &Path, target: Option<Vec<u8>>) -> Result<(), UnpackError> {
        let target = target.ok_or_else(|| unsupported(rel, "hard link without a target"))?;
        let target_rel = normalize(&target)
            .map_err(|reason| unsafe_path(rel.as_os_str().as_bytes(), reason))?
            .ok_or_else(|| unsupported(rel, "hard link to the layer root"))?;
        let target_full = match self.walk(&target_rel, false)? {
            Ok(full) => full,
            Err(reason) => return Err(unsafe_path(rel.as_os_str().as_bytes(), reason)),
        };
        let kind = match fs::symlink_metadata(&target_full) {
            Ok(m) => m.file_type(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unsafe_path(rel.as_os_str().as_bytes(), NOT_IN_LAYER))
            }
            Err(e) => return Err(io_at(&target_full)(e)),
        };
        if !(kind.is_file() || kind.is_symlink()) {
            return Err(unsupported(rel, "hard link to a directory or special file"));
        }
        if target_rel == rel {
            return Ok(());
        }
        let full = self.create_parents(rel)?;
        self.clear(rel, &full, false)?;
        // std's hard_link is linkat(2) without AT_SYMLINK_FOLLOW on Linux: a symlink target is
        // linked itself, never followed (a unit test checks this).
        fs::hard_link(&target_full, &full).map_err(io_at(&full))
    }

    /// Handles an entry named `.wh.<victim>`.
    fn whiteout(&mut self, rel: &Path, victim: &[u8]) -> Result<(), UnpackError> {
        if victim == b".wh..opq" {
            let full = self.create_parents(rel)?;
            let dir = full.parent().unwrap_or(self.dest);
            return set_opaque(dir).map_err(io_at(dir));
        }
        if victim.starts_with(b".wh.") {
            self.skip(rel); // aufs metadata such as .wh..wh.plnk
            return Ok(());
        }
        if matches!(victim, b"" | b"." | b"..") {
            return Err(unsafe_path(
                rel.as_os_str().as_bytes(),
                "invalid whiteout name",
            ));
        }
        let victim = rel.with_file_name(OsStr::from_bytes(victim));
        let full = self.create_parents(&victim)?;
        self.clear(&victim, &full, false)?;
        mknod(&full, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| io_at(&full)(e.into()))
    }

    fn skip(&mut self, rel: &Path) {
        if self.skipped.len() < MAX_SKIPPED {
            self.skipped.push(rel.to_string_lossy().into_owned());
        }
    }

    /// Checks that every parent of `rel` is a real directory, creating missing ones, and
    /// returns the full path of `rel` in `dest`.
    fn create_parents(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        self.walk(rel, true)?
            .map_err(|reason| unsafe_path(rel.as_os_str().as_bytes(), reason))
    }

    /// Walks the parents of `rel` in `dest` with `lstat`. The outer error is an I/O failure;
    /// the inner one says why the walk stopped (a symlink, a non-directory, or a missing
    /// parent when `create` is false).
    fn walk(&self, rel: &Path, create: bool) -> Result<Result<PathBuf, &'static str>, UnpackError> {
        let mut cur = self.dest.to_path_buf();
        for part in rel.parent().map(Path::components).into_iter().flatten() {
            cur.push(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => return Ok(Err("crosses a symlink")),
                Ok(_) => return Ok(Err("crosses a non-directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(io_at(&cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(io_at(&cur))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(NOT_IN_LAYER)),
                Err(e) => return Err(io_at(&cur)(e)),
            }
        }
        Ok(Ok(self.dest.join(rel)))
    }

    /// Removes what an earlier entry left at `rel` (full path `full`) so a new entry can take
    /// its place. A directory is kept (and `true` returned) when the new entry is a directory
    /// too; a directory removed takes its pending metadata (and its subtree's) with it.
    fn clear(&mut self, rel: &Path, full: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
        match fs::symlink_metadata(full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(full)(e)),
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(m) if m.is_dir() => {
                // remove_dir_all does not follow symlinks inside the tree, and `full` itself
                // was just seen as a real directory under parents that are real directories.
                fs::remove_dir_all(full).map_err(io_at(full))?;
                // A subtree is contiguous in the map: paths order component by component.
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range::<Path, _>((Bound::Included(rel), Bound::Unbounded))
                    .map(|(p, _)| p)
                    .take_while(|p| p.starts_with(rel))
                    .cloned()
                    .collect();
                for p in gone {
                    self.dirs.remove(&p);
                }
                Ok(false)
            }
            Ok(_) => fs::remove_file(full).map(|()| false).map_err(io_at(full)),
        }
    }

    /// Applies owner, mode and mtime to the directories, deepest first, skipping any that a
    /// later entry replaced or put behind a symlink.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (rel, meta) in self.dirs.iter().rev() {
            let Ok(full) = self.walk(rel, false)? else {
                continue;
            };
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid))
                .map_err(io_at(&full))?;
            fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
                .map_err(io_at(&full))?;
            set_mtime(&full, meta.mtime)?;
        }
        Ok(())
    }
}

/// Turns an entry path into a path relative to the layer root: empty and `.` components
/// (so a leading `/` or `./`) are dropped, `..` is refused. `None` is the root itself.
fn normalize(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("contains a `..` component"),
            _ => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// A numeric header field as the tar crate parsed it, except that a field of only NULs and
/// spaces reads as 0, as in Go's archive/tar (some writers leave unused fields empty).
fn numeric(field: &[u8], parsed: io::Result<u64>) -> Result<u64, UnpackError> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(0)
    } else {
        parsed.map_err(UnpackError::Read)
    }
}

/// Copies the contents of a regular file entry, leaving holes where the data is all zeros.
fn copy_contents(
    entry: &mut impl Read,
    file: &File,
    size: u64,
    full: &Path,
) -> Result<(), UnpackError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Read(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if chunk.iter().any(|b| *b != 0) {
            file.write_all_at(chunk, written).map_err(io_at(full))?;
        }
        written = written
            .checked_add(chunk.len() as u64)
            .filter(|w| *w <= size)
            .ok_or_else(|| {
                UnpackError::Read(io::Error::other("file data longer than its header"))
            })?;
    }
    if written != size {
        return Err(UnpackError::Read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file data truncated",
        )));
    }
    file.set_len(size).map_err(io_at(full))
}

/// Sets atime and mtime of `full` without following a symlink.
fn set_mtime(full: &Path, mtime: u64) -> Result<(), UnpackError> {
    let t = TimeSpec::new(
        libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
        0,
    );
    utimensat(None, full, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_at(full)(e.into()))
}

/// Marks the directory `dir` opaque for overlayfs.
fn set_opaque(dir: &Path) -> io::Result<()> {
    crate::host::sys::set_xattr(dir, c"trusted.overlay.opaque", b"y")
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unsafe_path(raw: &[u8], reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath {
        path: PathBuf::from(OsStr::from_bytes(raw)),
        reason,
    }
}

fn too_large(rel: &Path, limit: u64) -> UnpackError {
    UnpackError::TooLarge {
        path: rel.to_path_buf(),
        limit,
    }
}

fn unsupported(rel: &Path, what: &'static str) -> UnpackError {
    UnpackError::Unsupported {
        path: rel.to_path_buf(),
        what,
    }
}

/// A reader that hashes and counts what passes through it.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn digest(&self) -> String {
        let hex: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or_default();
        self.hasher.update(data);
        self.count = self.count.saturating_add(data.len() as u64);
        Ok(data.len())
    }
}

/// A Zstandard decoder for a stream of frames, skippable frames included, that verifies
/// each frame's content checksum. ruzstd's `StreamingDecoder` reads one frame only.
struct ZstdReader<R> {
    src: R,
    dec: FrameDecoder,
    in_frame: bool,
    done: bool,
}

/// A minimal frame header (single segment, content size 0). A fresh `FrameDecoder` does not
/// check the window size of the first frame it is initialised with; later frames go through
/// `FrameDecoder::reset`, which refuses windows above 100 MiB. Priming the decoder with this
/// header puts every real frame under that bound, so a hostile frame header cannot make the
/// decoder keep an unbounded window in memory.
const ZSTD_PRIMER: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00];

impl<R: Read> ZstdReader<R> {
    fn new(src: R) -> Result<Self, UnpackError> {
        let mut dec = FrameDecoder::new();
        dec.init(&ZSTD_PRIMER[..])
            .map_err(|e| UnpackError::Read(io::Error::other(e)))?;
        Ok(ZstdReader {
            src,
            dec,
            in_frame: false,
            done: false,
        })
    }

    /// Starts the next frame, skipping a skippable one. Returns false at a clean EOF.
    fn next_frame(&mut self) -> io::Result<bool> {
        let mut first = [0u8; 1];
        loop {
            match self.src.read(&mut first) {
                Ok(0) => return Ok(false),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match self.dec.reset((&first[..]).chain(&mut self.src)) {
            Ok(()) => self.in_frame = true,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                let length = u64::from(length);
                let skipped = io::copy(&mut (&mut self.src).take(length), &mut io::sink())?;
                if skipped != length {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        Ok(true)
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.done {
            if !self.in_frame {
                self.done = !self.next_frame()?;
                continue;
            }
            while self.dec.can_collect() < buf.len() && !self.dec.is_finished() {
                let want = buf.len().saturating_sub(self.dec.can_collect());
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // The frame is decoded and drained: check its checksum, then go to the next one.
            if let (Some(stored), Some(computed)) = (
                self.dec.get_checksum_from_data(),
                self.dec.get_calculated_checksum(),
            ) {
                if stored != computed {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zstd frame checksum mismatch",
                    ));
                }
            }
            self.in_frame = false;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A scratch directory under /dev/shm, removed on drop; `dest` is created empty inside it.
    struct Scratch {
        root: PathBuf,
        dest: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            // On a tmpfs (/dev/shm), as a store must not be on an overlayfs: in the test
            // guest, whose / is one, whiteouts and opaque attributes would not stick.
            let root = PathBuf::from(format!(
                "/dev/shm/unpack-test-{}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&root);
            let dest = root.join("a").join("dest");
            fs::create_dir_all(&dest).unwrap();
            Scratch { root, dest }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// Appends an entry with a raw name and link name, bypassing the builder's path checks.
    fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_mtime(1_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        raw(
            b,
            name.as_bytes(),
            tar::EntryType::Regular,
            b"",
            0o644,
            data,
        );
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) {
        raw(
            b,
            name.as_bytes(),
            tar::EntryType::Directory,
            b"",
            mode,
            b"",
        );
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        raw(
            b,
            name.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            0o777,
            b"",
        );
    }

    fn hard(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        raw(
            b,
            name.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            0o644,
            b"",
        );
    }

    fn build(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        let hex: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }

    fn unpack(data: &[u8], c: Compression, dest: &Path) -> Result<Unpacked, UnpackError> {
        unpack_layer(data, c, dest, &UnpackLimits::default())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn sample() -> Vec<u8> {
        build(|b| {
            dir(b, "./etc/", 0o755);
            file(b, "./etc/hello", b"hello world\n");
            symlink(b, "./etc/link", "/etc/hello");
            file(b, "usr/bin/tool", &vec![7u8; 100_000]);
        })
    }

    fn check_sample(dest: &Path, u: &Unpacked, tar: &[u8]) {
        assert_eq!(u.diff_id, sha(tar));
        assert_eq!(u.entries, 4);
        assert_eq!(u.bytes, 100_012);
        assert_eq!(fs::read(dest.join("etc/hello")).unwrap(), b"hello world\n");
        assert_eq!(
            fs::read_link(dest.join("etc/link")).unwrap(),
            Path::new("/etc/hello")
        );
        assert_eq!(
            fs::read(dest.join("usr/bin/tool")).unwrap(),
            vec![7u8; 100_000]
        );
        let m = fs::symlink_metadata(dest.join("etc/hello")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 2000, 0o644));
        assert_eq!(m.mtime(), 1_000_000);
        let l = fs::symlink_metadata(dest.join("etc/link")).unwrap();
        assert_eq!((l.uid(), l.gid(), l.mtime()), (1000, 2000, 1_000_000));
        let d = fs::symlink_metadata(dest.join("etc")).unwrap();
        assert_eq!(
            (d.uid(), d.mode() & 0o7777, d.mtime()),
            (1000, 0o755, 1_000_000)
        );
        let p = fs::symlink_metadata(dest.join("usr")).unwrap();
        assert_eq!((p.uid(), p.mode() & 0o7777), (0, 0o755));
    }

    #[test]
    fn plain_round_trip() {
        let s = Scratch::new("plain");
        let tar = sample();
        let u = unpack(&tar, Compression::None, &s.dest).unwrap();
        check_sample(&s.dest, &u, &tar);
        assert_eq!(u.compressed_digest, sha(&tar));
        assert_eq!(u.compressed_size, tar.len() as u64);
    }

    #[test]
    fn gzip_round_trip_with_two_members() {
        let s = Scratch::new("gzip");
        let tar = sample();
        let (head, tail) = tar.split_at(3000);
        let mut gz = gzip(head);
        gz.extend(gzip(tail));
        let u = unpack(&gz, Compression::Gzip, &s.dest).unwrap();
        check_sample(&s.dest, &u, &tar);
        assert_eq!(u.compressed_digest, sha(&gz));
        assert_eq!(u.compressed_size, gz.len() as u64);
    }

    #[test]
    fn zstd_round_trip_with_frames_and_skippable_frame() {
        let s = Scratch::new("zstd");
        let tar = sample();
        let (head, tail) = tar.split_at(3000);
        let mut zst = zstd(head);
        zst.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]); // skippable frame
        zst.extend(zstd(tail));
        let u = unpack(&zst, Compression::Zstd, &s.dest).unwrap();
        check_sample(&s.dest, &u, &tar);
        assert_eq!(u.compressed_digest, sha(&zst));
        assert_eq!(u.compressed_size, zst.len() as u64);
    }

    /// `printf 'hello zstd\n' > hello.txt; touch -d @1000000 hello.txt;
    /// tar --format=ustar --owner=0 --group=0 --numeric-owner -cf layer.tar hello.txt;
    /// zstd -19 --check layer.tar` (zstd CLI v1.5).
    const CLI_ZSTD: [u8; 92] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x27, 0x75, 0x02, 0x00, 0x82, 0x43, 0x0b, 0x10, 0xb0,
        0xeb, 0x67, 0x14, 0x02, 0x72, 0xf2, 0xc3, 0x54, 0x52, 0xd6, 0x06, 0xbe, 0x95, 0x28, 0xa7,
        0x06, 0x66, 0xd9, 0x0b, 0xfe, 0xbd, 0xca, 0xb2, 0x66, 0x3f, 0x78, 0xe8, 0x11, 0xef, 0x1f,
        0x31, 0x95, 0x98, 0xe0, 0x7f, 0x67, 0xea, 0xbd, 0x6e, 0x85, 0x4a, 0xe9, 0xa0, 0x0b, 0x20,
        0x50, 0x2f, 0xc7, 0x38, 0xf1, 0xc5, 0xb8, 0x0d, 0x20, 0x00, 0xe9, 0x14, 0x80, 0x23, 0x80,
        0x4a, 0xe7, 0x33, 0x41, 0xeb, 0x41, 0x76, 0xd0, 0x00, 0xbb, 0x69, 0x75, 0x01, 0xca, 0xf5,
        0xab, 0x1e,
    ];

    #[test]
    fn zstd_cli_blob() {
        let s = Scratch::new("zstdcli");
        let u = unpack(&CLI_ZSTD, Compression::Zstd, &s.dest).unwrap();
        assert_eq!(
            u.diff_id,
            "sha256:624b5e3427d6aec481e0b8478cee45b30c9738d4438076b513f7fd832526e485"
        );
        assert_eq!(
            u.compressed_digest,
            "sha256:d0a437d9f25c1e8885e750036dde2dfa18f302974443bb624ef4a8c0a9eb87eb"
        );
        assert_eq!(fs::read(s.dest.join("hello.txt")).unwrap(), b"hello zstd\n");
    }

    #[test]
    fn zstd_bad_checksum_is_read_error() {
        for mut zst in [CLI_ZSTD.to_vec(), zstd(&sample())] {
            let s = Scratch::new("zstdsum");
            let last = zst.len() - 1;
            zst[last] ^= 0xff;
            let e = unpack(&zst, Compression::Zstd, &s.dest).unwrap_err();
            assert!(matches!(e, UnpackError::Read(_)), "{e}");
        }
    }

    #[test]
    fn zstd_huge_window_refused() {
        let s = Scratch::new("zstdwin");
        // Window descriptor 0xf8: 2^41 bytes.
        let big_window = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00];
        // Single segment, 8-byte content size 2^40: the window is the content size.
        let mut big_single = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        big_single.extend((1u64 << 40).to_le_bytes());
        big_single.extend([0x01, 0x00, 0x00]);
        for blob in [&big_window[..], &big_single[..]] {
            let e = unpack(blob, Compression::Zstd, &s.dest).unwrap_err();
            assert!(matches!(e, UnpackError::Read(_)), "{e}");
            assert!(format!("{e:?}").contains("WindowSizeTooBig"), "{e:?}");
        }
    }

    #[test]
    fn trailing_garbage_is_hashed() {
        let s = Scratch::new("trailing");
        let mut tar = sample();
        tar.extend([1u8; 777]);
        let u = unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(u.diff_id, sha(&tar));
        assert_eq!(u.compressed_size, tar.len() as u64);
    }

    #[test]
    fn dot_dot_rejected() {
        let s = Scratch::new("dotdot");
        for name in ["../escape", "x/../../escape", "./.."] {
            let tar = build(|b| file(b, name, b"x"));
            let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
            assert!(matches!(e, UnpackError::UnsafePath { .. }), "{e}");
        }
        assert!(!s.root.join("a/escape").exists());
        assert!(!s.root.join("escape").exists());
        assert_eq!(fs::read_dir(&s.dest).unwrap().count(), 0);
    }

    #[test]
    fn absolute_path_lands_inside() {
        let s = Scratch::new("abs");
        let tar = build(|b| {
            file(b, "/etc/passwd-x", b"inside");
            dir(b, "/", 0o700);
            dir(b, ".", 0o700);
        });
        let before = fs::symlink_metadata(&s.dest).unwrap().mode();
        unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(fs::read(s.dest.join("etc/passwd-x")).unwrap(), b"inside");
        assert!(!Path::new("/etc/passwd-x").exists());
        assert_eq!(fs::symlink_metadata(&s.dest).unwrap().mode(), before);
    }

    #[test]
    fn file_through_symlink_rejected() {
        let s = Scratch::new("symlinkdir");
        let evil = format!("runbox-unpack-evil-{}", std::process::id());
        let tar = build(|b| {
            symlink(b, "a", "/etc");
            file(b, &format!("a/{evil}"), b"pwned");
        });
        let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
        let host = Path::new("/etc").join(&evil);
        let escaped = host.exists();
        let _ = fs::remove_file(&host);
        assert!(!escaped);
        assert!(
            matches!(
                e,
                UnpackError::UnsafePath {
                    reason: "crosses a symlink",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn hard_link_through_symlink_rejected() {
        let s = Scratch::new("hardsym");
        let tar = build(|b| {
            symlink(b, "l", "../../..");
            hard(b, "h", "l/etc/passwd");
        });
        let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
        assert!(
            matches!(
                e,
                UnpackError::UnsafePath {
                    reason: "crosses a symlink",
                    ..
                }
            ),
            "{e}"
        );
        assert!(fs::symlink_metadata(s.dest.join("h")).is_err());
    }

    #[test]
    fn hard_link_outside_or_missing_rejected() {
        let s = Scratch::new("hardout");
        fs::write(s.root.join("a/outside"), b"secret").unwrap();
        let cases: [(&str, &str); 4] = [
            ("../outside", "contains a `..` component"),
            ("/../outside", "contains a `..` component"),
            ("missing", NOT_IN_LAYER),
            ("nodir/missing", NOT_IN_LAYER),
        ];
        for (target, want) in cases {
            let tar = build(|b| hard(b, "h", target));
            let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
            assert!(
                matches!(&e, UnpackError::UnsafePath { reason, .. } if *reason == want),
                "{target}: {e}"
            );
        }
        assert!(fs::symlink_metadata(s.dest.join("h")).is_err());
    }

    #[test]
    fn hard_link_to_earlier_entries() {
        let s = Scratch::new("hardok");
        let tar = build(|b| {
            file(b, "f", b"data");
            hard(b, "dir/h", "./f");
            symlink(b, "s", "/etc/passwd");
            hard(b, "hs", "/s");
            hard(b, "f", "f");
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        let f = fs::symlink_metadata(s.dest.join("f")).unwrap();
        let h = fs::symlink_metadata(s.dest.join("dir/h")).unwrap();
        assert_eq!((f.ino(), f.nlink()), (h.ino(), 2));
        let sl = fs::symlink_metadata(s.dest.join("s")).unwrap();
        let hs = fs::symlink_metadata(s.dest.join("hs")).unwrap();
        assert!(hs.file_type().is_symlink());
        assert_eq!(sl.ino(), hs.ino());
    }

    #[test]
    fn hard_link_to_directory_unsupported() {
        let s = Scratch::new("harddir");
        let tar = build(|b| {
            dir(b, "d", 0o755);
            hard(b, "h", "d");
        });
        let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
        assert!(matches!(e, UnpackError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn devices_and_fifos_skipped() {
        let s = Scratch::new("dev");
        let tar = build(|b| {
            raw(b, b"dev/null", tar::EntryType::Char, b"", 0o666, b"");
            raw(b, b"dev/sda", tar::EntryType::Block, b"", 0o660, b"");
            raw(b, b"run/fifo", tar::EntryType::Fifo, b"", 0o600, b"");
            file(b, "ok", b"");
        });
        let u = unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(u.skipped, ["dev/null", "dev/sda", "run/fifo"]);
        assert!(fs::symlink_metadata(s.dest.join("dev/null")).is_err());
        assert!(fs::symlink_metadata(s.dest.join("run/fifo")).is_err());
        assert!(s.dest.join("ok").is_file());
    }

    #[test]
    fn setuid_cleared_unless_kept() {
        let tar = build(|b| {
            raw(b, b"bin/su", tar::EntryType::Regular, b"", 0o4755, b"x");
            raw(b, b"bin/wall", tar::EntryType::Regular, b"", 0o2755, b"x");
            dir(b, "tmp", 0o1777);
            dir(b, "mail", 0o2775);
        });
        for (keep, su, wall, mail) in [(false, 0o755, 0o755, 0o775), (true, 0o4755, 0o2755, 0o2775)]
        {
            let s = Scratch::new("setuid");
            let limits = UnpackLimits {
                keep_setuid: keep,
                ..UnpackLimits::default()
            };
            unpack_layer(&tar[..], Compression::None, &s.dest, &limits).unwrap();
            let mode = |p: &str| fs::symlink_metadata(s.dest.join(p)).unwrap().mode() & 0o7777;
            assert_eq!(mode("bin/su"), su);
            assert_eq!(mode("bin/wall"), wall);
            assert_eq!(mode("tmp"), 0o1777);
            assert_eq!(mode("mail"), mail);
            assert_eq!(
                fs::symlink_metadata(s.dest.join("bin/su")).unwrap().uid(),
                1000
            );
        }
    }

    #[test]
    fn whiteout_makes_char_device() {
        let s = Scratch::new("whiteout");
        let tar = build(|b| {
            file(b, "d/gone", b"earlier");
            dir(b, "d/tree", 0o755);
            file(b, "d/tree/x", b"x");
            file(b, "d/.wh.gone", b"");
            file(b, "d/.wh.tree", b"");
            file(b, "x/.wh.new", b"");
            file(b, ".wh..wh.plnk", b"");
        });
        let u = unpack(&tar, Compression::None, &s.dest).unwrap();
        for p in ["d/gone", "d/tree", "x/new"] {
            let m = fs::symlink_metadata(s.dest.join(p)).unwrap();
            assert!(m.file_type().is_char_device(), "{p}");
            assert_eq!(
                (m.rdev(), m.mode() & 0o7777, m.uid(), m.gid()),
                (0, 0, 0, 0)
            );
        }
        assert!(fs::symlink_metadata(s.dest.join("d/.wh.gone")).is_err());
        assert_eq!(u.skipped, [".wh..wh.plnk"]);
    }

    #[test]
    fn bad_whiteout_names_rejected() {
        let s = Scratch::new("badwh");
        for name in ["d/.wh.", "d/.wh..", ".wh."] {
            let tar = build(|b| file(b, name, b""));
            let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
            assert!(matches!(e, UnpackError::UnsafePath { .. }), "{name}: {e}");
        }
    }

    fn opaque(path: &Path) -> Option<Vec<u8>> {
        crate::host::sys::get_xattr(path, c"trusted.overlay.opaque").ok()
    }

    #[test]
    fn opaque_whiteout_sets_xattr() {
        let s = Scratch::new("opaque");
        let tar = build(|b| {
            dir(b, "d", 0o755);
            file(b, "d/.wh..wh..opq", b"");
            file(b, "d/kept", b"k");
            file(b, "new/deep/.wh..wh..opq", b"");
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(opaque(&s.dest.join("d")).as_deref(), Some(&b"y"[..]));
        assert_eq!(opaque(&s.dest.join("new/deep")).as_deref(), Some(&b"y"[..]));
        assert_eq!(opaque(&s.dest.join("new")), None);
        assert!(s.dest.join("d/kept").is_file());
        assert!(fs::symlink_metadata(s.dest.join("d/.wh..wh..opq")).is_err());
    }

    #[test]
    fn too_large_file_and_total() {
        let s = Scratch::new("large");
        let limits = UnpackLimits {
            max_file_bytes: 10,
            max_total_bytes: 15,
            ..UnpackLimits::default()
        };
        let tar = build(|b| file(b, "big", &[1u8; 11]));
        let e = unpack_layer(&tar[..], Compression::None, &s.dest, &limits).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { limit: 10, .. }), "{e}");
        assert!(fs::symlink_metadata(s.dest.join("big")).is_err());
        let tar = build(|b| {
            file(b, "a", &[1u8; 10]);
            file(b, "b", &[1u8; 6]);
        });
        let e = unpack_layer(&tar[..], Compression::None, &s.dest, &limits).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { limit: 15, .. }), "{e}");
    }

    #[test]
    fn header_size_claim_checked_before_writing() {
        let s = Scratch::new("claim");
        // A header that claims 1 TiB with no data behind it.
        let mut h = tar::Header::new_gnu();
        h.set_path("huge").unwrap();
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend([0u8; 1024]);
        let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
        assert!(fs::symlink_metadata(s.dest.join("huge")).is_err());
    }

    #[test]
    fn truncated_inputs_are_read_errors() {
        let tar = sample();
        let gz = gzip(&tar);
        let zst = zstd(&tar);
        for (blob, c) in [(&gz, Compression::Gzip), (&zst, Compression::Zstd)] {
            let s = Scratch::new("trunc");
            let e = unpack(&blob[..blob.len() / 2], c, &s.dest).unwrap_err();
            assert!(matches!(e, UnpackError::Read(_)), "{e}");
        }
        let s = Scratch::new("trunc-plain");
        let e = unpack(&tar[..2000], Compression::None, &s.dest).unwrap_err();
        assert!(matches!(e, UnpackError::Read(_)), "{e}");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let s = Scratch::new("replace");
        let outside = s.root.join("a/outside");
        fs::write(&outside, b"original").unwrap();
        let tar = build(|b| {
            symlink(b, "x", "../outside");
            file(b, "x", b"new");
            file(b, "d", b"file first");
            dir(b, "d", 0o750);
            file(b, "d/child", b"c");
            dir(b, "t", 0o755);
            file(b, "t/child", b"c");
            symlink(b, "t", "/");
            dir(b, "keep", 0o700);
            file(b, "keep/a", b"a");
            dir(b, "keep", 0o711);
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"original");
        let x = fs::symlink_metadata(s.dest.join("x")).unwrap();
        assert!(x.is_file());
        assert_eq!(fs::read(s.dest.join("x")).unwrap(), b"new");
        assert!(fs::symlink_metadata(s.dest.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(s.dest.join("d/child")).unwrap(), b"c");
        assert!(fs::symlink_metadata(s.dest.join("t"))
            .unwrap()
            .file_type()
            .is_symlink());
        let keep = fs::symlink_metadata(s.dest.join("keep")).unwrap();
        assert_eq!(keep.mode() & 0o7777, 0o711);
        assert!(s.dest.join("keep/a").is_file());
        // The root directory's metadata was not touched through the symlink `t`.
        assert_ne!(fs::symlink_metadata("/").unwrap().uid(), 1000);
    }

    #[test]
    fn removed_directory_forgets_its_pending_metadata() {
        let s = Scratch::new("forget");
        let tar = build(|b| {
            dir(b, "t/sub", 0o700);
            file(b, "t", b"replaces the tree");
            dir(b, "t", 0o751);
            file(b, "t/sub/x", b"x");
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        let mode = |p: &str| fs::symlink_metadata(s.dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!((mode("t"), mode("t/sub")), (0o751, 0o755));
    }

    #[test]
    fn too_many_entries() {
        let s = Scratch::new("many");
        let limits = UnpackLimits {
            max_entries: 3,
            ..UnpackLimits::default()
        };
        let tar = build(|b| (0..5).for_each(|i| file(b, &format!("f{i}"), b"")));
        let e = unpack_layer(&tar[..], Compression::None, &s.dest, &limits).unwrap_err();
        assert!(matches!(e, UnpackError::TooManyEntries(3)), "{e}");
    }

    #[test]
    fn read_only_dir_gets_children_and_mode_at_end() {
        let s = Scratch::new("rodir");
        let tar = build(|b| {
            dir(b, "ro", 0o555);
            file(b, "ro/f", b"f");
            dir(b, "ro/sub", 0o500);
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        let m = fs::symlink_metadata(s.dest.join("ro")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o555, 1_000_000));
        assert_eq!(
            fs::symlink_metadata(s.dest.join("ro/sub")).unwrap().mode() & 0o7777,
            0o500
        );
    }

    #[test]
    fn non_utf8_names_and_long_names() {
        let s = Scratch::new("names");
        let long = format!("{}/file", "d".repeat(200));
        let tar = build(|b| {
            raw(
                b,
                b"caf\xe9",
                tar::EntryType::Regular,
                b"",
                0o644,
                b"latin1",
            );
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(
            fs::read(s.dest.join(OsStr::from_bytes(b"caf\xe9"))).unwrap(),
            b"latin1"
        );
        assert_eq!(fs::read(s.dest.join(&long)).unwrap(), b"ok");
    }

    #[test]
    fn file_over_file_parent_rejected() {
        let s = Scratch::new("nondir");
        let tar = build(|b| {
            file(b, "f", b"");
            file(b, "f/x", b"");
        });
        let e = unpack(&tar, Compression::None, &s.dest).unwrap_err();
        assert!(
            matches!(
                e,
                UnpackError::UnsafePath {
                    reason: "crosses a non-directory",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn zeros_become_holes_with_right_size() {
        let s = Scratch::new("holes");
        let mut data = vec![0u8; 300_000];
        data[299_999] = 1;
        let tar = build(|b| {
            file(b, "z", &data);
            file(b, "allzero", &[0u8; 5000]);
        });
        unpack(&tar, Compression::None, &s.dest).unwrap();
        assert_eq!(fs::read(s.dest.join("z")).unwrap(), data);
        assert_eq!(fs::read(s.dest.join("allzero")).unwrap(), vec![0u8; 5000]);
    }

    #[test]
    fn destination_must_be_a_directory() {
        let s = Scratch::new("destlink");
        let link = s.root.join("link");
        std::os::unix::fs::symlink(&s.dest, &link).unwrap();
        let e = unpack(&sample(), Compression::None, &link).unwrap_err();
        assert!(matches!(e, UnpackError::UnsafePath { .. }), "{e}");
    }

    #[test]
    fn corrupted_inputs_never_panic() {
        let tar = sample();
        let gz = gzip(&tar);
        let zst = zstd(&tar);
        let s = Scratch::new("fuzz");
        let mut seed: u32 = 12345;
        for (blob, c) in [
            (&tar, Compression::None),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
        ] {
            for i in 0..60 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let mut bad = blob.to_vec();
                let at = (seed as usize >> 4) % bad.len();
                bad[at] ^= 1 << (seed % 8);
                let cut = if i % 3 == 0 {
                    bad.len() * i / 60
                } else {
                    bad.len()
                };
                let _ = fs::remove_dir_all(&s.dest);
                fs::create_dir(&s.dest).unwrap();
                let _ = unpack(&bad[..cut], c, &s.dest);
            }
        }
    }

    #[test]
    fn media_types_and_sniffing() {
        use Compression as C;
        let oci = "application/vnd.oci.image.layer";
        assert_eq!(C::from_media_type(&format!("{oci}.v1.tar")), Some(C::None));
        assert_eq!(
            C::from_media_type(&format!("{oci}.v1.tar+gzip")),
            Some(C::Gzip)
        );
        assert_eq!(
            C::from_media_type(&format!("{oci}.v1.tar+zstd")),
            Some(C::Zstd)
        );
        assert_eq!(
            C::from_media_type(&format!("{oci}.nondistributable.v1.tar")),
            Some(C::None)
        );
        assert_eq!(
            C::from_media_type(&format!("{oci}.nondistributable.v1.tar+gzip")),
            Some(C::Gzip)
        );
        assert_eq!(
            C::from_media_type(&format!("{oci}.nondistributable.v1.tar+zstd")),
            Some(C::Zstd)
        );
        assert_eq!(
            C::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(C::Gzip)
        );
        assert_eq!(
            C::from_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            Some(C::Gzip)
        );
        assert_eq!(
            C::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
        assert_eq!(C::sniff(&[0x1f, 0x8b, 8]), C::Gzip);
        assert_eq!(C::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), C::Zstd);
        assert_eq!(C::sniff(b"ustar"), C::None);
        assert_eq!(C::sniff(&[0x1f]), C::None);
    }
}
