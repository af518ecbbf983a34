//! Writing a layer's tar entries into its directory under the rules of [`super`]: paths
//! normalized and confined, parents checked without following symlinks, whiteouts, modes,
//! owners and times, within the limits. Runs in the caller's process (an import or a pull).

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

use super::{UnpackError, UnpackLimits};

/// Most entries recorded in [`super::Unpacked::skipped`].
pub(super) const MAX_SKIPPED: usize = 100;

/// Reason given when a hard link names something that this layer did not create.
pub(super) const NOT_IN_LAYER: &str = "hard link target not in this layer";

/// Metadata of an entry, from its tar header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// State of one unpacking run.
pub(super) struct Unpacker<'a> {
    pub(super) dest: &'a Path,
    pub(super) limits: &'a UnpackLimits,
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) skipped: Vec<String>,
    /// Directories whose owner, mode and mtime are applied at the end, children first.
    pub(super) dirs: BTreeMap<PathBuf, Meta>,
}

impl Unpacker<'_> {
    pub(super) fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
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
    pub(super) fn finish_dirs(&mut self) -> Result<(), UnpackError> {
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
pub(super) fn normalize(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
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
pub(super) fn numeric(field: &[u8], parsed: io::Result<u64>) -> Result<u64, UnpackError> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(0)
    } else {
        parsed.map_err(UnpackError::Read)
    }
}

/// Copies the contents of a regular file entry, leaving holes where the data is all zeros.
pub(super) fn copy_contents(
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
pub(super) fn set_mtime(full: &Path, mtime: u64) -> Result<(), UnpackError> {
    let t = TimeSpec::new(
        libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
        0,
    );
    utimensat(None, full, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_at(full)(e.into()))
}

/// Marks the directory `dir` opaque for overlayfs.
pub(super) fn set_opaque(dir: &Path) -> io::Result<()> {
    crate::host::sys::set_xattr(dir, c"trusted.overlay.opaque", b"y")
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn unsafe_path(raw: &[u8], reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath {
        path: PathBuf::from(OsStr::from_bytes(raw)),
        reason,
    }
}

pub(super) fn too_large(rel: &Path, limit: u64) -> UnpackError {
    UnpackError::TooLarge {
        path: rel.to_path_buf(),
        limit,
    }
}

pub(super) fn unsupported(rel: &Path, what: &'static str) -> UnpackError {
    UnpackError::Unsupported {
        path: rel.to_path_buf(),
        what,
    }
}
