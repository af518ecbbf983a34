//! The grader scenario next to the real isolate: how long a submission takes, and how much
//! CPU it costs, when a grader drives `isolate` the way Judge0 and CMS do, with ioi/isolate
//! and with runbox's `runbox isolate` front end (the CLI example, release build) side by side.
//!
//! Rows, each for `isolate` and for `runbox isolate`, every step a fresh CLI process timed
//! from spawn to exit:
//! - **Judge0, a fresh box per submission** (app/jobs/isolate_job.rb): `--cg -b N --init`
//!   with a new box id each submission; `run.sh` (`./a.out`) and a static C program that
//!   reads two numbers and prints their sum copied into the box, `stdin.txt` and the empty
//!   output files written next to it; `--run` with Judge0's command line
//!   (`--cg -s -b N -M META -t 2 -x 0.5 -w 5 -k 128000 -p60 --cg-timing --cg-mem=128000
//!   -f 1024 -E HOME=/tmp -E PATH=... -E LANG ... -d /etc:noexec --run -- /bin/bash run.sh`,
//!   its streams redirected to the files as Judge0's shell does); the box emptied and
//!   `--cleanup`.
//! - **CMS, a new sandbox per evaluation** (cms/grading/Sandbox.py, Batch task): an
//!   idempotent `--cleanup` then `--init`; the program and `input.txt` written to an outer
//!   directory bound at `/tmp`; `--run` with CMS's options (`--chdir=/tmp`,
//!   `--dir=/tmp=HOME:rw`, `--dir=/dev/shm:tmp`, `--stdin`, `--stdout`, `--stderr`,
//!   `--cg-mem`, `--processes=1`, `--time`, `--wall-time`, `--meta`); CMS's second run
//!   `chmod 777 -R /tmp` before deleting; `--cleanup`; the outer directory removed.
//! - **One box reused, run only**: Judge0's `--run` on a box initialized once.
//!
//! The isolate binary comes from `RUNBOX_BENCH_ISOLATE` (built by hand from ioi/isolate's
//! tags, its configuration file compiled in; BENCHMARKS.md says how). Without it, isolate's
//! rows say `unavailable (why)` and runbox's rows still run. Nothing of isolate is installed.
//!
//! Rows are interleaved: each round runs every row once, in an order rotated by one each
//! round, with an idle gap (default 50 ms, a grader's pace) before each submission, after
//! warm-up rounds that are not counted. Wall time per submission is the sum of its timed
//! steps (the harness's own checks between steps are not timed).
//!
//! CPU per submission, two figures, each read at the start of a submission and at the start
//! of the next one (so the gap after a submission, where runbox builds the parked spare the
//! next call will claim, counts for the submission that caused it):
//! - *own*: the CPU time charged to the bench's own cgroups: the harness's cgroup (the bench
//!   moves itself into `<prefix>-harness` of the cpuacct hierarchy, or of the unified one on
//!   cgroup v2: every CLI process it starts is charged there), runbox's cgroup prefix (its
//!   monitors and sandboxes), and isolate's box cgroup, read after each `--run` before the
//!   box is cleaned up. Other work on the machine does not count.
//! - *machine*: the whole machine's CPU time from `/proc/stat` (user + nice + system + irq +
//!   softirq, all CPUs) over the same window: includes everything else running on the host.
//!
//! Run as root: `RUNBOX_BENCH_ISOLATE=/path/to/isolate cargo bench --bench grader` or
//! `cargo bench --bench grader -- --runs 100 --warmup 5 --gap-ms 50`. At the end every box is
//! cleaned up, the state roots, scratch files and the box roots are removed, and the harness
//! checks that nothing is left: no process naming the bench's directories, no mount below
//! them, no cgroup of the bench's prefix, no `box-N` cgroup or box directory of the ids used.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::{
    build_cli, first_line, loadavg, mounts_below, ms, percentile, prefix_cgroups, processes_naming,
    remove_cgroup_tree, subdirs, wait_until,
};

/// The source name of the state tmpfs the harness mounts.
const TMPFS_SOURCE: &str = "runbox-grader";
/// The variable naming the isolate binary.
const ISOLATE_ENV: &str = "RUNBOX_BENCH_ISOLATE";
/// Judge0's `PATH` inside the box.
const JUDGE0_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The fresh boxes' ids cycle through `FIRST_FRESH_ID..FIRST_FRESH_ID + FRESH_IDS`.
const FIRST_FRESH_ID: u32 = 100;
/// How many ids the fresh boxes cycle through.
const FRESH_IDS: u32 = 700;
/// The reused box's id.
const REUSED_ID: u32 = 900;
/// A row stops after this many failed submissions.
const MAX_FAILURES: usize = 5;
/// The C program every submission runs: the sum of two numbers read from stdin.
const SUM_C: &str = "#include <stdio.h>\nint main(void) {\n  long a = 0, b = 0;\n  if (scanf(\"%ld %ld\", &a, &b) != 2) return 1;\n  printf(\"%ld\\n\", a + b);\n  return 0;\n}\n";

/// Command-line options.
#[derive(Debug, Clone)]
struct Opts {
    /// Counted rounds.
    runs: usize,
    /// Rounds before the counted ones.
    warmup: usize,
    /// Idle time before each submission.
    gap: Duration,
}

impl Opts {
    /// Parses the options; unknown arguments (cargo passes `--bench`) are ignored.
    fn parse() -> Opts {
        let mut o = Opts {
            runs: 200,
            warmup: 5,
            gap: Duration::from_millis(50),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let args = &mut args;
            match a.as_str() {
                "--runs" => o.runs = common::option_number(args, "--runs"),
                "--warmup" => o.warmup = common::option_number(args, "--warmup"),
                "--gap-ms" => {
                    o.gap = Duration::from_millis(common::option_number(args, "--gap-ms"));
                }
                "--bench" => {}
                other => eprintln!("grader: ignoring argument {other:?}"),
            }
        }
        assert!(o.runs > 0, "--runs must be at least 1");
        o
    }
}

