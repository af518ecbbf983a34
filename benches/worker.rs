//! Throughput and latency of `runbox worker` on a real redis-server: jobs per second and the
//! p50/p99 time from a job's XADD to its result entry appearing in the results stream, both
//! taken in this process (the results are read with XREAD BLOCK as they come).
//!
//! Cases: `/bin/true`, and a small C program (`gcc -O2 -static`, compiled once) shipped in
//! every job as a file of mode 0755 and run on a `stdin` of numbers whose sum it prints;
//! each with one worker at `--concurrency` 1, 2 and 4, and at 2 with the worker SIGKILLed
//! every 2 s and restarted at once. The bench keeps as many jobs outstanding as the worker's
//! concurrency (a closed loop: a job goes in when a result comes out), so the latency is
//! what one job costs when a slot is free, and jobs/s is what the worker sustains so.
//! Before the counted jobs of a case, a few uncounted ones warm the worker up (its shape's
//! parked spare included).
//!
//! Run as root: `cargo bench --features worker --bench worker` or
//! `cargo bench --features worker --bench worker -- --jobs 50`. Options: `--jobs N` (counted
//! jobs per case, default 200). Needs redis-server and gcc (Debian's redis-server and gcc;
//! test.sh installs both). The worker is the CLI built in release
//! (`cargo build --release --features worker --example runbox`).
//!
//! Every verdict is checked (status, and the sum's output), every job must have exactly one
//! result and nothing may stay pending. Everything the bench creates (the redis-server, the
//! state roots, their cgroups, its scratch directory) is removed at the end, and it asserts
//! that nothing is left.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use serde_json::{json, Value};

use common::images::run_tool;
use common::redis::{pid_of, Redis};
use common::TestEnv;

const GROUP: &str = "bench";

/// The C program of the second case: the sum of the integers on stdin.
const SUM_C: &str = r#"#include <unistd.h>
int main(void) {
    char b[4096], o[32];
    long s = 0, n = 0;
    int in = 0, neg = 0;
    ssize_t r;
    while ((r = read(0, b, sizeof b)) > 0)
        for (ssize_t i = 0; i < r; i++) {
            char c = b[i];
            if (c >= '0' && c <= '9') { n = n * 10 + (c - '0'); in = 1; continue; }
            if (in) s += neg ? -n : n;
            n = 0; in = 0; neg = c == '-';
        }
    if (in) s += neg ? -n : n;
    int k = 31;
    o[k--] = '\n';
    unsigned long u = s < 0 ? -s : s;
    do { o[k--] = '0' + u % 10; u /= 10; } while (u);
    if (s < 0) o[k--] = '-';
    return write(1, o + k + 1, 31 - k) < 0;
}
"#;

/// Command-line options.
struct Opts {
    /// Counted jobs per case.
    jobs: usize,
}

impl Opts {
    /// Parses the options; unknown arguments (cargo passes `--bench`) are ignored.
    fn parse() -> Opts {
        let mut o = Opts { jobs: 200 };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "--jobs" {
                o.jobs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .expect("--jobs N (a positive number)");
            }
        }
        o
    }
}

/// The release CLI with the worker feature, copied into `dir`.
fn build_cli(dir: &Path) -> PathBuf {
    run_tool(
        common::cargo_build()
            .args(["--quiet", "--release", "--features", "worker"])
            .args(["--example", "runbox"]),
    );
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/runbox");
    let built = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("release/examples/runbox"),
        None => built,
    };
    let exe = dir.join("runbox");
    fs::copy(&built, &exe).unwrap();
    exe
}

/// One worker process, restartable; killed when dropped.
struct Worker {
    cmd: Vec<std::ffi::OsString>,
    logs: PathBuf,
    lives: usize,
    child: Option<Child>,
}

impl Worker {
    fn start(&mut self) {
        self.lives += 1;
        let out = fs::File::create(self.logs.join(format!("{}.jsonl", self.lives))).unwrap();
        let err = fs::File::create(self.logs.join(format!("{}.err", self.lives))).unwrap();
        self.child = Some(
            Proc::new(&self.cmd[0])
                .args(&self.cmd[1..])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn runbox worker"),
        );
    }

