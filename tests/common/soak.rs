//! The soak (issue 21): many sandboxes at a fixed concurrency, mixing every verdict kind a
//! program can cause with every way of launching one, each verdict checked; then nothing may
//! be left (mounts, cgroups, processes, uid leases, state, box and spare directories, child
//! processes, descriptors), the controller's memory must be flat and the latency of the last
//! runs within noise of the first. Shared by `benches/soak.rs` (10,000 runs) and
//! `tests/soak.rs` (about 1,000; fewer in the emulated guest), which include it by path next
//! to `tests/common/mod.rs`.
//!
//! Job `i` launches by path `i % P` and causes kind `(i / P) % 7` (`P` paths): every 7·P
//! consecutive jobs hold every pair once, so every window of consecutive jobs holds the same mix, so the first and the last window compare like with like. Every path
//! and every kind runs the same static probe (rootfs/probe.c) of the test image.
//!
//! `internal_error` is not among the kinds: it means runbox itself failed, which no program
//! can cause on purpose; every verdict is checked not to be one.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runbox::{LimitKind, Root, RootOptions, Status, Verdict};

use crate::common::{assert_no_leaks, cargo_build, cgroup_prefix_dirs, image, wait_until_quiet};

/// CPU-time limit of the `time_limit` runs (the program spins far longer).
const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Wall-clock limit of the `wall_time_limit` runs (the program sleeps far longer).
const WALL_LIMIT: Duration = Duration::from_millis(300);
/// Wall-clock limit of every other run: a run that hangs fails instead of stalling the soak.
const WALL_DEFAULT: Duration = Duration::from_secs(30);
/// Memory limit of the `memory_limit` runs (the program touches 256 MiB).
const MEMORY_LIMIT: u64 = 32 << 20;
/// Writable layer of the `memory_limit` runs (its tmpfs pages count against the limit, so
/// it must be smaller).
const SCRATCH: u64 = 16 << 20;
/// Output limit of the `output_limit` runs (the program writes 1 MB to stdout).
const OUTPUT_LIMIT: u64 = 4096;
/// The soak stops taking jobs after this many wrong verdicts or launch errors.
const MAX_FAILURES: usize = 20;

/// How a job's sandbox is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Launch {
    /// `Root::run` on the soak's long-lived root (in-process spare monitors, one per thread).
    Run,
    /// `Root::spawn`, `Sandbox::wait`, `Sandbox::delete` on the same root.
    Spawn,
    /// A fresh `runbox run --json` process of the CLI example (its default `--spares 1`:
    /// it claims the sandbox its predecessor of the same shape parked, and parks the next).
    Cli,
    /// A fresh `Root` per job in this process, as a controller living for one launch opens
    /// it: no spare monitors of its own, one parked spare per shape
    /// (`RootOptions::parked_spares(1)`), claimed from and parked in the same state root.
    Parked,
    /// An isolate-style box on a root of its own: `Root::init_box`, `WorkBox::run`,
    /// `Root::cleanup_box` (box number = thread number), all three timed.
    Box,
}

/// Every launch path, in job order.
pub const LAUNCHES: [Launch; 5] = [
    Launch::Run,
    Launch::Spawn,
    Launch::Cli,
    Launch::Parked,
    Launch::Box,
];

impl Launch {
    /// The path named `name` (`run`, `spawn`, `cli`, `parked`, `box`).
    pub fn parse(name: &str) -> Option<Launch> {
        LAUNCHES.into_iter().find(|l| l.name() == name)
    }

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Launch::Run => "run",
            Launch::Spawn => "spawn",
            Launch::Cli => "cli",
            Launch::Parked => "parked",
            Launch::Box => "box",
        }
    }

    /// Its row label.
    pub fn label(self) -> &'static str {
        match self {
            Launch::Run => "library `Root::run`",
            Launch::Spawn => "library `spawn`+`wait`+`delete`",
            Launch::Cli => "fresh `runbox run --json` process",
            Launch::Parked => "fresh `Root` per run, parked spares",
            Launch::Box => "box: `init_box`+`run`+`cleanup_box`",
        }
    }
}

