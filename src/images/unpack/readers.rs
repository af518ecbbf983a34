//! The readers a layer passes through: hashing and counting, and zstd decompression with
//! a bounded window. Runs in the caller's process (an import or a pull).

use std::io::{self, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha256};

use super::UnpackError;

/// A reader that hashes and counts what passes through it.
pub(super) struct HashReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
    pub(super) count: u64,
}

impl<R: Read> HashReader<R> {
    pub(super) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(super) fn digest(&self) -> String {
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
pub(super) struct ZstdReader<R> {
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
pub(super) const ZSTD_PRIMER: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00];

impl<R: Read> ZstdReader<R> {
    pub(super) fn new(src: R) -> Result<Self, UnpackError> {
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
