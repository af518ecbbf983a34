//! Entry points of the fuzz targets in `fuzz/` (the `fuzzing` feature; also built for the unit
//! tests, which run the committed seed corpus through them): each takes arbitrary bytes,
//! feeds them to one family of runbox's parsers the way their callers do, and panics when an
//! oracle fails. Not part of the stable API.
//!
//! | entry point | what it feeds | oracle beyond "no panic, bounded allocation" |
//! |---|---|---|
//! | [`proto_frames`] | every message of `proto.rs` | what parses re-encodes to one line (or frame) that parses back equal; lines split across reads parse as whole ones |
//! | [`job_document`] | a worker's job document | an accepted job is within the documented bounds; its files land under its own directory |
//! | [`image_documents`] | manifests, indexes, configs, references | what is accepted is within the store's bounds; names map to one file and back |
//! | [`layer_tar`] | a layer blob through the unpacker | nothing outside the destination changes, nothing in it but files, directories, symlinks and whiteouts |
//! | [`state_records`] | every JSON record of the state root and the image store | a record read back re-encodes stably; the store lists whatever its files say |
//! | [`seccomp`] | a system call | the compiled BPF programs and the OCI profile decide what the policy's table says |

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::host::sys;
use crate::proto::{
    InitRequest, LineReader, Mode, MonitorArgs, Report, SpareRequest, StatusFrames,
    MAX_PROGRAM_REQUEST, MAX_SPARE_LINE,
};

/// Largest input an entry point uses (the rest is ignored): keeps each run's I/O small.
const MAX_INPUT: usize = 256 << 10;

fn bounded(data: &[u8]) -> &[u8] {
    &data[..data.len().min(MAX_INPUT)]
}