/// Which sandbox drives a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// The isolate binary of `RUNBOX_BENCH_ISOLATE`.
    Isolate,
    /// `runbox isolate` (the CLI example).
    Runbox,
}

/// How a grader uses its boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Judge0: init, copy, run, cleanup, a new box id per submission.
    Judge0,
    /// CMS: cleanup, init, copy, run, chmod run, cleanup, a new box id per evaluation.
    Cms,
    /// Judge0's run on one box initialized once.
    Reused,
}

impl Pattern {
    /// The row label's pattern part.
    fn label(self) -> &'static str {
        match self {
            Pattern::Judge0 => "Judge0, fresh box per submission",
            Pattern::Cms => "CMS, new sandbox per evaluation",
            Pattern::Reused => "one box reused, run only",
        }
    }

    /// The short name of runbox's state root for this pattern.
    fn dir(self) -> &'static str {
        match self {
            Pattern::Judge0 => "judge0",
            Pattern::Cms => "cms",
            Pattern::Reused => "reused",
        }
    }

    /// The uid range runbox's root of this pattern leases from (disjoint from isolate's
    /// 60000 + box id and from each other).
    fn uid_range(self) -> &'static str {
        match self {
            Pattern::Judge0 => "61000:1000",
            Pattern::Cms => "62000:1000",
            Pattern::Reused => "63000:1000",
        }
    }
}

/// What a submission gave: its steps' names and wall times, and the CPU time of isolate's
/// box cgroup (outside the bench's own cgroups; zero for runbox).
type Done = (Vec<(&'static str, Duration)>, Duration);

/// One timed submission.
struct Submission {
    /// Each step's name and wall time.
    steps: Vec<(&'static str, Duration)>,
    /// CPU charged to the bench's cgroups and isolate's box cgroup.
    own_cpu: Duration,
    /// The machine's CPU time over the same window.
    machine_cpu: Duration,
}

impl Submission {
    /// The submission's wall time: the sum of its steps.
    fn wall(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }
}

/// A row: a tool and a pattern, its samples or why it cannot run.
struct Row {
    /// Who drives it.
    tool: Tool,
    /// How.
    pattern: Pattern,
    /// `Err(why)` when the row cannot run here.
    available: Result<(), String>,
    /// The counted submissions.
    samples: Vec<Submission>,
    /// The first failure during the measurement, and how many submissions failed (not
    /// counted; their box is cleaned up; the row stops after [`MAX_FAILURES`]).
    failed: Option<String>,
    /// How many submissions failed.
    failures: usize,
}

impl Row {
    /// The row label.
    fn label(&self) -> String {
        let tool = match self.tool {
            Tool::Isolate => "isolate",
            Tool::Runbox => "runbox isolate",
        };
        format!("{tool}: {}", self.pattern.label())
    }
}

/// Which cgroup layout the host has, for reading CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// cgroup v1: the cpuacct hierarchy at `/sys/fs/cgroup/cpuacct`, `cpuacct.usage` (ns).
    V1,
    /// cgroup v2: the unified hierarchy at `/sys/fs/cgroup`, `cpu.stat` `usage_usec`.
    V2,
}

impl Layout {
    /// The host's layout.
    fn detect() -> Layout {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Layout::V2
        } else {
            Layout::V1
        }
    }

    /// Where the hierarchy that accounts CPU time is mounted.
    fn cpu_mount(self) -> PathBuf {
        match self {
            Layout::V1 => PathBuf::from("/sys/fs/cgroup/cpuacct"),
            Layout::V2 => PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// The CPU time a cgroup directory has been charged (its descendants included); zero if
    /// it does not exist (yet).
    fn usage(self, dir: &Path) -> Duration {
        match self {
            Layout::V1 => fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_nanos),
            Layout::V2 => fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .map_or(Duration::ZERO, Duration::from_micros),
        }
    }

    /// This process's cgroup in the CPU-accounting hierarchy, from `/proc/self/cgroup`.
    fn own_cgroup(self) -> String {
        let mine = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        mine.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let ours = match self {
                    Layout::V1 => controllers.split(',').any(|c| c == "cpuacct"),
                    Layout::V2 => controllers.is_empty(),
                };
                ours.then(|| path.to_string())
            })
            .unwrap_or_else(|| "/".to_string())
    }
}

/// The machine's busy CPU time from `/proc/stat`: user + nice + system + irq + softirq of the
/// `cpu` line (all CPUs), in `USER_HZ` ticks of 10 ms.
fn machine_cpu() -> Duration {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("the cpu line of /proc/stat");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq ...
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    Duration::from_millis(busy * 10)
}

/// Everything the submissions need.
struct Bench {
    /// `runbox-grader-<pid>`: runbox's cgroup prefix and the name of `base`.
    prefix: String,
    /// `/run/runbox-grader-<pid>` on a tmpfs: runbox's state roots, the scratch directory,
    /// CMS's outer directories.
    base: PathBuf,
    /// The static sum program.
    program: PathBuf,
    /// The CLI example.
    cli: PathBuf,
    /// The isolate binary, or why there is none.
    isolate: Result<PathBuf, String>,
    /// The cgroup layout.
    layout: Layout,
    /// The harness's own cgroup, in the CPU-accounting hierarchy.
    harness_cg: PathBuf,
    /// isolate's box root, learnt from the first `--init` (the parent of its work dir).
    isolate_box_root: std::cell::RefCell<Option<PathBuf>>,
    /// Where isolate 2.x keeps its box cgroups (`--print-cg-root`), on cgroup v2.
    isolate_cg_root: Option<PathBuf>,
    /// The isolate box ids this run used.
    isolate_ids: std::cell::RefCell<BTreeSet<u32>>,
    /// The next fresh box id (cycles).
    next_id: std::cell::Cell<u32>,
    /// A counter making every submission's input different.
    serial: std::cell::Cell<u64>,
    /// The last fresh box id handed out.
    last_id: std::cell::Cell<u32>,
    /// Judge0's `--cg-timing` goes on its command line: isolate 1.x has the option; 2.x
    /// always times by the cgroup with `--cg` and refuses it (usage error, exit 2), so
    /// Judge0's line on a 2.x host has it not, for both tools alike.
    cg_timing: bool,
}