/// The verdict kind a job's program causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `probe true`.
    Ok,
    /// `probe exit 3`.
    RuntimeError,
    /// `probe signal 11`.
    Signaled,
    /// `probe spin 30` under a 0.1 s CPU-time limit.
    TimeLimit,
    /// `probe sleep 30` under a 0.3 s wall-clock limit.
    WallTimeLimit,
    /// `probe memhog 256` under a 32 MiB memory limit (and a 16 MiB writable layer).
    MemoryLimit,
    /// `probe write-bytes 1000000` under a 4 KiB output limit.
    OutputLimit,
}

/// Every kind, in job order.
pub const KINDS: [Kind; 7] = [
    Kind::Ok,
    Kind::RuntimeError,
    Kind::Signaled,
    Kind::TimeLimit,
    Kind::WallTimeLimit,
    Kind::MemoryLimit,
    Kind::OutputLimit,
];

impl Kind {
    /// The status name in the JSON verdict.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::RuntimeError => "runtime_error",
            Kind::Signaled => "signaled",
            Kind::TimeLimit => "time_limit",
            Kind::WallTimeLimit => "wall_time_limit",
            Kind::MemoryLimit => "memory_limit",
            Kind::OutputLimit => "output_limit",
        }
    }

    /// Kinds whose latency is the launch's own (the program ends at once on its own): the
    /// ones the drift check compares.
    fn is_launch_bound(self) -> bool {
        matches!(self, Kind::Ok | Kind::RuntimeError | Kind::Signaled)
    }

    /// The probe's arguments.
    fn argv(self) -> &'static [&'static str] {
        match self {
            Kind::Ok => &["true"],
            Kind::RuntimeError => &["exit", "3"],
            Kind::Signaled => &["signal", "11"],
            Kind::TimeLimit => &["spin", "30"],
            Kind::WallTimeLimit => &["sleep", "30"],
            Kind::MemoryLimit => &["memhog", "256"],
            Kind::OutputLimit => &["write-bytes", "1000000"],
        }
    }

    /// Applies the kind's limits to a library command (the program is `probe`).
    fn command(self, mut cmd: runbox::Command) -> runbox::Command {
        cmd.args(self.argv().iter().copied()).image(image());
        let l = cmd.limits_mut();
        l.wall_time = Some(WALL_DEFAULT);
        match self {
            Kind::TimeLimit => l.cpu_time = Some(TIME_LIMIT),
            Kind::WallTimeLimit => l.wall_time = Some(WALL_LIMIT),
            Kind::MemoryLimit => {
                l.memory_bytes = MEMORY_LIMIT;
                l.scratch_bytes = SCRATCH;
            }
            Kind::OutputLimit => l.output_bytes = OUTPUT_LIMIT,
            Kind::Ok | Kind::RuntimeError | Kind::Signaled => {}
        }
        cmd
    }

    /// The same limits as CLI flags.
    fn cli_flags(self) -> Vec<String> {
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        let (flag, value) = match self {
            Kind::TimeLimit => ("--time", secs(TIME_LIMIT)),
            Kind::WallTimeLimit => ("--wall-time", secs(WALL_LIMIT)),
            Kind::MemoryLimit => ("--memory", MEMORY_LIMIT.to_string()),
            Kind::OutputLimit => ("--output-limit", OUTPUT_LIMIT.to_string()),
            Kind::Ok | Kind::RuntimeError | Kind::Signaled => ("--wall-time", secs(WALL_DEFAULT)),
        };
        let mut v = vec![flag.to_string(), value];
        if self == Kind::MemoryLimit {
            v.extend(["--scratch".to_string(), SCRATCH.to_string()]);
        }
        if flag != "--wall-time" {
            v.extend(["--wall-time".to_string(), secs(WALL_DEFAULT)]);
        }
        v
    }

    /// Checks `v` is this kind's verdict: status, exit code or signal, limit and the figures
    /// that prove the limit was the cause.
    fn check(self, v: &Verdict) -> Result<(), String> {
        let ok = match self {
            Kind::Ok => {
                (v.status, v.exit_code, v.signal, v.limit) == (Status::Ok, Some(0), None, None)
            }
            Kind::RuntimeError => {
                (v.status, v.exit_code, v.signal, v.limit)
                    == (Status::RuntimeError, Some(3), None, None)
            }
            Kind::Signaled => {
                (v.status, v.exit_code, v.signal, v.limit)
                    == (Status::Signaled, None, Some(11), None)
            }
            Kind::TimeLimit => {
                (v.status, v.exit_code, v.limit)
                    == (Status::TimeLimit, None, Some(LimitKind::CpuTime))
                    && v.cpu_time_us >= micros(TIME_LIMIT)
            }
            Kind::WallTimeLimit => {
                (v.status, v.exit_code, v.limit)
                    == (Status::WallTimeLimit, None, Some(LimitKind::WallTime))
                    && v.wall_time_us >= micros(WALL_LIMIT)
            }
            Kind::MemoryLimit => {
                (v.status, v.exit_code, v.limit)
                    == (Status::MemoryLimit, None, Some(LimitKind::Memory))
                    && v.oom_killed
                    && v.memory_peak_bytes <= MEMORY_LIMIT
            }
            Kind::OutputLimit => {
                (v.status, v.exit_code, v.limit)
                    == (Status::OutputLimit, None, Some(LimitKind::Output))
                    && v.stdout_truncated
                    && v.stdout.len() as u64 == OUTPUT_LIMIT
            }
        };
        if ok && v.status != Status::InternalError {
            Ok(())
        } else {
            let mut shown = v.clone();
            shown.stdout.truncate(200);
            Err(format!("wrong verdict for {}: {shown:?}", self.label()))
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).expect("a limit of less than 584,000 years")
}

