//! Pre-built spares: a spare monitor builds the next sandbox (shaped like the last launch)
//! before its request. The pre-built path must give the same confinement and verdicts as a
//! fresh build, apply every per-run part of the request, fall back when the shape differs,
//! and leave nothing behind when its spare or controller dies.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use common::{wait_until, TestEnv};
use runbox::{Status, Stdin};

/// Spawns `cmd`, waits for it, and tells whether it ran in a pre-built container.
fn run_traced(env: &TestEnv, cmd: &runbox::Command) -> (runbox::Verdict, bool) {
    let mut s = env.root.spawn(cmd).unwrap();
    let v = s.wait().unwrap();
    let prebuilt = s.info().unwrap().prebuilt;
    s.delete(false).unwrap();
    (v, prebuilt)
}

/// The pids hierarchy's directory of this test's cgroup prefix (v1), or the unified one (v2).
fn prefix_dir(prefix: &str) -> PathBuf {
    common::cgroup_prefix_dirs(prefix)
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists() && d.to_string_lossy().contains("/pids/"))
        .or_else(|| common::cgroup_prefix_dirs(prefix).into_iter().next())
        .expect("a cgroup hierarchy with the test's prefix")
}

/// The pre-built containers' cgroups (`_warm-*`) under the prefix, with their processes.
fn warm_cgroups(prefix: &str) -> Vec<(PathBuf, Vec<i32>)> {
    let Ok(entries) = std::fs::read_dir(prefix_dir(prefix)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("_warm-"))
        .map(|e| {
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (e.path(), procs)
        })
        .collect()
}

/// The parent pid of `pid`.
fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The pid of the spare monitor holding the one pre-built container (its init's parent).
fn warm_spare(prefix: &str) -> i32 {
    let parent = ppid(warm_init(prefix));
    assert!(
        parent > 1,
        "the pre-built init's parent is not its spare monitor"
    );
    parent
}

/// The pid of the init of the one pre-built container, once it is built: it has installed
/// seccomp, the last step before it waits for start. (Right after the cgroup appears it may
/// still hold libcontainer's intermediate process, which exits.)
fn warm_init(prefix: &str) -> i32 {
    let mut init = 0;
    wait_until("a built pre-built container", || {
        let warm = warm_cgroups(prefix);
        let [(_, procs)] = warm.as_slice() else {
            return false;
        };
        match procs.iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.contains("Seccomp:\t2"))
        }) {
            Some(&pid) => {
                init = pid;
                true
            }
            None => false,
        }
    });
    init
}

