//! Execs: further processes run in a running sandbox through runbox's own init, as a user of
//! `Sandbox::exec` and of `runbox exec` sees them (real sandboxes, leak checks).

mod common;

use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use common::{wait_until_for, TestEnv};
use runbox::{ErrorKind, LimitKind, ProcessSpec, Sandbox, SandboxState, Signal, Status};

/// A sandbox whose program leaves a mark and sleeps (long enough for the slow guest).
fn sleeper(env: &TestEnv) -> Sandbox {
    let mut cmd = env.cmd(
        "/bin/sh",
        &[
            "-c",
            "echo from-the-program > /tmp/mark; exec probe sleep 900",
        ],
    );
    cmd.limits_mut().wall_time = Some(Duration::from_secs(900));
    env.root.spawn(&cmd).unwrap()
}

/// Ends a sandbox of [`sleeper`] and removes it.
fn end(mut s: Sandbox) {
    s.kill(Signal::SIGKILL).unwrap();
    let v = s.wait().unwrap();
    assert_eq!(v.signal, Some(9), "{v:?}");
    s.delete(false).unwrap();
}

fn run(s: &Sandbox, program: &str, args: &[&str]) -> runbox::Verdict {
    let mut spec = ProcessSpec::new(program);
    spec.args(args.iter().copied());
    s.exec(&spec).unwrap().wait().unwrap()
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

#[test]
fn an_exec_has_the_programs_confinement_files_and_processes() {
    let env = TestEnv::new("exec-confined");
    let s = sleeper(&env);
    // The program's own answers to the probe, for comparison.
    let calls = [
        "keyctl",
        "unshare-user",
        "mount",
        "ptrace",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "socket-vsock",
        "x32",
        "clone3",
        "getpid",
    ];
    for call in calls {
        let program = env.root.run(&env.cmd("probe", &["syscall", call])).unwrap();
        let exec = run(&s, "probe", &["syscall", call]);
        assert_eq!(exec.stdout, program.stdout, "{call}: {exec:?}");
        assert!(exec.stdout.starts_with(call), "{exec:?}");
        if call != "getpid" {
            assert!(!exec.stdout.contains(" ok"), "{call} allowed: {exec:?}");
        }
    }
    // No capabilities, no new privileges, under the filter, the sandbox's user.
    let v = run(&s, "probe", &["status"]);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(
            status_field(&v.stdout, key),
            "0000000000000000",
            "{key} {v:?}"
        );
    }
    assert_eq!(status_field(&v.stdout, "Seccomp:"), "2");
    assert_eq!(status_field(&v.stdout, "NoNewPrivs:"), "1");
    let uid = run(&s, "probe", &["uid"]).stdout;
    assert!(!uid.trim().is_empty() && !uid.contains("uid=0 "), "{uid}");
    // The program's files and processes.
    let v = run(&s, "/bin/cat", &["/tmp/mark"]);
    assert_eq!(v.stdout, "from-the-program\n", "{v:?}");
    let v = run(
        &s,
        "/bin/sh",
        &["-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
    );
    assert!(v.stdout.contains("probe sleep 900"), "{v:?}");
    // Its own exit code, signal, environment, working directory; a name found in PATH.
    let mut spec = ProcessSpec::new("sh");
    spec.args(["-c", "echo $GREETING; pwd; exit 3"])
        .env("GREETING", "hello")
        .current_dir("/tmp");
    let v = s.exec(&spec).unwrap().wait().unwrap();
    assert_eq!(
        (v.status, v.exit_code, v.stdout.as_str()),
        (Status::RuntimeError, Some(3), "hello\n/tmp\n"),
        "{v:?}"
    );
    let v = run(&s, "probe", &["signal", "15"]);
    assert_eq!((v.status, v.signal), (Status::Signaled, Some(15)), "{v:?}");
    // A missing program "exits" 127, its stderr saying why, and the sandbox goes on.
    let v = run(&s, "/no/such/program", &[]);
    assert_eq!(v.exit_code, Some(127), "{v:?}");
    assert!(v.stderr.contains("/no/such/program"), "{v:?}");
    // Stdin bytes.
    let mut spec = ProcessSpec::new("/bin/cat");
    spec.stdin(runbox::Stdin::Bytes(b"fed\n".to_vec()));
    assert_eq!(s.exec(&spec).unwrap().wait().unwrap().stdout, "fed\n");
    // Another user is refused: the init has no capability to switch.
    let mut spec = ProcessSpec::new("/bin/true");
    spec.user(0);
    assert_eq!(s.exec(&spec).unwrap_err().kind(), ErrorKind::InvalidConfig);
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    end(s);
    env.finish();
}

#[test]
fn two_execs_share_the_memory_limit_and_the_one_killed_says_so() {
    let env = TestEnv::new("exec-memory");
    let mut cmd = env.cmd("probe", &["sleep", "900"]);
    cmd.limits_mut().memory_bytes = 64 << 20;
    cmd.limits_mut().shm_bytes = 64 << 20;
    cmd.limits_mut().scratch_bytes = 16 << 20;
    let s = env.root.spawn(&cmd).unwrap();
    // The first holds 40 MiB of the sandbox's memory (shared memory outlives it)...
    let v = run(
        &s,
        "/bin/sh",
        &[
            "-c",
            "head -c 41943040 /dev/zero > /dev/shm/held && echo held",
        ],
    );
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "held\n"),
        "{v:?}"
    );
    // ...so the second, alone within the limit, is killed by the OOM killer.
    let v = run(&s, "probe", &["memhog", "40"]);
    assert_eq!(v.status, Status::MemoryLimit, "{v:?}");
    assert_eq!(
        (v.limit, v.signal),
        (Some(LimitKind::Memory), Some(9)),
        "{v:?}"
    );
    assert!(v.oom_killed);
    // The sandbox goes on.
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    assert_eq!(run(&s, "/bin/rm", &["/dev/shm/held"]).status, Status::Ok);
    end(s);
    env.finish();
}

