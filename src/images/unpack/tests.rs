//! The layer unpacker against hostile and ordinary archives (tar, gzip, zstd), in a temp
//! directory of the test process.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use sha2::{Digest, Sha256};

use super::entries::NOT_IN_LAYER;
use super::*;

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
    0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x27, 0x75, 0x02, 0x00, 0x82, 0x43, 0x0b, 0x10, 0xb0, 0xeb,
    0x67, 0x14, 0x02, 0x72, 0xf2, 0xc3, 0x54, 0x52, 0xd6, 0x06, 0xbe, 0x95, 0x28, 0xa7, 0x06, 0x66,
    0xd9, 0x0b, 0xfe, 0xbd, 0xca, 0xb2, 0x66, 0x3f, 0x78, 0xe8, 0x11, 0xef, 0x1f, 0x31, 0x95, 0x98,
    0xe0, 0x7f, 0x67, 0xea, 0xbd, 0x6e, 0x85, 0x4a, 0xe9, 0xa0, 0x0b, 0x20, 0x50, 0x2f, 0xc7, 0x38,
    0xf1, 0xc5, 0xb8, 0x0d, 0x20, 0x00, 0xe9, 0x14, 0x80, 0x23, 0x80, 0x4a, 0xe7, 0x33, 0x41, 0xeb,
    0x41, 0x76, 0xd0, 0x00, 0xbb, 0x69, 0x75, 0x01, 0xca, 0xf5, 0xab, 0x1e,
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
    for (keep, su, wall, mail) in [(false, 0o755, 0o755, 0o775), (true, 0o4755, 0o2755, 0o2775)] {
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
