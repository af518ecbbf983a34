//! The control channel with real sandboxes: start and kill reach the program through the
//! monitor's control socket; pause freezes it (CPU time flat, wall-time limit waiting) and
//! resume thaws it; live stats agree with what the probe allocated; a dead monitor makes
//! pause and stats clear errors and `state` lost; verbs out of state are `invalid_state`.

mod common;

use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{wait_until, wait_until_for, TestEnv};
use runbox::{ErrorKind, LimitKind, SandboxState, Signal, Status};

const MIB: u64 = 1 << 20;

fn cli() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::example("runbox"))
}

fn cli_cmd(env: &TestEnv) -> Proc {
    let mut p = Proc::new(cli());
    p.arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .stdin(Stdio::null());
    p
}

fn stdout_of(s: &runbox::Sandbox) -> String {
    String::from_utf8_lossy(&s.logs().unwrap().0).into_owned()
}

#[test]
fn start_and_kill_go_through_the_monitor_and_reach_the_program() {
    let env = TestEnv::new("ctl-start");
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    let mut s = env
        .root
        .create(&env.cmd("/bin/sh", &["-c", script]))
        .unwrap();
    let dir = env.dir.join(s.id());
    assert_eq!(s.state().unwrap(), SandboxState::Created);
    assert!(dir.join("control").exists(), "the monitor listens");
    assert!(
        !dir.join("start.fifo").exists(),
        "no start FIFO any more (only older monitors make one)"
    );
    // Created: no pause or resume; figures are there already.
    for e in [s.pause().unwrap_err(), s.resume().unwrap_err()] {
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    }
    assert!(s.stats().unwrap().pids >= 1);

    s.start().unwrap();
    assert_eq!(
        s.start().unwrap_err().kind(),
        ErrorKind::InvalidState,
        "a second start"
    );
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    assert_eq!(
        s.resume().unwrap_err().kind(),
        ErrorKind::InvalidState,
        "resume of a running sandbox"
    );
    wait_until("the program to be ready", || {
        stdout_of(&s).contains("ready")
    });
    // SIGTERM goes to the program through the init; its trap answers.
    s.kill(Signal::SIGTERM).unwrap();
    let v = s.wait().unwrap();
    assert_eq!(v.exit_code, Some(7), "{v:?}");
    assert!(v.stdout.contains("got-term"), "{v:?}");
    assert_eq!(s.state().unwrap(), SandboxState::Stopped);

    // Stopped: every verb is out of state, and the socket is gone.
    assert!(!dir.join("control").exists());
    assert_eq!(
        s.kill(Signal::SIGTERM).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    for e in [
        s.start().unwrap_err(),
        s.pause().unwrap_err(),
        s.resume().unwrap_err(),
        s.stats().unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
        assert!(e.to_string().contains("Stopped"), "{e}");
    }
    s.delete(false).unwrap();

    // A created sandbox killed over the channel ends without running its program.
    let mut c = env
        .root
        .create(&env.cmd("probe", &["echo", "ran"]))
        .unwrap();
    c.kill(Signal::SIGTERM).unwrap();
    let v = c.wait().unwrap();
    assert!(!v.stdout.contains("ran"), "{v:?}");
    c.delete(false).unwrap();
    env.finish();
}

#[test]
fn a_paused_sandbox_burns_no_cpu_its_wall_limit_waits_and_resume_goes_on() {
    let env = TestEnv::new("ctl-pause");
    let mut cmd = env.cmd("probe", &["spin", "600"]);
    // Generous for a loaded host or the emulated guest: the program must get from its start
    // to the pause, and after the resume burn more CPU, within it.
    let wall = Duration::from_secs(6);
    cmd.limits_mut().wall_time = Some(wall);
    let begun = Instant::now();
    let mut s = env.root.spawn(&cmd).unwrap();
    wait_until("the program to burn CPU", || {
        s.stats().unwrap().cpu_time_us > 10_000
    });
    s.pause().unwrap();
    let paused_at = Instant::now();
    assert_eq!(s.state().unwrap(), SandboxState::Paused);
    assert_eq!(
        s.pause().unwrap_err().kind(),
        ErrorKind::InvalidState,
        "a second pause"
    );
    let listed = env.root.list().unwrap();
    let info = listed[0].info.as_ref().unwrap();
    assert_eq!(info.state, SandboxState::Paused);
    assert_eq!(serde_json::to_value(info).unwrap()["status"], "paused");

    let before = s.stats().unwrap();
    assert!(before.paused);
    std::thread::sleep(Duration::from_secs(1));
    let after = s.stats().unwrap();
    assert!(
        after.cpu_time_us - before.cpu_time_us < 20_000,
        "CPU time moved while paused: {before:?} -> {after:?}"
    );
    // Paused past the whole wall-time limit: it does not fire.
    while paused_at.elapsed() < wall + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.state().unwrap(), SandboxState::Paused);
    let paused_for = paused_at.elapsed();

    s.resume().unwrap();
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    assert_eq!(
        s.resume().unwrap_err().kind(),
        ErrorKind::InvalidState,
        "a second resume"
    );
    wait_until("CPU time to move again", || {
        s.stats()
            .is_ok_and(|now| !now.paused && now.cpu_time_us > after.cpu_time_us + 50_000)
    });
    // The wall-time limit fires once the running time reaches it, paused span left out, and
    // the verdict's wall time leaves it out too.
    let v = s.wait().unwrap();
    let elapsed = begun.elapsed();
    assert_eq!(v.status, Status::WallTimeLimit, "{v:?}");
    assert_eq!(v.limit, Some(LimitKind::WallTime), "{v:?}");
    let verdict_wall = Duration::from_micros(v.wall_time_us);
    assert!(verdict_wall >= wall, "{v:?}");
    assert!(
        verdict_wall + paused_for <= elapsed + Duration::from_millis(100),
        "the verdict's wall time {verdict_wall:?} counts the pause ({paused_for:?} of {elapsed:?})"
    );
    s.delete(false).unwrap();
    env.finish();
}