    fn kill(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM; it must exit within 10 s.
    fn term(&mut self) {
        let mut c = self.child.take().unwrap();
        kill(pid_of(&c), Signal::SIGTERM).unwrap();
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "worker did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "worker exited by itself ({status}): {}",
                fs::read_to_string(self.logs.join(format!("{}.err", self.lives)))
                    .unwrap_or_default()
            );
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lock(w: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() / 3 * 4 + 4);
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for k in 0..4 {
            if k <= c.len() {
                let six = usize::try_from((n >> (18 - 6 * k)) & 63).unwrap();
                s.push(char::from(B64[six]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The thread that SIGKILLs and restarts the worker every 2 s; stopped and joined when
/// dropped.
struct Killer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the jobs of a case run.
struct Program {
    name: &'static str,
    /// The job's fields besides schema_version and id.
    job: Value,
    /// The stdout every verdict must have, if checked.
    stdout: Option<String>,
}

/// One line of the table.
struct Row {
    case: &'static str,
    concurrency: usize,
    kills: usize,
    jobs: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// The nearest-rank percentile `p` of sorted `v`.
fn percentile(v: &[Duration], p: usize) -> Duration {
    let rank = (v.len() * p).div_ceil(100).max(1);
    v[rank - 1]
}

/// One case: a fresh state root, stream and worker; `warmup` uncounted jobs, then `jobs`
/// counted ones, `concurrency` outstanding at a time; with `kills`, the worker SIGKILLed
/// every 2 s and restarted at once.
#[allow(clippy::too_many_arguments)]
fn run_case(
    exe: &Path,
    redis: &Redis,
    scratch: &Path,
    program: &Program,
    concurrency: usize,
    kills: bool,
    jobs: usize,
) -> Row {
    let name = format!(
        "wbench-{}-c{concurrency}{}",
        program.name,
        if kills { "-kills" } else { "" }
    );
    let env = TestEnv::new(&name);
    let stream = format!("jobs:{name}");
    let results_stream = format!("{stream}:results");
    let mut con = redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &stream, GROUP, "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    let logs = scratch.join("logs").join(&name);
    fs::create_dir_all(&logs).unwrap();
    let store = scratch.join("store");
    let mut cmd: Vec<std::ffi::OsString> =
        vec![exe.into(), "--root".into(), env.dir.clone().into()];
    for a in [
        "--cgroup-parent",
        &env.prefix,
        "--image-store",
        store.to_str().unwrap(),
        "worker",
        "--redis",
        &redis.url(),
        "--stream",
        &stream,
        "--group",
        GROUP,
        "--consumer",
        "w",
        "--concurrency",
        &concurrency.to_string(),
    ] {
        cmd.push(a.into());
    }
    let worker = Arc::new(Mutex::new(Worker {
        cmd,
        logs,
        lives: 0,
        child: None,
    }));
    lock(&worker).start();

    let warmup = 2 * concurrency + 2;
    let total = warmup + jobs;
    let mut enqueued: HashMap<String, Instant> = HashMap::new();
    let mut results: HashMap<String, usize> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(jobs);
    let mut last_id = String::from("0-0");
    let mut counted_start: Option<Instant> = None;
    let mut counted_end = Instant::now();
    let enqueue =
        |con: &mut redis::Connection, i: usize, enqueued: &mut HashMap<String, Instant>| {
            let id = format!("{name}-{i}");
            let mut job = program.job.clone();
            job["schema_version"] = json!(1);
            job["id"] = json!(id);
            let text = job.to_string();
            let t = Instant::now();
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("job")
                .arg(&text)
                .query(con)
                .unwrap();
            enqueued.insert(id, t);
        };
    // Warm-up: all in, all out, uncounted.
    for i in 0..warmup {
        enqueue(&mut con, i, &mut enqueued);
    }
    let mut next = warmup;
    // Dropped (stopped and joined) before the worker, even on a panic: the worker is then
    // killed, not left restarting.
    let mut killer = Killer {
        stop: Arc::new(AtomicBool::new(false)),
        handle: None,
    };
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < total {
        if done == warmup && counted_start.is_none() {
            counted_start = Some(Instant::now());
            if kills {
                let (w, flag) = (worker.clone(), killer.stop.clone());
                killer.handle = Some(std::thread::spawn(move || {
                    let mut n: usize = 0;
                    loop {
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_secs(2) {
                            if flag.load(Ordering::Relaxed) {
                                return n;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let mut w = lock(&w);
                        w.kill();
                        w.start();
                        n += 1;
                    }
                }));
            }
            for _ in 0..concurrency.min(total - next) {
                enqueue(&mut con, next, &mut enqueued);
                next += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {done} of {total} results after 10 minutes"
        );
        lock(&worker).assert_alive();
        type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
        let reply: Reply = redis::cmd("XREAD")
            .arg(&[
                "COUNT",
                "100",
                "BLOCK",
                "1000",
                "STREAMS",
                &results_stream,
                &last_id,
            ])
            .query(&mut con)
            .unwrap();
        let now = Instant::now();
        for (_, entries) in reply.unwrap_or_default() {
            for (entry, fields) in entries {
                last_id = entry;
                let field = |k: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == k)
                        .map(|kv| kv[1].clone())
                        .unwrap_or_else(|| panic!("result without {k}: {fields:?}"))
                };
                let id = field("job");
                let verdict: Value = serde_json::from_str(&field("verdict")).unwrap();
                assert_eq!(verdict["status"], "ok", "{id}: {verdict}");
                if let Some(out) = &program.stdout {
                    assert_eq!(verdict["stdout"], out.as_str(), "{id}: {verdict}");
                }
                let seen = results.entry(id.clone()).or_default();
                *seen += 1;
                assert_eq!(*seen, 1, "{id}: a second result");
                let sent = enqueued[&id];
                done += 1;
                let counted: usize = id.rsplit('-').next().unwrap().parse().unwrap();
                if counted >= warmup {
                    latencies.push(now - sent);
                    counted_end = now;
                    if next < total {
                        enqueue(&mut con, next, &mut enqueued);
                        next += 1;
                    }
                }
            }
        }
    }
    killer.stop.store(true, Ordering::Relaxed);
    let kill_count = killer.handle.take().map_or(0, |k| k.join().unwrap());
    // Acks follow publishes.
    let t = Instant::now();
    loop {
        let v: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(&[&stream, GROUP])
            .query(&mut con)
            .unwrap();
        if matches!(v.first(), Some(redis::Value::Int(0))) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: still pending: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let entries: usize = redis::cmd("XLEN")
        .arg(&results_stream)
        .query(&mut con)
        .unwrap();
    assert_eq!(entries, total, "{name}: results stream length");
    // The worker deletes a sandbox just after publishing its result: let it finish.
    let t = Instant::now();
    while !(env.root.list().is_ok_and(|l| l.is_empty())
        && fs::read_dir(env.dir.join(".jobs")).map_or(true, |mut rd| rd.next().is_none()))
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name}: sandboxes left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut worker = Arc::try_unwrap(worker)
        .unwrap_or_else(|_| panic!("worker still shared"))
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    worker.term();
    drop(worker);
    let _: () = redis::cmd("DEL")
        .arg(&[&stream, &results_stream])
        .query(&mut con)
        .unwrap();
    env.root.release_spares();
    env.wait_for_monitors();
    let gc = env.root.gc();
    assert!(gc.errors.is_empty(), "{name}: gc: {:?}", gc.errors);
    if !gc.removed.is_empty() || !gc.cleaned.is_empty() {
        eprintln!("{name}: gc collected {:?} {:?}", gc.removed, gc.cleaned);
    }
    env.finish();
    latencies.sort();
    let elapsed = counted_end - counted_start.unwrap();
    let row = Row {
        case: program.name,
        concurrency,
        kills: kill_count,
        jobs,
        per_sec: jobs as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
    };
    eprintln!(
        "{name}: {:.1} jobs/s, p50 {:.1} ms, p99 {:.1} ms, {} kills",
        row.per_sec,
        ms(row.p50),
        ms(row.p99),
        row.kills
    );
    row
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    common::require_root();
    let opts = Opts::parse();
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("worker-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let date = run_tool(Proc::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let date = date.trim();
    let load_before = loadavg();

    let exe = build_cli(&scratch);
    fs::write(scratch.join("sum.c"), SUM_C).unwrap();
    run_tool(
        Proc::new("gcc")
            .args(["-O2", "-static", "-s", "-o"])
            .arg(scratch.join("sum"))
            .arg(scratch.join("sum.c")),
    );
    let sum = fs::read(scratch.join("sum")).unwrap();
    let numbers: Vec<String> = (1..=1000).map(|i| i.to_string()).collect();
    let programs = [
        Program {
            name: "true",
            job: json!({"program": "/bin/true", "wall_time": 30}),
            stdout: None,
        },
        Program {
            name: "sum",
            job: json!({
                "program": "/work/sum",
                "stdin": numbers.join(" ") + "\n",
                "files": [{"path": "/work/sum", "content_base64": base64(&sum), "mode": 0o755}],
                "wall_time": 30,
            }),
            stdout: Some("500500\n".into()),
        },
    ];

    let mut redis = Redis::start("bench");
    let mut rows = Vec::new();
    for program in &programs {
        for (concurrency, kills) in [(1, false), (2, false), (4, false), (2, true)] {
            rows.push(run_case(
                &exe,
                &redis,
                &scratch,
                program,
                concurrency,
                kills,
                opts.jobs,
            ));
        }
    }
    redis.stop();

    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "runbox worker: {date}, kernel {}, nproc {nproc}, load average {load_before} before, {} after; sum binary {} KiB",
        kernel.trim(),
        loadavg(),
        sum.len() / 1024,
    );
    println!(
        "(one worker, `--concurrency` jobs outstanding at a time; latency from XADD to the result entry)"
    );
    println!();
    println!("| case | concurrency | kills | jobs | jobs/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.case,
            r.concurrency,
            r.kills,
            r.jobs,
            r.per_sec,
            ms(r.p50),
            ms(r.p99)
        );
    }

    // Nothing left: no process names the scratch directory (the server, the workers, their
    // monitors); each root was checked by TestEnv::finish.
    let scratch_str = scratch.to_string_lossy().into_owned();
    fs::remove_dir_all(&scratch).unwrap();
    let left = common::processes_mentioning(&scratch_str);
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!scratch.exists());
}
