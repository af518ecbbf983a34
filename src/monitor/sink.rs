//! One captured output stream, in the sandbox's monitor: a pipe copied into a file within an
//! output budget, for the sandbox's program (`supervise.rs`) and for each exec (`execs.rs`).
//! A file that takes no more (a full state root) cuts the stream, never the verdict.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

pub(super) enum Pump {
    Ok,
    Overflow,
    Failed(io::Error),
}

/// One captured stream: a pipe copied into a file, within the shared output budget.
pub(super) struct Sink {
    /// The pipe's read end.
    pub pipe: File,
    file: File,
    /// The pipe has not reached end of file (or was given up).
    pub open: bool,
    /// The stream was cut (at the budget, or where the file took no more).
    pub truncated: bool,
    /// Bytes kept so far.
    pub written: u64,
    /// The last read found a non-blocking pipe empty.
    pub would_block: bool,
    /// The file took no more (the state root is full): where it was cut, and why. The pipe
    /// is still drained and counted against the budget, so the output limit still fires.
    pub lost: Option<(u64, io::Error)>,
}

impl Sink {
    /// A sink copying `pipe` into `file`.
    pub fn new(pipe: OwnedFd, file: File) -> Self {
        Sink {
            pipe: File::from(pipe),
            file,
            open: true,
            truncated: false,
            written: 0,
            would_block: false,
            lost: None,
        }
    }

    /// Copies what the pipe holds now; at end of file marks the sink closed.
    pub fn pump(&mut self, budget: &mut u64) -> Pump {
        let mut buf = [0u8; 64 * 1024];
        self.would_block = false;
        match self.pipe.read(&mut buf) {
            Ok(0) => {
                self.open = false;
                Pump::Ok
            }
            Ok(n) => {
                let keep = usize::try_from(*budget).map_or(n, |b| b.min(n));
                *budget -= keep as u64;
                if self.lost.is_none() {
                    // A write error (ENOSPC, EDQUOT, EFBIG on a full or capped state root)
                    // loses the rest of this stream's output, never the program's verdict.
                    match write_counted(&mut self.file, &buf[..keep]) {
                        Ok(()) => self.written += keep as u64,
                        Err((done, e)) => {
                            self.written += done as u64;
                            self.truncated = true;
                            self.lost = Some((self.written, e));
                        }
                    }
                }
                if keep < n {
                    self.truncated = true;
                    self.open = false;
                    Pump::Overflow
                } else {
                    Pump::Ok
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Pump::Ok,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.would_block = true;
                Pump::Ok
            }
            Err(e) => {
                self.open = false;
                Pump::Failed(e)
            }
        }
    }
}

/// `write_all` that tells how much was written before an error.
fn write_counted(file: &mut File, mut bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n;
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_output_file_cuts_the_stream_but_keeps_draining_within_the_budget() {
        let (r, w) = nix::unistd::pipe().unwrap();
        // /dev/full: every write fails with ENOSPC, as on a full state root.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut sink = Sink::new(r, full);
        let mut budget = 100;
        nix::unistd::write(&w, &[b'a'; 60]).unwrap();
        assert!(matches!(sink.pump(&mut budget), Pump::Ok));
        assert!(sink.truncated && sink.open);
        let (at, e) = sink.lost.as_ref().unwrap();
        assert_eq!((*at, e.raw_os_error()), (0, Some(libc::ENOSPC)));
        assert_eq!(budget, 40, "lost output still counts against the limit");
        nix::unistd::write(&w, &[b'b'; 60]).unwrap();
        assert!(matches!(sink.pump(&mut budget), Pump::Overflow));
        drop(w);
    }
}