#[test]
fn a_prebuilt_sandbox_is_confined_alike_and_takes_every_per_run_part() {
    let env = TestEnv::new("prebuilt");
    let status = env.cmd("probe", &["status"]);
    let (cold, was_prebuilt) = run_traced(&env, &status);
    assert!(!was_prebuilt, "the first launch has no spare to take");
    assert_eq!(cold.status, Status::Ok, "{cold:?}");
    let (warm, was_prebuilt) = run_traced(&env, &status);
    assert!(was_prebuilt, "the second launch of one shape is pre-built");
    // Each sandbox runs as a uid of its own from the range (the pre-built one as the uid its
    // container was built for); everything else is the same.
    let uid_of = |out: &str| -> u32 {
        let line = out.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let ids: Vec<u32> = line[4..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(ids.iter().all(|&i| i == ids[0]), "{line}");
        let gid = out.lines().find(|l| l.starts_with("Gid:")).unwrap();
        assert!(
            gid[4..].split_whitespace().all(|g| g == ids[0].to_string()),
            "{gid}"
        );
        ids[0]
    };
    let (cold_uid, warm_uid) = (uid_of(&cold.stdout), uid_of(&warm.stdout));
    assert!((60_000..61_000).contains(&cold_uid) && (60_000..61_000).contains(&warm_uid));
    assert_ne!(cold_uid, warm_uid, "two sandboxes share a uid");
    let no_ids = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !l.starts_with("Uid:") && !l.starts_with("Gid:"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        no_ids(&warm.stdout),
        no_ids(&cold.stdout),
        "capabilities, no_new_privs and seccomp differ on the pre-built path"
    );
    assert!(warm.stdout.contains("Seccomp:\t2"), "{warm:?}");
    assert!(
        warm.stdout.contains("CapBnd:\t0000000000000000"),
        "{warm:?}"
    );

    // Program, arguments, environment, working directory, stdin and CPU rlimit are per run.
    let mut shell = env.cmd(
        "/bin/sh",
        &["-c", "pwd; cat; echo \"$FOO\"; ulimit -t; hostname"],
    );
    shell
        .current_dir("/tmp")
        .env("FOO", "bar")
        .stdin(Stdin::Bytes(b"from stdin\n".to_vec()));
    shell.limits_mut().cpu_time = Some(Duration::from_secs(3));
    let (v, was_prebuilt) = run_traced(&env, &shell);
    assert!(was_prebuilt);
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "/tmp\nfrom stdin\nbar\n5\nrunbox\n"),
        "{v:?}"
    );

    // Copies in and out.
    let files = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prebuilt-files-{}", std::process::id()));
    std::fs::create_dir_all(&files).unwrap();
    let host_in = files.join("input.txt");
    let host_out = files.join("collected/out.txt");
    std::fs::write(&host_in, "copied in\n").unwrap();
    let mut copy = env.cmd(
        "/bin/sh",
        &["-c", "cat /work/in.txt; echo made > /work/out.txt"],
    );
    copy.copy_in(&host_in, "/work/in.txt")
        .collect("/work/out.txt", &host_out);
    let (v, was_prebuilt) = run_traced(&env, &copy);
    assert!(was_prebuilt);
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "copied in\n"),
        "{v:?}"
    );
    assert_eq!(std::fs::read_to_string(&host_out).unwrap(), "made\n");
    std::fs::remove_dir_all(&files).unwrap();

    // A CPU-time limit and a wall-time limit fire on the pre-built path.
    let mut spin = env.cmd("probe", &["spin", "10"]);
    spin.limits_mut().cpu_time = Some(Duration::from_millis(300));
    let (v, was_prebuilt) = run_traced(&env, &spin);
    assert!(was_prebuilt);
    assert_eq!(v.status, Status::TimeLimit, "{v:?}");
    let mut sleep = env.cmd("probe", &["sleep", "10"]);
    sleep.limits_mut().wall_time = Some(Duration::from_millis(300));
    let (v, was_prebuilt) = run_traced(&env, &sleep);
    assert!(was_prebuilt);
    assert_eq!(v.status, Status::WallTimeLimit, "{v:?}");

    // Create now, start later: the pre-built container waits in the created state.
    let echo = env.cmd("probe", &["echo", "started later"]);
    let (v, _) = run_traced(&env, &echo);
    assert_eq!(v.status, Status::Ok);
    let mut created = env.root.create(&echo).unwrap();
    assert_eq!(created.state().unwrap(), runbox::SandboxState::Created);
    created.start().unwrap();
    let v = created.wait().unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "started later\n"),
        "{v:?}"
    );
    assert!(created.info().unwrap().prebuilt);
    created.delete(false).unwrap();

    // Each run starts from the image: the last run's files are gone.
    let (v, _) = run_traced(&env, &env.cmd("/bin/sh", &["-c", "ls /work"]));
    assert_eq!((v.status, v.stdout.as_str()), (Status::Ok, ""), "{v:?}");

    // Another memory limit is another shape: built afresh, and the limit holds.
    let mut small = env.cmd("probe", &["memhog", "200"]);
    small.limits_mut().memory_bytes = 96 << 20;
    small.limits_mut().scratch_bytes = 16 << 20;
    let (v, was_prebuilt) = run_traced(&env, &small);
    assert!(
        !was_prebuilt,
        "a spare pre-built for 512 MiB served a 96 MiB run"
    );
    assert_eq!(v.status, Status::MemoryLimit, "{v:?}");
    let (v, was_prebuilt) = run_traced(&env, &small);
    assert!(was_prebuilt, "the spares follow the last shape");
    assert_eq!(v.status, Status::MemoryLimit, "{v:?}");
    env.finish();
}

