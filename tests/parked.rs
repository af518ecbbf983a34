//! Parked spares: pre-built sandboxes in the state root that a fresh process claims (a CLI
//! run after another), one claim each, keyed by build shape, gone when idle or released,
//! collected by gc when killed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output, Stdio};

use common::{wait_until_for, TestEnv};

/// Spares start and build in the background: at the emulated guest's pace that takes long.
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_for(what, 180, cond);
}

fn runbox(env: &TestEnv, args: &[&str]) -> Output {
    Proc::new(common::example("runbox"))
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The parked spares' directories (built or building), of every shape.
fn parked(env: &TestEnv) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for group in fs::read_dir(env.dir.join(".spares"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if group.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for spare in fs::read_dir(group.path()).into_iter().flatten().flatten() {
            // Besides spares, the shape's launch marker.
            if spare.file_name().to_string_lossy().starts_with("_warm-") {
                out.push(spare.path());
            }
        }
    }
    out
}

/// The parked spares that have built their container.
fn ready(env: &TestEnv) -> Vec<PathBuf> {
    parked(env)
        .into_iter()
        .filter(|d| d.join("spare.json").exists())
        .collect()
}

/// Waits until exactly `n` spares are parked and built; on a timeout says what is there.
fn wait_ready(env: &TestEnv, n: usize, what: &str) {
    let t = std::time::Instant::now();
    while ready(env).len() != n {
        if t.elapsed() > std::time::Duration::from_secs(180) {
            let tree: Vec<String> = walk(&env.dir.join(".spares"));
            panic!(
                "timed out waiting for {what}: parked {:?}, ready {:?}, .spares {tree:?}",
                parked(env),
                ready(env)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// The pid in a spare's directory name, `_warm-<pid>-<start>-<n>`.
fn pid_of(dir: &Path) -> i32 {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    name.trim_start_matches("_warm-")
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn state(env: &TestEnv, id: &str) -> serde_json::Value {
    let out = runbox(env, &["state", id]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_detached(env: &TestEnv, extra: &[&str], id: &str) {
    let image = common::image().to_str().unwrap().to_string();
    let mut args = vec!["run", "--detach", "--name", id, "--image", &image];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["probe", "true"]);
    let out = runbox(env, &args);
    assert!(out.status.success(), "{out:?}");
}

fn finish_run(env: &TestEnv, id: &str) {
    assert!(runbox(env, &["wait", id]).status.success());
    assert!(runbox(env, &["delete", id]).status.success());
}

/// Two runs of one shape (the first only marks it as launched; the second parks a spare).
fn twice(env: &TestEnv, extra: &[&str], id: &str) {
    for n in 1..=2 {
        let id = format!("{id}-{n}");
        run_detached(env, extra, &id);
        assert_eq!(state(env, &id)["prebuilt"], false, "nothing was parked yet");
        finish_run(env, &id);
    }
}

#[test]
fn a_fresh_process_starts_from_the_spare_the_last_one_parked() {
    let env = TestEnv::new("parked");
    // Spares that outwait the emulated guest's pace (they are released at the end): at the
    // default 60 s of idle time, the first shape's spare went before the second shape's
    // was built there, and the two were never parked at once.
    let keep = ["--spare-idle", "600"];
    run_detached(&env, &keep, "first");
    finish_run(&env, "first");
    // A shape launched once gets no spare: it may never come again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(parked(&env).is_empty(), "{:?}", parked(&env));
    // Launched again, it leaves one, built in the background.
    run_detached(&env, &keep, "again");
    assert_eq!(state(&env, "again")["prebuilt"], false);
    finish_run(&env, "again");
    wait_ready(&env, 1, "a spare to be parked");
    let spare = ready(&env).remove(0);
    run_detached(&env, &keep, "second");
    let s = state(&env, "second");
    assert_eq!(s["prebuilt"], true, "{s}");
    assert_eq!(
        s["monitor_pid"],
        pid_of(&spare),
        "the parked spare became its monitor"
    );
    assert!(!spare.exists(), "a claimed spare leaves the state root");
    finish_run(&env, "second");
    // Replaced after the claim; another shape is not served from it and parks its own.
    wait_ready(&env, 1, "a replacement to be parked");
    let other = ["--memory", "96M", "--spare-idle", "600"];
    twice(&env, &other, "other");
    wait_ready(&env, 2, "a spare of each shape");
    run_detached(&env, &other, "other2");
    assert_eq!(state(&env, "other2")["prebuilt"], true);
    finish_run(&env, "other2");
    env.finish();
}

#[test]
fn one_parked_spare_serves_one_of_two_racing_processes() {
    let env = TestEnv::new("parked-race");
    let image = common::image().to_str().unwrap().to_string();
    // Park exactly one, then keep the racers from parking more. The spare outwaits the
    // emulated guest's pace: at the default 60 s of idle time it left there before it was
    // seen ready.
    twice(&env, &["--spare-idle", "600"], "warm");
    wait_ready(&env, 1, "a spare to be parked");
    let racers: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| {
            Proc::new(common::example("runbox"))
                .arg("--root")
                .arg(&env.dir)
                .args(["--cgroup-parent", &env.prefix, "--spares", "0"])
                .args(["run", "--detach", "--name", id, "--image", &image])
                .args(["probe", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in racers {
        assert!(r.wait().unwrap().success());
    }
    let prebuilt: Vec<bool> = ["a", "b"]
        .iter()
        .map(|id| state(&env, id)["prebuilt"].as_bool().unwrap())
        .collect();
    assert_eq!(
        prebuilt.iter().filter(|p| **p).count(),
        1,
        "exactly one claim wins: {prebuilt:?}"
    );
    for id in ["a", "b"] {
        finish_run(&env, id);
    }
    assert!(parked(&env).is_empty());
    env.finish();
}

#[test]
fn an_idle_spare_goes_by_itself_and_a_killed_one_is_collected() {
    let env = TestEnv::new("parked-idle");
    let idle = ["--spare-idle", "4"];
    run_detached(&env, &idle, "x-1");
    finish_run(&env, "x-1");
    run_detached(&env, &idle, "x-2");
    // Parked (looked for at once: CLI calls take seconds each in the emulated guest), then
    // gone after four seconds of idleness, with its container, cgroup and uid.
    wait_ready(&env, 1, "a spare to be parked");
    let parked_at = std::time::Instant::now();
    wait_until("the idle spare to go", || parked(&env).is_empty());
    assert!(
        parked_at.elapsed() >= std::time::Duration::from_secs(3),
        "gone after {:?}, before its idle time",
        parked_at.elapsed()
    );
    finish_run(&env, "x-2");
    wait_until("its processes to end", || {
        common::processes_mentioning(&env.dir.to_string_lossy()).is_empty()
    });
    env.wait_for_monitors();
    common::assert_no_leaks(&env.dir, &env.prefix);

    // Killed while parked: nothing runs it down but gc. (The shape was launched a moment
    // ago: one run parks a spare.)
    run_detached(&env, &[], "y");
    finish_run(&env, "y");
    wait_ready(&env, 1, "a spare to be parked");
    let spare = ready(&env).remove(0);
    let pid = nix::unistd::Pid::from_raw(pid_of(&spare));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the spare to die", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    });
    assert!(spare.exists(), "a killed spare's directory stays for gc");
    let out = runbox(&env, &["gc"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("parked spare"), "{said}");
    assert!(said.contains("pre-built container cgroup"), "{said}");
    assert!(!spare.exists());
    // Claiming finds nothing to take: the next run starts cold and works.
    run_detached(&env, &["--spares", "0"], "z");
    assert_eq!(state(&env, "z")["prebuilt"], false);
    finish_run(&env, "z");
    env.finish();
}

#[test]
fn release_ends_every_parked_spare_even_one_still_starting() {
    let env = TestEnv::new("parked-release");
    let root_str = env.dir.to_string_lossy().into_owned();
    twice(&env, &["--spares", "2"], "x");
    wait_ready(&env, 2, "two spares to be parked");
    let out = runbox(&env, &["gc", "--release-spares"]);
    assert!(out.status.success(), "{out:?}");
    assert!(parked(&env).is_empty());
    assert!(common::processes_mentioning(&root_str).is_empty());
    env.wait_for_monitors();
    common::assert_no_leaks(&env.dir, &env.prefix);
    // Released at once after the launch that starts them, before they can have parked:
    // they leave by themselves once they see the release, and nothing stays.
    run_detached(&env, &["--spares", "2"], "y");
    finish_run(&env, "y");
    run_detached(&env, &["--spares", "2"], "y2");
    let out = runbox(&env, &["gc", "--release-spares"]);
    assert!(out.status.success(), "{out:?}");
    finish_run(&env, "y2");
    wait_until("the spares started before the release to leave", || {
        parked(&env).is_empty() && common::processes_mentioning(&root_str).is_empty()
    });
    env.wait_for_monitors();
    common::assert_no_leaks(&env.dir, &env.prefix);
    env.finish();
}

/// Every process with a descriptor open on `path`, with its command line.
fn holders_of(path: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let holds = fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == path));
        if holds {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// `runbox ARGS` from a shell that opened `lock` as descriptor 8 (without close-on-exec, as
/// a shell's `exec 8>file` does) and took an exclusive `flock` on it, then exec'd runbox:
/// the CLI inherits the locked descriptor, as from a grader that serialises its runs so.
fn runbox_holding(env: &TestEnv, lock: &Path, args: &[&str]) -> Output {
    Proc::new("sh")
        .arg("-c")
        .arg(r#"exec 8>>"$0" && flock -x 8 && exec "$@""#)
        .arg(lock)
        .arg(common::example("runbox"))
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts that no process holds `lock` open and that it can be locked at once.
fn assert_lock_free(lock: &Path, after: &str) {
    let holders = holders_of(lock);
    assert!(
        holders.is_empty(),
        "after {after}, {lock:?} is held by {holders:?}"
    );
    let file = fs::File::open(lock).unwrap();
    let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock);
    assert!(
        locked.is_ok(),
        "after {after}, the flock on {lock:?} is still held"
    );
}

#[test]
fn the_callers_descriptors_reach_no_monitor_and_no_parked_spare() {
    let env = TestEnv::new("pk-fds");
    let lock = env.dir.with_extension("lock");
    let image = common::image().to_str().unwrap().to_string();
    let run = [
        "run",
        "--image",
        &image,
        "--spare-idle",
        "600",
        "probe",
        "true",
    ];
    // The second run of a shape parks a spare (a monitor started by the CLI that outlives
    // it); each run's own monitor may still be tearing down when the CLI exits.
    for n in 1..=2 {
        let out = runbox_holding(&env, &lock, &run);
        assert!(out.status.success(), "{out:?}");
        assert_lock_free(&lock, &format!("run {n}"));
    }
    wait_ready(&env, 1, "a spare to be parked");
    assert_lock_free(&lock, "the spare parked");
    // A sandbox that outlives its CLI: its monitor, and the parked spare it was served from.
    let out = runbox_holding(
        &env,
        &lock,
        &[
            "run",
            "--detach",
            "--name",
            "held",
            "--image",
            &image,
            "--spare-idle",
            "600",
            "probe",
            "sleep",
            "60",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(state(&env, "held")["prebuilt"], true);
    assert_lock_free(&lock, "a detached run");
    assert!(runbox(&env, &["delete", "--force", "held"])
        .status
        .success());
    let _ = fs::remove_file(&lock);
    env.finish();
}

/// `runbox --uid-range RANGE run -d --name ID -m MEM probe sleep 60`.
fn run_sleeper(env: &TestEnv, range: &str, memory: &str, id: &str) -> Output {
    let image = common::image().to_str().unwrap().to_string();
    runbox(
        env,
        &[
            "--uid-range",
            range,
            "run",
            "--detach",
            "--name",
            id,
            "-m",
            memory,
            "--image",
            &image,
            // Long enough for the slow emulated guest (the test deletes them).
            "--wall-time",
            "600",
            "probe",
            "sleep",
            "600",
        ],
    )
}

#[test]
fn a_launch_needing_the_uid_a_parked_spare_holds_evicts_the_spare() {
    let env = TestEnv::new("pk-evict");
    let image = common::image().to_str().unwrap().to_string();
    // Two uids; two runs of one shape leave a spare parked holding one of them.
    let range = "60200:2";
    for _ in 0..2 {
        let out = runbox(
            &env,
            &[
                "--uid-range",
                range,
                "run",
                "-m",
                "100M",
                "--image",
                &image,
                "probe",
                "true",
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    wait_ready(&env, 1, "a spare to be parked");
    let spare = ready(&env).remove(0);
    // The second run's monitor gives its uid back after its verdict: wait for it, so the
    // spare's is the only uid held.
    wait_until("the runs' uids to be given back", || {
        fs::read_dir(env.dir.join(".uids")).map_or(0, |d| d.count()) == 1
    });
    // Two sandboxes of another shape need both uids: the second evicts the spare.
    for id in ["a", "b"] {
        let out = run_sleeper(&env, range, "200M", id);
        assert!(out.status.success(), "{id}: {out:?}");
        assert_eq!(state(&env, id)["status"], "running", "{id}");
    }
    assert!(!spare.exists(), "the parked spare was evicted");
    let pid = pid_of(&spare);
    wait_until("the evicted spare to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // A sandbox is never evicted: with both uids held by sandboxes, the range is full.
    let out = run_sleeper(&env, range, "200M", "c");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("every uid of the range 60200+2 is held"),
        "{err}"
    );
    for id in ["a", "b"] {
        assert_eq!(
            state(&env, id)["status"],
            "running",
            "{id} was not disturbed"
        );
        assert!(runbox(&env, &["delete", "--force", id]).status.success());
    }
    env.finish();
}

#[test]
fn a_library_launch_needing_the_uid_a_parked_spare_holds_evicts_the_spare() {
    let env = TestEnv::new("pk-lib");
    let open = |spares: usize| {
        runbox::RootOptions::new()
            .cgroup_prefix(env.prefix.clone())
            .uid_range(60_220, 3)
            .parked_spares(1)
            .spare_monitors(spares)
            .open(&env.dir)
            .unwrap()
    };
    // One controller (without spares of its own, as the CLI) runs a shape twice and leaves a
    // spare parked, holding one uid (of three: the runs' monitors may still hold theirs when
    // it leases).
    {
        let root = open(0);
        let mut cmd = env.cmd("probe", &["true"]);
        cmd.limits_mut().memory_bytes = 100 << 20;
        for _ in 0..2 {
            let v = root.run(&cmd).unwrap();
            assert_eq!(v.status, runbox::Status::Ok, "{v:?}");
        }
        root.stop_waiting_for_spares();
    }
    wait_ready(&env, 1, "a spare to be parked");
    // Another, with a spare monitor of its own, spawns three sandboxes of another shape.
    let root = open(1);
    let mut cmd = env.cmd("probe", &["sleep", "60"]);
    cmd.limits_mut().memory_bytes = 200 << 20;
    let sandboxes: Vec<runbox::Sandbox> = (0..3)
        .map(|n| {
            root.spawn(&cmd)
                .unwrap_or_else(|e| panic!("sandbox {n}: {e}"))
        })
        .collect();
    assert!(parked(&env).is_empty(), "the parked spare was evicted");
    let err = root.spawn(&cmd).unwrap_err();
    assert!(err.to_string().contains("every uid of the range"), "{err}");
    for s in sandboxes {
        assert_eq!(s.state().unwrap(), runbox::SandboxState::Running);
        s.delete(true).unwrap();
    }
    drop(root);
    env.finish();
}

#[test]
fn an_isolate_init_of_a_box_whose_uid_a_parked_spare_holds_evicts_the_spare() {
    let env = TestEnv::new("pk-box");
    let image = common::image().to_str().unwrap().to_string();
    // Boxes 0 and 1 run as 60210 and 60211; a parked spare holds one of the two.
    let range = "60210:2";
    for _ in 0..2 {
        let out = runbox(
            &env,
            &[
                "--uid-range",
                range,
                "run",
                "--image",
                &image,
                "probe",
                "true",
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    wait_ready(&env, 1, "a spare to be parked");
    let link = env.dir.with_extension("bin");
    fs::create_dir_all(&link).unwrap();
    let isolate = link.join("isolate");
    let _ = fs::remove_file(&isolate);
    std::os::unix::fs::symlink(common::example("runbox"), &isolate).unwrap();
    let run = |args: &[&str]| {
        Proc::new(&isolate)
            .args(args)
            .env("RUNBOX_ROOT", &env.dir)
            .env("RUNBOX_CGROUP_PARENT", &env.prefix)
            .env("RUNBOX_UID_RANGE", range)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for b in ["--box-id=0", "--box-id=1"] {
        let out = run(&["--init", b]);
        assert!(out.status.success(), "{b}: {out:?}");
    }
    assert!(parked(&env).is_empty(), "the parked spare was evicted");
    for b in ["--box-id=0", "--box-id=1"] {
        let out = run(&["--cleanup", b]);
        assert!(out.status.success(), "{b}: {out:?}");
    }
    fs::remove_dir_all(&link).unwrap();
    env.finish();
}

#[test]
fn a_controller_out_of_descriptors_fails_cleanly_and_recovers() {
    let env = TestEnv::new("pk-emfile");
    let image = common::image().to_str().unwrap().to_string();
    let root = env.dir.to_string_lossy().into_owned();
    // The CLI with its open-files soft limit lowered to n: every launch step that opens a
    // descriptor in turn meets EMFILE, from the first to the last.
    let limited = |n: u32, args: &[&str]| {
        Proc::new("sh")
            .arg("-c")
            .arg(r#"ulimit -Sn "$0" && exec "$@""#)
            .arg(n.to_string())
            .arg(common::example("runbox"))
            .arg("--root")
            .arg(&env.dir)
            .args(["--cgroup-parent", &env.prefix])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut failed = 0;
    let mut unclear = Vec::new();
    let mut succeeded_at = None;
    // (Under 4 the dynamic loader fails before runbox runs.)
    for n in 4..=64 {
        let out = limited(n, &["run", "--image", &image, "probe", "echo", "hi"]);
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{out:?}");
                succeeded_at = Some(n);
            }
            Some(125) => {
                let clear = err.starts_with("runbox: io: ") && err.contains("Too many open files");
                if !clear {
                    unclear.push(format!("at {n} descriptors: {err}"));
                }
                failed += 1;
            }
            _ => panic!("at {n} descriptors: {out:?}"),
        }
        // Nothing stays of a failed launch: no sandbox directory, lease, cgroup or monitor.
        // (A run that succeeded may have parked a spare: released here.)
        assert!(runbox(&env, &["gc", "--release-spares"]).status.success());
        wait_until("the launch's processes to end", || {
            common::processes_mentioning(&root).is_empty()
        });
        env.wait_for_monitors();
        common::assert_no_leaks(&env.dir, &env.prefix);
        if succeeded_at.is_some() {
            break;
        }
    }
    assert!(
        unclear.is_empty(),
        "not an I/O error naming EMFILE: {unclear:#?}"
    );
    assert!(failed > 0, "no launch met EMFILE");
    let n = succeeded_at.expect("no launch succeeded with up to 64 descriptors");
    // A spare parked by such a controller serves other controllers later: it must not keep
    // the controller's shortage (each monitor raises its soft limit to the hard one).
    for _ in 0..2 {
        let out = limited(n, &["run", "--image", &image, "probe", "echo", "hi"]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_ready(&env, 1, "a spare to be parked");
    let limits = fs::read_to_string(format!("/proc/{}/limits", pid_of(&ready(&env)[0]))).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3], open_files[4],
        "soft and hard limits: {limits}"
    );
    // With its descriptors back, the controller works (from the spare parked so).
    let out = runbox(
        &env,
        &[
            "run", "--detach", "--name", "after", "--image", &image, "probe", "true",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(state(&env, "after")["prebuilt"], true);
    finish_run(&env, "after");
    env.finish();
}

#[test]
fn spares_park_under_a_state_root_too_long_for_a_socket_address() {
    // `<root>/.spares/<shape key>/<spare>/sock` is over 107 bytes here (a socket address
    // holds no more): the socket is bound and reached through its directory's descriptor.
    let env = TestEnv::new("parked-under-a-state-root-whose-path-is-long");
    let sock_path = env
        .dir
        .join(".spares/0123456789abcdef/_warm-123456-12345678-0/sock");
    assert!(sock_path.as_os_str().len() > 107, "{sock_path:?}");
    // (The spare outwaits the emulated guest's pace, as in the race above.)
    twice(&env, &["--spare-idle", "600"], "long");
    wait_ready(&env, 1, "a spare to be parked");
    run_detached(&env, &[], "served");
    assert_eq!(state(&env, "served")["prebuilt"], true);
    finish_run(&env, "served");
    env.finish();
}

/// Set in the controller process [`a_library_controllers_descriptors_reach_no_factory_spare_or_monitor`]
/// starts: the state root, cgroup prefix and lock file, separated by newlines.
const FD_CHILD: &str = "RUNBOX_TEST_FD_CHILD";

/// The controller of the test below, in a process of its own (a descriptor without
/// close-on-exec in the test process would reach every other test's children): holds a
/// `flock`ed descriptor without close-on-exec, starts the factory, a spare of its own, a
/// parked spare and a sandbox, says `ready`, and waits for end of file on stdin.
fn fd_child(spec: &str) {
    use std::io::BufRead;
    let [dir, prefix, lock]: [&str; 3] = spec.split('\n').collect::<Vec<_>>().try_into().unwrap();
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lock)
        .unwrap();
    // As a C program's open(2) without O_CLOEXEC leaves it.
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let _locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let root = runbox::RootOptions::new()
        .cgroup_prefix(prefix)
        .spare_monitors(1)
        .parked_spares(1)
        .open(dir)
        .unwrap();
    let mut cmd = runbox::Command::new("probe");
    cmd.args(["true"]).image(common::image());
    for _ in 0..2 {
        assert_eq!(root.run(&cmd).unwrap().status, runbox::Status::Ok);
    }
    let mut sleeper = runbox::Command::new("probe");
    sleeper
        .args(["sleep", "60"])
        .image(common::image())
        .name("held");
    root.spawn(&sleeper).unwrap();
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    root.release_spares();
}

#[test]
fn a_library_controllers_descriptors_reach_no_factory_spare_or_monitor() {
    if let Ok(spec) = std::env::var(FD_CHILD) {
        return fd_child(&spec);
    }
    let env = TestEnv::new("pk-fds-lib");
    let lock = env.dir.with_extension("lock");
    let spec = format!("{}\n{}\n{}", env.dir.display(), env.prefix, lock.display());
    let mut child = Proc::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_library_controllers_descriptors_reach_no_factory_spare_or_monitor",
            "--nocapture",
        ])
        .env(FD_CHILD, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while line.trim() != "ready" {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(
            n > 0,
            "the controller ended before it was ready: {:?}",
            child.wait()
        );
    }
    wait_ready(&env, 1, "a spare to be parked");
    // The factory and its spare, the parked spare and the sandbox's monitor all run now.
    let root_str = env.dir.to_string_lossy().into_owned();
    let roles: Vec<String> = common::processes_mentioning(&root_str)
        .into_iter()
        .map(|(_, cmd)| cmd)
        .collect();
    assert!(roles.iter().any(|c| c.contains(" factory ")), "{roles:?}");
    let holders = holders_of(&lock);
    let controller = i32::try_from(child.id()).unwrap();
    assert!(
        holders.iter().all(|(pid, _)| *pid == controller),
        "the controller's descriptor reached {holders:?}"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    wait_until("the controller's spares to exit", || {
        holders_of(&lock).is_empty()
    });
    assert_lock_free(&lock, "the controller exited");
    env.root.sandbox("held").unwrap().delete(true).unwrap();
    let _ = fs::remove_file(&lock);
    env.finish();
}

/// `runbox` (the executable `exe`) on the test's root.
fn runbox_exe(exe: &Path, env: &TestEnv, args: &[&str]) -> Output {
    Proc::new(exe)
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts `exe`'s `run --detach` of a program that prints and exits 3, as `id`, with spares
/// that outwait the emulated guest's pace.
fn run_exit_3(exe: &Path, env: &TestEnv, id: &str) {
    let image = common::image().to_str().unwrap().to_string();
    let args = [
        "run",
        "--detach",
        "--spare-idle",
        "600",
        "--name",
        id,
        "--image",
        &image,
        "sh",
        "-c",
        "echo served; exit 3",
    ];
    let out = runbox_exe(exe, env, &args);
    assert!(out.status.success(), "{out:?}");
}

/// Waits for `id`'s verdict: exit code 3 and the program's output, then deletes it.
fn assert_exit_3(env: &TestEnv, id: &str) {
    let out = runbox(env, &["wait", "--json", id]);
    assert!(out.status.success(), "{out:?}");
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["status"], "runtime_error", "{verdict}");
    assert_eq!(verdict["exit_code"], 3, "{verdict}");
    assert_eq!(verdict["stdout"], "served\n", "{verdict}");
    assert!(runbox(env, &["delete", id]).status.success());
}

/// A parked spare's record (`spare.json`).
fn record_of(spare: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(spare.join("spare.json")).unwrap()).unwrap()
}

/// Asserts `id` was not served by the parked spare `spare`, which was ended: its directory
/// is gone and its process exits (it gave back what it held: the leak check at the end).
fn assert_ended_not_served(env: &TestEnv, id: &str, spare: &Path) {
    let s = state(env, id);
    assert_eq!(s["prebuilt"], false, "served by a spare: {s}");
    let pid = pid_of(spare);
    assert_ne!(
        s["monitor_pid"], pid,
        "the other binary's spare became its monitor"
    );
    assert!(!spare.exists(), "the mismatched spare is still parked");
    wait_until("the mismatched spare to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    });
}

#[test]
fn a_parked_spare_of_another_binary_or_an_older_record_is_ended_and_never_served() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new("pk-binary");
    let ours = common::example("runbox");
    // The same program at another path: another inode, as an upgrade would leave.
    struct Removed(PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            if let Err(e) = fs::remove_dir_all(&self.0) {
                eprintln!("remove {}: {e}", self.0.display());
            }
        }
    }
    let elsewhere = std::env::temp_dir().join(format!("runbox-pk-binary-{}", std::process::id()));
    fs::create_dir_all(&elsewhere).unwrap();
    let elsewhere = Removed(elsewhere);
    let theirs = elsewhere.0.join("runbox");
    fs::copy(&ours, &theirs).unwrap();

    // Two runs of the copy park a spare that runs the copy, and says so.
    for id in ["copy-1", "copy-2"] {
        run_exit_3(&theirs, &env, id);
        assert_exit_3(&env, id);
    }
    wait_ready(&env, 1, "the copy's spare to be parked");
    let spare = ready(&env).remove(0);
    let record = record_of(&spare);
    assert_eq!(
        record["monitor_binary"]["ino"],
        fs::metadata(&theirs).unwrap().ino(),
        "{record}"
    );
    assert_eq!(record["format_version"], 4, "{record}");

    // This binary's launch of the same shape ends it instead of being served by it.
    run_exit_3(&ours, &env, "ours-1");
    assert_ended_not_served(&env, "ours-1", &spare);
    assert_exit_3(&env, "ours-1");

    // The launch parked a spare of its own; its record rewritten with an older format
    // version (3, whose shape was a flat config), protocol and binary still this one's, it
    // is ended too: the version alone decides.
    wait_ready(&env, 1, "this binary's spare to be parked");
    let spare = ready(&env).remove(0);
    let mut record = record_of(&spare);
    assert_eq!(
        record["monitor_binary"]["ino"],
        fs::metadata(&ours).unwrap().ino(),
        "{record}"
    );
    let fields = record.as_object_mut().unwrap();
    fields.insert("format_version".into(), 3.into());
    let old = spare.join("spare.json.old");
    fs::write(&old, serde_json::to_vec(&record).unwrap()).unwrap();
    fs::rename(&old, spare.join("spare.json")).unwrap();
    run_exit_3(&ours, &env, "ours-2");
    assert_ended_not_served(&env, "ours-2", &spare);
    assert_exit_3(&env, "ours-2");

    // A spare of this binary with its own record is served: the check refuses only others.
    wait_ready(&env, 1, "a current spare to be parked");
    let spare = ready(&env).remove(0);
    run_exit_3(&ours, &env, "ours-3");
    let s = state(&env, "ours-3");
    assert_eq!(s["prebuilt"], true, "{s}");
    assert_eq!(s["monitor_pid"], pid_of(&spare), "{s}");
    assert_exit_3(&env, "ours-3");

    drop(elsewhere);
    env.finish();
}

/// A directory of the test's own for host files, beside its state root (whose leak check
/// knows only runbox's entries), removed when dropped.
struct HostFiles(PathBuf);

impl HostFiles {
    fn new(env: &TestEnv) -> HostFiles {
        let mut name = env.dir.file_name().unwrap().to_os_string();
        name.push("-host");
        let dir = env.dir.with_file_name(name);
        fs::create_dir_all(&dir).unwrap();
        HostFiles(dir)
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A work dir `name` under `parent` with one file named after it, writable by the sandbox's
/// leased uid.
fn work_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), format!("{name}'s\n")).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs `script` detached as `id` with `extra` options and waits for it: whether it was
/// pre-built, its exit status and its stdout (the sandbox is deleted).
fn run_script(env: &TestEnv, extra: &[String], id: &str, script: &str) -> (bool, bool, String) {
    let image = common::image().to_str().unwrap().to_string();
    let mut args = vec!["run", "--detach", "--name", id, "--image", &image];
    args.extend(extra.iter().map(String::as_str));
    args.extend_from_slice(&["/bin/sh", "-c", script]);
    let out = runbox(env, &args);
    assert!(out.status.success(), "{out:?}");
    let prebuilt = state(env, id)["prebuilt"].as_bool().unwrap();
    let ok = runbox(env, &["wait", id]).status.success();
    let logs = runbox(env, &["logs", id]);
    assert!(logs.status.success(), "{logs:?}");
    assert!(runbox(env, &["delete", id]).status.success());
    (
        prebuilt,
        ok,
        String::from_utf8_lossy(&logs.stdout).into_owned(),
    )
}

/// A tmpfs mounted in the test's own (the host's) mount namespace, unmounted when dropped.
struct LateDisk(PathBuf);

impl Drop for LateDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Issue 23, item 1: a work dir (a read-write bind) is attached when the run starts, not
/// built into the container, so a spare parked for one work dir serves a run with another,
/// even one on a disk mounted after the spare was built (as a fresh box's disk is), and
/// each run sees and writes its own work dir only, nosuid and nodev, as a built bind was.
#[test]
fn a_spare_parked_for_one_work_dir_serves_another_made_after_it() {
    let env = TestEnv::new("parked-workdir");
    let host = HostFiles::new(&env);
    let with = |dir: &Path| {
        vec![
            "--spare-idle".to_string(),
            "600".into(),
            "--bind-rw".into(),
            format!("{}:/box", dir.display()),
        ]
    };
    let first = work_dir(&host.0, "first");
    for n in 1..=2 {
        let (prebuilt, ok, out) = run_script(&env, &with(&first), &format!("first-{n}"), "ls /box");
        assert!(!prebuilt, "nothing was parked yet");
        assert_eq!((ok, out.as_str()), (true, "first\n"));
    }
    wait_ready(&env, 1, "a spare to be parked");
    let spare = ready(&env).remove(0);

    // A disk mounted after the spare was built, in the host's mount namespace.
    let late = host.0.join("late");
    fs::create_dir_all(&late).unwrap();
    nix::mount::mount(
        Some("runbox-test-late"),
        &late,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=1m"),
    )
    .unwrap();
    let disk = LateDisk(late.clone());
    let second = work_dir(&late, "second");
    let script = "ls /box; cat /box/second; echo written > /box/out; \
                  grep ' /box ' /proc/self/mountinfo";
    let (prebuilt, ok, out) = run_script(&env, &with(&second), "second", script);
    assert!(
        prebuilt,
        "the spare parked for another work dir serves this one: {out}"
    );
    assert!(ok, "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("second"), "only its own work dir: {out}");
    assert_eq!(lines.next(), Some("second's"), "{out}");
    let mount = lines.next().unwrap_or_default();
    let options: Vec<&str> = mount
        .split(' ')
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .collect();
    for want in ["rw", "nosuid", "nodev"] {
        assert!(options.contains(&want), "{want} missing: {mount}");
    }
    assert!(!options.contains(&"noexec"), "{mount}");
    assert_eq!(fs::read_to_string(second.join("out")).unwrap(), "written\n");
    assert!(
        !first.join("out").exists(),
        "nothing reached the other work dir"
    );
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(" /box "),
        "nothing was mounted in the host's namespace"
    );
    assert!(!spare.exists(), "the spare was claimed");

    // Its replacement serves the first work dir again: its own files only.
    wait_ready(&env, 1, "a replacement to be parked");
    let (prebuilt, ok, out) = run_script(&env, &with(&first), "first-3", "ls /box");
    assert!(prebuilt);
    assert_eq!((ok, out.as_str()), (true, "first\n"));
    // A work dir that went away between its check and its run is refused, nothing made.
    fs::remove_dir_all(&second).unwrap();
    let image = common::image().to_str().unwrap().to_string();
    let mut args = vec!["run".to_string(), "--image".into(), image];
    args.extend(with(&second));
    args.extend(["/bin/true".into()]);
    let out = runbox(&env, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("second") && said.contains("does not exist"),
        "{said}"
    );
    drop(disk);
    env.finish();
}

/// A work dir whose mount point is missing in the container when the run starts (under a
/// read-only bind whose directory went away after the spare was built) fails the launch
/// with an error that names it, ends the spare that would have served it (never parked
/// again half used) and leaves nothing behind; the next launch works.
#[test]
fn a_work_dir_that_cannot_be_attached_fails_the_launch_and_ends_the_spare() {
    let env = TestEnv::new("parked-attach-fails");
    let host = HostFiles::new(&env);
    let data = host.0.join("data");
    fs::create_dir_all(data.join("out")).unwrap();
    let work = work_dir(&host.0, "work");
    let args = vec![
        "--spare-idle".to_string(),
        "600".into(),
        "--bind".into(),
        format!("{}:/data", data.display()),
        "--bind-rw".into(),
        format!("{}:/data/out", work.display()),
    ];
    for n in 1..=2 {
        let (prebuilt, ok, out) = run_script(&env, &args, &format!("ok-{n}"), "ls /data/out");
        assert!(!prebuilt);
        assert_eq!((ok, out.as_str()), (true, "work\n"));
    }
    wait_ready(&env, 1, "a spare to be parked");
    let spare = ready(&env).remove(0);
    let pid = pid_of(&spare);
    fs::remove_dir(data.join("out")).unwrap();
    let image = common::image().to_str().unwrap().to_string();
    let mut run = vec!["run".to_string(), "--image".into(), image];
    run.extend(args.iter().cloned());
    run.push("/bin/true".into());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = runbox(&env, &run);
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("attach") && said.contains("/data/out"),
        "the error names the work dir: {said}"
    );
    wait_until("the spare that failed to end", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!parked(&env).contains(&spare));
    // Back in place, the shape launches again.
    fs::create_dir(data.join("out")).unwrap();
    let out = runbox(&env, &run);
    assert!(out.status.success(), "{out:?}");
    env.finish();
}
