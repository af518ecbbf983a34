//! Start latency: the full cycle of `/bin/true` in a fresh sandbox (spawn the monitor, mount
//! the overlay, build and start the container, exit, collect the verdict, clean up).
//!
//! Prints median, p90 and p99 over sequential runs, then a criterion measurement.
//! Run as root: `cargo bench --bench cycle`.

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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    runbox::monitor_main();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs real sandboxes: run as root"
    );
    let state = std::env::temp_dir().join(format!("runbox-bench-{}", std::process::id()));
    let root = runbox::RootOptions::new()
        .cgroup_prefix(format!("runbox-bench-{}", std::process::id()))
        .open(&state)
        .expect("open state root");
    let mut cmd = runbox::Command::new("/bin/true");
    cmd.image(image());

    // Warm up, then time sequential full cycles.
    for _ in 0..10 {
        assert_eq!(root.run(&cmd).unwrap().status, runbox::Status::Ok);
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

    let mut c = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    c.bench_function("full_cycle_true", |b| {
        b.iter(|| root.run(&cmd).unwrap());
    });
    c.final_summary();

    let _ = std::fs::remove_dir_all(&state);
    let prefix = format!("runbox-bench-{}", std::process::id());
    for ctrl in [
        "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "unified", "",
    ] {
        let _ = std::fs::remove_dir(PathBuf::from("/sys/fs/cgroup").join(ctrl).join(&prefix));
    }
}