/// How much to soak.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sandboxes in all.
    pub runs: usize,
    /// Jobs at once (threads).
    pub concurrency: usize,
    /// Jobs in the first and in the last window compared (at most a third of `runs`).
    pub window: usize,
    /// Print progress to stderr every this many jobs (0: never).
    pub progress_every: usize,
    /// The launch paths, in job order (default: every one).
    pub launches: Vec<Launch>,
}

impl Options {
    /// `runs` at `concurrency`, windows of a thousand (or a third of the runs if fewer).
    /// `RUNBOX_SOAK_PATHS` (comma-separated names, see [`Launch::parse`]) restricts the paths.
    pub fn new(runs: usize, concurrency: usize) -> Options {
        assert!(
            runs >= 35,
            "the soak needs at least 35 runs (every path with every kind)"
        );
        assert!(concurrency > 0, "concurrency must be at least 1");
        Options {
            runs,
            concurrency,
            window: (runs / 3).min(1000),
            progress_every: 0,
            launches: match std::env::var("RUNBOX_SOAK_PATHS") {
                Ok(v) => v
                    .split(',')
                    .map(|n| {
                        Launch::parse(n.trim())
                            .unwrap_or_else(|| panic!("RUNBOX_SOAK_PATHS: no path named {n:?}"))
                    })
                    .collect(),
                Err(_) => LAUNCHES.to_vec(),
            },
        }
    }
}

/// One finished job.
#[derive(Debug, Clone)]
struct Sample {
    job: usize,
    launch: Launch,
    kind: Kind,
    latency: Duration,
}

/// The controller's footprint after one job: resident memory (KiB) and open descriptors; and
/// how busy the machine was (runnable tasks, the fourth field of /proc/loadavg).
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
    runnable: u32,
}

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// How many.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Percentiles {
    fn of(mut v: Vec<Duration>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort();
        let at = |p: f64| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "p is in [0, 1]: the rank is an index within the slice"
            )]
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Percentiles {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }
}

