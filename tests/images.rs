//! OCI images: layouts made with umoci and archives and zstd layers made with skopeo,
//! imported into a store and run; images pulled from a real registry; hostile and broken
//! images refused with nothing kept; `rm` and `prune` around images in use; an import
//! killed midway; concurrent imports; a re-tagged image never served from old layers.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output, Stdio};

use common::images::{oci_layout, run_tool, Registry, StoreEnv};
use common::{wait_until_for, TestEnv};
use runbox::{Command, ErrorKind, Status};
use sha2::{Digest, Sha256};

/// The CLI on the test's state root, cgroup prefix and image store.
fn runbox(env: &TestEnv, store: &StoreEnv, args: &[&str]) -> Output {
    Proc::new(common::example("runbox"))
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .arg("--image-store")
        .arg(&store.dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ok(env: &TestEnv, cmd: &Command) -> runbox::Verdict {
    let v = env.root.run(cmd).expect("run");
    assert_eq!(v.status, Status::Ok, "{v:?}");
    v
}

#[test]
fn layouts_from_umoci_share_layers_and_run_with_their_config() {
    let store = StoreEnv::new("layouts");
    let env = TestEnv::with_image_store("layouts", &store.dir);
    let layout = oci_layout(&store.scratch, "second\n");

    let out = ok(&runbox(
        &env,
        &store,
        &["image", "import", layout.to_str().unwrap()],
    ));
    assert!(
        out.contains("base sha256:") && out.contains("v1 sha256:"),
        "{out}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&runbox(&env, &store, &["image", "ls", "--json"]))).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["names"][0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "v1"]);
    // v1 is base plus one layer: the base layer is stored once.
    assert_eq!(store.layer_count(), 2);
    // Importing again reads nothing new and names the same images.
    let again = store
        .store
        .import(&layout, Some("v1"), &mut |_| {})
        .unwrap();
    assert_eq!(again[0].digest, list[1]["digest"].as_str().unwrap());
    assert_eq!(store.layer_count(), 2);

    // The image's own Entrypoint/Cmd, Env and WorkingDir.
    let v = run_ok(&env, &Command::from_image("v1"));
    assert_eq!(v.stdout, "hello from /home\n");
    // A program of the caller's: the image's layers (the whiteout hides /bin/vi), its PATH.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "cat /home/second.txt; ls /bin/vi || echo vi gone; echo $PATH",
    ])
    .stored_image("v1");
    let v = run_ok(&env, &cmd);
    assert_eq!(v.stdout, "second\nvi gone\n/bin:/sbin\n", "{v:?}");
    // The caller's settings win over the image's.
    let mut cmd = Command::from_image("v1");
    cmd.env("GREETING", "bonjour").current_dir("/tmp");
    assert_eq!(run_ok(&env, &cmd).stdout, "bonjour from /tmp\n");
    // The base image still has vi; by digest and by a digest prefix.
    let base_digest = list[0]["digest"].as_str().unwrap();
    for reference in [base_digest, &base_digest[7..19]] {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "test -e /bin/vi && echo has vi"])
            .stored_image(reference);
        assert_eq!(run_ok(&env, &cmd).stdout, "has vi\n");
    }
    // The CLI: no program runs the image's; --entrypoint replaces it.
    let out = ok(&runbox(&env, &store, &["run", "--image", "v1"]));
    assert_eq!(out, "hello from /home\n");
    let out = ok(&runbox(
        &env,
        &store,
        &[
            "run",
            "--image",
            "v1",
            "--entrypoint",
            "/bin/echo",
            "--",
            "a",
            "b",
        ],
    ));
    assert_eq!(out, "a b\n");
    // An unknown image: a typed error, exit 125, nothing started.
    let e = env.root.run(&Command::from_image("nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let out = runbox(&env, &store, &["run", "--image", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image \"nope\""));
    // An image whose layers cannot be one bundle root.
    let e = env
        .root
        .write_bundle(&Command::from_image("v1"), &store.scratch.join("bundle"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);

    store.assert_clean();
    env.finish();
}

