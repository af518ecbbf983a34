//! Real sandboxes, as root: running, confinement from the inside, limits, bad input, leaks.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{image, TestEnv};
use runbox::{ErrorKind, LimitKind, Status};

#[test]
fn echo_exit_codes_and_signals() {
    let env = TestEnv::new("basic");
    let v = env
        .root
        .run(&env.cmd("/bin/echo", &["hello", "world"]))
        .unwrap();
    assert_eq!(v.status, Status::Ok);
    assert_eq!(v.exit_code, Some(0));
    assert_eq!(v.stdout, "hello world\n");
    assert_eq!(v.stderr, "");
    assert!(v.wall_time_us > 0 && v.memory_peak_bytes > 0);

    let v = env.root.run(&env.cmd("probe", &["exit", "7"])).unwrap();
    assert_eq!(
        (v.status, v.exit_code, v.signal),
        (Status::RuntimeError, Some(7), None)
    );
    assert_eq!(v.shell_status(), 7);

    let v = env.root.run(&env.cmd("probe", &["signal", "11"])).unwrap();
    assert_eq!(
        (v.status, v.exit_code, v.signal),
        (Status::Signaled, None, Some(11))
    );
    assert_eq!(v.shell_status(), 139);

    // A shell signalling itself: the program is not pid 1, so the signal is not ignored.
    let v = env
        .root
        .run(&env.cmd("/bin/sh", &["-c", "echo err >&2; kill -TERM $$"]))
        .unwrap();
    assert_eq!(v.signal, Some(15));
    assert_eq!(v.stderr, "err\n");
    env.finish();
}

#[test]
fn stdin_env_and_cwd_reach_the_program() {
    let env = TestEnv::new("stdio");
    let mut cmd = env.cmd(
        "/bin/sh",
        &[
            "-c",
            "cat; echo \"[$FOO]\"; pwd; env | cut -d= -f1 | sort | tr '\\n' ' '",
        ],
    );
    cmd.stdin(runbox::Stdin::Bytes(b"from stdin\n".to_vec()))
        .env("FOO", "bar baz");
    let v = env.root.run(&cmd).unwrap();
    // Exactly the caller's environment: PATH and FOO (sh itself adds PWD and SHLVL).
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let lines: Vec<&str> = v.stdout.lines().collect();
    assert_eq!(
        lines,
        ["from stdin", "[bar baz]", "/work", "FOO PATH PWD SHLVL "],
        "{v:?}"
    );
    env.finish();
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
}