/// What a soak measured.
#[derive(Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// From the first launch to the last verdict.
    pub wall: Duration,
    /// Jobs per (launch path, kind).
    pub counts: BTreeMap<(Launch, Kind), usize>,
    /// Per launch path: launch-bound kinds (ok, runtime_error, signaled) of the first window
    /// and of the last.
    pub launch_latency: BTreeMap<Launch, (Percentiles, Percentiles)>,
    /// Per kind, every path: first window and last.
    pub kind_latency: BTreeMap<Kind, (Percentiles, Percentiles)>,
    /// Resident memory of this process (KiB), median over the first window's completions
    /// and over the last's.
    pub rss_kib: (u64, u64),
    /// The largest resident memory seen in the first window and in the last (KiB).
    pub rss_max_kib: (u64, u64),
    /// The most descriptors this process had open in the first window and in the last.
    pub fds: (usize, usize),
    /// Runnable tasks on the machine (its whole load, not only the soak's), mean over the
    /// first window's completions and over the last's.
    pub runnable: (f64, f64),
    /// Wrong verdicts and launch errors (job, path, kind, what).
    pub failures: Vec<String>,
    /// What was left behind, checked after every spare was released.
    pub leaks: Vec<String>,
}

/// A tmpfs of its own under the target directory, holding both state roots (as `/run` is a
/// tmpfs on a usual host; this machine's is ext4: see BENCHMARKS.md), unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf) -> Tmpfs {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the soak's directory");
        nix::mount::mount(
            Some("runbox-soak"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=512m,mode=0755"),
        )
        .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// One state root of the soak and its cgroup prefix.
struct SoakRoot {
    dir: PathBuf,
    prefix: String,
}

impl SoakRoot {
    /// Waits (at most `secs`) until no process names the root and no sandbox cgroup or
    /// monitor is left under the prefix: verdicts come before their monitors' cleanup.
    fn settle(&self, secs: u64) {
        wait_until_quiet(&self.dir, &self.prefix, secs);
    }

    /// Removes the prefix's cgroups and the root's directory; what had to be removed besides
    /// the prefix itself (a sandbox's or spare's cgroup: when it was made, relative to the
    /// soak's start, and what was in it) or cannot be removed is a leak.
    fn remove(&self, start: std::time::SystemTime) -> Vec<String> {
        let mut leaks = Vec::new();
        for d in cgroup_prefix_dirs(&self.prefix) {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir || e.file_name() == "_monitors" {
                    continue;
                }
                let made = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.duration_since(start).ok())
                    .map_or("?".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
                let procs = fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                let removed = fs::remove_dir(e.path()).is_ok();
                leaks.push(format!(
                    "cgroup {} (made {made} s after the start; processes {:?}; {})",
                    e.path().display(),
                    procs.split_whitespace().collect::<Vec<_>>(),
                    if removed {
                        "removed now"
                    } else {
                        "cannot be removed"
                    }
                ));
            }
            let monitors = d.join("_monitors");
            let removed = (!monitors.is_dir() || fs::remove_dir(&monitors).is_ok())
                && fs::remove_dir(&d).is_ok();
            if !removed {
                leaks.push(format!("cgroup prefix {} cannot be removed", d.display()));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            leaks.push(format!(
                "state root {} cannot be removed: {e}",
                self.dir.display()
            ));
        }
        leaks
    }
}

/// This process's resident memory (KiB) and open descriptors.
fn footprint() -> Footprint {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir("/proc/self/fd").map_or(0, |rd| rd.count());
    let runnable = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.0.parse().ok())
        .unwrap_or(0);
    Footprint {
        rss_kib,
        fds,
        runnable,
    }
}

/// Processes whose parent is this process (pid, state, command).
fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = tail.split_whitespace();
        let (state, ppid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ppid == me {
            out.push(format!("{head}) {state}"));
        }
    }
    out
}

/// The CLI example (`runbox`), built up to date in this binary's profile: release for the
/// bench (`target/release/…`), debug for the test.
pub fn cli() -> PathBuf {
    let exe = std::env::current_exe().expect("this binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<binary>");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = cargo_build();
    if release {
        build.arg("--release");
    }
    let status = build
        .args(["--quiet", "--example", "runbox"])
        .status()
        .expect("run cargo build --example runbox");
    assert!(status.success(), "cargo build --example runbox failed");
    profile_dir.join("examples/runbox")
}

