//! Sandboxes that cannot hurt their neighbours: a sandbox hoards a kernel budget or table
//! while a second sandbox, running at the same time, and the host still get what they need;
//! shared read-only files are inodes of each sandbox's own; the sandbox sees no path of the
//! state root.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{image, wait_until, TestEnv};
use runbox::{ErrorKind, RootOptions, Sandbox, Signal, Status};

/// What the sandbox has printed so far.
fn stdout_so_far(s: &Sandbox) -> String {
    s.logs()
        .map(|(out, _)| String::from_utf8_lossy(&out).into_owned())
        .unwrap_or_default()
}

/// Spawns `cmd` and waits until its output has `lines` lines.
fn spawn_until(env: &TestEnv, cmd: &runbox::Command, lines: usize) -> (Sandbox, String) {
    let s = env.root.spawn(cmd).unwrap();
    wait_until("the hoarder's report", || {
        stdout_so_far(&s).lines().count() >= lines
    });
    let out = stdout_so_far(&s);
    (s, out)
}

fn stop(mut s: Sandbox) {
    s.kill(Signal::SIGKILL).unwrap();
    s.wait().unwrap();
    s.delete(false).unwrap();
}

/// The test image's probe, run on the host as `uid`.
fn host_probe(uid: u32, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(image().join("bin/probe"))
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn uid_line(out: &str) -> u32 {
    out.lines().next().unwrap().trim().parse().unwrap()
}

#[test]
fn a_sandbox_draining_its_uids_budgets_leaves_the_others_theirs() {
    let env = TestEnv::new("uidbudget");
    // RLIMIT_SIGPENDING is a budget of the uid: with one uid for every sandbox, this one
    // would take it from all of them (and from the host's nobody).
    let (a, out) = spawn_until(
        &env,
        &env.cmd("sh", &["-c", "id -u; exec probe sigqueue-hoard 600"]),
        2,
    );
    let a_uid = uid_line(&out);
    assert_eq!(out.lines().nth(1), Some("hoarded 1024 EAGAIN"), "{out}");
    let v = env
        .root
        .run(&env.cmd("sh", &["-c", "id -u; probe sigqueue"]))
        .unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let b_uid = uid_line(&v.stdout);
    assert_eq!(v.stdout.lines().nth(1), Some("sigqueue ok"), "{v:?}");
    assert_ne!(a_uid, b_uid, "two sandboxes share a uid");
    for uid in [a_uid, b_uid] {
        assert!((60_000..61_000).contains(&uid), "{uid}");
    }
    assert_eq!(host_probe(65534, &["sigqueue"]), "sigqueue ok");
    // An explicit user still wins.
    let mut named = env.cmd("probe", &["uid"]);
    named.user(1234, 1235);
    let v = env.root.run(&named).unwrap();
    assert!(v.stdout.starts_with("uid=1234 gid=1235"), "{v:?}");
    stop(a);
    env.finish();
}

#[test]
fn uids_come_from_the_range_once_each_and_go_back_with_their_sandbox() {
    let env = TestEnv::new("uidrange");
    // A range that holds system users is refused.
    let err = RootOptions::new()
        .uid_range(1, 10)
        .open(env.dir.join("other"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
    assert!(!env.dir.join("other").exists());
    let err = RootOptions::new()
        .uid_range(65_000, 1000)
        .open(env.dir.join("other"))
        .unwrap_err();
    assert!(err.to_string().contains("65534"), "{err}");

    // A root on the same state root with a range of one uid and no spares.
    let one = RootOptions::new()
        .cgroup_prefix(env.prefix.clone())
        .uid_range(64_321, 1)
        .spare_monitors(0)
        .open(&env.dir)
        .unwrap();
    let (first, out) = {
        let s = one
            .spawn(&env.cmd("sh", &["-c", "id -u; exec sleep 600"]))
            .unwrap();
        wait_until("the first sandbox's uid", || !stdout_so_far(&s).is_empty());
        let out = stdout_so_far(&s);
        (s, out)
    };
    assert_eq!(uid_line(&out), 64_321);
    let err = one.run(&env.cmd("probe", &["true"])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LaunchFailed, "{err}");
    assert!(err.to_string().contains("64321+1"), "{err}");
    // An explicit user needs no uid of the range.
    let mut named = env.cmd("probe", &["true"]);
    named.user(65534, 65534);
    assert_eq!(one.run(&named).unwrap().status, Status::Ok);
    stop(first);
    let v = one.run(&env.cmd("probe", &["uid"])).unwrap();
    assert!(v.stdout.starts_with("uid=64321 "), "{v:?}");
    drop(one);
    env.finish();
}

#[test]
fn a_sandbox_hoarding_ptys_leaves_the_others_and_the_host_theirs() {
    let env = TestEnv::new("ptys");
    // Enough descriptors to take every pty non-initial devpts instances may have.
    let mut hoard = env.cmd("probe", &["pty-hoard", "600"]);
    hoard.limits_mut().open_files = 8192;
    let (a, out) = spawn_until(&env, &hoard, 1);
    assert_eq!(out.trim(), "ptys 16 ENOSPC", "{out}");
    let v = env.root.run(&env.cmd("probe", &["pty"])).unwrap();
    assert_eq!(v.stdout.trim(), "pty ok", "{v:?}");
    let host = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .expect("the host opens a pty");
    drop(host);
    stop(a);
    env.finish();
}

#[test]
fn host_wide_tables_and_uncharged_kernel_memory_are_out_of_reach() {
    let env = TestEnv::new("tables");
    for (args, want) in [
        // Linux AIO contexts come from the host-wide fs.aio-max-nr.
        (&["syscall", "io_setup"][..], "io_setup EPERM"),
        // Byte-range locks are kernel memory no cgroup is charged for.
        (&["fcntl-locks", "100000", "/tmp/f"][..], "locks 0 EPERM"),
        // Whole-file locks work (one per open file: bounded).
        (&["flock-hold", "/tmp", "0"][..], "locked"),
        // The host's device events; route sockets (getifaddrs) still work.
        (&["syscall", "socket-uevent"][..], "socket-uevent EPERM"),
        (
            &["syscall", "socket-netlink-route"][..],
            "socket-netlink-route ok",
        ),
    ] {
        for uid in [0, 60_000] {
            let mut cmd = env.cmd("probe", args);
            if uid == 0 {
                cmd.user(0, 0);
            }
            let v = env.root.run(&cmd).unwrap();
            assert_eq!(v.stdout.trim(), want, "uid {uid} {args:?}: {v:?}");
        }
    }
    env.finish();
}

/// A command on the host-based image running the test image's probe, copied in.
fn host_image_probe(script: &str) -> runbox::Command {
    let mut cmd = runbox::Command::new("sh");
    cmd.args(["-c", script])
        .copy_in(image().join("bin/probe"), "/work/probe");
    cmd
}

#[test]
fn shared_read_only_files_are_inodes_of_each_sandbox_alone() {
    let env = TestEnv::new("inodes");
    // A watch on the shared /usr/bin sees no open or read of the host's or another
    // sandbox's.
    let (watcher, out) = spawn_until(&env, &host_image_probe("/work/probe inotify /usr/bin 4"), 1);
    assert_eq!(out.trim(), "watching");
    for _ in 0..5 {
        fs::read("/usr/bin/env").unwrap();
    }
    let v = env.root.run(&runbox::Command::new("env")).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let mut watcher = watcher;
    let v = watcher.wait().unwrap();
    watcher.delete(false).unwrap();
    assert_eq!(v.stdout, "watching\nevents 0\n", "{v:?}");

    // An exclusive flock on a shared file blocks neither the host nor another sandbox.
    let (holder, out) = spawn_until(
        &env,
        &host_image_probe("/work/probe flock-hold /usr/bin/env 600"),
        1,
    );
    assert_eq!(out.trim(), "locked");
    let file = fs::File::open("/usr/bin/env").unwrap();
    let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("the host takes the lock a sandbox holds on its view of the file");
    let v = env
        .root
        .run(&host_image_probe("/work/probe flock-hold /usr/bin/env 0"))
        .unwrap();
    assert_eq!(v.stdout.trim(), "locked", "{v:?}");
    drop(locked);
    stop(holder);

    // uid 0 owns the shared files but may not take a lease that would stall the host's writers.
    let mut lease = host_image_probe("/work/probe syscall setlease");
    lease.user(0, 0);
    let v = env.root.run(&lease).unwrap();
    assert_eq!(v.stdout.trim(), "setlease EPERM", "{v:?}");
    env.finish();
}

#[test]
fn the_sandbox_sees_no_path_of_the_state_root() {
    let env = TestEnv::new("paths");
    let root = env.dir.to_string_lossy().into_owned();
    for image in [None, Some(PathBuf::from(image()))] {
        let mut cmd = runbox::Command::new("sh");
        cmd.args([
            "-c",
            "cat /proc/self/mountinfo; tr '\\0' ' ' < /proc/1/cmdline; echo",
        ]);
        if let Some(dir) = &image {
            cmd.image(dir);
        }
        let v = env.root.run(&cmd).unwrap();
        assert_eq!(v.status, Status::Ok, "{v:?}");
        assert!(v.stdout.contains(" / "), "{v:?}");
        assert!(!v.stdout.contains(&root), "{image:?}: {}", v.stdout);
        assert!(
            v.stdout.trim_end().ends_with("runbox-init"),
            "{image:?}: {}",
            v.stdout
        );
    }
    env.finish();
}
