//! The soak (issue 21): 10,000 sandboxes at concurrency 4, mixing every verdict kind a program
//! can cause (ok, runtime_error, signaled, time_limit, wall_time_limit, memory_limit,
//! output_limit; `internal_error` is runbox's own failure, which no program causes on purpose,
//! and is checked never to occur) with every launch path: the library in this process
//! (`Root::run`; `spawn`+`wait`+`delete`), fresh `runbox run --json` processes of the CLI
//! example (release build) claiming the sandboxes their predecessors parked, a fresh `Root`
//! per run claiming and parking spares (`RootOptions::parked_spares`), and isolate-style boxes
//! (`init_box`, `run`, `cleanup_box`). Both state roots live on a tmpfs the soak mounts under
//! the target directory. See tests/common/soak.rs for what is checked.
//!
//! Run as root: `cargo bench --bench soak` or `cargo bench --bench soak -- --runs 2000
//! --concurrency 8`. Options: `--runs N` (default 10,000), `--concurrency N` (default 4),
//! `--window N` (jobs in the first and last window compared; default 1,000, at most a third
//! of the runs); `RUNBOX_SOAK_PATHS=run,spawn,cli,parked,box` (a subset) restricts the launch
//! paths. Prints a summary table (Markdown) and fails if a verdict was wrong, something
//! was left behind, the RSS of this process grew by more than 8 MiB between the first and the
//! last window, or the launch latency drifted (per path: last p50 above 1.5× first p50 + 2 ms,
//! or last p90 above 2× first p90 + 5 ms).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/soak.rs"]
mod soak;

/// Growth of the median RSS allowed between the first and the last window, in KiB: what the
/// allocator's arenas may still settle (a few hundred KiB measured; see BENCHMARKS.md, "Soak"),
/// while a leak of 1 KiB per in-process run (about 7,000 such runs lie between the windows)
/// would exceed it.
const RSS_GROWTH_KIB: u64 = 8 << 10;

fn main() {
    runbox::monitor_main();
    let mut runs = 10_000;
    let mut concurrency = 4;
    let mut window = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            let v = args
                .next()
                .unwrap_or_else(|| panic!("{name} needs a value"));
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number, got {v:?}"))
        };
        match a.as_str() {
            "--runs" => runs = num("--runs"),
            "--concurrency" => concurrency = num("--concurrency"),
            "--window" => window = Some(num("--window")),
            "--bench" => {}
            other => eprintln!("soak: ignoring argument {other:?}"),
        }
    }
    let mut options = soak::Options::new(runs, concurrency);
    if let Some(w) = window {
        assert!(
            w > 0 && w <= runs / 3,
            "--window must be between 1 and a third of --runs"
        );
        options.window = w;
    }
    options.progress_every = (runs / 20).max(1);
    eprintln!(
        "soak: {runs} runs at concurrency {concurrency}, load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let report = soak::run(&options);
    println!("{}", report.table());
    report.assert_steady(true, RSS_GROWTH_KIB);
}