/// Everything the jobs share.
struct Soak<'a> {
    cli: &'a Path,
    main: &'a SoakRoot,
    root: &'a Root,
    box_root: &'a Root,
}

impl Soak<'_> {
    /// Runs one job on thread `slot`; returns its latency.
    fn job(&self, launch: Launch, kind: Kind, slot: usize) -> Result<Duration, String> {
        let t = Instant::now();
        let verdict = match launch {
            Launch::Run => self
                .root
                .run(&kind.command(runbox::Command::new("probe")))
                .map_err(|e| e.chain())?,
            Launch::Spawn => {
                let mut s = self
                    .root
                    .spawn(&kind.command(runbox::Command::new("probe")))
                    .map_err(|e| format!("spawn: {}", e.chain()))?;
                let v = s.wait().map_err(|e| format!("wait: {}", e.chain()))?;
                s.delete(false)
                    .map_err(|e| format!("delete: {}", e.chain()))?;
                v
            }
            Launch::Cli => self.cli_run(kind)?,
            Launch::Parked => {
                let root = RootOptions::new()
                    .cgroup_prefix(self.main.prefix.clone())
                    .spare_monitors(0)
                    .parked_spares(1)
                    .open(&self.main.dir)
                    .map_err(|e| format!("open the root: {}", e.chain()))?;
                let v = root
                    .run(&kind.command(runbox::Command::new("probe")))
                    .map_err(|e| e.chain())?;
                // Dropping the root waits for the spare it parks to detach, as the CLI
                // would not (it exits first): part of this path's cost.
                drop(root);
                v
            }
            Launch::Box => {
                let id = u32::try_from(slot).expect("a box number");
                let b = self
                    .box_root
                    .init_box(id, 0, 0)
                    .map_err(|e| format!("init box {id}: {}", e.chain()))?;
                let v = b
                    .run(&kind.command(b.command("probe")))
                    .map_err(|e| e.chain())?;
                drop(b);
                self.box_root
                    .cleanup_box(id)
                    .map_err(|e| format!("clean up box {id}: {}", e.chain()))?;
                v
            }
        };
        let latency = t.elapsed();
        kind.check(&verdict)?;
        Ok(latency)
    }

    /// A fresh `runbox run --json` process; its verdict.
    fn cli_run(&self, kind: Kind) -> Result<Verdict, String> {
        let image = image().to_string_lossy().into_owned();
        let out = Proc::new(self.cli)
            .arg("--root")
            .arg(&self.main.dir)
            .args(["--cgroup-parent", &self.main.prefix, "run", "--json"])
            .args(["--image", &image])
            .args(kind.cli_flags())
            .arg("probe")
            .args(kind.argv())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", self.cli.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<Verdict>(&text) {
            Ok(v) if out.status.success() => Ok(v),
            _ => Err(format!(
                "runbox run exited {}: stdout {:?}, stderr {:?}",
                out.status,
                text.chars().take(300).collect::<String>(),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

/// Runs the soak: `options.runs` jobs on `options.concurrency` threads, then releases every
/// spare and checks what is left. Needs root; mounts a tmpfs of its own under the target
/// directory for the state roots.
pub fn run(options: &Options) -> Report {
    crate::common::require_root();
    let cli = cli();
    // Built before the clock starts.
    let _ = image();
    let pid = std::process::id();
    let tmpfs =
        Tmpfs::mount(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{pid}")));
    let main = SoakRoot {
        dir: tmpfs.dir.join("state"),
        prefix: format!("runbox-soak-{pid}"),
    };
    let boxes = SoakRoot {
        dir: tmpfs.dir.join("boxes"),
        prefix: format!("runbox-soak-{pid}-boxes"),
    };
    let root = RootOptions::new()
        .cgroup_prefix(main.prefix.clone())
        .spare_monitors(options.concurrency)
        .open(&main.dir)
        .expect("open the soak's state root");
    // Boxes on a root of their own with a uid range of their own: box N runs as uid
    // 61000 + N, which a sandbox of the main root (60000-60999) never leases.
    let box_root = RootOptions::new()
        .cgroup_prefix(boxes.prefix.clone())
        .uid_range(
            61_000,
            u32::try_from(options.concurrency).expect("a concurrency"),
        )
        .open(&boxes.dir)
        .expect("open the boxes' state root");
    let soak = Soak {
        cli: &cli,
        main: &main,
        root: &root,
        box_root: &box_root,
    };

    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    // The soak's own records, their pages touched before the first sample so that filling
    // them does not count as the controller's growth.
    let mut samples = Vec::with_capacity(options.runs);
    let mut footprints = Vec::with_capacity(options.runs);
    for job in 0..options.runs {
        samples.push(Sample {
            job,
            launch: Launch::Run,
            kind: Kind::Ok,
            latency: Duration::from_nanos(1),
        });
        footprints.push(Footprint {
            rss_kib: 1,
            fds: 1,
            runnable: 1,
        });
    }
    samples.clear();
    footprints.clear();
    let samples = Mutex::new(samples);
    let footprints = Mutex::new(footprints);
    let failures = Mutex::new(Vec::<String>::new());
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    std::thread::scope(|s| {
        for slot in 0..options.concurrency {
            let (soak, next, done, samples, footprints, failures) =
                (&soak, &next, &done, &samples, &footprints, &failures);
            s.spawn(move || loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= options.runs {
                    break;
                }
                let paths = options.launches.len();
                let (launch, kind) = (
                    options.launches[job % paths],
                    KINDS[job / paths % KINDS.len()],
                );
                match soak.job(launch, kind, slot) {
                    Ok(latency) => samples.lock().unwrap().push(Sample {
                        job,
                        launch,
                        kind,
                        latency,
                    }),
                    Err(e) => {
                        let mut f = failures.lock().unwrap();
                        f.push(format!("job {job} ({launch:?}, {}): {e}", kind.label()));
                        if f.len() >= MAX_FAILURES {
                            next.store(options.runs, Ordering::Relaxed);
                        }
                    }
                }
                footprints.lock().unwrap().push(footprint());
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if options.progress_every > 0 && n % options.progress_every == 0 {
                    let f = footprint();
                    eprintln!(
                        "soak: {n}/{} runs, {:.0} s, RSS {} KiB, {} fds, load {}",
                        options.runs,
                        start.elapsed().as_secs_f64(),
                        f.rss_kib,
                        f.fds,
                        fs::read_to_string("/proc/loadavg")
                            .unwrap_or_default()
                            .trim()
                    );
                }
            });
        }
    });
    let wall = start.elapsed();

    // What is left: release every spare (this root's own and every parked one, whoever
    // parked it), drop the roots, wait for the monitors, then check.
    root.release_spares();
    box_root.release_spares();
    drop(root);
    drop(box_root);
    let settle_secs = if std::env::var_os("RUNBOX_IN_GUEST").is_some() {
        120
    } else {
        60
    };
    let mut leaks = Vec::new();
    for r in [&main, &boxes] {
        r.settle(settle_secs);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| assert_no_leaks(&r.dir, &r.prefix))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a leak".to_string());
            leaks.push(msg);
        }
    }
    let kids = children();
    if !kids.is_empty() {
        leaks.push(format!("child processes left: {kids:?}"));
    }
    for r in [&main, &boxes] {
        leaks.extend(r.remove(started));
    }
    drop(tmpfs);

    let samples = samples.into_inner().unwrap();
    let footprints = footprints.into_inner().unwrap();
    let w = options.window;
    let first = |s: &Sample| s.job < w;
    let last = |s: &Sample| s.job >= options.runs - w;
    let pct = |f: &dyn Fn(&Sample) -> bool| {
        Percentiles::of(samples.iter().filter(|s| f(s)).map(|s| s.latency).collect())
    };
    let mut counts = BTreeMap::new();
    for s in &samples {
        *counts.entry((s.launch, s.kind)).or_insert(0) += 1;
    }
    let launch_latency = options
        .launches
        .iter()
        .map(|&l| {
            let sel = |s: &Sample| s.launch == l && s.kind.is_launch_bound();
            (
                l,
                (pct(&|s| sel(s) && first(s)), pct(&|s| sel(s) && last(s))),
            )
        })
        .collect();
    let kind_latency = KINDS
        .iter()
        .map(|&k| {
            (
                k,
                (
                    pct(&|s| s.kind == k && first(s)),
                    pct(&|s| s.kind == k && last(s)),
                ),
            )
        })
        .collect();
    let median = |v: &[Footprint]| {
        let mut r: Vec<u64> = v.iter().map(|f| f.rss_kib).collect();
        r.sort_unstable();
        r.get(r.len() / 2).copied().unwrap_or(0)
    };
    let wf = w.min(footprints.len());
    let (head, tail) = (&footprints[..wf], &footprints[footprints.len() - wf..]);
    let max_rss = |v: &[Footprint]| v.iter().map(|f| f.rss_kib).max().unwrap_or(0);
    #[expect(clippy::cast_precision_loss, reason = "a mean of small counts")]
    let mean_runnable = |v: &[Footprint]| {
        v.iter().map(|f| f64::from(f.runnable)).sum::<f64>() / v.len().max(1) as f64
    };
    let max_fds = |v: &[Footprint]| v.iter().map(|f| f.fds).max().unwrap_or(0);
    Report {
        options: options.clone(),
        wall,
        counts,
        launch_latency,
        kind_latency,
        rss_kib: (median(head), median(tail)),
        rss_max_kib: (max_rss(head), max_rss(tail)),
        fds: (max_fds(head), max_fds(tail)),
        runnable: (mean_runnable(head), mean_runnable(tail)),
        failures: failures.into_inner().unwrap(),
        leaks,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

impl Report {
    /// The figures as Markdown tables (for BENCHMARKS.md).
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut t = String::new();
        let total: usize = self.counts.values().sum();
        t.push_str(&format!(
            "{total} of {} runs right at concurrency {} in {:.1} s ({:.1} runs/s); windows: \
             jobs 0-{} against {}-{}\n\n",
            o.runs,
            o.concurrency,
            self.wall.as_secs_f64(),
            total as f64 / self.wall.as_secs_f64(),
            o.window - 1,
            o.runs - o.window,
            o.runs - 1
        ));
        t.push_str("| runs | path | ");
        t.push_str(&KINDS.map(Kind::label).join(" | "));
        t.push_str(" |\n|---|---|");
        t.push_str(&"---|".repeat(KINDS.len()));
        t.push('\n');
        for &l in &o.launches {
            t.push_str(&format!(
                "| {} | {} |",
                KINDS
                    .iter()
                    .map(|&k| self.counts.get(&(l, k)).copied().unwrap_or(0))
                    .sum::<usize>(),
                l.label()
            ));
            for k in KINDS {
                t.push_str(&format!(
                    " {} |",
                    self.counts.get(&(l, k)).copied().unwrap_or(0)
                ));
            }
            t.push('\n');
        }
        t.push_str(
            "\n| latency (ms), ok + runtime_error + signaled | n first/last | p50 first | p50 last \
             | p90 first | p90 last | p99 first | p99 last |\n|---|---|---|---|---|---|---|---|\n",
        );
        let row = |t: &mut String, name: &str, (a, b): (Percentiles, Percentiles)| {
            t.push_str(&format!(
                "| {name} | {}/{} | {} | {} | {} | {} | {} | {} |\n",
                a.n,
                b.n,
                ms(a.p50),
                ms(b.p50),
                ms(a.p90),
                ms(b.p90),
                ms(a.p99),
                ms(b.p99)
            ));
        };
        for (l, p) in &self.launch_latency {
            row(&mut t, l.label(), *p);
        }
        t.push_str(
            "\n| latency (ms) by kind, every path | n first/last | p50 first | p50 last | p90 \
             first | p90 last | p99 first | p99 last |\n|---|---|---|---|---|---|---|---|\n",
        );
        for (k, p) in &self.kind_latency {
            row(&mut t, k.label(), *p);
        }
        t.push_str(&format!(
            "\nController (this process): RSS median {} → {} KiB (max {} → {} KiB), open \
             descriptors at most {} → {}; first window → last.\n",
            self.rss_kib.0,
            self.rss_kib.1,
            self.rss_max_kib.0,
            self.rss_max_kib.1,
            self.fds.0,
            self.fds.1
        ));
        t.push_str(&format!(
            "Machine: {:.1} → {:.1} runnable tasks on average ({} CPUs), so the drift bounds \
             were scaled by {:.2}.\n",
            self.runnable.0,
            self.runnable.1,
            std::thread::available_parallelism().map_or(0, usize::from),
            self.load_scale()
        ));
        t.push_str(&format!(
            "Wrong verdicts and launch errors: {}. Left behind: {}.\n",
            if self.failures.is_empty() {
                "none".to_string()
            } else {
                self.failures.len().to_string()
            },
            if self.leaks.is_empty() {
                "nothing".to_string()
            } else {
                self.leaks.join("; ")
            }
        ));
        t
    }

    /// How much busier the machine was in the last window than in the first (at least 1):
    /// on a shared machine a launch waits for the CPU in proportion to the runnable tasks,
    /// which the soak does not control, so the drift bounds grow with it.
    pub fn load_scale(&self) -> f64 {
        if self.runnable.0 <= 0.0 {
            return 1.0;
        }
        (self.runnable.1 / self.runnable.0).max(1.0)
    }

    /// Asserts every verdict was right and nothing leaked, and, unless `drift` is false, that
    /// the controller's memory stayed flat (median RSS of the last window at most
    /// `rss_growth_kib` above the first's, descriptors not above the first window's most by
    /// more than the jobs in flight) and the launch latency did not drift (per path, last p50
    /// at most 1.5× first p50 + 2 ms, last p90 at most 2× first p90 + 5 ms, both factors
    /// times [`Report::load_scale`]).
    pub fn assert_steady(&self, drift: bool, rss_growth_kib: u64) {
        assert!(
            self.failures.is_empty(),
            "{} wrong verdicts or launch errors:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        let total: usize = self.counts.values().sum();
        assert_eq!(total, self.options.runs, "every job has a verdict");
        assert!(
            self.leaks.is_empty(),
            "left behind:\n{}",
            self.leaks.join("\n")
        );
        let growth = self.rss_kib.1.saturating_sub(self.rss_kib.0);
        assert!(
            growth <= rss_growth_kib,
            "the controller's memory grew by {growth} KiB (median RSS {} → {} KiB), more than \
             {rss_growth_kib} KiB",
            self.rss_kib.0,
            self.rss_kib.1
        );
        // Each job in flight holds a few descriptors (pipes to its monitor or CLI process).
        let slack = 4 * self.options.concurrency;
        assert!(
            self.fds.1 <= self.fds.0 + slack,
            "descriptors grew: at most {} open in the first window, {} in the last",
            self.fds.0,
            self.fds.1
        );
        if !drift {
            return;
        }
        for (l, (a, b)) in &self.launch_latency {
            assert!(
                a.n > 0 && b.n > 0,
                "{l:?}: no launch-bound runs in a window"
            );
            let scale = self.load_scale();
            let bound50 = a.p50.mul_f64(1.5 * scale) + Duration::from_millis(2);
            let bound90 = a.p90.mul_f64(2.0 * scale) + Duration::from_millis(5);
            assert!(
                b.p50 <= bound50 && b.p90 <= bound90,
                "{}: latency drifted: p50 {} → {} ms (bound {}), p90 {} → {} ms (bound {})",
                l.label(),
                ms(a.p50),
                ms(b.p50),
                ms(bound50),
                ms(a.p90),
                ms(b.p90),
                ms(bound90)
            );
        }
    }
}
