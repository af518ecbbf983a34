//! Daemonless lifecycle with real processes: sandboxes outlive their controller, a new
//! controller (even another binary) picks them up, crashes are reported and collected.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command as Proc, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{wait_until, TestEnv};
use runbox::{ErrorKind, SandboxState, Signal, Status};

fn cli() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::example("runbox"))
}

fn controller() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::example("controller"))
}

/// Starts `examples/controller` on this test's root; returns it with the ids it printed.
fn start_controller(env: &TestEnv, extra: &[&str]) -> (Child, Vec<String>) {
    let mut child = Proc::new(controller())
        .arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix, "--image"])
        .arg(common::image())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        ids.push(line);
    }
    (child, ids)
}

fn cli_cmd(env: &TestEnv) -> Proc {
    let mut p = Proc::new(cli());
    p.arg("--root")
        .arg(&env.dir)
        .args(["--cgroup-parent", &env.prefix])
        .stdin(Stdio::null());
    p
}

#[test]
fn a_killed_controller_loses_nothing_and_another_binary_picks_up() {
    let env = TestEnv::new("pickup");
    let (mut ctl, ids) = start_controller(
        &env,
        &[
            "--count",
            "20",
            "--sleep",
            "1",
            "--name-prefix",
            "s",
            "--hold",
        ],
    );
    assert_eq!(ids.len(), 20);
    ctl.kill().unwrap(); // SIGKILL
    ctl.wait().unwrap();

    // This process never saw those sandboxes: it lists all 20, none lost.
    let listing = env.root.list().unwrap();
    assert_eq!(listing.len(), 20);
    for l in &listing {
        let status = l.info.as_ref().unwrap().state;
        assert!(
            matches!(status, SandboxState::Running | SandboxState::Stopped),
            "{status:?}"
        );
    }
    // Half are collected by this test binary, half by the CLI binary (an "upgraded" controller).
    for i in 0..10 {
        let mut s = env.root.sandbox(&format!("s{i}")).unwrap();
        let v = s.wait().unwrap();
        assert_eq!(v.exit_code, Some(i), "{v:?}");
        assert_eq!(v.stdout, format!("out-{i}\n"));
        s.delete(false).unwrap();
    }
    for i in 10..20 {
        let out = cli_cmd(&env)
            .args(["wait", &format!("s{i}"), "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["exit_code"], i);
        assert_eq!(v["stdout"], format!("out-{i}\n"));
        let out = cli_cmd(&env)
            .args(["delete", &format!("s{i}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    env.finish();
}

#[test]
fn runbox_run_killed_mid_run_then_wait_from_a_new_shell() {
    let env = TestEnv::new("runkill");
    let mut run = cli_cmd(&env)
        .args(["run", "--name", "victim", "--image"])
        .arg(common::image())
        .args(["--", "/bin/sh", "-c", "sleep 1; echo survived; exit 3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the sandbox to run", || {
        env.root
            .sandbox("victim")
            .and_then(|s| s.state())
            .is_ok_and(|s| s == SandboxState::Running)
    });
    run.kill().unwrap();
    run.wait().unwrap();
    let out = cli_cmd(&env).args(["wait", "victim"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "survived\n");
    let out = cli_cmd(&env).args(["logs", "victim"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "survived\n");
    env.root.sandbox("victim").unwrap().delete(false).unwrap();
    env.finish();
}

#[test]
fn a_killed_monitor_means_lost_and_gc_cleans_everything() {
    let env = TestEnv::new("lost");
    for created_only in [false, true] {
        let cmd = env.cmd("probe", &["sleep", "60"]);
        let mut s = if created_only {
            env.root.create(&cmd).unwrap()
        } else {
            env.root.spawn(&cmd).unwrap()
        };
        let info = s.info().unwrap();
        let init = info.init_pid.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(info.monitor_pid.unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let v = s.wait().unwrap();
        assert_eq!(v.status, Status::InternalError);
        assert!(v.message.unwrap().contains("lost"));
        assert_eq!(s.state().unwrap(), SandboxState::Lost);
        // The init took the sandbox down by itself, before any gc: running, it saw its
        // lifeline close; created (parked inside libcontainer), its parent-death signal
        // killed it. (The host's init reaps it.)
        wait_until("the init to exit", || {
            !PathBuf::from(format!("/proc/{init}")).exists()
        });
        let report = env.root.gc();
        assert_eq!(report.removed, vec![s.id().to_string()], "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
        // gc is idempotent.
        assert_eq!(env.root.gc(), runbox::GcReport::default());
    }
    env.finish();
}

#[test]
fn two_controllers_fill_one_root_at_once() {
    let env = TestEnv::new("twoctl");
    let (a, ids_a) = start_controller(&env, &["--count", "50", "--tag", "a"]);
    let (b, ids_b) = start_controller(&env, &["--count", "50", "--tag", "b"]);
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    let all: BTreeSet<&String> = ids_a.iter().chain(&ids_b).collect();
    assert_eq!(all.len(), 100, "ids must be distinct");
    let listing = env.root.list().unwrap();
    assert_eq!(listing.len(), 100);
    for (tag, ids) in [("a", &ids_a), ("b", &ids_b)] {
        for (i, id) in ids.iter().enumerate() {
            let mut s = env.root.sandbox(id).unwrap();
            let v = s.wait().unwrap();
            assert_eq!(v.exit_code, Some(i32::try_from(i).unwrap()), "{v:?}");
            assert_eq!(v.stdout, format!("{tag}-{i}\n"));
            s.delete(false).unwrap();
        }
    }
    env.finish();
}

#[test]
fn a_recorded_pid_that_names_another_process_is_never_signalled() {
    let env = TestEnv::new("identity");
    let s = env.root.spawn(&env.cmd("probe", &["sleep", "60"])).unwrap();
    let monitor_json = env.dir.join(s.id()).join("monitor.json");
    let original = std::fs::read_to_string(&monitor_json).unwrap();
    let mut bystander = Proc::new("sleep").arg("60").spawn().unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&original).unwrap();
    forged["init"]["pid"] = bystander.id().into();
    forged["init"]["start_time"] = 1.into(); // not the bystander's start time
    std::fs::write(&monitor_json, forged.to_string()).unwrap();
    // The monitor signals its own init by pidfd; the recorded pid is used only where no
    // monitor answers (one of an older runbox, without a control socket): as here.
    std::fs::remove_file(env.dir.join(s.id()).join("control")).unwrap();

    assert_eq!(
        s.kill(Signal::SIGKILL).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );

    // A forced delete falls back to the monitor, still verified, and leaves the bystander alone.
    s.delete(true).unwrap();
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    env.finish();
}

#[test]
fn kill_wait_and_delete_from_processes_that_did_not_create() {
    let env = TestEnv::new("foreign");
    let (mut ctl, ids) = start_controller(&env, &["--count", "3", "--sleep", "60"]);
    assert!(ctl.wait().unwrap().success());

    // This process signals one with SIGTERM: the init forwards it to the program.
    let mut s0 = env.root.sandbox(&ids[0]).unwrap();
    assert_eq!(s0.try_wait().unwrap(), None);
    assert!(s0
        .wait_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    s0.kill(Signal::SIGTERM).unwrap();
    let v = s0.wait().unwrap();
    assert_eq!(
        (v.status, v.signal),
        (Status::Signaled, Some(libc::SIGTERM)),
        "{v:?}"
    );
    s0.delete(false).unwrap();

    // The CLI refuses to delete a running one without --force, then kills and deletes it.
    let out = cli_cmd(&env).args(["delete", &ids[1]]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        env.root.sandbox(&ids[1]).unwrap().state().unwrap(),
        SandboxState::Running
    );
    let out = cli_cmd(&env)
        .args(["delete", "--force", &ids[1]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        env.root.sandbox(&ids[1]).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The CLI's kill with a signal name.
    let out = cli_cmd(&env)
        .args(["kill", &ids[2], "KILL"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut s2 = env.root.sandbox(&ids[2]).unwrap();
    assert_eq!(s2.wait().unwrap().signal, Some(9));
    assert_eq!(
        s2.kill(Signal::SIGKILL).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    s2.delete(false).unwrap();
    env.finish();
}

#[test]
fn create_then_start_and_a_corrupt_state_file_stays_local() {
    let env = TestEnv::new("create");
    let mut cmd = env.cmd("/bin/sh", &["-c", "echo started"]);
    cmd.name("later");
    let mut s = env.root.create(&cmd).unwrap();
    assert_eq!(s.state().unwrap(), SandboxState::Created);
    assert!(s.try_wait().unwrap().is_none());
    let out = cli_cmd(&env).args(["start", "later"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = s.wait().unwrap();
    assert_eq!(v.stdout, "started\n");
    assert_eq!(s.start().unwrap_err().kind(), ErrorKind::InvalidState);

    let mut other = env.root.spawn(&env.cmd("/bin/true", &[])).unwrap();
    other.wait().unwrap();
    // Truncate one sandbox's record: only that one reports an error.
    let record = env.dir.join("later").join("sandbox.json");
    let text = std::fs::read(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap();
    let listing = env.root.list().unwrap();
    let bad = listing.iter().find(|l| l.id == "later").unwrap();
    let err = bad.info.as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("corrupt"), "{err}");
    let good = listing.iter().find(|l| l.id == other.id()).unwrap();
    assert_eq!(good.info.as_ref().unwrap().state, SandboxState::Stopped);
    other.delete(false).unwrap();
    // The corrupt one has no processes, cgroup or mounts left (it had stopped): remove its dir.
    std::fs::remove_dir_all(env.dir.join("later")).unwrap();
    // Its uid went with a directory removed by hand: gc gives it back.
    let report = env.root.gc();
    assert!(
        report.cleaned.iter().any(|c| c.starts_with("uid lease")),
        "{report:?}"
    );
    env.finish();
}

/// The pids hierarchy's mount point (v1), or the unified hierarchy's (v2).
fn pids_hierarchy() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let v1 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids"))
            .then(|| PathBuf::from(f[1]))
    });
    v1.or_else(|| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
    })
    .expect("a pids or unified cgroup hierarchy")
}

#[test]
fn a_sandbox_survives_the_end_of_its_controllers_cgroup() {
    let env = TestEnv::new("svc");
    // The controller runs in a cgroup of its own, as under a service manager.
    let service = pids_hierarchy().join(format!("{}-service", env.prefix));
    std::fs::create_dir_all(&service).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        service.display()
    );
    let out = Proc::new("sh")
        .args(["-c", &script])
        .arg(cli())
        .arg("--root")
        .arg(&env.dir)
        .args([
            "--cgroup-parent",
            &env.prefix,
            "run",
            "--detach",
            "--name",
            "survivor",
            "--image",
        ])
        .arg(common::image())
        .args(["--", "/bin/sh", "-c", "sleep 1; echo alive"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let monitor = env
        .root
        .sandbox("survivor")
        .unwrap()
        .info()
        .unwrap()
        .monitor_pid;
    // The service manager stops the service: it kills whatever is left in its cgroup. The
    // sandbox's monitor is not there; a spare the run parked may still be, on its way out
    // (a spare holds no sandbox: killing it loses nothing, and gc collects what it left).
    let left = std::fs::read_to_string(service.join("cgroup.procs")).unwrap();
    let left: Vec<i32> = left.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(
        !monitor.is_some_and(|m| left.contains(&m)),
        "the monitor stayed in the controller's cgroup: {left:?}"
    );
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until("the service's cgroup to empty", || {
        std::fs::read_to_string(service.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
    });
    std::fs::remove_dir(&service).unwrap();
    env.root.gc();
    let mut s = env.root.sandbox("survivor").unwrap();
    let v = s.wait().unwrap();
    assert_eq!(
        (v.status, v.stdout.as_str()),
        (Status::Ok, "alive\n"),
        "{v:?}"
    );
    s.delete(false).unwrap();
    env.finish();
}

#[test]
fn gc_leaves_a_tmpfs_mounted_on_the_state_root_itself() {
    let env = TestEnv::new("gc-root-mount");
    let dir = env.dir.join("on-tmpfs");
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
    };
    let root = runbox::RootOptions::new()
        .cgroup_prefix(format!("{}-t", env.prefix))
        .spare_monitors(0)
        .open(&dir)
        .unwrap();
    let report = root.gc();
    let still = mounted();
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).ok();
    assert!(still, "gc unmounted the state root's own tmpfs: {report:?}");
    assert!(report.cleaned.is_empty(), "{report:?}");
    drop(root);
    std::fs::remove_dir_all(&dir).unwrap();
    env.finish();
}

#[test]
fn gc_removes_orphan_cgroups_and_abandoned_temp_dirs_only() {
    let env = TestEnv::new("gcorphans");
    let running = env.root.spawn(&env.cmd("probe", &["sleep", "30"])).unwrap();
    // An empty cgroup under the prefix with no sandbox (a crash between rmdirs), one that
    // belongs to a live sandbox, and a temp dir whose creator (a made-up dead process) is gone.
    let pids = pids_hierarchy().join(&env.prefix);
    let orphan = pids.join("orphan1");
    std::fs::create_dir_all(&orphan).unwrap();
    let temp = env.dir.join(".new-999999999-1-0");
    std::fs::create_dir_all(&temp).unwrap();
    let report = env.root.gc();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.removed.is_empty(),
        "a live sandbox was collected: {report:?}"
    );
    assert!(!orphan.exists(), "{report:?}");
    assert!(!temp.exists(), "{report:?}");
    assert!(
        pids.join(running.id()).exists(),
        "the live sandbox's cgroup was removed"
    );
    assert_eq!(running.state().unwrap(), SandboxState::Running);
    running.delete(true).unwrap();
    env.finish();
}

/// Every cgroup hierarchy mounted here (v1: one per controller group; v2: the one), as
/// (mount point, file system type, options).
fn cgroup_mount_entries() -> Vec<(String, String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && (f[2] == "cgroup" || f[2] == "cgroup2"))
        .map(|f| (f[1].clone(), f[2].clone(), f[3].clone()))
        .collect()
}

/// The mount points of [`cgroup_mount_entries`].
fn cgroup_mounts() -> Vec<PathBuf> {
    cgroup_mount_entries()
        .into_iter()
        .map(|(target, _, _)| PathBuf::from(target))
        .collect()
}

/// A child process killed when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CLI on this test's root and prefix, started by `sh -c script` (which ends in
/// `exec "$@"`, after joining cgroups or namespaces), with `args`.
fn cli_after(env: &TestEnv, script: &str, args: &[&str]) -> std::process::Output {
    Proc::new("sh")
        .args(["-c", script, "sh"])
        .arg(cli())
        .args([
            "--root",
            env.dir.to_str().unwrap(),
            "--cgroup-parent",
            &env.prefix,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The hierarchy holding the memory controller (v1) or the unified one (v2).
fn memory_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory"))
        .map(|f| PathBuf::from(f[1]))
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A host that delegates runbox a subtree (a systemd unit with `Delegate=yes`, here made by
/// hand in every hierarchy, with a process of its own on v2) gets every cgroup of runbox's
/// inside it and none at the hierarchy's root; the controller runs in a unit of its own, and
/// killing that unit as systemd stops a service (`cgroup.kill` on v2, every process on v1)
/// leaves the sandbox running for the next controller.
#[test]
fn a_delegated_cgroup_base_holds_everything_and_outlives_the_controllers_unit() {
    let env = TestEnv::new("base");
    let v2 = !memory_mount().join("memory.limit_in_bytes").exists();
    let pid = std::process::id();
    let unit = format!("runbox-test-{pid}-sandboxes.service");
    let ci = format!("runbox-test-{pid}-ci.service");
    for m in cgroup_mounts() {
        std::fs::create_dir_all(m.join(&unit)).unwrap();
        std::fs::create_dir_all(m.join(&ci)).unwrap();
    }
    let mem = memory_mount();
    // The unit's own process (v2 only: there it must move to a leaf for the unit to give
    // controllers to runbox's cgroups).
    let mut holder = KillOnDrop(Proc::new("sleep").arg("3600").spawn().unwrap());
    if v2 {
        std::fs::write(
            mem.join(&unit).join("cgroup.procs"),
            holder.0.id().to_string(),
        )
        .unwrap();
    }
    // The controller (the CLI) starts inside its own unit (cpuset is left out on v1: a new
    // cpuset cgroup has no CPUs until someone writes them).
    let joins: Vec<String> = cgroup_mounts()
        .iter()
        .filter(|m| v2 || !m.to_string_lossy().contains("cpuset"))
        .map(|m| format!("echo $$ > {}/{ci}/cgroup.procs", m.display()))
        .collect();
    let script = format!("{}; exec \"$@\"", joins.join("; "));
    let base = format!("/{unit}");
    let image = common::image().to_str().unwrap().to_string();
    let out = cli_after(
        &env,
        &script,
        &[
            "--cgroup-base",
            &base,
            "run",
            "-d",
            "--name",
            "kept",
            "-m",
            "64M",
            "--image",
            &image,
            "probe",
            "sleep",
            "3600",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let sandbox_cg = mem.join(&unit).join(&env.prefix).join("kept");
    assert!(sandbox_cg.is_dir(), "no {}", sandbox_cg.display());
    if v2 {
        let limit = std::fs::read_to_string(sandbox_cg.join("memory.max")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
        let holder_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", holder.0.id())).unwrap();
        assert_eq!(holder_cg.trim(), format!("0::/{unit}/runbox-leaf"));
    }
    // Nothing at the hierarchies' root.
    for m in cgroup_mounts() {
        assert!(
            !m.join(&env.prefix).exists(),
            "{} exists",
            m.join(&env.prefix).display()
        );
    }
    // Stop the controller's unit as systemd would.
    let ci_dir = mem.join(&ci);
    if v2 {
        std::fs::write(ci_dir.join("cgroup.kill"), "1").unwrap();
    } else {
        for p in std::fs::read_to_string(ci_dir.join("cgroup.procs"))
            .unwrap()
            .lines()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.trim().parse().unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    wait_until("the controller's unit to empty", || {
        std::fs::read_to_string(ci_dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
    });
    // A new controller, with the same base, finds the sandbox running and ends it.
    let root = runbox::RootOptions::new()
        .cgroup_prefix(env.prefix.clone())
        .cgroup_base(base.clone())
        .spare_monitors(0)
        .open(&env.dir)
        .unwrap();
    let mut s = root.sandbox("kept").unwrap();
    assert_eq!(s.state().unwrap(), SandboxState::Running);
    s.kill(Signal::SIGKILL).unwrap();
    assert_eq!(s.wait().unwrap().signal, Some(9));
    s.delete(false).unwrap();
    // The run left a pre-built sandbox parked for the next CLI call, its monitor in the
    // unit's `_monitors` too: end it.
    root.release_spares();
    wait_until("the sandbox's monitor to exit", || {
        std::fs::read_to_string(
            mem.join(&unit)
                .join(&env.prefix)
                .join("_monitors/cgroup.procs"),
        )
        .is_ok_and(|p| p.trim().is_empty())
    });
    drop(root);
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    for m in cgroup_mounts() {
        for d in [
            m.join(&unit).join(&env.prefix).join("_monitors"),
            m.join(&unit).join(&env.prefix),
            m.join(&unit).join("runbox-leaf"),
            m.join(&unit),
            m.join(&ci),
        ] {
            if d.is_dir() {
                std::fs::remove_dir(&d).unwrap_or_else(|e| panic!("remove {}: {e}", d.display()));
            }
        }
    }
    env.finish();
}

/// Inside a container (its own cgroup and mount namespaces, every hierarchy remounted, so the
/// cgroup it sits in is its root and holds its processes), a sandbox still gets its limits:
/// on cgroup v2, where a cgroup holding processes can give no controllers to children,
/// runbox moves the container's processes into `/runbox-leaf` first; on v1 nothing needs
/// moving. (A launch failed there with EOPNOTSUPP before.)
#[test]
fn inside_a_container_whose_cgroup_root_holds_processes_sandboxes_get_their_limits() {
    let env = TestEnv::new("nested");
    let v2 = !memory_mount().join("memory.limit_in_bytes").exists();
    let ct = format!("runbox-test-{}-container", std::process::id());
    let mounts = cgroup_mount_entries();
    let mut join = Vec::new();
    let mut remount = Vec::new();
    for (target, fstype, opts) in &mounts {
        let dir = PathBuf::from(target).join(&ct);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(PathBuf::from(target).join(f)) {
                std::fs::write(dir.join(f), v.trim()).unwrap();
            }
        }
        join.push(format!("echo $$ > {}/cgroup.procs", dir.display()));
        remount.push(format!(
            "umount {target} && mount -t {fstype} -o {opts} none {target}"
        ));
    }
    let inner = format!("{} && exec \"$@\"", remount.join(" && "));
    let script = format!(
        "{} && exec unshare -C -m sh -c '{inner}' sh \"$@\"",
        join.join(" && ")
    );
    let image = common::image().to_str().unwrap().to_string();
    let out = cli_after(
        &env,
        &script,
        // No spare parked in the container: this test waits for every monitor to end.
        &[
            "--spares", "0", "run", "--json", "-m", "32M", "--image", &image, "probe", "memhog",
            "100",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "memory_limit", "{v}");
    let mem_ct = memory_mount().join(&ct);
    if v2 {
        let enabled = std::fs::read_to_string(mem_ct.join("cgroup.subtree_control")).unwrap();
        assert!(
            enabled.split_whitespace().any(|c| c == "memory"),
            "{enabled}"
        );
        assert!(mem_ct.join("runbox-leaf").is_dir());
    }
    // The one-shot run's monitor cleans up after the verdict (on v1 it stays in the
    // container's cgroup, its root as it sees it, until it exits and is reaped).
    let root_str = env.dir.to_string_lossy().into_owned();
    // Every cgroup it may still hold a process in must empty (an exited monitor stays in
    // `_monitors` until it is reaped, and a zombie's command line names nothing).
    wait_until("the monitor to finish", || {
        let empty = |d: PathBuf| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        };
        common::processes_mentioning(&root_str).is_empty()
            && mounts.iter().all(|(target, _, _)| {
                let dir = PathBuf::from(target).join(&ct);
                let monitors = dir.join(&env.prefix).join("_monitors");
                empty(dir) && (!monitors.is_dir() || empty(monitors))
            })
    });
    for (target, _, _) in &mounts {
        let dir = PathBuf::from(target).join(&ct);
        for d in [
            dir.join(&env.prefix).join("_monitors"),
            dir.join(&env.prefix),
            dir.join("runbox-leaf"),
            dir.clone(),
        ] {
            if d.is_dir() {
                std::fs::remove_dir(&d).unwrap_or_else(|e| panic!("remove {}: {e}", d.display()));
            }
        }
    }
    env.finish();
}

/// Rewrites the records of the sandbox `id` as a runbox of state format 2 wrote them: the
/// config flat (one object, one `limits`), every record of format version 2.
fn as_format_2(env: &TestEnv, id: &str) {
    use serde_json::{Map, Value};
    let dir = env.dir.join(id);
    let rewrite = |name: &str, change: &dyn Fn(&mut Value)| {
        let path = dir.join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let mut record: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record["format_version"], 3, "{name}: {record}");
        record["format_version"] = 2.into();
        change(&mut record);
        let tmp = dir.join(format!(".{name}.format2"));
        std::fs::write(&tmp, serde_json::to_vec(&record).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    rewrite("sandbox.json", &|record| {
        let config = record["config"].take();
        let (mut flat, mut limits) = (Map::new(), Map::new());
        for half in ["sandbox", "run"] {
            for (k, v) in config[half].as_object().unwrap() {
                match (k.as_str(), v) {
                    ("limits", Value::Object(l)) => limits.extend(l.clone()),
                    _ => {
                        flat.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        assert!(limits.contains_key("memory_bytes") && limits.contains_key("wall_time"));
        flat.insert("limits".into(), limits.into());
        record["config"] = flat.into();
    });
    rewrite("monitor.json", &|_| {});
    rewrite("exit.json", &|_| {});
}

/// Sandboxes an older runbox left (state format 2, a flat config) are read by this one:
/// listed, their state, command and verdict read, a running one killed, and their removal
/// gives their uids back (the leak check).
#[test]
fn sandboxes_of_state_format_2_still_read_and_go() {
    let env = TestEnv::new("format2");
    let mut done = env.root.spawn(&env.cmd("echo", &["hi"])).unwrap();
    assert_eq!(done.wait().unwrap().status, Status::Ok);
    let running = env.root.spawn(&env.cmd("sleep", &["60"])).unwrap();
    let ids = [done.id().to_string(), running.id().to_string()];
    wait_until("the sleeper to run", || {
        running.state().is_ok_and(|s| s == SandboxState::Running)
    });
    drop((done, running));
    for id in &ids {
        as_format_2(&env, id);
    }

    let listed: BTreeSet<String> = env
        .root
        .list()
        .unwrap()
        .into_iter()
        .map(|l| {
            let info = l.info.unwrap_or_else(|e| panic!("{}: {}", l.id, e.chain()));
            format!("{} {:?} {}", l.id, info.state, info.command.join(" "))
        })
        .collect();
    let want: BTreeSet<String> = [
        format!("{} Stopped echo hi", ids[0]),
        format!("{} Running sleep 60", ids[1]),
    ]
    .into();
    assert_eq!(listed, want);

    let mut done = env.root.sandbox(&ids[0]).unwrap();
    let v = done.wait().unwrap();
    assert_eq!((v.status, v.stdout.as_str()), (Status::Ok, "hi\n"), "{v:?}");
    done.delete(false).unwrap();

    let mut running = env.root.sandbox(&ids[1]).unwrap();
    running.kill(Signal::SIGKILL).unwrap();
    let v = running.wait().unwrap();
    assert_eq!(
        (v.status, v.signal),
        (Status::Signaled, Some(libc::SIGKILL)),
        "{v:?}"
    );
    running.delete(false).unwrap();
    env.finish();
}