#[test]
fn confinement_seen_from_inside() {
    let env = TestEnv::new("confine");
    let v = env.root.run(&env.cmd("probe", &["status"])).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(status_field(&v.stdout, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&v.stdout, "NoNewPrivs"), "1");
    assert_eq!(status_field(&v.stdout, "Seccomp"), "2");
    // A uid of the default range, the same for real, effective, saved and file system.
    let uid = status_field(&v.stdout, "Uid");
    let first: u32 = uid.split_whitespace().next().unwrap().parse().unwrap();
    assert!((60_000..61_000).contains(&first), "{uid}");
    assert!(
        uid.split_whitespace().all(|u| u == first.to_string()),
        "{uid}"
    );

    for (call, want) in [
        ("keyctl", "EPERM"),
        ("unshare-user", "EPERM"),
        ("clone-newuser", "EPERM"),
        ("mount", "EPERM"),
        ("ptrace", "EPERM"),
        ("bpf", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("io_uring_setup", "EPERM"),
        ("socket-vsock", "EPERM"),
        ("x32", "EPERM"),
        ("clone3", "ENOSYS"),
        ("getpid", "ok"),
    ] {
        let v = env.root.run(&env.cmd("probe", &["syscall", call])).unwrap();
        assert_eq!(v.stdout.trim(), format!("{call} {want}"), "{v:?}");
    }

    // The program starts with no blocked or ignored signals (the init blocks and ignores some).
    let v = env
        .root
        .run(&env.cmd("/bin/cat", &["/proc/self/status"]))
        .unwrap();
    assert_eq!(status_field(&v.stdout, "SigBlk"), "0000000000000000");
    assert_eq!(status_field(&v.stdout, "SigIgn"), "0000000000000000");

    // Only loopback in the network namespace.
    let v = env
        .root
        .run(&env.cmd("/bin/cat", &["/proc/net/dev"]))
        .unwrap();
    let ifaces: Vec<&str> = v
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"]);

    // Host processes are invisible: only the sandbox's init, the shell and ls.
    let v = env
        .root
        .run(&env.cmd("/bin/sh", &["-c", "ls /proc | grep -c '^[0-9]'"]))
        .unwrap();
    let n: u32 = v.stdout.trim().parse().unwrap();
    assert!(n <= 4, "sandbox sees {n} processes");

    // Own hostname.
    let v = env.root.run(&env.cmd("probe", &["hostname"])).unwrap();
    assert_eq!(v.stdout.trim(), "runbox");
    assert_ne!(
        v.stdout.trim(),
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );

    // Only fds 0-2, and rlimits as configured.
    let v = env.root.run(&env.cmd("probe", &["fds"])).unwrap();
    assert_eq!(v.stdout.trim(), "0 1 2");
    let v = env.root.run(&env.cmd("probe", &["rlimits"])).unwrap();
    assert_eq!(
        v.stdout.trim(),
        format!("core=0 nofile=256 fsize={}", 64 << 20)
    );

    // /sys and /proc/sys are read-only, /proc/keys is masked (empty), even for uid 0.
    let v = env
        .root
        .run(&env.cmd("probe", &["syscall", "write-sys"]))
        .unwrap();
    assert_ne!(v.stdout.trim(), "write-sys ok");
    let mut root_user = env.cmd(
        "/bin/sh",
        &["-c", "echo x > /proc/sys/kernel/hostname; echo rc=$?; wc -c < /proc/keys; ls /proc/acpi | wc -l"],
    );
    root_user.user(0, 0);
    let v = env.root.run(&root_user).unwrap();
    assert_eq!(v.stdout, "rc=1\n0\n0\n", "{v:?}");
    assert!(v.stderr.contains("Read-only file system"), "{v:?}");
    env.finish();
}

#[test]
fn writes_land_in_the_private_layer() {
    let env = TestEnv::new("overlay");
    let script =
        "echo data > /new-file && echo more > /etc/hostname && cat /new-file /etc/hostname && \
                  probe write-bytes 1048576 /work/big && ls -l /work/big | wc -l";
    let mut cmd = env.cmd("/bin/sh", &["-c", script]);
    cmd.user(0, 0); // uid 0 without capabilities may write root-owned dirs, nothing more
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "data\nmore\n1\n");
    assert!(
        !image().join("new-file").exists(),
        "the image was written to"
    );
    assert_eq!(
        fs::read_to_string(image().join("etc/hostname")).unwrap(),
        "runbox\n"
    );
    assert!(!image().join("work/big").exists());

    // The writable layer is capped: a disk fill ends in ENOSPC inside.
    let mut fill = env.cmd(
        "probe",
        &["write-bytes", &(64u64 << 20).to_string(), "/work/fill"],
    );
    fill.limits_mut().scratch_bytes = 8 << 20;
    let v = env.root.run(&fill).unwrap();
    assert_eq!(v.status, Status::RuntimeError, "{v:?}");
    assert!(v.stderr.starts_with("error ENOSPC"), "{v:?}");
    env.finish();
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let env = TestEnv::new("oom");
    let mut cmd = env.cmd("probe", &["memhog", "256"]);
    cmd.limits_mut().memory_bytes = 64 << 20;
    cmd.limits_mut().scratch_bytes = 16 << 20;
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::MemoryLimit, "{v:?}");
    assert!(v.oom_killed);
    assert_eq!(v.limit, Some(LimitKind::Memory));
    assert_eq!(v.signal, Some(9));
    // Peak memory is the limit, within 5%.
    let limit = 64u64 << 20;
    assert!(
        v.memory_peak_bytes <= limit && v.memory_peak_bytes >= limit * 95 / 100,
        "{v:?}"
    );
    env.finish();
}

