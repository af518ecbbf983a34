//! Faults injected on purpose: a state root that fills up while a sandbox runs (the verdict
//! must still be the real one), a launch into a full state root (a typed error, nothing
//! left), and SIGKILL of every process role at many points of the start path (the documented
//! outcome per role: ARCHITECTURE.md, "Faults: what each kill leaves").

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runbox::{ErrorKind, Root, RootOptions, SandboxState, Status};

/// A small tmpfs the test mounts under its own temp dir (the state root lives in it, one
/// level down, so the mount itself is not "a mount under the state root"); unmounted when
/// dropped.
struct SmallFs {
    mnt: PathBuf,
}

impl SmallFs {
    fn mount(name: &str, size: &str) -> SmallFs {
        common::require_root();
        let mnt = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{name}-{}", std::process::id()));
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&mnt);
        fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount a tmpfs for the test");
        SmallFs { mnt }
    }

    /// A directory on the tmpfs any sandbox user may fill (a read-write bind source).
    fn fill_dir(&self) -> PathBuf {
        let d = self.mnt.join("fill");
        fs::create_dir_all(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        d
    }

    /// Frees what the sandboxes wrote into the fill directory.
    fn free(&self) {
        for e in fs::read_dir(self.mnt.join("fill")).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.mnt);
    }
}

/// A state root and cgroup prefix of this test's own, at `dir`.
fn open_root(dir: &Path, name: &str) -> (Root, String) {
    let prefix = format!("runbox-test-{}-{name}", std::process::id());
    let root = RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .open(dir)
        .expect("open state root");
    (root, prefix)
}

/// Waits (at most 30 s) until no process names the state root and no sandbox cgroup or
/// monitor is left under the prefix (as `TestEnv::wait_for_monitors`).
fn wait_for_monitors(dir: &Path, prefix: &str) {
    let root_str = dir.to_string_lossy().into_owned();
    let busy = || {
        !common::processes_mentioning(&root_str).is_empty()
            || common::cgroup_prefix_dirs(prefix).iter().any(|d| {
                fs::read_dir(d).is_ok_and(|rd| {
                    rd.flatten().any(|e| {
                        e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "_monitors"
                    })
                }) || fs::read_to_string(d.join("_monitors/cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
            })
    };
    let t = Instant::now();
    while busy() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Releases the spares, waits for the monitors, asserts nothing leaked, removes the prefix
/// and the state root.
fn finish(root: &Root, dir: &Path, prefix: &str) {
    root.release_spares();
    wait_for_monitors(dir, prefix);
    common::assert_no_leaks(dir, prefix);
    for d in common::cgroup_prefix_dirs(prefix) {
        let monitors = d.join("_monitors");
        if monitors.is_dir() {
            fs::remove_dir(&monitors).unwrap();
        }
        fs::remove_dir(&d).unwrap();
    }
    fs::remove_dir_all(dir).unwrap();
}

/// Removes what a failed test left (best effort), so one failure leaves nothing running.
struct Cleanup<'a> {
    root: &'a Root,
    dir: &'a Path,
    prefix: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.root.release_spares();
        for l in self.root.list().unwrap_or_default() {
            if let Ok(s) = self.root.sandbox(&l.id) {
                let _ = s.delete(true);
            }
        }
        wait_for_monitors(self.dir, self.prefix);
        let _ = self.root.gc();
        for d in common::cgroup_prefix_dirs(self.prefix) {
            let _ = fs::remove_dir(d.join("_monitors"));
            let _ = fs::remove_dir(&d);
        }
    }
}

fn cmd(fill: &Path, script: &str) -> runbox::Command {
    let mut c = runbox::Command::new("/bin/sh");
    c.args(["-c", script])
        .image(common::image())
        .bind_rw(fill, "/fill");
    c
}

#[test]
fn a_verdict_survives_a_full_state_root_and_a_launch_into_it_fails_cleanly() {
    let small = SmallFs::mount("full", "24m");
    let fill = small.fill_dir();
    let dir = small.mnt.join("root");
    let (root, prefix) = open_root(&dir, "full");
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };

    // A one-shot run fills the state root's file system, then writes: its output is lost
    // (the captured file takes no more), its verdict is not.
    let v = root
        .run(&cmd(
            &fill,
            "cat /dev/zero > /fill/a 2>/dev/null; echo after; exit 3",
        ))
        .unwrap();
    assert_eq!(
        (v.status, v.exit_code),
        (Status::RuntimeError, Some(3)),
        "{v:?}"
    );
    assert_eq!(v.stdout, "", "{v:?}");
    assert!(v.stdout_truncated, "{v:?}");
    let msg = v.message.clone().unwrap_or_default();
    assert!(
        msg.contains("output lost") && msg.contains("No space left"),
        "{v:?}"
    );
    small.free();

    // A sandbox that prints more than `exit.json`'s reserved space holds, fills the file
    // system and runs into its wall-time limit: `wait` (the launcher's and anyone's),
    // `state` and `list` give the real verdict; the output in it is cut to fit, and says so.
    let mut c = cmd(
        &fill,
        "head -c 200000 /dev/zero | tr '\\0' a; cat /dev/zero > /fill/b 2>/dev/null; sleep 60",
    );
    c.limits_mut().wall_time = Some(Duration::from_secs(3));
    let mut s = root.spawn(&c).unwrap();
    let v = s.wait().unwrap();
    assert_eq!(
        v.status,
        Status::WallTimeLimit,
        "{}",
        v.message.unwrap_or_default()
    );
    assert_eq!(v.limit, Some(runbox::LimitKind::WallTime));
    assert!(v.stdout_truncated, "{:?}", v.message);
    assert!(
        !v.stdout.is_empty() && v.stdout.len() < 64 * 1024 && v.stdout.bytes().all(|b| b == b'a'),
        "{} bytes of stdout",
        v.stdout.len()
    );
    assert!(
        v.message
            .as_deref()
            .unwrap_or_default()
            .contains("cut to fit"),
        "{:?}",
        v.message
    );
    assert_eq!(s.state().unwrap(), SandboxState::Stopped);
    let listed = root.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].info.as_ref().unwrap().state,
        SandboxState::Stopped
    );
    let again = root.sandbox(s.id()).unwrap().wait().unwrap();
    assert_eq!(again, v, "a second reader gets the same verdict");
    let (out, _) = s.logs().unwrap();
    assert!(out.len() > v.stdout.len(), "the stdout file keeps more");

    // While the file system is still full, a launch cannot create its state: a typed error
    // with the cause, and nothing of it is left.
    let e = root
        .run(&cmd(&fill, "echo never"))
        .expect_err("a launch into a full state root");
    assert!(
        matches!(e.kind(), ErrorKind::Io | ErrorKind::LaunchFailed),
        "{e:?}"
    );
    assert!(e.chain().contains("No space left"), "{}", e.chain());
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names, vec![s.id().to_string()], "only the stopped sandbox");
    assert!(
        !fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".new-")),
        "a staging directory was left"
    );

    // Space returns: the stopped sandbox goes, launches and gc work again.
    small.free();
    s.delete(false).unwrap();
    let v = root.run(&cmd(&fill, "echo back")).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "back\n"),
        "{v:?}"
    );
    let report = root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    finish(&root, &dir, &prefix);
}

