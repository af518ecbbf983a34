//! Start latency: the full cycle of `/bin/true` in a fresh sandbox (spawn the monitor, mount
//! the overlay, build and start the container, exit, collect the verdict, clean up).
//!
//! Prints median, p90 and p99 over sequential runs; the cost of the monitor process (exec,
//! fork, detach and report, with no sandbox work) and its private memory while its sandbox
//! sleeps; then a criterion measurement of the full cycle.
//! Run as root: `cargo bench --features bench --bench cycle`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;

fn image() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-image");
    let status = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rootfs/build-image.sh"
        ))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run rootfs/build-image.sh");
    assert!(status.success(), "rootfs/build-image.sh failed");
    out
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "p is in [0, 1]: the rank is an index within the slice"
)]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Exec of a monitor in `ping` mode (it forks, detaches, answers): the latency a monitor
/// process adds to every run, before any sandbox work.
fn monitor_ping(exe: &std::path::Path, state: &std::path::Path) -> Duration {
    use std::io::Read;
    let t = Instant::now();
    let _ = state;
    let mut child = runbox::bench::ping_command(exe)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("exec monitor");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    let d = t.elapsed();
    assert!(out.contains("pong"), "monitor answered {out:?}");
    d
}

/// `Private_Dirty`, `Private_Clean` and `Pss` of a process, in KiB, from smaps_rollup.
fn private_memory(pid: i32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kib = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kib("Private_Dirty:"), kib("Private_Clean:"), kib("Pss:"))
}

fn monitor_cost(root: &runbox::Root, state: &std::path::Path) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let standalone = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join(runbox::MONITOR_BIN))
        .filter(|p| p.is_file());
    let mut exes = vec![(
        "this binary via monitor_main",
        PathBuf::from("/proc/self/exe"),
    )];
    if let Some(p) = &standalone {
        exes.push(("standalone runbox-monitor", p.clone()));
    }
    for (name, exe) in &exes {
        for _ in 0..5 {
            monitor_ping(exe, state);
        }
        let mut t: Vec<Duration> = (0..100).map(|_| monitor_ping(exe, state)).collect();
        t.sort();
        println!(
            "monitor cost ({name}): exec + fork + detach + report, 100 runs: median {:.2} ms, p90 {:.2} ms",
            ms(percentile(&t, 0.5)),
            ms(percentile(&t, 0.9)),
        );
    }
    // Idle memory: what 10 sleeping sandboxes cost the host in user space (monitor and init
    // of each; the program itself is the caller's), and a spare with its pre-built container.
    let mut opts = runbox::RootOptions::new();
    opts.cgroup_prefix(root.cgroup_prefix());
    if let Some(p) = &standalone {
        opts.monitor_path(p);
    }
    let root = opts.open(root.dir()).unwrap();
    let mut cmd = runbox::Command::new("/bin/sleep");
    cmd.arg("30").image(image());
    let sandboxes: Vec<_> = (0..10).map(|_| root.spawn(&cmd).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut sums = [(0u64, 0u64, 0u64, 0u64); 2];
    for s in &sandboxes {
        let info = s.info().unwrap();
        for (k, pid) in [info.monitor_pid, info.init_pid].into_iter().enumerate() {
            let m = memory(pid.unwrap());
            sums[k] = (
                sums[k].0 + m.0,
                sums[k].1 + m.1,
                sums[k].2 + m.2,
                sums[k].3 + m.3,
            );
        }
    }
    let exe = if standalone.is_some() {
        "standalone runbox-monitor"
    } else {
        "this binary"
    };
    for (k, what) in ["monitor", "init"].iter().enumerate() {
        let (dirty, clean, pss, rss) = sums[k];
        println!(
            "idle sandbox ({exe}), mean of 10, {what}: Pss {} KiB, Rss {} KiB, Private_Dirty {} KiB, Private_Clean {} KiB",
            pss / 10,
            rss / 10,
            dirty / 10,
            clean / 10
        );
    }
    let (pss, rss) = (sums[0].2 + sums[1].2, sums[0].3 + sums[1].3);
    println!(
        "idle sandbox ({exe}), mean of 10, monitor + init: Pss {} KiB, Rss {} KiB",
        pss / 10,
        rss / 10
    );
    // The spare the last spawn left, with its pre-built container (init waiting for start).
    let warm_init = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .find_map(|h| {
            let dir = PathBuf::from(h).join(root.cgroup_prefix());
            std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("_warm-") {
                    return None;
                }
                let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).ok()?;
                procs.lines().next()?.trim().parse::<i32>().ok()
            })
        });
    if let Some(init) = warm_init {
        let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap();
        let spare: i32 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let (a, b) = (memory(spare), memory(init));
        println!(
            "spare with a pre-built container ({exe}): spare Pss {} KiB, init Pss {} KiB, Rss {} KiB in all, Private_Dirty {} KiB in all",
            a.2,
            b.2,
            a.3 + b.3,
            a.0 + b.0
        );
    }
    for s in sandboxes {
        s.kill(runbox::Signal::SIGKILL).unwrap();
        let mut s = s;
        s.wait().unwrap();
        s.delete(false).unwrap();
    }
    root.release_spares();
}