#[test]
fn fork_bomb_ends_under_the_pids_limit() {
    let env = TestEnv::new("forkbomb");
    let mut cmd = env.cmd("probe", &["forkbomb"]);
    cmd.limits_mut().pids = 16;
    let started = Instant::now();
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let forks: u32 = v
        .stdout
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("forks=")
        .parse()
        .unwrap();
    // init + probe + children <= 16.
    assert!(forks <= 14, "{v:?}");
    assert!(v.stdout.contains("errno=EAGAIN"), "{v:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The host can still fork.
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    env.finish();
}

#[test]
fn half_a_cpu_with_a_short_period_throttles() {
    let env = TestEnv::new("cpu");
    let mut cmd = env.cmd("probe", &["spin", "1"]);
    cmd.limits_mut().cpus = 0.5;
    let mut sandbox = env.root.spawn(&cmd).unwrap();
    let v = sandbox.wait().unwrap();
    let usage = sandbox.usage().unwrap();
    sandbox.delete(false).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let wall = v.wall_time_us as f64 / 1e6;
    // 1 s of CPU at half a CPU takes about 2 s; slack for a noisy 2-core machine.
    assert!((1.8..3.0).contains(&wall), "wall {wall} s");
    assert!(
        v.cpu_time_us >= 1_000_000 && v.cpu_time_us < 1_200_000,
        "{v:?}"
    );
    // With a 10 ms period, ~2 s of wall time is ~200 periods, nearly all of them throttled.
    assert!(usage.cpu_throttled_periods >= 50, "{usage:?}");
    env.finish();
}

#[test]
fn wall_and_cpu_time_limits_kill() {
    let env = TestEnv::new("time");
    let mut cmd = env.cmd("probe", &["sleep", "30"]);
    cmd.limits_mut().wall_time = Some(Duration::from_millis(500));
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(
        (v.status, v.limit),
        (Status::WallTimeLimit, Some(LimitKind::WallTime)),
        "{v:?}"
    );
    assert!(v.wall_time_us < 1_000_000, "{v:?}");

    let mut cmd = env.cmd("probe", &["spin", "30"]);
    cmd.limits_mut().cpu_time = Some(Duration::from_millis(300));
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(
        (v.status, v.limit),
        (Status::TimeLimit, Some(LimitKind::CpuTime)),
        "{v:?}"
    );
    assert!((300_000..400_000).contains(&v.cpu_time_us), "{v:?}");
    env.finish();
}

#[test]
fn output_is_capped() {
    let env = TestEnv::new("output");
    let mut cmd = env.cmd("probe", &["write-bytes", "10000000"]);
    cmd.limits_mut().output_bytes = 1 << 20;
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::OutputLimit, "{}", v.stderr);
    assert!(v.stdout_truncated);
    assert_eq!(v.stdout.len(), 1 << 20);
    env.finish();
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_nothing() {
    let env = TestEnv::new("badinput");
    let kind = |cmd: &runbox::Command| env.root.run(cmd).unwrap_err().kind();

    assert_eq!(
        kind(&env.cmd("/bin/does-not-exist", &[])),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(&env.cmd("relative/path", &[])),
        ErrorKind::InvalidConfig
    );
    assert_eq!(kind(&env.cmd("/etc/passwd", &[])), ErrorKind::InvalidConfig);
    let mut missing_image = runbox::Command::new("/bin/true");
    missing_image.image("/nonexistent/image");
    assert_eq!(kind(&missing_image), ErrorKind::InvalidConfig);
    let mut bad_limit = env.cmd("/bin/true", &[]);
    bad_limit.limits_mut().memory_bytes = 0;
    assert_eq!(kind(&bad_limit), ErrorKind::InvalidConfig);
    let mut bad_cpus = env.cmd("/bin/true", &[]);
    bad_cpus.limits_mut().cpus = -1.0;
    assert_eq!(kind(&bad_cpus), ErrorKind::InvalidConfig);
    let mut bad_id = env.cmd("/bin/true", &[]);
    bad_id.name("../escape");
    assert_eq!(kind(&bad_id), ErrorKind::InvalidConfig);
    // Each read-write bind travels to the monitor as a descriptor: at most 12.
    let mut many_rw = env.cmd("/bin/true", &[]);
    for n in 0..=runbox::MAX_RW_BINDS {
        many_rw.bind_rw(&env.dir, format!("/w{n}"));
    }
    assert_eq!(kind(&many_rw), ErrorKind::InvalidConfig);

    // A duplicate id while the first sandbox runs.
    let mut first = env.cmd("probe", &["sleep", "0.5"]);
    first.name("dup");
    let mut running = env.root.spawn(&first).unwrap();
    assert_eq!(kind(&first), ErrorKind::AlreadyExists);
    assert_eq!(running.wait().unwrap().status, Status::Ok);
    running.delete(false).unwrap();
    // The same id is free again afterwards, also for one-shot runs back to back (the first
    // run's monitor may still be cleaning up when the second claims the name).
    for _ in 0..5 {
        assert_eq!(env.root.run(&first).unwrap().status, Status::Ok);
    }

    // A cwd that cannot be created fails the launch (at libcontainer's chdir) and is rolled back.
    let mut bad_cwd = env.cmd("/bin/true", &[]);
    bad_cwd.current_dir("/proc/nope");
    let err = env.root.run(&bad_cwd).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LaunchFailed, "{}", err.chain());
    env.finish();
}