#[test]
fn a_bind_source_swapped_between_runs_is_never_served_from_the_old_tree() {
    let env = TestEnv::new("swapbind");
    let data =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("swap-{}", std::process::id()));
    let old = data.with_extension("old");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&old);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("answer"), "first submission\n").unwrap();
    let mut cat = env.cmd("/bin/cat", &["/data/answer"]);
    cat.bind_ro(&data, "/data");
    let (v, _) = run_traced(&env, &cat);
    assert_eq!(v.stdout, "first submission\n", "{v:?}");
    // Once the spare's container is built (its init has installed seccomp, the last step
    // before it waits for start), the grader swaps the directory for a new one under the same
    // path: the pre-built container has the old one mounted, so it must not serve this run.
    warm_init(&env.prefix);
    std::fs::rename(&data, &old).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("answer"), "second submission\n").unwrap();
    let (v, was_prebuilt) = run_traced(&env, &cat);
    assert!(!was_prebuilt);
    assert_eq!(v.stdout, "second submission\n", "{v:?}");
    let (v, was_prebuilt) = run_traced(&env, &cat);
    assert!(
        was_prebuilt,
        "the next spare was built from the new directory"
    );
    assert_eq!(v.stdout, "second submission\n", "{v:?}");
    env.finish();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&old).unwrap();
}

#[test]
fn a_launch_that_finds_its_prebuilt_spare_dead_builds_afresh_and_leaks_nothing() {
    let env = TestEnv::new("deadspare");
    let cmd = env.cmd("probe", &["echo", "hi"]);
    let (v, _) = run_traced(&env, &cmd);
    assert_eq!(v.status, Status::Ok);
    // SIGKILL the spare: its pre-built init keeps waiting inside libcontainer for a start.
    let spare = warm_spare(&env.prefix);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spare),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (v, was_prebuilt) = run_traced(&env, &cmd);
    assert!(!was_prebuilt);
    assert_eq!((v.status, v.stdout.as_str()), (Status::Ok, "hi\n"), "{v:?}");
    // The dead spare's container went with the launch that found it dead; the new spare's
    // container is the only one left.
    wait_until("one pre-built container", || {
        warm_cgroups(&env.prefix).len() == 1
    });
    env.finish();
}

#[test]
fn gc_removes_the_prebuilt_container_of_a_dead_controller_and_spare_only() {
    let env = TestEnv::new("warmgc");
    let controller = common::example("controller");
    let mut child = Proc::new(controller)
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix, "--image"])
        .arg(common::image())
        .args(["--count", "1", "--sleep", "30", "--hold"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = lines.next().unwrap().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // Both the spare and its controller die abruptly: nobody tears the container down.
    let spare = warm_spare(&env.prefix);
    for pid in [spare, i32::try_from(child.id()).unwrap()] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    child.wait().unwrap();
    let report = env.root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.cleaned.iter().any(|c| c.contains("_warm-")),
        "{report:?}"
    );
    assert!(warm_cgroups(&env.prefix).is_empty());
    // The controller's running sandbox is not the spare's: it runs on.
    let s = env.root.sandbox(&id).unwrap();
    assert_eq!(s.state().unwrap(), runbox::SandboxState::Running);
    s.delete(true).unwrap();
    env.finish();
}

#[test]
fn a_grader_rotating_between_two_shapes_with_two_spares_gets_every_run_prebuilt() {
    let env = TestEnv::new("twoshapes");
    let root = runbox::RootOptions::new()
        .cgroup_prefix(env.prefix.clone())
        .spare_monitors(2)
        .open(&env.dir)
        .unwrap();
    let mut a = env.cmd("probe", &["echo", "a"]);
    a.limits_mut().memory_bytes = 256 << 20;
    let mut b = env.cmd("probe", &["echo", "b"]);
    b.limits_mut().memory_bytes = 128 << 20;
    let mut prebuilt = Vec::new();
    for cmd in [&a, &b, &a, &b, &a, &b] {
        let mut s = root.spawn(cmd).unwrap();
        let v = s.wait().unwrap();
        assert_eq!(v.status, Status::Ok, "{v:?}");
        prebuilt.push(s.info().unwrap().prebuilt);
        s.delete(false).unwrap();
    }
    // The first of each shape is built on demand; after that a spare of each shape waits.
    assert_eq!(prebuilt, [false, false, true, true, true, true]);
    drop(root);
    env.finish();
}