/// `Private_Dirty`, `Private_Clean`, `Pss` and `Rss` of a process, in KiB.
fn memory(pid: i32) -> (u64, u64, u64, u64) {
    let (dirty, clean, pss) = private_memory(pid);
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let rss = text
        .lines()
        .find(|l| l.starts_with("Rss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (dirty, clean, pss, rss)
}

/// Sequential runs after an idle gap, and sustained throughput at several concurrencies.
fn load(root: &runbox::Root, cmd: &runbox::Command) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let gap = Duration::from_millis(50);
    let mut t: Vec<Duration> = (0..100)
        .map(|_| {
            std::thread::sleep(gap);
            let t0 = Instant::now();
            root.run(cmd).unwrap();
            t0.elapsed()
        })
        .collect();
    t.sort();
    println!(
        "full cycle after a 50 ms idle gap, 100 runs: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&t, 0.5)),
        ms(percentile(&t, 0.9)),
        ms(percentile(&t, 0.99)),
    );
    let secs: u64 = std::env::var("RUNBOX_BENCH_THROUGHPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    for threads in [1, 2, 4, 8] {
        // A grader with N workers keeps N spare monitors.
        let root = runbox::RootOptions::new()
            .cgroup_prefix(root.cgroup_prefix())
            .spare_monitors(threads)
            .open(root.dir())
            .unwrap();
        let stop = Instant::now() + Duration::from_secs(secs);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let root = root.clone();
                let cmd = cmd.clone();
                std::thread::spawn(move || {
                    let mut lat = Vec::new();
                    while Instant::now() < stop {
                        let t0 = Instant::now();
                        let v = root.run(&cmd).unwrap();
                        assert_eq!(v.status, runbox::Status::Ok);
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let started = Instant::now();
        let mut lat: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "concurrency {threads}: {} runs in {elapsed:.1} s = {:.0} runs/s, median {:.2} ms, p99 {:.2} ms",
            lat.len(),
            lat.len() as f64 / elapsed,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
        );
    }
}

fn monotonic_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let secs = u64::try_from(t.tv_sec()).unwrap();
    let nanos = u64::try_from(t.tv_nsec()).unwrap();
    secs * 1_000_000 + nanos / 1000
}

/// Where the time of a full cycle goes: median duration of each step, from the controller's
/// spawn through the monitor's marks to the controller's delete.
fn phases(root: &runbox::Root, cmd: &runbox::Command) {
    let n = 100;
    // `RUNBOX_BENCH_PHASE_GAP_MS`: idle time before each start (a spare then has time to
    // pre-build; without a gap the run waits for its build).
    let gap = std::env::var("RUNBOX_BENCH_PHASE_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    // `RUNBOX_BENCH_ALTERNATE=1`: every other run has another memory limit, so no run finds
    // a spare pre-built for its shape (the cost of a shape change).
    let alternate = std::env::var_os("RUNBOX_BENCH_ALTERNATE").is_some();
    let mut other = cmd.clone();
    other.limits_mut().memory_bytes /= 2;
    let mut table: Vec<(String, Vec<u64>)> = Vec::new();
    for i in 0..n {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let cmd = if alternate && i % 2 == 1 { &other } else { cmd };
        let t0 = monotonic_us();
        let mut s = root.spawn(cmd).unwrap();
        let t_spawned = monotonic_us();
        s.wait().unwrap();
        let t_waited = monotonic_us();
        let usage = s.usage().unwrap();
        let t_del0 = monotonic_us();
        s.delete(false).unwrap();
        let t_deleted = monotonic_us();
        let mut marks = vec![("controller_spawn".to_string(), t0)];
        marks.extend(usage.phases_monotonic_us.iter().cloned());
        marks.push(("controller_spawn_returned".to_string(), t_spawned));
        // The init's marks come from another process: order everything by time.
        marks.sort_by_key(|m| m.1);
        marks.push(("exit_record_and_monitor_exit".to_string(), t_waited));
        marks.push((
            "controller_delete".to_string(),
            t_deleted - (t_del0 - t_waited),
        ));
        for w in marks.windows(2) {
            let d = w[1].1.saturating_sub(w[0].1);
            match table.iter_mut().find(|(k, _)| *k == w[1].0) {
                Some((_, v)) => v.push(d),
                None => table.push((w[1].0.clone(), vec![d])),
            }
        }
    }
    println!("phases of the full cycle, {n} sequential runs (median and p90 of each step, ms):");
    let mut total = 0.0;
    for (name, v) in &mut table {
        v.sort_unstable();
        let med = v[v.len() / 2] as f64 / 1e3;
        let p90 = v[v.len() * 9 / 10] as f64 / 1e3;
        total += med;
        println!("  {name:<30} {med:>7.2} {p90:>7.2}");
    }
    println!("  {:<30} {total:>7.2}", "sum of medians");
}

fn main() {
    runbox::monitor_main();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs real sandboxes: run as root"
    );
    // /run is a tmpfs, like the default state root /run/runbox.
    let state = PathBuf::from(format!("/run/runbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("create the state root");
    // The default state root /run/runbox is on a tmpfs on a usual host; here /run may not be
    // (ext4 on the development machine), so the bench mounts one for its root.
    let on_tmpfs = nix::sys::statfs::statfs(&state)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs {
        nix::mount::mount(
            Some("runbox-bench"),
            &state,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1g,mode=0700"),
        )
        .expect("mount a tmpfs on the bench state root");
        println!(
            "state root {} on a tmpfs mounted for the bench",
            state.display()
        );
    }
    let spares: usize = std::env::var("RUNBOX_BENCH_SPARES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let root = runbox::RootOptions::new()
        .cgroup_prefix(format!("runbox-bench-{}", std::process::id()))
        .spare_monitors(spares)
        .open(&state)
        .expect("open state root");
    let mut cmd = runbox::Command::new("/bin/true");
    cmd.image(image());

    // Warm up, then time sequential full cycles.
    for _ in 0..10 {
        assert_eq!(root.run(&cmd).unwrap().status, runbox::Status::Ok);
    }
    if std::env::args().any(|a| a == "--phases-only") {
        phases(&root, &cmd);
        cleanup(root, &state);
        return;
    }
    if std::env::args().any(|a| a == "--memory-only") {
        monitor_cost(&root, &state);
        cleanup(root, &state);
        return;
    }
    if std::env::args().any(|a| a == "--load-only") {
        load(&root, &cmd);
        cleanup(root, &state);
        return;
    }
    let n = 200;
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let v = root.run(&cmd).unwrap();
            let d = t.elapsed();
            assert_eq!(v.status, runbox::Status::Ok);
            d
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "full cycle of /bin/true, {n} sequential runs: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, min {:.2} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.9)),
        ms(percentile(&times, 0.99)),
        ms(times[0]),
    );

    phases(&root, &cmd);
    load(&root, &cmd);
    monitor_cost(&root, &state);

    let mut c = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    c.bench_function("full_cycle_true", |b| {
        b.iter(|| root.run(&cmd).unwrap());
    });
    c.final_summary();

    cleanup(root, &state);
}

/// Drops the root (its spare monitor exits), waits for the monitors' cgroup to empty, then
/// removes the state root and the cgroup prefix.
fn cleanup(root: runbox::Root, state: &std::path::Path) {
    drop(root);
    let monitors = PathBuf::from("/sys/fs/cgroup/memory")
        .join(format!("runbox-bench-{}", std::process::id()))
        .join("_monitors/cgroup.procs");
    let t = Instant::now();
    while std::fs::read_to_string(&monitors).is_ok_and(|p| !p.trim().is_empty())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(4) == state.to_str() && l.contains(" runbox-bench "))
    });
    if mounted {
        let _ = nix::mount::umount2(state, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(state);
    let prefix = format!("runbox-bench-{}", std::process::id());
    for ctrl in [
        "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "unified", "",
    ] {
        let dir = PathBuf::from("/sys/fs/cgroup").join(ctrl).join(&prefix);
        let _ = std::fs::remove_dir(dir.join("_monitors"));
        let _ = std::fs::remove_dir(dir);
    }
}
