//! Entry points of the fuzz targets in `fuzz/` (the `fuzzing` feature; also built for the unit
//! tests, which run the committed seed corpus through them): each takes arbitrary bytes,
//! feeds them to one family of runbox's parsers the way their callers do, and panics when an
//! oracle fails. Not part of the stable API.
//!
//! | entry point | what it feeds | oracle beyond "no panic, bounded allocation" |
//! |---|---|---|
//! | [`proto_frames`] | every message of `proto/`, and raw frames through `FrameBuffer` and `Reader` | what decodes re-encodes to a frame that decodes back the same; frames split across reads decode as whole ones; a reader returns exactly the frames sent and fails only on a frame too large or cut |
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
use crate::proto::frame::{self, FrameBuffer, Hello, ProtoError, Reader, PROTO_VERSION};
use crate::proto::launch::MAX_SPARE_FRAME;
use crate::proto::{
    expect_hello, send_hello, FactoryRequest, InitRequest, Mode, MonitorArgs, Report, SpareRequest,
    StatusFrames, StreamFds, MAX_PROGRAM_REQUEST,
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

// ---------------------------------------------------------------------------------------
// Protocol frames

/// The messages between runbox's processes (`proto/`): the first byte picks the channel,
/// the rest is what arrives on it.
pub fn proto_frames(data: &[u8]) {
    let Some((&which, rest)) = bounded(data).split_first() else {
        return;
    };
    match which % 7 {
        0 => monitor_args(rest),
        1 => message_frames(rest),
        2 => message_frames_of::<Report>(rest),
        3 => init_status(rest),
        4 => program_request(rest),
        5 => take_frames(rest),
        _ => frame_socket(rest),
    }
}

/// A monitor's command line (words split on NUL): what parses re-encodes to itself; a
/// monitor's first word of another protocol version is refused with both versions named.
fn monitor_args(rest: &[u8]) {
    let argv: Vec<OsString> = rest
        .split(|&b| b == 0)
        .map(|w| OsStr::from_bytes(w).to_os_string())
        .collect();
    match MonitorArgs::parse(&argv) {
        Some(Ok(args)) => {
            let mut again = vec![argv[0].clone()];
            again.extend(args.to_args());
            assert!(
                matches!(MonitorArgs::parse(&again), Some(Ok(back)) if back == args),
                "{argv:?}"
            );
        }
        Some(Err(ProtoError::Version { ours, theirs })) => {
            assert_eq!(ours, PROTO_VERSION);
            assert_ne!(theirs, PROTO_VERSION, "{argv:?}");
        }
        Some(Err(_)) | None => {}
    }
}

/// Frames of the controller's one-way channels (the second byte picks the message type: a
/// spare's request, the factory's, the streams message, a hello).
fn message_frames(rest: &[u8]) {
    let Some((&kind, rest)) = rest.split_first() else {
        return;
    };
    match kind % 4 {
        0 => message_frames_of::<SpareRequest>(rest),
        1 => message_frames_of::<FactoryRequest>(rest),
        2 => message_frames_of::<StreamFds>(rest),
        _ => message_frames_of::<Hello>(rest),
    }
}

/// What a [`FrameBuffer`] makes of `bytes` as frames of `T`: each frame's message
/// re-encoded (or `None` where its document is not a `T`), until the end or a frame too
/// large, which ends the channel.
fn decode_all<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    chunk: usize,
    max: usize,
) -> (Vec<Option<Vec<u8>>>, bool) {
    let mut buf = FrameBuffer::new(max);
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.push(piece, Vec::new())
            .expect("no descriptors, no error");
        loop {
            match buf.next::<T>() {
                Ok(Some(r)) => got.push(Some(frame::encode(&r.msg, usize::MAX).expect("encodes"))),
                Ok(None) => break,
                Err(ProtoError::Decode(_)) => got.push(None),
                Err(ProtoError::TooLarge { len, max: m }) => {
                    assert!(len > m && m == max, "{len} > {m}");
                    return (got, true);
                }
                Err(e) => panic!("a frame buffer fed bytes failed with {e}"),
            }
        }
    }
    (got, false)
}