#[test]
fn warm_up_makes_even_the_first_launch_prebuilt() {
    let env = TestEnv::new("warmup");
    let mut a = env.cmd("probe", &["echo", "a"]);
    a.limits_mut().memory_bytes = 200 << 20;
    let mut b = env.cmd("probe", &["echo", "b"]);
    b.limits_mut().memory_bytes = 100 << 20;
    env.root.warm_up(&a).unwrap();
    // Another shape announced before any launch: the idle spare of the first one goes.
    env.root.warm_up(&b).unwrap();
    let (v, was_prebuilt) = run_traced(&env, &b);
    assert_eq!((v.status, v.stdout.as_str()), (Status::Ok, "b\n"), "{v:?}");
    assert!(was_prebuilt, "the first launch after warm_up is pre-built");
    // Bad input is refused before anything starts.
    let mut bad = env.cmd("probe", &["echo"]);
    bad.limits_mut().memory_bytes = 0;
    assert_eq!(
        env.root.warm_up(&bad).unwrap_err().kind(),
        runbox::ErrorKind::InvalidConfig
    );
    env.finish();
}

/// The `_warm-*` cgroup a spare is about to build in, caught while its build runs (it lives
/// only as long as the build when the build fails): polls the prefix in the pids hierarchy
/// (v1) or the unified one (v2).
fn catch_warm_cgroup_name(prefix: &str) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dirs: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| PathBuf::from(f[1]).join(prefix))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        for d in &dirs {
            let Ok(entries) = std::fs::read_dir(d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("_warm-") {
                    return name;
                }
            }
        }
    }
    panic!("no pre-built container's cgroup appeared under {prefix}");
}

#[test]
fn a_spare_whose_prebuild_failed_leaves_no_cgroup_when_another_shape_takes_it() {
    let env = TestEnv::new("failedwarm");
    // A shape whose build fails in the container's init, after its cgroup was made: a
    // directory bound over a file of the image.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("failedwarm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bad = env.cmd("probe", &["echo", "bad"]);
    bad.bind_ro(&dir, "/bin/cat");
    env.root.warm_up(&bad).unwrap();
    let name = catch_warm_cgroup_name(&env.prefix);
    // The failed build's rollback may not remove that cgroup (libcontainer gives up after
    // ~100 ms while the killed init still exits: a loaded host) and the spare, left cold,
    // forgets it. Once the rollback is over, put the cgroup back (in one hierarchy) as such
    // a rollback leaves it.
    let dirs = || -> Vec<PathBuf> {
        common::cgroup_prefix_dirs(&env.prefix)
            .into_iter()
            .map(|d| d.join(&name))
            .collect()
    };
    wait_until("the failed build rolled back", || {
        dirs().iter().all(|d| !d.exists())
    });
    std::fs::create_dir(prefix_dir(&env.prefix).join(&name)).unwrap();
    // A launch of another shape takes that spare (it builds afresh in the sandbox's own
    // cgroup): the cgroup the spare was told to build in is nobody's any more, and goes.
    let cmd = env.cmd("probe", &["echo", "hi"]);
    let (v, was_prebuilt) = run_traced(&env, &cmd);
    assert!(!was_prebuilt);
    assert_eq!((v.status, v.stdout.as_str()), (Status::Ok, "hi\n"), "{v:?}");
    let left: Vec<PathBuf> = dirs().into_iter().filter(|d| d.exists()).collect();
    assert!(
        left.is_empty(),
        "the failed spare's cgroup is left: {left:?}"
    );
    env.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}
