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
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

mod entries;
mod readers;

use entries::{io_at, Unpacker};
use readers::{HashReader, ZstdReader};

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

#[cfg(test)]
mod tests;