impl Bench {
    /// A fresh box id.
    fn fresh_id(&self) -> u32 {
        let id = self.next_id.get();
        self.last_id.set(id);
        self.next_id
            .set(FIRST_FRESH_ID + (id + 1 - FIRST_FRESH_ID) % FRESH_IDS);
        id
    }

    /// The state root of runbox's row for `pattern`.
    fn runbox_root(&self, pattern: Pattern) -> PathBuf {
        self.base.join(format!("runbox-{}", pattern.dir()))
    }

    /// A `tool` process for `pattern`, its arguments still to add.
    fn cmd(&self, tool: Tool, pattern: Pattern) -> Result<Proc, String> {
        match tool {
            Tool::Isolate => {
                let path = self.isolate.as_ref().map_err(Clone::clone)?;
                let mut c = Proc::new(path);
                c.env_remove("RUNBOX_ROOT");
                Ok(c)
            }
            Tool::Runbox => {
                let mut c = Proc::new(&self.cli);
                c.arg("isolate")
                    .env("RUNBOX_ROOT", self.runbox_root(pattern))
                    .env("RUNBOX_CGROUP_PARENT", &self.prefix)
                    .env("RUNBOX_UID_RANGE", pattern.uid_range());
                Ok(c)
            }
        }
    }

    /// The CPU charged so far to the harness's cgroup and runbox's prefix.
    fn own_cpu(&self) -> Duration {
        self.layout.usage(&self.harness_cg)
            + self
                .layout
                .usage(&self.layout.cpu_mount().join(&self.prefix))
    }

    /// The CPU time isolate's box cgroup `box-<id>` has been charged.
    fn isolate_box_usage(&self, id: u32) -> Duration {
        let dir = match (&self.isolate_cg_root, self.layout) {
            (Some(root), _) => root.join(format!("box-{id}")),
            (None, layout) => layout.cpu_mount().join(format!("box-{id}")),
        };
        self.layout.usage(&dir)
    }

    /// Before a `--run` of `tool` in box `id`: what [`Bench::box_cpu_after`] subtracts.
    fn box_cpu_before(&self, tool: Tool, id: u32) -> Duration {
        match (tool, self.layout) {
            // isolate 2.x keeps the box cgroup from --init to --cleanup, and cpu.stat adds up.
            (Tool::Isolate, Layout::V2) => self.isolate_box_usage(id),
            _ => Duration::ZERO,
        }
    }

    /// After a `--run` of `tool` in box `id`: the CPU its box cgroup was charged by the run
    /// (outside the bench's own cgroups; zero for runbox, whose cgroups are under its prefix).
    fn box_cpu_after(&self, tool: Tool, id: u32, before: Duration) -> Duration {
        match tool {
            // isolate 1.x zeroes cpuacct.usage as each run enters the box cgroup.
            Tool::Isolate => self.isolate_box_usage(id).saturating_sub(before),
            Tool::Runbox => Duration::ZERO,
        }
    }