#[test]
fn an_execs_own_limits_kill_only_it() {
    let env = TestEnv::new("exec-limits");
    let s = sleeper(&env);
    let mut spin = ProcessSpec::new("probe");
    spin.args(["spin", "120"]).cpu_time(Duration::from_secs(1));
    let mut sleep = ProcessSpec::new("probe");
    sleep
        .args(["sleep", "120"])
        .wall_time(Duration::from_secs(1));
    let mut chatty = ProcessSpec::new("probe");
    chatty.args(["write-bytes", "1000000"]).output_limit(1000);
    let (a, b, c) = (
        s.exec(&spin).unwrap(),
        s.exec(&sleep).unwrap(),
        s.exec(&chatty).unwrap(),
    );
    let v = a.wait().unwrap();
    assert_eq!(
        (v.status, v.limit),
        (Status::TimeLimit, Some(LimitKind::CpuTime)),
        "{v:?}"
    );
    // The limit is RLIMIT_CPU, which the kernel checks on its tick-sampled user+system
    // clock; the verdict's CPU time is wait4's, scaled to the scheduler's exact runtime. On
    // this VM the ticks run about 10% ahead, so the limit fires at 0.895-0.899 s of real CPU
    // for 1 s (2026-12-07), more under emulation. A known gap (an exec's limit should be
    // checked on the exact clock, as the program's is): the bound here says the limit fired
    // near its value, not early.
    assert!(v.cpu_time_us >= 750_000, "{v:?}");
    let v = b.wait().unwrap();
    assert_eq!(
        (v.status, v.limit),
        (Status::WallTimeLimit, Some(LimitKind::WallTime)),
        "{v:?}"
    );
    assert!(v.wall_time_us >= 1_000_000, "{v:?}");
    let v = c.wait().unwrap();
    assert_eq!(
        (v.status, v.limit),
        (Status::OutputLimit, Some(LimitKind::Output)),
        "{v:?}"
    );
    assert!(v.stdout.len() <= 1000 && v.stdout_truncated, "{v:?}");
    // A kill on request reaches only its exec.
    let mut long = ProcessSpec::new("probe");
    long.args(["sleep", "120"]);
    let d = s.exec(&long).unwrap();
    d.kill(Signal::SIGTERM).unwrap();
    let v = d.wait().unwrap();
    assert_eq!((v.status, v.signal), (Status::Signaled, Some(15)), "{v:?}");
    // A paused span does not count against an exec's wall time.
    let mut paused = ProcessSpec::new("probe");
    paused
        .args(["sleep", "120"])
        .wall_time(Duration::from_secs(2));
    let t = std::time::Instant::now();
    let e = s.exec(&paused).unwrap();
    s.pause().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        e.try_wait().unwrap().is_none(),
        "its deadline fired while paused"
    );
    s.resume().unwrap();
    let v = e.wait().unwrap();
    let elapsed = u64::try_from(t.elapsed().as_micros()).unwrap();
    assert_eq!(v.status, Status::WallTimeLimit, "{v:?}");
    assert!(
        v.wall_time_us >= 2_000_000 && v.wall_time_us + 2_500_000 <= elapsed,
        "the paused span counted: {v:?} after {elapsed} us"
    );
    // The sandbox and its program go on.
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    assert_eq!(
        run(&s, "/bin/cat", &["/tmp/mark"]).stdout,
        "from-the-program\n"
    );
    end(s);
    env.finish();
}

