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
    // Park exactly one, then keep the racers from parking more.
    twice(&env, &[], "warm");
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