#[test]
fn stats_agree_with_what_the_program_allocated() {
    let env = TestEnv::new("ctl-stats");
    // 80 MiB touched and given back, then 32 MiB kept in a file on the sandbox's own tmpfs
    // (charged to its cgroup), then a wait.
    let script =
        "probe memhog 80 && dd if=/dev/zero of=/work/kept bs=1048576 count=32 2>/dev/null \
                  && echo kept && sleep 600";
    let s = env
        .root
        .spawn(&env.cmd("/bin/sh", &["-c", script]))
        .unwrap();
    wait_until_for("the program to allocate", 120, || {
        stdout_of(&s).contains("kept")
    });
    let st = s.stats().unwrap();
    assert!(!st.paused);
    assert!(
        st.memory_bytes >= 32 * MIB && st.memory_bytes < 80 * MIB,
        "memory now {} MiB, kept 32 MiB: {st:?}",
        st.memory_bytes / MIB
    );
    // The peak saw the 80 MiB (on cgroup v2, kernels before 5.19 keep no peak: 0).
    let v2_without_peak = std::path::Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists()
        && !std::path::Path::new(&format!(
            "/sys/fs/cgroup/{}/{}/memory.peak",
            env.prefix,
            s.id()
        ))
        .exists();
    assert!(
        st.memory_peak_bytes >= 80 * MIB || (v2_without_peak && st.memory_peak_bytes == 0),
        "{st:?}"
    );
    // The shell and its sleep (and the init).
    assert!(st.pids >= 2, "{st:?}");
    assert!(
        st.cpu_time_us > 0 && st.cpu_time_us >= st.cpu_user_us,
        "{st:?}"
    );

    // The CLI: one line, JSON, and --follow until the sandbox ends (exit 0 then).
    let out = cli_cmd(&env)
        .args(["stats", "--json", s.id()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["id"], s.id());
    assert!(json["memory_bytes"].as_u64().unwrap() >= 32 * MIB, "{json}");
    let mut follow = cli_cmd(&env)
        .args(["stats", "--follow", "--interval", "0.2", s.id()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Two lines first (however slowly the CLI starts, under emulation say), then the end.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut text = String::new();
    for _ in 0..2 {
        text.push_str(&lines.next().expect("a line per interval").unwrap());
        text.push('\n');
    }
    s.kill(Signal::SIGKILL).unwrap();
    for line in lines {
        text.push_str(&line.unwrap());
        text.push('\n');
    }
    let status = follow.wait().unwrap();
    assert!(status.success(), "{status:?}: {text}");
    assert!(text.lines().all(|l| l.starts_with(s.id())), "{text}");
    let mut s = s;
    assert_eq!(s.wait().unwrap().signal, Some(9));
    s.delete(false).unwrap();
    env.finish();
}

#[test]
fn the_cli_pauses_resumes_and_kills_a_paused_sandbox() {
    let env = TestEnv::new("ctl-cli");
    let s = env
        .root
        .spawn(&env.cmd("probe", &["sleep", "600"]))
        .unwrap();
    let run = |args: &[&str]| {
        let out = cli_cmd(&env).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["pause", s.id()]);
    let state: serde_json::Value = serde_json::from_str(&run(&["state", s.id()])).unwrap();
    assert_eq!(state["status"], "paused");
    assert!(run(&["list"]).contains("paused"));
    let out = cli_cmd(&env).args(["pause", s.id()]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_state"),
        "{out:?}"
    );
    run(&["resume", s.id()]);
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    // A paused sandbox is ended by SIGKILL (the monitor thaws it to let it die).
    run(&["pause", s.id()]);
    let t = Instant::now();
    run(&["kill", s.id(), "KILL"]);
    let mut s = s;
    let v = s.wait().unwrap();
    assert_eq!(v.signal, Some(9), "{v:?}");
    assert!(t.elapsed() < Duration::from_secs(60));
    run(&["delete", s.id()]);
    // A paused sandbox is also removed by a forced delete.
    let p = env
        .root
        .spawn(&env.cmd("probe", &["sleep", "600"]))
        .unwrap();
    p.pause().unwrap();
    p.delete(true).unwrap();
    env.finish();
}

#[test]
fn a_killed_monitor_makes_pause_and_stats_clear_errors_and_the_sandbox_lost() {
    let env = TestEnv::new("ctl-lost");
    let mut s = env
        .root
        .spawn(&env.cmd("probe", &["sleep", "600"]))
        .unwrap();
    let monitor = s.info().unwrap().monitor_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the sandbox to be lost", || {
        s.state().is_ok_and(|st| st == SandboxState::Lost)
    });
    for e in [
        s.pause().unwrap_err(),
        s.resume().unwrap_err(),
        s.stats().unwrap_err(),
        s.start().unwrap_err(),
        s.kill(Signal::SIGTERM).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    }
    let e = s.stats().unwrap_err().to_string();
    assert!(e.contains("lost") && e.contains("monitor died"), "{e}");
    let out = cli_cmd(&env).args(["pause", s.id()]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lost"),
        "{out:?}"
    );
    assert_eq!(s.wait().unwrap().status, Status::InternalError);
    let report = env.root.gc();
    assert_eq!(report.removed, vec![s.id().to_string()], "{report:?}");
    env.finish();
}

#[test]
fn a_paused_sandbox_whose_monitor_died_is_thawed_and_collected_by_gc() {
    let env = TestEnv::new("ctl-lostpaused");
    let s = env
        .root
        .spawn(&env.cmd("probe", &["sleep", "600"]))
        .unwrap();
    s.pause().unwrap();
    let info = s.info().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info.monitor_pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the sandbox to be lost", || {
        s.state().is_ok_and(|st| st == SandboxState::Lost)
    });
    // Its frozen processes cannot see their lifeline close: gc thaws them as it kills them.
    let report = env.root.gc();
    assert_eq!(report.removed, vec![s.id().to_string()], "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    let init = info.init_pid.unwrap();
    wait_until("the init to exit", || {
        !PathBuf::from(format!("/proc/{init}")).exists()
    });
    env.finish();
}