#[test]
fn fifty_execs_at_once_each_get_their_own_verdict() {
    let env = TestEnv::new("exec-fifty");
    let s = sleeper(&env);
    let execs: Vec<(u32, runbox::Exec)> = (0..50)
        .map(|i| {
            let mut spec = ProcessSpec::new("/bin/sh");
            spec.args([
                "-c",
                &format!("sleep 1; echo {i}; echo e{i} >&2; exit {}", i % 7),
            ]);
            (i, s.exec(&spec).unwrap())
        })
        .collect();
    let ids: std::collections::BTreeSet<u64> = execs.iter().map(|(_, e)| e.id()).collect();
    assert_eq!(ids.len(), 50);
    for (i, e) in execs {
        let v = e.wait().unwrap();
        assert_eq!(v.exit_code, Some(i32::try_from(i % 7).unwrap()), "{v:?}");
        assert_eq!(v.stdout, format!("{i}\n"), "{v:?}");
        assert_eq!(v.stderr, format!("e{i}\n"), "{v:?}");
    }
    end(s);
    env.finish();
}

#[test]
fn exec_into_a_sandbox_not_running_is_invalid_state_and_a_dead_monitor_a_clear_error() {
    let env = TestEnv::new("exec-state");
    let spec = ProcessSpec::new("/bin/true");
    // Created, not started.
    let created = env
        .root
        .create(&env.cmd("probe", &["sleep", "900"]))
        .unwrap();
    assert_eq!(
        created.exec(&spec).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    end(created);
    // Stopped.
    let mut done = env.root.spawn(&env.cmd("/bin/true", &[])).unwrap();
    done.wait().unwrap();
    let e = done.exec(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    done.delete(false).unwrap();
    // Paused, then running again.
    let s = sleeper(&env);
    let mut long = ProcessSpec::new("probe");
    long.args(["sleep", "120"]);
    let held = s.exec(&long).unwrap();
    s.pause().unwrap();
    assert_eq!(s.exec(&spec).unwrap_err().kind(), ErrorKind::InvalidState);
    // The frozen init cannot take a kill: refused (queued ones would block the monitor).
    let e = held.kill(Signal::SIGCONT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    s.resume().unwrap();
    held.kill(Signal::SIGKILL).unwrap();
    assert_eq!(held.wait().unwrap().signal, Some(9));
    assert_eq!(run(&s, "/bin/true", &[]).status, Status::Ok);
    end(s);
    // Lost: its monitor was killed.
    let s = sleeper(&env);
    let info = s.info().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info.monitor_pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until_for("the sandbox to be lost", 60, || {
        s.state().is_ok_and(|st| st == SandboxState::Lost)
    });
    let e = s.exec(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    env.root.gc();
    env.finish();
}

fn cli(env: &TestEnv) -> Proc {
    let mut p = Proc::new(common::example("runbox"));
    p.arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix, "--spares", "0"]);
    p
}

#[test]
fn a_controller_killed_mid_exec_loses_nothing_and_the_cli_streams_and_exits_as_the_process() {
    let env = TestEnv::new("exec-cli");
    let s = sleeper(&env);
    // Streamed: the process's output is the CLI's, its exit status the CLI's.
    let out = cli(&env)
        .args(["exec", "-e", "X=1", "-w", "/tmp", s.id(), "/bin/sh", "-c"])
        .arg("echo out $X $(pwd); echo err >&2; exit 7")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out 1 /tmp\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // -i relays stdin; a signal is 128+N.
    let mut child = cli(&env)
        .args(["exec", "-i", s.id(), "/bin/sh", "-c", "cat; kill -9 $$"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "typed\n");
    // Runbox's own failures keep their code.
    let out = cli(&env)
        .args(["exec", "no-such-sandbox", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");

    // A controller SIGKILLed while its exec runs: the exec goes on, and a later controller
    // gets its verdict.
    let mut ctl = cli(&env)
        .args([
            "exec",
            "--json",
            s.id(),
            "/bin/sh",
            "-c",
            "sleep 3; echo survived",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let execs = env.dir.join(s.id()).join("execs");
    let n_before = 2; // the two execs above (the third found no sandbox)
    let dir = execs.join((n_before + 1).to_string());
    wait_until_for("the exec to start", 120, || dir.is_dir());
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    let out = cli(&env)
        .args([
            "wait",
            "--json",
            "--exec",
            &(n_before + 1).to_string(),
            s.id(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: runbox::Verdict = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "survived\n"),
        "{v:?}"
    );
    // Detached: the number, then a wait from another process.
    let out = cli(&env)
        .args(["exec", "-d", s.id(), "/bin/sh", "-c", "exit 4"])
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(&env)
        .args(["wait", "--exec", &n, s.id()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    end(s);
    env.finish();
}
