//! Bounds on what the tar crate keeps in memory. Reading an archive, the crate holds the
//! whole body of every GNU long name (`L`), long link (`K`) and PAX header (`x`) entry in
//! memory, however large the header says it is: a layer or archive could make the importing
//! process allocate gigabytes. [`TarGuard`] watches a tar stream on its way to the crate and
//! [`scan_archive`] walks an archive file's headers before the crate does, both framing the
//! stream as the crate does (PAX `size` overrides, GNU sparse extension blocks), and refuse
//! such an entry larger than [`MAX_META_ENTRY`] before its body is read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Largest long name, long link or PAX header entry read (bytes). Real ones are a path or
/// a few records: well under a page.
pub(crate) const MAX_META_ENTRY: u64 = 1 << 20;

const BLOCK: usize = 512;

/// The error a guard or scan returns (inside an `io::Error` of kind `InvalidData`): its
/// message names sizes and kinds only, never bytes of the stream.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refused(msg))
}

/// The guard's or scan's own message, if `e` is (or wraps) one of its errors.
pub(crate) fn refusal(e: &io::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    None
}

/// A numeric header field as the tar crate reads it: base-256 if its first byte has the
/// high bit, else octal (spaces and NULs around it ignored). `None` if it is neither.
fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| *b != b' ' && *b != 0)
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&text).ok()?;
    u64::from_str_radix(s, 8).ok()
}

/// What follows a block, as [`Framing`] reads the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// `len` bytes of entry data (padded to a block), then a header; `pax` if they are a
    /// PAX header's records, to be given to [`Framing::pax`].
    Data { len: u64, pax: bool },
    /// A GNU sparse extension block, then `data` bytes of entry data.
    Ext { data: u64 },
    /// The end of the archive (or something the tar crate refuses): nothing more to check.
    End,
}

/// The tar crate's framing of a stream, header by header.
#[derive(Default)]
struct Framing {
    /// The `size` of the last PAX header, for the next entry that is not an extension.
    pax_size: Option<u64>,
}

impl Framing {
    /// Reads a header block.
    fn header(&mut self, h: &[u8]) -> io::Result<Next> {
        if h.len() != BLOCK || h.iter().all(|b| *b == 0) {
            return Ok(Next::End);
        }
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        // A bad checksum or size ends the crate's reading with an error of its own.
        if numeric(&h[148..156]) != Some(sum) {
            return Ok(Next::End);
        }
        let Some(mut size) = numeric(&h[124..136]) else {
            return Ok(Next::End);
        };
        let kind = h[156];
        let gnu = &h[257..265] == b"ustar  \0";
        let ustar_or_gnu = gnu || &h[257..263] == b"ustar\0";
        // The crate reads the bodies of these into memory (in a ustar or GNU header only);
        // no extension entry, whatever its header, takes a PAX size.
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if extension && ustar_or_gnu && kind != b'g' {
            if size > MAX_META_ENTRY {
                let what = match kind {
                    b'L' => "long name",
                    b'K' => "long link name",
                    _ => "PAX header",
                };
                return Err(invalid(format!(
                    "a tar {what} entry of {size} bytes (at most {MAX_META_ENTRY} are read)"
                )));
            }
            return Ok(Next::Data {
                len: size,
                pax: kind == b'x',
            });
        }
        if !extension {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
        }
        if gnu && kind == b'S' && h[482] != 0 {
            return Ok(Next::Ext { data: size });
        }
        Ok(Next::Data {
            len: size,
            pax: false,
        })
    }

    /// Reads a GNU sparse extension block.
    fn ext(h: &[u8], data: u64) -> Next {
        if h.get(504).is_some_and(|b| *b != 0) {
            Next::Ext { data }
        } else {
            Next::Data {
                len: data,
                pax: false,
            }
        }
    }

    /// Takes a PAX header's records: the last `size` one is the next entry's size.
    fn pax(&mut self, records: &[u8]) {
        for line in records.split(|b| *b == b'\n') {
            let Some(space) = line.iter().position(|b| *b == b' ') else {
                continue;
            };
            if let Some(v) = line[space + 1..].strip_prefix(b"size=") {
                if let Some(n) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                    self.pax_size = Some(n);
                }
            }
        }
    }
}