#[test]
fn docker_archives_and_zstd_layers_from_skopeo() {
    let store = StoreEnv::new("skopeo");
    let env = TestEnv::with_image_store("skopeo", &store.dir);
    let layout = oci_layout(&store.scratch, "from an archive\n");
    let src = format!("oci:{}:v1", layout.display());

    // `docker save`'s format, as skopeo writes it: named by RepoTags, found by docker's
    // short name; its digest is its config's (docker's image id).
    let archive = store.scratch.join("img.tar");
    run_tool(
        Proc::new("skopeo")
            .args(["copy", "-q", &src])
            .arg(format!("docker-archive:{}:test/img:v1", archive.display())),
    );
    let images = store.store.import(&archive, None, &mut |_| {}).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, ["docker.io/test/img:v1"]);
    let mut cmd = Command::new("/bin/cat");
    cmd.arg("/home/second.txt").stored_image("test/img:v1");
    assert_eq!(run_ok(&env, &cmd).stdout, "from an archive\n");
    let config = store.store.inspect("test/img:v1").unwrap().config_digest;
    assert_eq!(config, images[0].digest);

    // zstd-compressed layers.
    let zlayout = store.scratch.join("zstd");
    run_tool(
        Proc::new("skopeo")
            .args(["copy", "-q", "--dest-compress-format", "zstd", &src])
            .arg(format!("oci:{}:z", zlayout.display())),
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(zlayout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = fs::read_to_string(zlayout.join("blobs/sha256").join(&m[7..])).unwrap();
    assert!(
        manifest.contains("tar+zstd"),
        "skopeo wrote no zstd layer: {manifest}"
    );
    let before = store.layer_count();
    let out = ok(&runbox(
        &env,
        &store,
        &["image", "import", zlayout.to_str().unwrap()],
    ));
    assert!(out.starts_with("z sha256:"), "{out}");
    // Same tars as the archive's layers (same diff_ids): nothing new unpacked.
    assert_eq!(store.layer_count(), before);
    let mut cmd = Command::new("/bin/cat");
    cmd.arg("/home/second.txt").stored_image("z");
    assert_eq!(run_ok(&env, &cmd).stdout, "from an archive\n");
    // A fresh store unpacks the zstd layers themselves.
    let other = StoreEnv::new("skopeo-zstd");
    let z = other.store.import(&zlayout, None, &mut |_| {}).unwrap();
    assert_eq!(z[0].layers, 2);
    assert_eq!(other.layer_count(), 2);
    other.assert_clean();

    store.assert_clean();
    env.finish();
}

/// A tar with one entry of `kind` at `path` (raw header: the tar crate's builder refuses
/// `..` and absolute paths).
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, data, link, mode) in entries {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OCI layout written by hand: `layers` as uncompressed tar blobs, a config listing
/// `diff_ids` (their own, unless given), tag `t`.
fn hand_layout(dir: &Path, layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        fs::write(blobs.join(&d[7..]), bytes).unwrap();
        (d, bytes.len())
    };
    let ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| sha(l)).collect());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
        "config": {"Cmd": ["/bin/true"]}
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_path_buf()
}