    /// Runs one step: spawn to exit. `ok` says which exit codes are fine. Returns the time
    /// and the stdout.
    fn step(
        &self,
        mut cmd: Proc,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
        ok: &[i32],
    ) -> Result<(Duration, Vec<u8>), String> {
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        let t = Instant::now();
        let out = cmd.output().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let took = t.elapsed();
        match out.status.code() {
            Some(c) if ok.contains(&c) => Ok((took, out.stdout)),
            _ => Err(format!(
                "{}: {} (command: {cmd:?})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// `--init` of box `id`; returns its time and work dir.
    fn init(&self, tool: Tool, pattern: Pattern, id: u32) -> Result<(Duration, PathBuf), String> {
        let mut c = self.cmd(tool, pattern)?;
        c.args(["--cg", "-b", &id.to_string(), "--init"]);
        let (took, out) = self.step(c, Stdio::null(), Stdio::piped(), Stdio::piped(), &[0])?;
        let workdir = PathBuf::from(String::from_utf8_lossy(&out).trim());
        if !workdir.join("box").is_dir() {
            return Err(format!(
                "--init printed {:?}, which has no box/",
                workdir.display()
            ));
        }
        if tool == Tool::Isolate {
            self.isolate_ids.borrow_mut().insert(id);
            let mut root = self.isolate_box_root.borrow_mut();
            if root.is_none() {
                *root = workdir.parent().map(Path::to_path_buf);
            }
        }
        Ok((took, workdir))
    }

    /// `--cleanup` of box `id`.
    fn cleanup(&self, tool: Tool, pattern: Pattern, id: u32) -> Result<Duration, String> {
        let mut c = self.cmd(tool, pattern)?;
        c.args(["--cg", "-b", &id.to_string(), "--cleanup"]);
        Ok(self
            .step(c, Stdio::null(), Stdio::null(), Stdio::piped(), &[0])?
            .0)
    }

    /// Judge0's files: `run.sh` and the program in the box, `stdin.txt` with `input` and the
    /// empty output files in the work dir.
    fn judge0_files(&self, workdir: &Path, input: &str) -> Result<(), String> {
        let io = |e: std::io::Error| format!("write Judge0's files in {}: {e}", workdir.display());
        let bx = workdir.join("box");
        fs::write(bx.join("run.sh"), "./a.out \n").map_err(io)?;
        fs::copy(&self.program, bx.join("a.out")).map_err(io)?;
        fs::write(workdir.join("stdin.txt"), input).map_err(io)?;
        for f in ["stdout.txt", "stderr.txt", "metadata.txt"] {
            fs::write(workdir.join(f), "").map_err(io)?;
        }
        Ok(())
    }

    /// Judge0's `--run` of `run.sh` in box `id`, streams from and to the work dir's files.
    fn judge0_run(
        &self,
        tool: Tool,
        pattern: Pattern,
        id: u32,
        workdir: &Path,
    ) -> Result<Duration, String> {
        let mut c = self.cmd(tool, pattern)?;
        let meta = workdir.join("metadata.txt");
        c.args(["--cg", "-s", "-b", &id.to_string(), "-M"])
            .arg(&meta)
            .args(["-t", "2", "-x", "0.5", "-w", "5", "-k", "128000", "-p60"]);
        if self.cg_timing {
            c.arg("--cg-timing");
        }
        c.args([
            "--cg-mem=128000",
            "-f",
            "1024",
            "-E",
            "HOME=/tmp",
            "-E",
            &format!("PATH={JUDGE0_PATH}"),
            "-E",
            "LANG",
            "-E",
            "LANGUAGE",
            "-E",
            "LC_ALL",
            "-E",
            "JUDGE0_HOMEPAGE",
            "-E",
            "JUDGE0_SOURCE_CODE",
            "-E",
            "JUDGE0_MAINTAINER",
            "-E",
            "JUDGE0_VERSION",
            "-d",
            "/etc:noexec",
            "--run",
            "--",
            "/bin/bash",
            "run.sh",
        ]);
        let open = |name: &str| {
            fs::File::open(workdir.join(name)).map_err(|e| format!("open {name}: {e}"))
        };
        let create = |name: &str| {
            fs::File::create(workdir.join(name)).map_err(|e| format!("create {name}: {e}"))
        };
        let (took, _) = self.step(
            c,
            open("stdin.txt")?.into(),
            create("stdout.txt")?.into(),
            create("stderr.txt")?.into(),
            &[0],
        )?;
        Ok(took)
    }

    /// Checks the program's answer.
    fn check_output(&self, file: &Path, want: u64) -> Result<(), String> {
        let got = fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
        if got.trim() == want.to_string() {
            Ok(())
        } else {
            Err(format!("the program printed {got:?}, not {want}"))
        }
    }

    /// A new input `N 2` and its answer.
    fn input(&self) -> (String, u64) {
        let n = self.serial.get() + 1;
        self.serial.set(n);
        (format!("{n} 2\n"), n + 2)
    }

    /// Judge0's submission: init, copy, run, cleanup.
    fn judge0(&self, tool: Tool) -> Result<Done, String> {
        let p = Pattern::Judge0;
        let id = self.fresh_id();
        let (t_init, workdir) = self.init(tool, p, id)?;
        let (input, want) = self.input();
        let t = Instant::now();
        self.judge0_files(&workdir, &input)?;
        let t_copy = t.elapsed();
        let before = self.box_cpu_before(tool, id);
        let t_run = self.judge0_run(tool, p, id, &workdir)?;
        let box_cpu = self.box_cpu_after(tool, id, before);
        self.check_output(&workdir.join("stdout.txt"), want)?;
        // Judge0's cleanup: the box emptied, the work dir's files removed, `--cleanup`.
        let t = Instant::now();
        let bx = workdir.join("box");
        for e in fs::read_dir(&bx).map_err(|e| format!("list {}: {e}", bx.display()))? {
            let path = e.map_err(|e| e.to_string())?.path();
            fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
        for f in ["stdin.txt", "stdout.txt", "stderr.txt", "metadata.txt"] {
            fs::remove_file(workdir.join(f)).map_err(|e| format!("remove {f}: {e}"))?;
        }
        let t_clean = t.elapsed() + self.cleanup(tool, p, id)?;
        if workdir.exists() {
            return Err(format!("{} is left after --cleanup", workdir.display()));
        }
        Ok((
            vec![
                ("init", t_init),
                ("copy", t_copy),
                ("run", t_run),
                ("cleanup", t_clean),
            ],
            box_cpu,
        ))
    }

    /// CMS's evaluation: cleanup, init, files, run, chmod run, cleanup.
    fn cms(&self, tool: Tool) -> Result<Done, String> {
        let p = Pattern::Cms;
        let id = self.fresh_id();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let n = self.serial.get();
        let outer = self.base.join(format!("cms-{n}"));
        let home = outer.join("home");
        fs::create_dir_all(&home).map_err(|e| io("create CMS's home", e))?;
        let mode = |path: &Path, m: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(m))
                .map_err(|e| format!("chmod {}: {e}", path.display()))
        };
        mode(&home, 0o777)?;
        // Sandbox.__init__: an idempotent cleanup, then init.
        let t_init = self.cleanup(tool, p, id)? + self.init(tool, p, id)?.0;
        let (input, want) = self.input();
        let t = Instant::now();
        fs::copy(&self.program, home.join("sum")).map_err(|e| io("copy the program", e))?;
        fs::write(home.join("input.txt"), input).map_err(|e| io("write input.txt", e))?;
        // allow_writing_only(["output.txt", "stderr.txt"]).
        for f in ["output.txt", "stderr.txt"] {
            fs::write(home.join(f), "").map_err(|e| io("create an output file", e))?;
        }
        mode(&home, 0o755)?;
        for f in ["sum", "input.txt"] {
            mode(&home.join(f), 0o755)?;
        }
        for f in ["output.txt", "stderr.txt"] {
            mode(&home.join(f), 0o722)?;
        }
        let t_copy = t.elapsed();
        let mut c = self.cmd(tool, p)?;
        let home_rule = format!("--dir=/tmp={}:rw", home.display());
        c.args([
            "--cg",
            &format!("--box-id={id}"),
            "--chdir=/tmp",
            &home_rule,
        ]);
        c.arg("--dir=/dev/shm:tmp");
        if Path::new("/etc/alternatives").is_dir() {
            c.arg("--dir=/etc/alternatives=/etc/alternatives");
        }
        c.args([
            "--env=HOME=/tmp",
            "--fsize=1048576",
            "--stdin=/tmp/input.txt",
            "--cg-mem=262144",
            "--stdout=/tmp/output.txt",
            "--processes=1",
            "--stderr=/tmp/stderr.txt",
            "--time=1",
            "--wall-time=3",
        ])
        .arg(format!("--meta={}", outer.join("run.meta.0").display()))
        .args(["--run", "--", "./sum"]);
        let before = self.box_cpu_before(tool, id);
        let (t_run, _) = self.step(c, Stdio::null(), Stdio::null(), Stdio::piped(), &[0])?;
        let mut box_cpu = self.box_cpu_after(tool, id, before);
        self.check_output(&home.join("output.txt"), want)?;
        // cleanup(delete=True): a run that makes everything deletable (it fails on the files
        // the caller owns, as CMS expects: exit status 1 is fine), then --cleanup.
        let mut c = self.cmd(tool, p)?;
        c.args([&format!("--box-id={id}"), "--cg", &home_rule])
            .args(["--run", "--", "/bin/chmod", "777", "-R", "/tmp"]);
        let before = self.box_cpu_before(tool, id);
        let (t_chmod, _) = self.step(c, Stdio::null(), Stdio::null(), Stdio::null(), &[0, 1])?;
        box_cpu += self.box_cpu_after(tool, id, before);
        let t = Instant::now();
        let t_clean = self.cleanup(tool, p, id)?;
        fs::remove_dir_all(&outer).map_err(|e| io("remove CMS's outer directory", e))?;
        let t_clean = t_clean.max(t.elapsed());
        Ok((
            vec![
                ("cleanup+init", t_init),
                ("copy", t_copy),
                ("run", t_run),
                ("chmod run", t_chmod),
                ("cleanup", t_clean),
            ],
            box_cpu,
        ))
    }

    /// The reused box's work dir, for `tool`.
    fn reused_workdir(&self, tool: Tool) -> PathBuf {
        match tool {
            Tool::Isolate => self
                .isolate_box_root
                .borrow()
                .clone()
                .unwrap_or_default()
                .join(REUSED_ID.to_string()),
            Tool::Runbox => self
                .runbox_root(Pattern::Reused)
                .join(".boxes")
                .join(REUSED_ID.to_string()),
        }
    }

    /// Initializes the reused box of `tool` and puts Judge0's files in it.
    fn prepare_reused(&self, tool: Tool) -> Result<(), String> {
        let (_, workdir) = self.init(tool, Pattern::Reused, REUSED_ID)?;
        if workdir != self.reused_workdir(tool) {
            return Err(format!(
                "--init made {}, not {}",
                workdir.display(),
                self.reused_workdir(tool).display()
            ));
        }
        self.judge0_files(&workdir, "0 0\n")
    }

    /// Judge0's run on the reused box.
    fn reused(&self, tool: Tool) -> Result<Done, String> {
        let workdir = self.reused_workdir(tool);
        let (input, want) = self.input();
        fs::write(workdir.join("stdin.txt"), input).map_err(|e| format!("write stdin.txt: {e}"))?;
        let before = self.box_cpu_before(tool, REUSED_ID);
        let t_run = self.judge0_run(tool, Pattern::Reused, REUSED_ID, &workdir)?;
        let box_cpu = self.box_cpu_after(tool, REUSED_ID, before);
        self.check_output(&workdir.join("stdout.txt"), want)?;
        Ok((vec![("run", t_run)], box_cpu))
    }

    /// After a failed submission of `row`: its fresh box cleaned up (as a grader's error
    /// path does) and CMS's outer directories removed, so that the next ones start clean.
    fn recover(&self, row: &Row) {
        if row.pattern != Pattern::Reused {
            let _ = self.cleanup(row.tool, row.pattern, self.last_id.get());
        }
        for dir in subdirs(&self.base) {
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cms-"))
            {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }

    /// One submission of `row`'s pattern: its steps and the box CPU isolate charged outside
    /// the bench's cgroups.
    fn submit(&self, row: &Row) -> Result<Done, String> {
        match row.pattern {
            Pattern::Judge0 => self.judge0(row.tool),
            Pattern::Cms => self.cms(row.tool),
            Pattern::Reused => self.reused(row.tool),
        }
    }
}

/// Compiles the sum program statically into `dir`; `Err` says why not.
fn compile_program(dir: &Path) -> Result<PathBuf, String> {
    let cc = common::find_tool("cc")
        .or_else(|| common::find_tool("gcc"))
        .or_else(|| {
            common::ensure_packages(&[("gcc", "gcc")]);
            common::find_tool("gcc")
        })
        .ok_or("no C compiler (cc, gcc), and apt-get install gcc did not provide one")?;
    let src = dir.join("sum.c");
    fs::write(&src, SUM_C).map_err(|e| format!("write {}: {e}", src.display()))?;
    let out = dir.join("a.out");
    let o = Proc::new(&cc)
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", cc.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} -static failed: {}",
            cc.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(out)
}

/// The isolate binary of `RUNBOX_BENCH_ISOLATE`, or why the isolate rows are unavailable.
fn find_isolate() -> Result<PathBuf, String> {
    let Some(p) = std::env::var_os(ISOLATE_ENV) else {
        return Err(format!(
            "{ISOLATE_ENV} not set: build isolate v1.10.1/v2.6 by hand, see BENCHMARKS.md"
        ));
    };
    let p = PathBuf::from(p);
    if !common::is_executable(&p) {
        return Err(format!(
            "{ISOLATE_ENV}={} is not an executable",
            p.display()
        ));
    }
    Ok(p)
}

/// Moves this process into the cgroup at `dir` (created) of the CPU-accounting hierarchy.
fn enter_cgroup(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|e| panic!("enter {}: {e}", dir.display()));
}

/// Best-effort removal of everything the run created (on success and when unwinding).
struct Cleanup {
    /// runbox's cgroup prefix.
    prefix: String,
    /// The state directory.
    base: PathBuf,
    /// The CLI example.
    cli: PathBuf,
    /// The harness's cgroup and the one this process came from.
    harness: (PathBuf, PathBuf),
}

impl Cleanup {
    /// Leaves the harness's cgroup for the original one and removes it.
    fn leave_harness(&self) -> Result<(), String> {
        let (harness, original) = &self.harness;
        if !harness.is_dir() {
            return Ok(());
        }
        fs::write(
            original.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .map_err(|e| format!("move back to {}: {e}", original.display()))?;
        let ok = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(harness.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        });
        if !ok {
            return Err(format!("processes left in {}", harness.display()));
        }
        fs::remove_dir(harness).map_err(|e| format!("rmdir {}: {e}", harness.display()))
    }

    /// Releases runbox's parked spares and removes state, cgroups and the tmpfs; idempotent.
    fn sweep(&self) {
        for p in [Pattern::Judge0, Pattern::Cms, Pattern::Reused] {
            let dir = self.base.join(format!("runbox-{}", p.dir()));
            if !dir.is_dir() {
                continue;
            }
            let _ = Proc::new(&self.cli)
                .args(["isolate", "--cg", "-b", &REUSED_ID.to_string(), "--cleanup"])
                .env("RUNBOX_ROOT", &dir)
                .env("RUNBOX_CGROUP_PARENT", &self.prefix)
                .env("RUNBOX_UID_RANGE", p.uid_range())
                .stdin(Stdio::null())
                .status();
            if let Ok(root) = runbox::RootOptions::new()
                .cgroup_prefix(self.prefix.clone())
                .spare_monitors(0)
                .uid_range_from(p.uid_range())
                .open(&dir)
            {
                wait_until(Duration::from_secs(20), || {
                    root.list().is_ok_and(|l| l.is_empty())
                });
                root.release_spares();
                let report = root.gc();
                if !report.errors.is_empty() {
                    eprintln!("grader: runbox gc: {:?}", report.errors);
                }
            }
        }
        for dir in prefix_cgroups(&self.prefix) {
            wait_until(Duration::from_secs(10), || {
                common::populated_cgroups(&dir).is_empty()
            });
            for e in remove_cgroup_tree(&dir) {
                eprintln!("grader: {e}");
            }
        }
        if let Err(e) = self.leave_harness() {
            eprintln!("grader: {e}");
        }
        for m in mounts_below(&self.base) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        common::unmount_state_tmpfs(&self.base, TMPFS_SOURCE);
        if self.base.exists() {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("grader: failed; removing what the run created");
            self.sweep();
        }
    }
}

/// A `RootOptions` helper: the uid range of a `FIRST:COUNT` string.
trait UidRangeFrom {
    /// Sets the uid range from `FIRST:COUNT`.
    fn uid_range_from(&mut self, range: &str) -> &mut Self;
}

impl UidRangeFrom for runbox::RootOptions {
    fn uid_range_from(&mut self, range: &str) -> &mut Self {
        let (first, count) = range.split_once(':').expect("FIRST:COUNT");
        self.uid_range(
            first.parse().expect("a uid"),
            count.parse().expect("a count"),
        )
    }
}

/// Runs the rounds: every available row once per round, order rotated, a gap before each
/// submission; the first `warmup` rounds are not kept.
fn measure(bench: &Bench, rows: &mut [Row], opts: &Opts) {
    let live: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].available.is_ok())
        .collect();
    if live.is_empty() {
        return;
    }
    // The submission whose CPU window is open: (row, counted, own CPU, machine CPU at its
    // start, the box CPU isolate reported, its steps).
    type Open = (
        usize,
        bool,
        Duration,
        Duration,
        Duration,
        Vec<(&'static str, Duration)>,
    );
    let mut open: Option<Open> = None;
    let close = |rows: &mut [Row], open: Option<Open>, own: Duration, machine: Duration| {
        if let Some((i, counted, own0, machine0, box_cpu, steps)) = open {
            if counted {
                rows[i].samples.push(Submission {
                    steps,
                    own_cpu: own.saturating_sub(own0) + box_cpu,
                    machine_cpu: machine.saturating_sub(machine0),
                });
            }
        }
    };
    let total = opts.warmup + opts.runs;
    for round in 0..total {
        let counted = round >= opts.warmup;
        for k in 0..live.len() {
            let i = live[(round + k) % live.len()];
            if rows[i].failures >= MAX_FAILURES {
                continue;
            }
            std::thread::sleep(opts.gap);
            let (own, machine) = (bench.own_cpu(), machine_cpu());
            close(rows, open.take(), own, machine);
            match bench.submit(&rows[i]) {
                Ok((steps, box_cpu)) => open = Some((i, counted, own, machine, box_cpu, steps)),
                Err(e) => {
                    eprintln!("grader: {} failed: {e}", rows[i].label());
                    bench.recover(&rows[i]);
                    rows[i].failures += 1;
                    rows[i].failed.get_or_insert(e);
                }
            }
        }
        if round + 1 == opts.warmup || (round + 1) % 20 == 0 {
            eprintln!("grader: round {}/{total}", round + 1);
        }
    }
    std::thread::sleep(opts.gap);
    close(rows, open.take(), bench.own_cpu(), machine_cpu());
}

/// `text` fit for a table cell: one line, `|` escaped, at most 300 characters.
fn cell(text: &str) -> String {
    let one: String = text
        .replace('|', "\\|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    one.chars().take(300).collect()
}

/// Mean of durations.
fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).expect("sample count fits")
}

/// Prints the submission table, the ratios and the per-step table.
fn print_tables(rows: &[Row]) {
    println!();
    println!("### Per submission (wall: sum of the steps; CPU: see below)");
    println!();
    println!("| row | n | median (ms) | p90 (ms) | p99 (ms) | mean (ms) | CPU own (ms) | CPU machine (ms) |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        if let Err(why) = &row.available {
            println!(
                "| {} | 0 | unavailable ({}) | | | | | |",
                row.label(),
                cell(why)
            );
            continue;
        }
        if row.samples.is_empty() {
            let why = row.failed.as_deref().unwrap_or("no samples");
            println!("| {} | 0 | FAILED ({}) | | | | | |", row.label(), cell(why));
            continue;
        }
        let mut wall: Vec<Duration> = row.samples.iter().map(Submission::wall).collect();
        wall.sort();
        let own: Vec<Duration> = row.samples.iter().map(|s| s.own_cpu).collect();
        let machine: Vec<Duration> = row.samples.iter().map(|s| s.machine_cpu).collect();
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} |",
            row.label(),
            row.failed
                .as_deref()
                .map(|e| format!(
                    " ({} submission(s) FAILED, not counted; the first: {})",
                    row.failures,
                    cell(e)
                ))
                .unwrap_or_default(),
            wall.len(),
            ms(percentile(&wall, 0.5)),
            ms(percentile(&wall, 0.9)),
            ms(percentile(&wall, 0.99)),
            ms(mean(&wall)),
            ms(mean(&own)),
            ms(mean(&machine)),
        );
    }
    println!();
    println!("### isolate / runbox, per pattern (above 1: runbox faster or cheaper)");
    println!();
    println!("| pattern | wall median | CPU own (mean) | CPU machine (mean) |");
    println!("|---|---|---|---|");
    for p in [Pattern::Judge0, Pattern::Cms, Pattern::Reused] {
        let find = |t: Tool| {
            rows.iter()
                .find(|r| r.tool == t && r.pattern == p && !r.samples.is_empty())
        };
        let (Some(i), Some(r)) = (find(Tool::Isolate), find(Tool::Runbox)) else {
            println!("| {} | n/a | n/a | n/a |", p.label());
            continue;
        };
        let med = |row: &Row| {
            let mut w: Vec<Duration> = row.samples.iter().map(Submission::wall).collect();
            w.sort();
            percentile(&w, 0.5)
        };
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                "n/a".to_string()
            } else {
                format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
            }
        };
        let own = |row: &Row| mean(&row.samples.iter().map(|s| s.own_cpu).collect::<Vec<_>>());
        let machine = |row: &Row| {
            mean(
                &row.samples
                    .iter()
                    .map(|s| s.machine_cpu)
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "| {} | {} | {} | {} |",
            p.label(),
            ratio(med(i), med(r)),
            ratio(own(i), own(r)),
            ratio(machine(i), machine(r))
        );
    }
    println!();
    println!("### Per step, median (ms)");
    println!();
    println!("| row | steps |");
    println!("|---|---|");
    for row in rows.iter().filter(|r| !r.samples.is_empty()) {
        let names: Vec<&str> = row.samples[0].steps.iter().map(|(n, _)| *n).collect();
        let parts: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let mut v: Vec<Duration> = row.samples.iter().map(|s| s.steps[k].1).collect();
                v.sort();
                format!("{n} {}", ms(percentile(&v, 0.5)))
            })
            .collect();
        println!("| {} | {} |", row.label(), parts.join(", "));
    }
}