/// A fresh directory for one run, removed on drop (on a tmpfs when there is one).
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("runbox-fuzz-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The complete lines of `bytes` (each with its newline), as a line reader splits them; a
/// last line without a newline is left out.
fn complete_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        out.push(&rest[..=end]);
        rest = &rest[end + 1..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// Protocol frames

/// The messages between runbox's processes (`proto.rs`): the first byte picks the channel,
/// the rest is what arrives on it.
pub fn proto_frames(data: &[u8]) {
    let Some((&which, rest)) = bounded(data).split_first() else {
        return;
    };
    match which % 7 {
        0 => monitor_args(rest),
        1 => spare_lines(rest),
        2 => report_lines(rest),
        3 => init_status(rest),
        4 => program_request(rest),
        5 => take_lines(rest),
        _ => line_reader(rest),
    }
}

/// A monitor's command line (words split on NUL): what parses re-encodes to itself.
fn monitor_args(rest: &[u8]) {
    let argv: Vec<OsString> = rest
        .split(|&b| b == 0)
        .map(|w| OsStr::from_bytes(w).to_os_string())
        .collect();
    if let Some(Ok(args)) = MonitorArgs::parse(&argv) {
        let mut again = vec![argv[0].clone()];
        again.extend(args.to_args());
        assert_eq!(MonitorArgs::parse(&again), Some(Ok(args)), "{argv:?}");
    }
}

/// Lines a controller writes to a spare: each parsed request re-encodes to one line that
/// parses back equal.
fn spare_lines(rest: &[u8]) {
    for line in complete_lines(rest) {
        let line = String::from_utf8_lossy(line);
        let Ok(req) = SpareRequest::parse(&line) else {
            continue;
        };
        let Ok(again) = req.encode() else {
            continue;
        };
        assert!(
            again.ends_with('\n') && again.matches('\n').count() == 1,
            "{req:?} encodes to {again:?}, not one line"
        );
        assert_eq!(SpareRequest::parse(&again).as_ref(), Ok(&req), "{line:?}");
    }
}

/// `run|create DIR` lines for sandbox directories of valid state roots: one line each, which
/// parses back to the same directory. The first byte picks the mode; the root and the id
/// are separated by a NUL.
fn take_lines(rest: &[u8]) {
    let Some((&m, rest)) = rest.split_first() else {
        return;
    };
    let mut parts = rest.splitn(2, |&b| b == 0);
    let (Some(root), Some(id)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(root), Ok(id)) = (std::str::from_utf8(root), std::str::from_utf8(id)) else {
        return;
    };
    if !crate::controller::root::valid_root_path(Path::new(root))
        || crate::config::validate_id(id).is_err()
    {
        return;
    }
    let mode = if m % 2 == 0 { Mode::Run } else { Mode::Create };
    let req = SpareRequest::Take {
        mode,
        dir: Path::new(root).join(id),
    };
    let line = req.encode().expect("a take line encodes");
    let lines = complete_lines(line.as_bytes());
    assert_eq!(lines.len(), 1, "{req:?} encodes to {line:?}, not one line");
    assert_eq!(SpareRequest::parse(&line).as_ref(), Ok(&req), "{line:?}");
}

/// Report lines from a monitor: a parsed report re-encodes to one line, stably.
fn report_lines(rest: &[u8]) {
    for line in complete_lines(rest) {
        let line = String::from_utf8_lossy(line);
        let Some(report) = Report::parse(line.trim_end_matches('\n')) else {
            continue;
        };
        let once = report.encode();
        assert!(once.ends_with(b"\n") && once.iter().filter(|&&b| b == b'\n').count() == 1);
        let text = String::from_utf8(once.clone()).expect("a report is UTF-8");
        let back = Report::parse(text.trim_end_matches('\n')).expect("a report parses back");
        assert_eq!(back.encode(), once, "{line:?}");
    }
}

/// The init's status pipe: the first byte sets how the bytes are split across reads; the
/// statuses must come out the same as from one read (up to the first error), and each
/// decoded status re-encodes to a frame that decodes back equal.
fn init_status(rest: &[u8]) {
    let Some((&split, bytes)) = rest.split_first() else {
        return;
    };
    let collect = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut frames = StatusFrames::default();
        let mut got = Vec::new();
        for chunk in chunks {
            if frames.push(chunk).is_err() {
                got.push(None);
                return got;
            }
            loop {
                match frames.next_status() {
                    Ok(Some(s)) => got.push(Some(s)),
                    Ok(None) => break,
                    Err(_) => {
                        got.push(None);
                        return got;
                    }
                }
            }
        }
        got
    };
    let whole = collect(&mut std::iter::once(bytes));
    let chunked = collect(&mut bytes.chunks(usize::from(split % 16) + 1));
    assert_eq!(whole, chunked, "split every {} bytes", split % 16 + 1);
    for status in whole.into_iter().flatten() {
        let frame = crate::proto::frame::encode(&status, 1 << 16).expect("encode");
        let mut frames = StatusFrames::default();
        frames.push(&frame).expect("push");
        assert_eq!(frames.next_status().expect("decode"), Some(status));
    }
}

/// Writes `bytes` to `sock` (without SIGPIPE: a fuzz target has no Rust runtime setting it
/// aside), `chunk` bytes at a time, then closes it.
fn write_all_then_close(sock: OwnedFd, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk.max(1)) {
        let mut piece = piece;
        while !piece.is_empty() {
            match nix::sys::socket::send(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                piece,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => piece = &piece[n..],
                Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// The init's request socket: whatever arrives ends in a request or an error (never a hang
/// or an allocation past [`MAX_PROGRAM_REQUEST`]); a frame whose body is a request crosses
/// the socket whole with its descriptors.
fn program_request(rest: &[u8]) {
    use crate::proto::frame::Reader;
    let (monitor, init) = sys::stream_socket_pair().expect("socket pair");
    std::thread::scope(|s| {
        s.spawn(move || write_all_then_close(monitor, rest, 4096));
        let mut reader = Reader::bounded(init, MAX_PROGRAM_REQUEST);
        // Bytes without descriptors: a request that needs none may come; then the rest.
        while let Ok(got) = reader.recv::<InitRequest>() {
            assert!(got.fds.is_empty());
        }
        // Unblocks the writer if the requests ended before the bytes did.
        drop(reader);
    });
    let Some(header) = rest.get(..4) else {
        return;
    };
    let len = u32::from_le_bytes(header.try_into().expect("four bytes"));
    let Some(body) = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_PROGRAM_REQUEST)
        .and_then(|l| rest.get(4..4 + l))
    else {
        return;
    };
    let Ok(req) = serde_json::from_slice::<InitRequest>(body) else {
        return;
    };
    let null = fs::File::open("/dev/null").expect("/dev/null");
    let count = req.fd_count();
    let fds = vec![null.as_fd(); count];
    let (monitor, init) = sys::stream_socket_pair().expect("socket pair");
    let got = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let sent = req.send(monitor.as_fd(), &fds);
            drop(monitor);
            sent
        });
        let got = Reader::bounded(init, MAX_PROGRAM_REQUEST).recv::<InitRequest>();
        sender.join().expect("sender").expect("send the request");
        got
    });
    let got = got.expect("a request sent whole is received");
    assert_eq!(got.msg, req);
    assert_eq!(got.fds.len(), count);
    got.msg.check_fds(got.fds.len()).expect("its descriptors");
}

