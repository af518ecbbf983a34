//! The soak, shortened for CI (issue 21; the full one is `cargo bench --bench soak`, see
//! BENCHMARKS.md, "Soak"): 1,000 sandboxes at concurrency 4 mixing every verdict kind a
//! program can cause (ok, runtime_error, signaled, time_limit, wall_time_limit, memory_limit,
//! output_limit) with every launch path (`Root::run`, `spawn`+`wait`+`delete`, fresh
//! `runbox run --json` processes, a fresh `Root` per run claiming parked spares, isolate-style
//! boxes), as tests/common/soak.rs describes. It asserts every verdict, that nothing is left
//! (mounts, cgroups, processes, uid leases, state, box and spare directories, child processes,
//! descriptors), that this process's memory stayed flat, and that the launch latency of the
//! last third is within noise of the first third's.
//!
//! In the emulated cgroup v2 guest (`RUNBOX_IN_GUEST`, tests/vm), where a sandbox takes 10-50×
//! longer, it runs 105 sandboxes (every path with every kind three times) so that CI time
//! stays bounded, and checks verdicts, leaks and memory but not latency drift: windows of 35
//! runs under emulation say nothing about latency. `RUNBOX_SOAK_RUNS` overrides the count,
//! `RUNBOX_SOAK_PATHS` (e.g. `box` or `run,cli`) restricts the launch paths.

mod common;
#[path = "common/soak.rs"]
mod soak;

/// Growth of the median RSS allowed between the first and the last third, in KiB. The soak's
/// threads, their allocator arenas and the caches a first run fills settle within the first
/// third; after that a controller that keeps nothing per run stays within a few hundred KiB
/// (see BENCHMARKS.md, "Soak"). 4 MiB over the ~670 runs between the two medians catches any
/// leak of about 6 KiB per run or more.
const RSS_GROWTH_KIB: u64 = 4 << 10;

#[test]
fn a_thousand_mixed_sandboxes_leave_nothing_and_do_not_drift() {
    let guest = std::env::var_os("RUNBOX_IN_GUEST").is_some();
    let runs = std::env::var("RUNBOX_SOAK_RUNS")
        .ok()
        .map(|v| v.parse().expect("RUNBOX_SOAK_RUNS is a number"))
        .unwrap_or(if guest { 105 } else { 1000 });
    let mut options = soak::Options::new(runs, 4);
    options.progress_every = 100;
    let report = soak::run(&options);
    println!("{}", report.table());
    report.assert_steady(!guest, RSS_GROWTH_KIB);
}