/// Fills the file system of `fill` completely, then frees `pages` pages of it.
fn fill_leaving(fill: &Path, pages: u64) {
    let path = fill.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 1 << 16];
    loop {
        use std::io::Write;
        match f.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    // Page by page: a partial last chunk may have been written.
    loop {
        use std::io::Write;
        if f.write(&[1u8]).is_err() {
            break;
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(pages * 4096) / 4096 * 4096)
        .unwrap();
}

#[test]
fn a_launch_into_a_nearly_full_state_root_runs_right_or_fails_cleanly() {
    let small = SmallFs::mount("nearly", "8m");
    let fill = small.fill_dir();
    let dir = small.mnt.join("root");
    let prefix = format!("runbox-test-{}-nearly", std::process::id());
    // No spares: each launch is the same sequence of writes, so the free pages sweep over
    // every point of it (the staging directory, the uid lease, sandbox.json, monitor.json,
    // the reserves, the output).
    let root = RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .spare_monitors(0)
        .prebuild(false)
        .open(&dir)
        .unwrap();
    let _cleanup = Cleanup {
        root: &root,
        dir: &dir,
        prefix: &prefix,
    };
    let mut failed = 0;
    let mut ran = 0;
    for pages in [0, 1, 2, 3, 4, 6, 12, 18, 19, 20, 21, 22, 24, 32] {
        fill_leaving(&fill, pages);
        match root.run(&cmd(&fill, "echo hi")) {
            Ok(v) => {
                ran += 1;
                assert_eq!(v.status, Status::Ok, "{pages} pages free: {v:?}");
                assert!(
                    v.stdout == "hi\n"
                        || (v.stdout.is_empty()
                            && v.stdout_truncated
                            && v.message.as_deref().unwrap_or("").contains("output lost")),
                    "{pages} pages free: {v:?}"
                );
            }
            Err(e) => {
                failed += 1;
                assert!(
                    matches!(e.kind(), ErrorKind::Io | ErrorKind::LaunchFailed),
                    "{pages} pages free: {e:?}"
                );
                assert!(e.chain().contains("No space left"), "{}", e.chain());
            }
        }
        // Whichever way it went, nothing of it stays (the monitor of a one-shot run
        // removes its directory after the verdict).
        wait_for_monitors(&dir, &prefix);
        assert!(root.list().unwrap().is_empty(), "{pages} pages free");
        common::assert_no_leaks(&dir, &prefix);
        small.free();
    }
    assert!(failed > 0 && ran > 0, "{failed} failed, {ran} ran");
    let report = root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(root.run(&cmd(&fill, "echo back")).unwrap().stdout, "back\n");
    finish(&root, &dir, &prefix);
}