/// Bytes padded to whole blocks.
fn padded(len: u64) -> u64 {
    len.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

/// Where a [`TarGuard`] is in the stream.
enum At {
    /// Collecting a header block.
    Header,
    /// Collecting a GNU sparse extension block.
    Ext { data: u64 },
    /// Passing `left` bytes of entry data (collected if `pax`).
    Data { left: u64, pax: bool },
    /// Past the end: passing everything.
    End,
}

/// A reader passing a tar stream through unchanged, with an `InvalidData` error instead of
/// the bytes of a long name, long link or PAX header entry larger than [`MAX_META_ENTRY`].
pub(crate) struct TarGuard<R> {
    inner: R,
    framing: Framing,
    at: At,
    block: Vec<u8>,
    pax: Vec<u8>,
}

impl<R: Read> TarGuard<R> {
    /// Guards `inner`, which starts at a header.
    pub(crate) fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            framing: Framing::default(),
            at: At::Header,
            block: Vec::with_capacity(BLOCK),
            pax: Vec::new(),
        }
    }

    fn next(&mut self, next: Next) {
        self.at = match next {
            Next::Data { len, pax } => {
                self.pax.clear();
                if len == 0 {
                    At::Header
                } else {
                    At::Data {
                        left: padded(len),
                        pax,
                    }
                }
            }
            Next::Ext { data } => At::Ext { data },
            Next::End => At::End,
        };
    }

    /// Follows the framing over `bytes`, which just passed.
    fn watch(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.at {
                At::End => return Ok(()),
                At::Header | At::Ext { .. } => {
                    let take = (BLOCK - self.block.len()).min(bytes.len());
                    self.block.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.block.len() == BLOCK {
                        let next = match self.at {
                            At::Ext { data } => Framing::ext(&self.block, data),
                            _ => self.framing.header(&self.block)?,
                        };
                        self.block.clear();
                        self.next(next);
                    }
                }
                At::Data { left, pax } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    if pax {
                        self.pax.extend_from_slice(&bytes[..take]);
                    }
                    bytes = &bytes[take..];
                    let left = left - take as u64;
                    if left == 0 {
                        if pax {
                            let records = std::mem::take(&mut self.pax);
                            self.framing.pax(&records);
                        }
                        self.at = At::Header;
                    } else {
                        self.at = At::Data { left, pax };
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.watch(buf.get(..n).unwrap_or_default())?;
        Ok(n)
    }
}

/// Walks the headers of the tar archive `file` as the tar crate will (reading headers and
/// PAX records only, seeking over contents): an `InvalidData` error for a long name, long
/// link or PAX header entry larger than [`MAX_META_ENTRY`], or for more than `max_entries`
/// headers.
pub(crate) fn scan_archive(file: &File, max_entries: u64) -> io::Result<()> {
    let mut framing = Framing::default();
    let mut off: u64 = 0;
    let mut block = [0u8; BLOCK];
    let mut headers: u64 = 0;
    let read_block = |off: u64, block: &mut [u8; BLOCK]| -> io::Result<bool> {
        match file.read_exact_at(block, off) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    let mut next = Next::Data { len: 0, pax: false };
    loop {
        match next {
            Next::End => return Ok(()),
            Next::Ext { data } => {
                if !read_block(off, &mut block)? {
                    return Ok(());
                }
                off += BLOCK as u64;
                next = Framing::ext(&block, data);
            }
            Next::Data { len, pax } => {
                if pax {
                    // At most MAX_META_ENTRY bytes: the header was checked.
                    let mut records = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    if file.read_exact_at(&mut records, off).is_err() {
                        return Ok(());
                    }
                    framing.pax(&records);
                }
                off = off.saturating_add(padded(len));
                if !read_block(off, &mut block)? {
                    return Ok(());
                }
                off += BLOCK as u64;
                headers += 1;
                if headers > max_entries {
                    return Err(invalid(format!(
                        "the archive has more than {max_entries} entries"
                    )));
                }
                next = framing.header(&block)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn with_data(mut h: Vec<u8>, data: &[u8]) -> Vec<u8> {
        h.extend_from_slice(data);
        h.resize(h.len().div_ceil(BLOCK) * BLOCK, 0);
        h
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads: the framing must hold across read boundaries.
        let mut g = TarGuard::new(bytes);
        let mut buf = [0u8; 100];
        loop {
            let n = g.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn normal_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "short", &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        assert_eq!(read_all(&bytes).unwrap(), bytes);
        let f = tempfile(&bytes);
        scan_archive(&f, 10).unwrap();
        assert!(scan_archive(&f, 2).is_err());
    }

    #[test]
    fn huge_metadata_entries_are_refused_before_their_body() {
        for kind in [b'L', b'K', b'x'] {
            let mut bytes = header("././@LongLink", kind, 8 << 30);
            bytes.extend_from_slice(&[b'a'; 4096]);
            let e = read_all(&bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("bytes"), "{e}");
            assert!(scan_archive(&tempfile(&bytes), 100).is_err());
        }
    }

    #[test]
    fn the_tar_crate_sees_the_refusal_not_the_body() {
        let mut bytes = header("././@LongLink", b'L', 8 << 30);
        bytes.extend_from_slice(&[b'a'; 4096]);
        let mut archive = tar::Archive::new(TarGuard::new(&bytes[..]));
        let e = archive.entries().unwrap().next().unwrap().err().unwrap();
        assert!(refusal(&e).is_some_and(|m| m.contains("long name")), "{e}");
    }

    #[test]
    fn a_pax_size_moves_the_next_header_as_the_crate_sees_it() {
        // A PAX header saying the next file has 1024 bytes where its header says 0: the
        // huge long name after those 1024 bytes is still seen.
        let mut bytes = with_data(header("pax", b'x', 13), b"13 size=1024\n");
        bytes.extend(header("f", b'0', 0));
        bytes.extend_from_slice(&[0u8; 1024]);
        bytes.extend(header("././@LongLink", b'L', 8 << 30));
        assert!(read_all(&bytes).is_err());
        assert!(scan_archive(&tempfile(&bytes), 100).is_err());
    }

    fn tempfile(bytes: &[u8]) -> File {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "runbox-targuard-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