/// Frames of `T` as a reader takes them: the first byte sets how the bytes are split
/// across reads and the frame bound; the frames come out the same as from one read, and
/// each decoded message re-encodes to a frame that decodes to the same encoding.
fn message_frames_of<T: DeserializeOwned + Serialize>(rest: &[u8]) {
    let Some((&split, bytes)) = rest.split_first() else {
        return;
    };
    let max = if split & 0x80 == 0 {
        MAX_SPARE_FRAME
    } else {
        512
    };
    let whole = decode_all::<T>(bytes, bytes.len(), max);
    let chunked = decode_all::<T>(bytes, usize::from(split % 32) + 1, max);
    assert_eq!(whole, chunked, "split every {} bytes", split % 32 + 1);
    for frame in whole.0.into_iter().flatten() {
        let (again, cut) = decode_all::<T>(&frame, frame.len(), usize::MAX);
        assert!(!cut);
        assert_eq!(
            again,
            [Some(frame)],
            "a re-encoded frame decodes differently"
        );
    }
}

/// [`SpareRequest::Take`] frames for sandbox directories of valid state roots: each crosses
/// a socket whole, with its descriptors, after the hello. The first byte picks the mode;
/// the root and the id are separated by a NUL.
fn take_frames(rest: &[u8]) {
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
    let null = fs::File::open("/dev/null").expect("/dev/null");
    let fds = vec![null.as_fd(); usize::from(m % 4)];
    let (controller, spare) = sys::stream_socket_pair().expect("socket pair");
    send_hello(controller.as_fd()).expect("a hello fits an empty socket");
    req.send(controller.as_fd(), &fds)
        .expect("a take fits an empty socket");
    let mut reader = SpareRequest::reader(spare.as_fd());
    expect_hello(&mut reader).expect("the hello arrives");
    let got = reader.recv::<SpareRequest>().expect("the take arrives");
    assert_eq!(got.msg, req);
    assert_eq!(got.fds.len(), fds.len());
}

/// Arbitrary bytes on a socket, read through [`Reader`] as JSON documents: the first byte
/// sets the size of each send; the reader returns the complete frames sent, in order, and
/// fails only on a frame larger than its bound or a document that is not JSON, or with
/// [`ProtoError::Truncated`] on a cut last frame; never a hang, never more than its bound.
fn frame_socket(rest: &[u8]) {
    let Some((&chunk, bytes)) = rest.split_first() else {
        return;
    };
    const MAX: usize = 4096;
    let (writer, sock) = sys::stream_socket_pair().expect("socket pair");
    let got = std::thread::scope(|s| {
        s.spawn(move || write_all_then_close(writer, bytes, usize::from(chunk) * 64 + 1));
        let mut reader = Reader::bounded(sock.as_fd(), MAX);
        let mut got = Vec::new();
        let end = loop {
            match reader.recv::<serde_json::Value>() {
                Ok(r) => {
                    assert!(r.fds.is_empty());
                    got.push(Some(r.msg));
                }
                Err(ProtoError::Decode(_)) => got.push(None),
                Err(e) => break e,
            }
        };
        drop(reader);
        // Unblocks the writer if the reader gave up.
        drop(sock);
        (got, end)
    });
    // The frames as the bytes lay them out.
    let (mut want, mut at) = (Vec::new(), 0usize);
    let expected_end = loop {
        let Some(header) = bytes.get(at..at + 4) else {
            break if at == bytes.len() {
                "closed"
            } else {
                "truncated"
            };
        };
        let len = u32::from_le_bytes(header.try_into().expect("four bytes")) as usize;
        if len > MAX {
            break "too large";
        }
        let Some(doc) = bytes.get(at + 4..at + 4 + len) else {
            break "truncated";
        };
        want.push(serde_json::from_slice::<serde_json::Value>(doc).ok());
        at += 4 + len;
    };
    let (frames, end) = got;
    assert_eq!(frames, want);
    let end_word = match end {
        ProtoError::Closed => "closed",
        ProtoError::Truncated => "truncated",
        ProtoError::TooLarge { .. } => "too large",
        e => panic!("unexpected end of a frame socket: {e}"),
    };
    assert_eq!(end_word, expected_end);
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