#[test]
fn hostile_or_broken_images_are_refused_and_leave_nothing() {
    use tar::EntryType::{Block, Directory, Regular, Symlink};
    let store = StoreEnv::new("hostile");
    let s = &store.store;
    let outside = store.scratch.join("outside");
    let refused = |name: &str, layout: &Path, kind: ErrorKind| {
        let e = s.import(layout, None, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert!(s.list().unwrap().is_empty(), "{name}: an image was kept");
        assert_eq!(store.layer_count(), 0, "{name}: a layer was kept");
        store.assert_clean();
        e.to_string()
    };
    let escape = format!("../../../{}", outside.strip_prefix("/").unwrap().display());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", raw_tar(&[(&escape, Regular, b"x", "", 0o644)])),
        (
            "through a symlink",
            raw_tar(&[
                ("evil", Symlink, b"", "/etc", 0o777),
                ("evil/runbox-evil", Regular, b"x", "", 0o644),
            ]),
        ),
        (
            "hard link out",
            raw_tar(&[("h", tar::EntryType::Link, b"", "../../etc/passwd", 0o644)]),
        ),
    ];
    for (name, tar) in cases {
        let layout = hand_layout(&store.scratch.join(name), &[tar], None);
        let msg = refused(name, &layout, ErrorKind::InvalidImage);
        assert!(msg.contains("unpack"), "{name}: {msg}");
    }
    assert!(!outside.exists());
    assert!(!Path::new("/etc/runbox-evil").exists());

    // A layer whose tar is not the one the config names.
    let good = raw_tar(&[("f", Regular, b"x", "", 0o644)]);
    let layout = hand_layout(
        &store.scratch.join("diffid"),
        std::slice::from_ref(&good),
        Some(vec![sha(b"other")]),
    );
    let msg = refused("diff_id", &layout, ErrorKind::InvalidImage);
    assert!(msg.contains("diff_id"), "{msg}");
    // A blob changed after the manifest was written: one byte flipped, then one appended.
    let layout = hand_layout(
        &store.scratch.join("tampered"),
        std::slice::from_ref(&good),
        None,
    );
    let blob = layout.join("blobs/sha256").join(&sha(&good)[7..]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[600] ^= 1;
    fs::write(&blob, &bytes).unwrap();
    refused("tampered", &layout, ErrorKind::InvalidImage);
    bytes[600] ^= 1;
    bytes.extend_from_slice(&[0; 512]);
    fs::write(&blob, &bytes).unwrap();
    refused("longer", &layout, ErrorKind::InvalidImage);
    // A manifest that is not JSON, and a missing blob.
    let layout = hand_layout(
        &store.scratch.join("nojson"),
        std::slice::from_ref(&good),
        None,
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(layout.join("blobs/sha256").join(&m[7..])).unwrap();
    refused("missing manifest", &layout, ErrorKind::InvalidImage);
    // Not a layout, and not an archive.
    fs::create_dir_all(store.scratch.join("empty")).unwrap();
    refused(
        "empty dir",
        &store.scratch.join("empty"),
        ErrorKind::InvalidConfig,
    );
    fs::write(store.scratch.join("junk.tar"), b"not a tar at all").unwrap();
    refused(
        "junk",
        &store.scratch.join("junk.tar"),
        ErrorKind::InvalidImage,
    );

    // What is kept, made safe: setuid cleared, a device node skipped, an absolute path
    // inside the layer.
    let tame = raw_tar(&[
        ("bin", Directory, b"", "", 0o755),
        ("bin/su", Regular, b"#!/bin/sh\n", "", 0o4755),
        ("dev-sda", Block, b"", "", 0o600),
        ("/abs.txt", Regular, b"abs", "", 0o644),
    ]);
    let layout = hand_layout(&store.scratch.join("tame"), &[tame], None);
    let images = s.import(&layout, None, &mut |_| {}).unwrap();
    let d = s.inspect(&images[0].digest).unwrap();
    let layer = &d.layer_dirs[0];
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(layer.join("bin/su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid kept: {mode:o}");
    assert!(!layer.join("dev-sda").exists());
    assert_eq!(fs::read(layer.join("abs.txt")).unwrap(), b"abs");
    store.assert_clean();
}

#[test]
fn rm_keeps_an_image_in_use_and_prune_frees_what_nothing_needs() {
    let store = StoreEnv::new("prune");
    let env = TestEnv::with_image_store("prune", &store.dir);
    let layout = oci_layout(&store.scratch, "in use\n");
    store.store.import(&layout, None, &mut |_| {}).unwrap();
    let v1 = store.store.inspect("v1").unwrap().info.digest;
    let sync = store.scratch.join("sync");
    fs::create_dir_all(&sync).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "while [ ! -e /sync/go ]; do sleep 0.05; done; cat /home/second.txt",
    ])
    .bind_ro(&sync, "/sync")
    .stored_image("v1");
    let mut sandbox = env.root.spawn(&cmd).unwrap();
    let used = store.store.inspect("v1").unwrap().in_use_by;
    assert_eq!(used.len(), 1, "{used:?}");
    // rm takes the name; the image stays while the sandbox uses it, and prune keeps it.
    let r = store.store.remove("v1").unwrap();
    assert_eq!(r.names, ["v1"]);
    assert!(!r.removed);
    let p = store.store.prune().unwrap();
    assert!(p.images.is_empty() && p.layers == 0, "{p:?}");
    assert!(store.store.inspect(&v1).is_ok());
    // The running sandbox still reads its layers.
    fs::write(sync.join("go"), b"").unwrap();
    let v = sandbox.wait().unwrap();
    assert_eq!(v.stdout, "in use\n");
    sandbox.delete(false).unwrap();
    // Now nothing uses it: prune removes it, its own layer and blobs, not base's.
    let p = store.store.prune().unwrap();
    assert_eq!(p.images, std::slice::from_ref(&v1));
    assert_eq!((p.layers, p.blobs), (1, 2), "{p:?}");
    assert!(p.freed_bytes > 0);
    assert_eq!(store.layer_count(), 1);
    let mut cmd = Command::new("/bin/true");
    cmd.stored_image("base");
    run_ok(&env, &cmd);
    // The CLI: rm of the last name removes the image; prune frees the rest.
    let out = ok(&runbox(&env, &store, &["image", "rm", "base"]));
    assert!(out.starts_with("removed base"), "{out}");
    let out = ok(&runbox(&env, &store, &["image", "prune"]));
    assert!(out.contains("1 layers"), "{out}");
    assert_eq!(store.layer_count(), 0);
    assert!(ok(&runbox(&env, &store, &["image", "ls", "--json"])).trim() == "[]");
    store.assert_clean();
    env.finish();
}

#[test]
fn an_import_killed_midway_leaves_nothing_that_looks_complete() {
    let store = StoreEnv::new("killed");
    let env = TestEnv::with_image_store("killed", &store.dir);
    // One large layer (96 MiB of incompressible bytes), so the import takes a while.
    let mut data = Vec::with_capacity(96 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 96 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let tar = raw_tar(&[("big", tar::EntryType::Regular, &data, "", 0o644)]);
    drop(data);
    let layout = hand_layout(&store.scratch.join("big"), &[tar], None);
    let mut child = Proc::new(common::example("runbox"))
        .arg("--image-store")
        .arg(&store.dir)
        .args(["image", "import", "-q", layout.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its layer is being unpacked into staging: part of the file written.
    let staging = |s: &StoreEnv| {
        fs::read_dir(s.dir.join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
            .any(|e| fs::metadata(e.path().join("big")).is_ok_and(|m| m.len() > 0))
    };
    wait_until_for("the import to stage its layer", 120, || staging(&store));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(store.store.list().unwrap().is_empty());
    assert_eq!(store.layer_count(), 0);
    let e = env.root.run(&Command::from_image("t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // prune removes the leftovers; the import then succeeds.
    let p = store.store.prune().unwrap();
    assert!(p.staging >= 1 && p.freed_bytes > 0, "{p:?}");
    store.assert_clean();
    store.store.import(&layout, None, &mut |_| {}).unwrap();
    let d = store.store.inspect("t").unwrap();
    let big = fs::metadata(d.layer_dirs[0].join("big")).unwrap();
    assert_eq!(big.len(), 96 << 20);
    store.assert_clean();
    env.finish();
}

#[test]
fn concurrent_imports_of_one_layout_agree() {
    let store = StoreEnv::new("concurrent");
    let layout = oci_layout(&store.scratch, "twice\n");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| store.store.import(&layout, None, &mut |_| {})))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let digests: Vec<Vec<String>> = results
        .into_iter()
        .map(|r| r.unwrap().into_iter().map(|i| i.digest).collect())
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(store.layer_count(), 2);
    assert_eq!(store.store.list().unwrap().len(), 2);
    store.assert_clean();
}

#[test]
fn a_retagged_image_is_never_served_from_old_layers() {
    let store = StoreEnv::new("retag");
    let env = TestEnv::with_image_store("retag", &store.dir);
    let first = oci_layout(&store.scratch.join("a"), "first\n");
    let second = oci_layout(&store.scratch.join("b"), "second\n");
    ok(&runbox(
        &env,
        &store,
        &["image", "import", &format!("{}:v1", first.display())],
    ));
    let cat = ["run", "--image", "v1", "--", "/bin/cat", "/home/second.txt"];
    assert_eq!(ok(&runbox(&env, &store, &cat)), "first\n");
    // The shape's second launch parks a spare built on v1's layers.
    assert_eq!(ok(&runbox(&env, &store, &cat)), "first\n");
    wait_until_for("a parked spare", 180, || {
        fs::read_dir(env.dir.join(".spares"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|g| !g.file_name().to_string_lossy().starts_with('.'))
            .any(|g| {
                fs::read_dir(g.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|s| s.path().join("spare.json").exists())
            })
    });
    // v1 now names other content: the next run must not get the spare's old layers.
    ok(&runbox(
        &env,
        &store,
        &["image", "import", &format!("{}:v1", second.display())],
    ));
    assert_eq!(ok(&runbox(&env, &store, &cat)), "second\n");
    ok(&runbox(&env, &store, &["gc", "--release-spares"]));
    store.assert_clean();
    env.finish();
}

#[test]
fn images_pulled_from_a_registry_run_and_share_layers() {
    let store = StoreEnv::new("pull");
    let env = TestEnv::with_image_store("pull", &store.dir);
    let layout = oci_layout(&store.scratch, "pulled\n");
    let registry = Registry::start(&store.scratch.join("registry"));
    registry.push(&layout, "v1", "test/img:v1");
    let reference = format!("{}/test/img:v1", registry.host);
    let out = ok(&runbox(
        &env,
        &store,
        &["image", "pull", "-q", "--plain-http", &reference],
    ));
    assert!(out.starts_with(&format!("{reference} sha256:")), "{out}");
    let out = ok(&runbox(
        &env,
        &store,
        &[
            "run",
            "--image",
            &reference,
            "--",
            "/bin/cat",
            "/home/second.txt",
        ],
    ));
    assert_eq!(out, "pulled\n");
    // base, pushed too, shares its layer: nothing downloaded again.
    registry.push(&layout, "base", "test/base:1");
    let mut cached = Vec::new();
    let mut opts = runbox::PullOptions::default();
    opts.plain_http(true);
    store
        .store
        .pull(&format!("{}/test/base:1", registry.host), &opts, &mut |p| {
            if let runbox::Progress::Layer { cached: c, .. } = p {
                cached.push(*c);
            }
        })
        .unwrap();
    assert_eq!(cached, [true]);
    assert_eq!(store.layer_count(), 2);
    // HTTPS is the default: a plain-HTTP registry then fails, typed, and nothing is kept.
    let e = store
        .store
        .pull(
            &format!("{}/test/img:v1", registry.host),
            &Default::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Registry, "{e}");
    // A blob the registry serves corrupted: refused, nothing of it kept.
    registry.push(&layout, "v1", "test/bad:v1");
    let fresh = StoreEnv::new("pull-bad");
    let data = registry.dir.join("data/docker/registry/v2/blobs/sha256");
    let mut largest: Option<(u64, PathBuf)> = None;
    for prefix in fs::read_dir(&data).unwrap().flatten() {
        for blob in fs::read_dir(prefix.path()).unwrap().flatten() {
            let f = blob.path().join("data");
            let len = fs::metadata(&f).unwrap().len();
            if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                largest = Some((len, f));
            }
        }
    }
    let (_, base_layer) = largest.unwrap();
    let mut bytes = fs::read(&base_layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::File::create(&base_layer)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let e = fresh
        .store
        .pull(
            &format!("{}/test/bad:v1", registry.host),
            &opts,
            &mut |_| {},
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
    assert!(fresh.store.list().unwrap().is_empty());
    assert_eq!(fresh.layer_count(), 0);
    fresh.assert_clean();
    store.assert_clean();
    env.finish();
}

/// Everything an error shows: its message, every cause, and its debug form.
fn all_of(e: &runbox::Error) -> String {
    format!("{}\n{}\n{e:?}", e, e.chain())
}

/// A layout with one good layer, its paths: (layout, layer blob, manifest blob).
fn one_layer_layout(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let good = raw_tar(&[("f", tar::EntryType::Regular, b"x", "", 0o644)]);
    let layout = hand_layout(dir, std::slice::from_ref(&good), None);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blobs = layout.join("blobs/sha256");
    (
        layout.clone(),
        blobs.join(&sha(&good)[7..]),
        blobs.join(&m[7..]),
    )
}

/// Issue 21, finding 11: nothing in a layout is followed through a symlink. A layer blob,
/// `index.json`, a manifest or the `blobs` directory that is a symlink (to a host secret, or
/// to a valid copy outside the layout) is refused as invalid_image, and no byte of what it
/// points at appears in the error.
#[test]
fn symlinks_in_a_layout_are_refused_and_never_read() {
    let store = StoreEnv::new("symlinks");
    let s = &store.store;
    // A host file whose every tar header field is the secret: a tar reader that follows the
    // link quotes it in its error (the name field, the checksum that is not a number).
    let secret = format!("RUNBOX-SECRET-{}-", std::process::id());
    let secret_file = store.scratch.join("shadow");
    fs::write(&secret_file, secret.repeat(4096 / secret.len() + 1)).unwrap();
    let refused = |name: &str, layout: &Path| {
        let e = s.import(layout, None, &mut |_| {}).unwrap_err();
        let text = all_of(&e);
        assert_eq!(e.kind(), ErrorKind::InvalidImage, "{name}: {text}");
        assert!(
            !text.contains(&secret[..14]),
            "{name}: the secret leaked: {text}"
        );
        assert!(s.list().unwrap().is_empty(), "{name}: an image was kept");
        assert_eq!(store.layer_count(), 0, "{name}: a layer was kept");
        store.assert_clean();
    };
    let swap = |path: &Path, target: &Path| {
        fs::remove_file(path).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    };
    // The layer blob and index.json pointing at the secret.
    let (layout, layer, _) = one_layer_layout(&store.scratch.join("layer-secret"));
    swap(&layer, &secret_file);
    refused("layer blob -> secret", &layout);
    let (layout, _, _) = one_layer_layout(&store.scratch.join("index-secret"));
    swap(&layout.join("index.json"), &secret_file);
    refused("index.json -> secret", &layout);
    // Links to valid copies outside the layout: the content checks out, the link does not.
    let (layout, _, manifest) = one_layer_layout(&store.scratch.join("manifest-copy"));
    let copy = store.scratch.join("manifest-copy.json");
    fs::copy(&manifest, &copy).unwrap();
    swap(&manifest, &copy);
    refused("manifest -> copy", &layout);
    let (layout, _, _) = one_layer_layout(&store.scratch.join("index-copy"));
    let copy = store.scratch.join("index-copy.json");
    fs::copy(layout.join("index.json"), &copy).unwrap();
    swap(&layout.join("index.json"), &copy);
    refused("index.json -> copy", &layout);
    let (layout, _, _) = one_layer_layout(&store.scratch.join("blobs-copy"));
    let moved = store.scratch.join("blobs-elsewhere");
    fs::rename(layout.join("blobs"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, layout.join("blobs")).unwrap();
    refused("blobs -> elsewhere", &layout);
    // The same layouts without links import.
    let (layout, _, _) = one_layer_layout(&store.scratch.join("plain"));
    s.import(&layout, None, &mut |_| {}).unwrap();
    store.assert_clean();
}

/// Issue 21, finding 12: a blob, `index.json` or archive that is a FIFO, socket or device
/// makes the import fail at once with a typed error instead of blocking. Each import runs
/// in a thread with a deadline; one that blocks is released (its FIFO opened for writing)
/// and fails the test.
#[test]
fn special_files_in_a_layout_fail_the_import_at_once() {
    use std::sync::mpsc;
    use std::time::Duration;
    let store = StoreEnv::new("fifos");
    let fifo = |p: &Path| {
        let _ = fs::remove_file(p);
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    };
    let refused = |name: &str, path: &Path, fifo_at: Option<&Path>, kind: ErrorKind| {
        let (tx, rx) = mpsc::channel();
        let (s, p) = (store.store.clone(), path.to_path_buf());
        std::thread::spawn(move || {
            let _ = tx.send(s.import(&p, None, &mut |_| {}));
        });
        let result = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => r,
            Err(_) => {
                if let Some(f) = fifo_at {
                    let _ = fs::OpenOptions::new().write(true).open(f);
                }
                panic!("{name}: the import blocked");
            }
        };
        let e = result.unwrap_err();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert!(store.store.list().unwrap().is_empty(), "{name}: kept");
        assert_eq!(store.layer_count(), 0, "{name}: a layer was kept");
        store.assert_clean();
    };
    let (layout, layer, _) = one_layer_layout(&store.scratch.join("layer"));
    fifo(&layer);
    refused("layer FIFO", &layout, Some(&layer), ErrorKind::InvalidImage);
    let (layout, _, manifest) = one_layer_layout(&store.scratch.join("manifest"));
    fifo(&manifest);
    refused(
        "manifest FIFO",
        &layout,
        Some(&manifest),
        ErrorKind::InvalidImage,
    );
    let (layout, _, _) = one_layer_layout(&store.scratch.join("index"));
    let index = layout.join("index.json");
    fifo(&index);
    refused("index FIFO", &layout, Some(&index), ErrorKind::InvalidImage);
    let (layout, layer, _) = one_layer_layout(&store.scratch.join("socket"));
    fs::remove_file(&layer).unwrap();
    nix::sys::stat::mknod(
        &layer,
        nix::sys::stat::SFlag::S_IFSOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    refused("layer socket", &layout, None, ErrorKind::InvalidImage);
    let (layout, layer, _) = one_layer_layout(&store.scratch.join("device"));
    fs::remove_file(&layer).unwrap();
    nix::sys::stat::mknod(
        &layer,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    refused(
        "layer device (/dev/zero)",
        &layout,
        None,
        ErrorKind::InvalidImage,
    );
    // The archive itself a FIFO: neither a layout nor an archive.
    let archive = store.scratch.join("archive.tar");
    fifo(&archive);
    refused(
        "archive FIFO",
        &archive,
        Some(&archive),
        ErrorKind::InvalidConfig,
    );
}

/// Issue 21, finding 13: the program lookup in a stored image resolves as overlayfs
/// merges the layers, inside the image only. Layer 1 has `a -> <host dir>`, layer 2 a real
/// `a/`: `/a/hostexe` (which exists on the host) is "not found" exactly as a missing name
/// is, and neither error names the store's layer directories.
#[test]
fn a_lower_layers_symlink_is_never_followed_on_the_host() {
    use tar::EntryType::{Directory, Symlink};
    let store = StoreEnv::new("lookup");
    let env = TestEnv::with_image_store("lookup", &store.dir);
    let host = store.scratch.join("hostdir");
    fs::create_dir_all(&host).unwrap();
    fs::copy("/bin/true", host.join("hostexe")).unwrap();
    let target = host.to_str().unwrap().to_string();
    let layout = hand_layout(
        &store.scratch.join("layered"),
        &[
            raw_tar(&[("a", Symlink, b"", &target, 0o777)]),
            raw_tar(&[("a", Directory, b"", "", 0o755)]),
        ],
        None,
    );
    store.store.import(&layout, None, &mut |_| {}).unwrap();
    let hostile = runbox(&env, &store, &["run", "--image", "t", "--", "/a/hostexe"]);
    let missing = runbox(&env, &store, &["run", "--image", "t", "--", "/a/nothing"]);
    let stderr = |o: &Output, name: &str| String::from_utf8_lossy(&o.stderr).replace(name, "P");
    assert_eq!(hostile.status.code(), missing.status.code());
    assert_ne!(hostile.status.code(), Some(0));
    assert_eq!(
        stderr(&hostile, "/a/hostexe"),
        stderr(&missing, "/a/nothing")
    );
    let text = String::from_utf8_lossy(&hostile.stderr);
    assert!(text.contains("not found"), "{text}");
    assert!(!text.contains(store.dir.to_str().unwrap()), "{text}");
    // The library says the same: not found, no store path.
    let mut cmd = Command::new("/a/hostexe");
    cmd.stored_image("t");
    let e = env.root.run(&cmd).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(!all_of(&e).contains(store.dir.to_str().unwrap()), "{e:?}");
    store.assert_clean();
    env.finish();
}

/// Issue 21, deliverable 4: an import into a full image store fails with a typed error
/// (io, out of space), keeps nothing that looks complete (no record, no name, no layer,
/// no staging), and the store stays usable: a small import succeeds after, and `prune`
/// reclaims everything.
#[test]
fn an_import_into_a_full_store_fails_typed_and_leaves_it_usable() {
    let store = StoreEnv::with_size("enospc", "4m");
    // One 8 MiB layer of incompressible bytes: twice the store's room.
    let mut data = Vec::with_capacity(8 << 20);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while data.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let big = raw_tar(&[("big", tar::EntryType::Regular, &data, "", 0o644)]);
    drop(data);
    let layout = hand_layout(&store.scratch.join("big"), &[big], None);
    let e = store.store.import(&layout, None, &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{}", e.chain());
    assert!(e.to_string().contains("out of space"), "{}", e.chain());
    assert!(store.store.list().unwrap().is_empty());
    assert_eq!(store.layer_count(), 0);
    assert_eq!(fs::read_dir(store.dir.join("names")).unwrap().count(), 0);
    store.assert_clean();
    // Still usable.
    let (small, _, _) = one_layer_layout(&store.scratch.join("small"));
    let images = store.store.import(&small, None, &mut |_| {}).unwrap();
    assert_eq!(
        store.store.inspect("t").unwrap().info.digest,
        images[0].digest
    );
    store.assert_clean();
    // prune takes everything once the name is gone.
    store.store.remove("t").unwrap();
    let p = store.store.prune().unwrap();
    assert_eq!(p.layers, 1, "{p:?}");
    assert_eq!(store.layer_count(), 0);
    assert_eq!(
        fs::read_dir(store.dir.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(store.dir.join("images")).unwrap().count(), 0);
    store.assert_clean();
}

/// Issue 21, deliverable 2: a tar entry the tar crate would read whole into memory (a GNU
/// long name here, claiming 8 GiB) is refused from its header, in a layer and in a docker
/// archive, with an error that says so.
#[test]
fn huge_tar_metadata_entries_are_refused_from_their_header() {
    let store = StoreEnv::new("longname");
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(8 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut evil = h.as_bytes().to_vec();
    evil.extend_from_slice(&[b'a'; 4096]);
    let layout = hand_layout(
        &store.scratch.join("layer"),
        std::slice::from_ref(&evil),
        None,
    );
    let e = store.store.import(&layout, None, &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{}", e.chain());
    assert!(
        e.to_string().contains("long name entry of"),
        "{}",
        e.chain()
    );
    store.assert_clean();
    // A docker archive holding such an entry among its members.
    let mut archive = Vec::new();
    {
        let mut b = tar::Builder::new(&mut archive);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &b"[]"[..]).unwrap();
        b.finish().unwrap();
    }
    archive.truncate(1024);
    archive.extend_from_slice(&evil);
    let path = store.scratch.join("archive.tar");
    fs::write(&path, &archive).unwrap();
    let e = store.store.import(&path, None, &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{}", e.chain());
    assert!(
        e.to_string().contains("long name entry of"),
        "{}",
        e.chain()
    );
    assert_eq!(store.layer_count(), 0);
    store.assert_clean();
}

/// Issue 21, deliverable 4: a store out of inodes (a full disk that cannot take one more
/// directory): an import fails with a typed error and keeps nothing, `prune` still runs
/// (it makes no directory of its own) and frees the leftovers of an import whose process
/// is gone and the image removed, and the store takes imports again.
#[test]
fn a_store_out_of_inodes_is_pruned_back_to_use() {
    let store = StoreEnv::with_tmpfs("inodes", "size=16m,nr_inodes=64");
    let (small, _, _) = one_layer_layout(&store.scratch.join("small"));
    store.store.import(&small, None, &mut |_| {}).unwrap();
    // The image is removed (its layer and blobs wait for a prune), then leftovers of an
    // import killed midway take every inode left.
    store.store.remove("t").unwrap();
    let left = store.dir.join("tmp/layer-999999999-0");
    fs::create_dir(&left).unwrap();
    for n in 0.. {
        match fs::File::create(left.join(format!("f{n}"))) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    let other = hand_layout(
        &store.scratch.join("other"),
        &[raw_tar(&[("g", tar::EntryType::Regular, b"y", "", 0o644)])],
        None,
    );
    let e = store.store.import(&other, None, &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{}", e.chain());
    assert!(store.store.list().unwrap().is_empty());
    assert_eq!(store.layer_count(), 1);
    // prune on the full store.
    let p = store.store.prune().unwrap();
    assert_eq!((p.staging, p.layers, p.blobs), (1, 1, 2), "{p:?}");
    assert_eq!(store.layer_count(), 0);
    store.assert_clean();
    store.store.import(&other, None, &mut |_| {}).unwrap();
    store.assert_clean();
}