/// A launch refused after it leased its uid (its id is taken) gives the uid back: the
/// lease's guard unwinds it, and only the running sandbox's lease stays.
#[test]
fn a_launch_refused_after_leasing_its_uid_gives_the_uid_back() {
    // No spares: every launch leases a uid of its own (a spare's would be the spare's).
    let mut opts = runbox::RootOptions::new();
    opts.spare_monitors(0).prebuild(false);
    let env = TestEnv::with_options("uidback", opts);
    let leases = || -> Vec<String> {
        fs::read_dir(env.dir.join(".uids"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<u32>().is_ok())
            .collect()
    };
    let mut cmd = env.cmd("probe", &["sleep", "30"]);
    cmd.name("taken");
    let running = env.root.spawn(&cmd).unwrap();
    let held = leases();
    assert_eq!(held.len(), 1, "{held:?}");
    for _ in 0..3 {
        let e = env.root.spawn(&cmd).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{}", e.chain());
        assert_eq!(leases(), held, "the refused launch kept a lease");
    }
    running.delete(true).unwrap();
    assert!(leases().is_empty(), "{:?}", leases());
    env.finish();
}

#[test]
fn host_image_default_runs_host_programs() {
    let env = TestEnv::new("hostimage");
    let mut cmd = runbox::Command::new("sh");
    cmd.args([
        "-c",
        "ls /home /root 2>&1; test -e /etc/shadow && echo SHADOW; echo ok",
    ]);
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert!(v.stdout.ends_with("ok\n"), "{v:?}");
    assert!(!v.stdout.contains("SHADOW"));
    assert!(
        v.stdout.contains("No such file") || v.stdout.contains("Permission denied"),
        "{v:?}"
    );
    env.finish();
}

#[test]
fn a_program_copied_or_bound_in_runs_and_modes_survive_copy_and_collect() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new("progmodes");
    let host = env.dir.join("host-files");
    let bound = host.join("bound");
    fs::create_dir_all(&bound).unwrap();
    let probe = common::image().join("bin/probe");
    fs::copy(&probe, host.join("a.out")).unwrap();
    fs::copy(&probe, bound.join("a.out")).unwrap();
    // A program that is only in the files copied in, or only in a bind, is the program.
    let mut copied = env.cmd("/work/a.out", &["echo", "copied"]);
    copied.copy_in(host.join("a.out"), "/work/a.out");
    let v = env.root.run(&copied).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "copied\n"),
        "{v:?}"
    );
    let mut via_bind = env.cmd("/sub/a.out", &["echo", "bound"]);
    via_bind.bind_ro(&bound, "/sub");
    let v = env.root.run(&via_bind).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "bound\n"),
        "{v:?}"
    );
    let mut in_path = env.cmd("a.out", &["echo", "in-path"]);
    in_path.copy_in(host.join("a.out"), "/usr/local/bin/a.out");
    let v = env.root.run(&in_path).unwrap();
    assert_eq!(v.stdout, "in-path\n", "{v:?}");

    // Modes come in with copies (files and directories, setuid dropped) ...
    let tree = host.join("tree");
    fs::create_dir_all(tree.join("private")).unwrap();
    fs::write(tree.join("secret"), "s").unwrap();
    fs::write(tree.join("tool"), "t").unwrap();
    fs::set_permissions(tree.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(tree.join("tool"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(tree.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // ... and go out with collects: a binary built inside stays executable.
    let out = env.dir.join("collected");
    let mut cmd = env.cmd(
        "sh",
        &[
            "-c",
            "stat -c '%n %a' /work/tree/secret /work/tree/tool /work/tree/private; \
             cp /bin/probe /work/built; chmod 750 /work/built; \
             echo x > /work/plain; chmod 4755 /work/plain",
        ],
    );
    cmd.copy_in(&tree, "/work/tree")
        .collect("/work/built", out.join("built"))
        .collect("/work/plain", out.join("plain"));
    let v = env.root.run(&cmd).unwrap();
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(
        v.stdout, "/work/tree/secret 600\n/work/tree/tool 751\n/work/tree/private 700\n",
        "{v:?}"
    );
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("built"), 0o750);
    assert_eq!(mode("plain"), 0o755);
    let run = std::process::Command::new(out.join("built"))
        .args(["echo", "runs"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "runs\n");
    fs::remove_dir_all(&host).unwrap();
    fs::remove_dir_all(&out).unwrap();
    env.finish();
}

#[test]
fn a_work_dir_keeps_its_files_between_runs_for_its_user_only() {
    let env = TestEnv::new("workdir");
    let work = env.dir.join("box");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(64_100), Some(64_100)).unwrap();
    let run = |script: &str, uid: Option<u32>| {
        let mut cmd = env.cmd("sh", &["-c", script]);
        cmd.bind_rw(&work, "/box").current_dir("/box");
        if let Some(uid) = uid {
            cmd.user(uid, uid);
        }
        env.root.run(&cmd).unwrap()
    };
    let v = run("echo one > f && id -u > owner", Some(64_100));
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let v = run("cat f; echo two >> f", Some(64_100));
    assert_eq!(v.stdout, "one\n", "{v:?}");
    assert_eq!(fs::read_to_string(work.join("f")).unwrap(), "one\ntwo\n");
    assert_eq!(fs::read_to_string(work.join("owner")).unwrap(), "64100\n");
    // Another sandbox's uid may read but not write there.
    let v = run("cat f && echo three >> f", None);
    assert_eq!(v.exit_code, Some(1), "{v:?}");
    assert_eq!(fs::read_to_string(work.join("f")).unwrap(), "one\ntwo\n");
    // Attached when the run starts, as confined as a bind: nosuid, nodev, and noexec where
    // asked (a script there is not executed).
    let mut cmd = env.cmd("sh", &["-c", "grep ' /box ' /proc/self/mountinfo; ./x"]);
    fs::write(work.join("x"), "#!/bin/sh\necho ran\n").unwrap();
    let mut perm = fs::metadata(work.join("x")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(work.join("x"), perm).unwrap();
    cmd.bind_rw(&work, "/box")
        .current_dir("/box")
        .noexec("/box");
    let v = env.root.run(&cmd).unwrap();
    let options: Vec<&str> = v
        .stdout
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_default()
        .split(',')
        .collect();
    for want in ["rw", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&want), "{want}: {v:?}");
    }
    assert_eq!(v.exit_code, Some(126), "not executed: {v:?}");
    fs::remove_file(work.join("x")).unwrap();
    // Only directories, and never the host's special trees.
    for (src, what) in [
        (work.join("f"), "not a directory"),
        ("/proc".into(), "/proc"),
    ] {
        let mut cmd = env.cmd("true", &[]);
        cmd.bind_rw(&src, "/box");
        let err = env.root.run(&cmd).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    fs::remove_dir_all(&work).unwrap();
    env.finish();
}