/// Cleans every box up, removes the state, and asserts that nothing is left.
fn verify_clean(bench: &Bench, cleanup: &Cleanup, rows: &[Row]) {
    // The reused boxes.
    for tool in [Tool::Isolate, Tool::Runbox] {
        let prepared = rows
            .iter()
            .any(|r| r.tool == tool && r.pattern == Pattern::Reused && r.available.is_ok());
        if prepared {
            bench
                .cleanup(tool, Pattern::Reused, REUSED_ID)
                .unwrap_or_else(|e| panic!("--cleanup of the reused box: {e}"));
        }
    }
    // isolate: no box directory and no box cgroup of the ids used; the box root goes if it
    // is empty (it held only this run's boxes).
    let ids = bench.isolate_ids.borrow();
    if let Some(root) = bench.isolate_box_root.borrow().as_ref() {
        let left: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| root.join(id.to_string()).exists())
            .collect();
        assert!(
            left.is_empty(),
            "isolate boxes left in {}: {left:?}",
            root.display()
        );
        if fs::read_dir(root).is_ok_and(|mut d| d.next().is_none()) {
            fs::remove_dir(root).unwrap_or_else(|e| panic!("rmdir {}: {e}", root.display()));
        }
    }
    let cg_roots: Vec<PathBuf> = match &bench.isolate_cg_root {
        Some(r) => vec![r.clone()],
        None => fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let left: Vec<PathBuf> = ids
        .iter()
        .flat_map(|id| cg_roots.iter().map(move |r| r.join(format!("box-{id}"))))
        .filter(|p| p.is_dir())
        .collect();
    assert!(left.is_empty(), "isolate box cgroups left: {left:?}");
    drop(ids);
    // runbox: every state root empty, the parked spares released, the prefix's cgroups gone.
    for p in [Pattern::Judge0, Pattern::Cms, Pattern::Reused] {
        let dir = bench.runbox_root(p);
        if !dir.is_dir() {
            continue;
        }
        let root = runbox::RootOptions::new()
            .cgroup_prefix(bench.prefix.clone())
            .spare_monitors(0)
            .uid_range_from(p.uid_range())
            .open(&dir)
            .expect("open a runbox state root");
        let ok = wait_until(Duration::from_secs(20), || {
            root.list().is_ok_and(|l| l.is_empty())
        });
        assert!(ok, "runbox sandboxes left in {}", dir.display());
        root.release_spares();
        let boxes = subdirs(&dir.join(".boxes"));
        assert!(boxes.is_empty(), "runbox boxes left: {boxes:?}");
    }
    common::remove_prefix_cgroups(&bench.prefix);
    cleanup
        .leave_harness()
        .unwrap_or_else(|e| panic!("leave the harness cgroup: {e}"));
    let ok = wait_until(Duration::from_secs(10), || {
        processes_naming(&bench.base).is_empty()
    });
    assert!(
        ok,
        "processes still name {}: {:?}",
        bench.base.display(),
        processes_naming(&bench.base)
    );
    let mounts = mounts_below(&bench.base);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    common::unmount_state_tmpfs(&bench.base, TMPFS_SOURCE);
    fs::remove_dir_all(&bench.base)
        .unwrap_or_else(|e| panic!("remove {}: {e}", bench.base.display()));
    cleanup.sweep();
    assert!(!bench.base.exists(), "{} left", bench.base.display());
}