/// A spare's request socket: the first byte sets the size of each send; the lines read are
/// the complete lines sent, in order, and nothing else; the reader fails only on a line
/// longer than [`MAX_SPARE_LINE`], and always on one longer than that plus one read.
fn line_reader(rest: &[u8]) {
    let Some((&chunk, bytes)) = rest.split_first() else {
        return;
    };
    let (controller, spare) = sys::stream_socket_pair().expect("socket pair");
    let (lines, failed) = std::thread::scope(|s| {
        s.spawn(move || write_all_then_close(controller, bytes, usize::from(chunk) * 64 + 1));
        let mut reader = LineReader::new(spare.as_fd());
        let mut lines = Vec::new();
        let failed = loop {
            match reader.next_line() {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(reader.take_fds().is_empty());
        drop(reader);
        // Unblocks the writer if the reader gave up.
        drop(spare);
        (lines, failed)
    });
    let want: Vec<String> = complete_lines(bytes)
        .into_iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let longest = bytes
        .split(|&b| b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    if failed {
        assert!(
            longest > MAX_SPARE_LINE,
            "failed on lines of at most {longest} bytes"
        );
        assert!(want.starts_with(&lines));
    } else {
        assert!(
            longest <= MAX_SPARE_LINE + (16 << 10),
            "a {longest}-byte line was read"
        );
        assert_eq!(lines, want);
    }
}

// ---------------------------------------------------------------------------------------
// Job documents

/// A worker's job document: an accepted job is within the bounds `worker/job.rs` documents,
/// and turning it into a command writes its files only under the job's directory.
#[cfg(feature = "worker")]
pub fn job_document(data: &[u8]) {
    use crate::worker::job;
    use base64::Engine;

    // The worker's default maxima (`WorkerOptions::new`).
    let max = job::Maxima {
        memory_bytes: 4 << 30,
        pids: 1024,
        cpu_time: std::time::Duration::from_secs(3600),
        wall_time: std::time::Duration::from_secs(3600),
        output_bytes: 16 << 20,
        collect_bytes: 16 << 20,
    };
    let Ok(j) = job::parse(bounded(data), &max) else {
        return;
    };
    let id_ok = (1..=128).contains(&j.id.len())
        && j.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    assert!(id_ok, "accepted id {:?}", j.id);
    assert!(
        j.memory.is_none_or(|m| m <= max.memory_bytes),
        "{:?}",
        j.memory
    );
    assert!(j.pids.is_none_or(|p| p <= max.pids), "{:?}", j.pids);
    assert!(
        j.output_limit.is_none_or(|o| o <= max.output_bytes),
        "{:?}",
        j.output_limit
    );
    for secs in [j.time, j.wall_time].into_iter().flatten() {
        assert!(secs.is_finite() && secs > 0.0 && secs <= 3600.0, "{secs}");
    }
    assert!(j.collect.len() <= crate::config::MAX_COLLECTS);
    assert!(
        j.cpus.is_none_or(|c| c.is_finite() && c > 0.0),
        "{:?}",
        j.cpus
    );
    let clean = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
    let mut total = 0usize;
    for f in &j.files {
        assert!(clean(&f.path), "file path {:?}", f.path);
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&f.content_base64) {
            total += bytes.len();
        }
    }
    assert!(total <= 16 << 20, "{total} bytes of files");
    for c in &j.collect {
        assert!(clean(c), "collect path {c:?}");
    }
    let scratch = Scratch::new("job");
    let dir = scratch.0.join("job");
    fs::create_dir(&dir).expect("job dir");
    if job::command(&j, "fuzz", &dir, &max).is_ok() {
        let mut written = 0u64;
        for entry in fs::read_dir(&scratch.0).expect("scratch").flatten() {
            assert_eq!(
                entry.file_name(),
                "job",
                "written outside the job's directory"
            );
        }
        if let Ok(files) = fs::read_dir(dir.join("in")) {
            for f in files.flatten() {
                let meta = f.metadata().expect("a job file");
                assert!(meta.is_file());
                assert_eq!(
                    meta.mode() & 0o7000,
                    0,
                    "setuid, setgid or sticky from a job"
                );
                written += meta.len();
            }
        }
        assert!(written <= 16 << 20);
    }
}

// ---------------------------------------------------------------------------------------
// Image documents

/// Manifests, indexes, configs and references as imports and pulls read them: what is
/// accepted is within the store's bounds and means what it says.
pub fn image_documents(data: &[u8]) {
    use crate::images::manifest::{self, Kind};
    use crate::images::reference::{self, Wanted};
    use crate::images::store::MAX_LAYERS;
    use crate::images::unpack::Compression;

    let bytes = bounded(data);
    if let Ok(kind) = manifest::kind_of_bytes(bytes, "") {
        assert!(matches!(kind, Kind::Manifest | Kind::Index));
    }
    if let Ok(parsed) = manifest::parse_manifest(bytes) {
        assert!(parsed.layers.len() <= MAX_LAYERS);
        for (d, c) in &parsed.layers {
            assert_eq!(
                Compression::from_media_type(d.media_type().as_ref()),
                Some(*c)
            );
        }
    }
    if let Ok(d) = manifest::pick_platform(bytes) {
        let p = d
            .platform()
            .as_ref()
            .expect("a picked entry has a platform");
        assert_eq!(p.os().to_string(), "linux");
        assert_eq!(p.architecture().to_string(), manifest::host_arch());
        assert!(manifest::kind(d.media_type().as_ref()).is_ok());
    }
    if let Ok((ids, _created)) = manifest::parse_config(bytes) {
        assert!(ids.len() <= MAX_LAYERS);
        for id in &ids {
            assert!(reference::sha256_hex(id, "diff_id").is_ok(), "{id:?}");
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let first = text.lines().next().unwrap_or_default();
    match reference::wanted(first) {
        Ok(Wanted::Digest(hex)) => assert!(reference::is_hex64(&hex), "{first:?}"),
        Ok(Wanted::Prefix(p)) => assert!((12..64).contains(&p.len()), "{first:?}"),
        Ok(Wanted::Name(name, candidates)) => {
            assert!(reference::check_name(&name).is_ok(), "{first:?}");
            for c in candidates {
                assert!(c.len() <= 255 + "docker.io/library/:latest".len());
            }
        }
        Err(_) => {}
    }
    if reference::check_name(first).is_ok() {
        let file = reference::name_file(first);
        assert!(!file.contains('/') && file != "." && file != ".." && !file.is_empty());
        assert!(
            !file.starts_with('.'),
            "a name file would be hidden: {file:?}"
        );
        assert_eq!(reference::file_name(&file), first);
    }
}

// ---------------------------------------------------------------------------------------
// Layer tars

/// Bounds of one fuzzed layer: small, so each input's I/O stays small.
fn fuzz_limits() -> crate::images::unpack::UnpackLimits {
    crate::images::unpack::UnpackLimits {
        max_file_bytes: 64 << 10,
        max_total_bytes: 256 << 10,
        max_entries: 512,
        keep_setuid: false,
    }
}

/// What a file system object is, to tell whether it changed.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    /// A file's bytes or a symlink's target.
    content: Vec<u8>,
}

fn snapshot(path: &Path) -> Snapshot {
    let m = fs::symlink_metadata(path).expect("lstat");
    let t = m.file_type();
    let (kind, content) = if t.is_symlink() {
        (
            "symlink",
            fs::read_link(path)
                .expect("readlink")
                .into_os_string()
                .into_vec(),
        )
    } else if t.is_file() {
        ("file", fs::read(path).expect("read"))
    } else if t.is_dir() {
        ("dir", Vec::new())
    } else {
        ("other", Vec::new())
    };
    Snapshot {
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        ino: m.ino(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        content,
    }
}

/// Every object under `dir` (and `dir` itself), skipping the subtree `skip`.
fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Snapshot>) {
    out.insert(dir.to_path_buf(), snapshot(dir));
    if !fs::symlink_metadata(dir).expect("lstat").is_dir() {
        return;
    }
    for entry in fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path != skip {
            walk(&path, skip, out);
        }
    }
}

/// A layer blob (first byte: its compression) unpacked into a fresh `dest` inside a fresh
/// parent that also holds a sentinel tree: whatever the blob, nothing outside `dest`
/// changes (no object appears, disappears or changes, no hard link to one is made), and
/// `dest` holds only directories, regular files, symlinks and whiteouts.
pub fn layer_tar(data: &[u8]) {
    use crate::images::unpack::{unpack_layer, Compression};

    let Some((&c, blob)) = bounded(data).split_first() else {
        return;
    };
    let compression = match c % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let scratch = Scratch::new("unpack");
    let parent = scratch.0.join("p");
    let dest = parent.join("dest");
    let sentinel = parent.join("sentinel");
    fs::create_dir_all(&dest).expect("dest");
    fs::create_dir_all(sentinel.join("d")).expect("sentinel");
    fs::write(sentinel.join("f"), b"sentinel\n").expect("sentinel file");
    std::os::unix::fs::symlink("f", sentinel.join("l")).expect("sentinel link");
    fs::write(parent.join("outside"), b"outside\n").expect("outside file");
    let mut before = BTreeMap::new();
    walk(&parent, &dest, &mut before);
    let _ = unpack_layer(blob, compression, &dest, &fuzz_limits());
    let mut after = BTreeMap::new();
    walk(&parent, &dest, &mut after);
    // The parent's own times change when `dest` is replaced, which must not happen either.
    assert_eq!(before, after, "something outside the destination changed");
    let outside: Vec<u64> = before.values().map(|s| s.ino).collect();
    let mut inside = BTreeMap::new();
    walk(&dest, Path::new(""), &mut inside);
    for (path, s) in &inside {
        assert!(
            !(s.kind == "file" && outside.contains(&s.ino)),
            "{} is a hard link to a file outside the destination",
            path.display()
        );
        if s.kind == "other" {
            let m = fs::symlink_metadata(path).expect("lstat");
            assert!(
                m.file_type().is_char_device() && m.rdev() == 0,
                "{} is a special file",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// On-disk records

/// Reads `path` as a `T` with the state root's reader; if it reads, its encoding reads back
/// and encodes the same (a record survives being rewritten).
fn record<T: Serialize + DeserializeOwned>(path: &Path) {
    let Ok(value) = crate::host::state::read_json::<T>(path) else {
        return;
    };
    let once = serde_json::to_vec(&value).expect("a record encodes");
    let back: T = serde_json::from_slice(&once).expect("an encoded record reads back");
    let twice = serde_json::to_vec(&back).expect("a record encodes");
    assert_eq!(
        String::from_utf8_lossy(&once),
        String::from_utf8_lossy(&twice)
    );
}

/// The records runbox reads from the state root (`sandbox.json`, `monitor.json`,
/// `exit.json`, a parked spare's `spare.json`, a box's `box.json`, the spares' generation)
/// and from the image store (`store.json`, `images/<hex>.json`, `names/`, `pins/`): the same
/// bytes as each, through the readers their callers use.
pub fn state_records(data: &[u8]) {
    use crate::host::state::{ExitRecord, MonitorRecord, ParkedRecord, SandboxRecord};

    let bytes = bounded(data);
    let scratch = Scratch::new("records");
    let file = scratch.0.join("record.json");
    fs::write(&file, bytes).expect("write the record");
    record::<SandboxRecord>(&file);
    record::<MonitorRecord>(&file);
    record::<ExitRecord>(&file);
    record::<ParkedRecord>(&file);
    record::<crate::controller::boxes::BoxRecord>(&file);
    record::<crate::images::store::ImageRecord>(&file);
    // The spares' generation file.
    let spares = scratch.0.join(crate::layout::SPARES_DIR);
    fs::create_dir_all(&spares).expect("spares dir");
    fs::write(spares.join(crate::layout::SPARES_GENERATION), bytes).expect("generation");
    let _ = crate::host::state::spares_generation(&scratch.0);
    // An image store whose record, name and pin files hold the bytes: listing and
    // inspecting it answer or fail, whatever they say.
    let Ok(store) = crate::images::ImageStore::open(scratch.0.join("store")) else {
        return;
    };
    let hex = "ab".repeat(32);
    let dir = store.dir().to_path_buf();
    fs::write(dir.join("images").join(format!("{hex}.json")), bytes).expect("record");
    fs::write(dir.join("names").join("fuzz"), bytes).expect("name");
    fs::create_dir_all(dir.join("pins").join(&hex)).expect("pins");
    fs::write(dir.join("pins").join(&hex).join("0"), bytes).expect("pin");
    let _ = store.list();
    let _ = store.inspect("fuzz");
    let _ = store.inspect(&format!("sha256:{hex}"));
    fs::write(dir.join("store.json"), bytes).expect("marker");
    let _ = crate::images::ImageStore::open(&dir);
}

// ---------------------------------------------------------------------------------------
// Seccomp

/// The seccomp policy, differentially: for the system call the bytes describe, the compiled
/// BPF programs (interpreted) and the OCI profile decide what the policy's table says.
pub fn seccomp(data: &[u8]) {
    crate::policy::seccomp::reference::check(bounded(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seed corpus (and every finding saved in it) passes every oracle.
    #[test]
    fn the_seed_corpus_passes_every_oracle() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        type Target = (&'static str, fn(&[u8]));
        let targets: &[Target] = &[
            ("proto_frames", proto_frames),
            #[cfg(feature = "worker")]
            ("job_document", job_document),
            ("image_documents", image_documents),
            ("layer_tar", layer_tar),
            ("state_records", state_records),
            ("seccomp", seccomp),
        ];
        for (name, run) in targets {
            let dir = corpus.join(name);
            let mut n = 0;
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let bytes = fs::read(entry.path()).unwrap();
                run(&bytes);
                n += 1;
            }
            assert!(n > 0, "no seed in {}", dir.display());
        }
    }
}