/// The major version in isolate's `--version` line ("The process isolator 2.6"), if any.
fn isolate_major(line: &str) -> Option<u32> {
    line.strip_prefix("The process isolator ")?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Sets up, measures, prints Markdown, checks the cleanup.
fn main() {
    runbox::monitor_main();
    let opts = Opts::parse();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs real sandboxes: run as root"
    );
    let load_at_start = loadavg();
    let started = Instant::now();
    let layout = Layout::detect();
    let pid = std::process::id();
    let prefix = format!("runbox-grader-{pid}");
    let base = PathBuf::from(format!("/run/{prefix}"));
    let original_cg = layout
        .cpu_mount()
        .join(layout.own_cgroup().trim_start_matches('/'));
    let harness_cg = layout.cpu_mount().join(format!("{prefix}-harness"));
    let cli = build_cli();
    let cleanup = Cleanup {
        prefix: prefix.clone(),
        base: base.clone(),
        cli: cli.clone(),
        harness: (harness_cg.clone(), original_cg),
    };
    fs::create_dir_all(&base).expect("create the state directory");
    let state_fs = common::state_on_tmpfs(&base, TMPFS_SOURCE);
    let scratch = base.join("scratch");
    fs::create_dir_all(&scratch).expect("create the scratch directory");
    enter_cgroup(&harness_cg);

    let isolate = find_isolate();
    let program = compile_program(&scratch);
    let isolate_cg_root = match (&isolate, layout) {
        (Ok(path), Layout::V2) => {
            let line = first_line(path, &["--print-cg-root"]);
            (!line.is_empty() && !line.starts_with('(')).then(|| PathBuf::from(line))
        }
        _ => None,
    };
    let isolate_version = match &isolate {
        Ok(p) => first_line(p, &["--version"]),
        Err(e) => format!("unavailable ({e})"),
    };
    let bench = Bench {
        prefix,
        base,
        program: program.clone().unwrap_or_default(),
        cli,
        isolate,
        layout,
        harness_cg,
        isolate_box_root: std::cell::RefCell::new(None),
        isolate_cg_root,
        isolate_ids: std::cell::RefCell::new(BTreeSet::new()),
        next_id: std::cell::Cell::new(FIRST_FRESH_ID),
        serial: std::cell::Cell::new(0),
        last_id: std::cell::Cell::new(FIRST_FRESH_ID),
        cg_timing: isolate_major(&isolate_version).is_none_or(|major| major < 2),
    };

    // The rows, each probed once: a row that cannot run says why.
    let mut rows = Vec::new();
    for pattern in [Pattern::Judge0, Pattern::Cms, Pattern::Reused] {
        for tool in [Tool::Isolate, Tool::Runbox] {
            let mut row = Row {
                tool,
                pattern,
                available: Ok(()),
                samples: Vec::new(),
                failed: None,
                failures: 0,
            };
            row.available = program
                .as_ref()
                .map(|_| ())
                .map_err(Clone::clone)
                .and_then(|()| bench.cmd(tool, pattern).map(|_| ()))
                .and_then(|()| {
                    let probed = if pattern == Pattern::Reused {
                        bench.prepare_reused(tool)
                    } else {
                        Ok(())
                    }
                    .and_then(|()| bench.submit(&row).map(|_| ()));
                    if probed.is_err() {
                        // A row that cannot run leaves no box behind either.
                        bench.recover(&row);
                        if pattern == Pattern::Reused {
                            let _ = bench.cleanup(tool, pattern, REUSED_ID);
                        }
                    }
                    probed
                });
            if let Err(e) = &row.available {
                eprintln!("grader: {} unavailable: {e}", row.label());
            }
            rows.push(row);
        }
    }

    let date = first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let uname = first_line(Path::new("uname"), &["-r"]);
    let nproc = first_line(Path::new("nproc"), &[]);
    let load_before = loadavg();
    measure(&bench, &mut rows, &opts);
    let load_after = loadavg();

    println!();
    println!("## Grader pattern: isolate and `runbox isolate`, Judge0's and CMS's command lines");
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| date | {date} |");
    println!("| kernel (`uname -r`) | {uname} |");
    println!("| nproc | {nproc} |");
    println!(
        "| cgroups | {} |",
        match layout {
            Layout::V1 => "v1 (CPU from the cpuacct hierarchy)",
            Layout::V2 => "v2 (CPU from cpu.stat)",
        }
    );
    println!(
        "| load avg (1 min) | {load_at_start} at start, {load_before} before measuring, {load_after} after |"
    );
    println!("| isolate | {} |", cell(&isolate_version));
    println!(
        "| isolate box root | {} |",
        bench
            .isolate_box_root
            .borrow()
            .as_ref()
            .map_or_else(|| "n/a".to_string(), |p| p.display().to_string())
    );
    println!(
        "| runbox | {} (release), `isolate` front end, one parked spare per call (default) |",
        bench.cli.display()
    );
    println!("| runbox state roots and box roots | {} |", cell(&state_fs));
    println!(
        "| rounds | {} counted + {} warm-up, rows interleaved, order rotated each round, {} ms idle before each submission |",
        opts.runs,
        opts.warmup,
        opts.gap.as_millis()
    );
    println!("| program | a static C program (`cc -static -O2`) printing the sum of two numbers read from stdin, checked every submission |");
    print_tables(&rows);
    println!();
    println!("- wall: the sum of a submission's steps, each a fresh process timed from spawn to exit (file writes by the harness timed as the copy step)");
    println!("- CPU own: CPU time charged to the harness's cgroup (every CLI process it starts), runbox's cgroup prefix (monitors, sandboxes, spare builds) and isolate's box cgroup (read after each `--run`), from the start of a submission to the start of the next one (so the gap, where runbox builds its next parked spare, counts); work of other users of the machine is not in it");
    println!("- CPU machine: all CPUs' busy time from /proc/stat over the same window: includes everything else running on the host, 10 ms ticks");

    verify_clean(&bench, &cleanup, &rows);
    println!(
        "- cleanup checked: every box cleaned up, no box directory or `box-N` cgroup of the {} isolate ids used, no runbox sandbox, box or cgroup under /sys/fs/cgroup/*/{}, no process or mount under {}, which is removed",
        bench.isolate_ids.borrow().len(),
        bench.prefix,
        bench.base.display()
    );
    println!(
        "- total time of this run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
