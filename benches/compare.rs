//! Start latency of runbox next to other ways of running `/bin/true` from the same image:
//! a plain fork+exec, bubblewrap, runc and crun (each without and with runbox's seccomp
//! profile, on the OCI bundle runbox itself writes with [`runbox::Root::write_bundle`]).
//!
//! Every run is timed from `std::process::Command::spawn` to a blocking `wait` (for runbox,
//! around `Root::run`, which does the same with its monitor). Runs are interleaved: each round
//! runs every variant once, in an order rotated by one each round. Two modes, each its own
//! table: back to back, and with an idle gap before every start. Then a throughput figure:
//! runs at concurrency 4 for runbox, crun and bubblewrap.
//!
//! Extra rows for reading the others: crun's mount-namespace wrapper alone (crun 1.8 refuses
//! the hybrid cgroup layout without it), and runbox with `spare_monitors(0)`, which does in
//! the timed window the monitor setup that the default root does ahead of the call. And
//! runbox as a grader calling a CLI per run would see it: a fresh `runbox run` process and a
//! fresh `runbox isolate --run` process, each timed from spawn to exit like runc and crun,
//! each starting from the pre-built sandbox its predecessor parked in the state root.
//!
//! Run as root: `cargo bench --bench compare` or
//! `cargo bench --bench compare -- --runs 50 --gap-ms 50`. Options: `--runs N` (default 200
//! counted rounds), `--warmup N` (default 10 rounds, not counted), `--gap-ms MS` (default 50),
//! `--throughput-runs N` (default 200), `--concurrency N` (default 4).
//!
//! Missing runc, crun or bubblewrap are installed from Debian's packages with apt-get. Every
//! bundle, runtime state directory and cgroup the run creates is removed at the end, and the
//! harness asserts that nothing is left.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    apt_get, build_cli, find_tool, first_line, image, loadavg, ms, percentile, prefix_cgroups,
    processes_naming, remove_cgroup_tree, subdirs, wait_until,
};

/// The source name of the state tmpfs the harness mounts.
const TMPFS_SOURCE: &str = "runbox-compare";

/// Puts `dir` on a tmpfs of its own (see [`common::state_on_tmpfs`]). Returns a line for the
/// report.
fn state_on_tmpfs(dir: &Path) -> String {
    format!(
        "{}: every runtime's state lives there",
        common::state_on_tmpfs(dir, TMPFS_SOURCE)
    )
}

/// Unmounts what [`state_on_tmpfs`] mounted (nothing if it mounted nothing).
fn unmount_state_tmpfs(dir: &Path) {
    common::unmount_state_tmpfs(dir, TMPFS_SOURCE);
}

/// The script in crun's wrapper: a private mount namespace where an empty tmpfs hides the
/// (empty) cgroup2 mount, so crun 1.8 sees a plain cgroup v1 layout instead of refusing the
/// hybrid one. `$0` is the program to exec, the rest its arguments.
const CRUN_WRAPPER: &str = "mount -t tmpfs none /sys/fs/cgroup/unified && exec \"$0\" \"$@\"";

/// Command-line options.
#[derive(Debug, Clone)]
struct Opts {
    /// Counted rounds per mode.
    runs: usize,
    /// Rounds before the counted ones, per mode.
    warmup: usize,
    /// Idle time before each start in the gap mode.
    gap: Duration,
    /// Runs per variant in the throughput measurement.
    throughput_runs: usize,
    /// Threads in the throughput measurement.
    concurrency: usize,
}

impl Opts {
    /// Parses the options; unknown arguments (cargo passes `--bench`) are ignored.
    fn parse() -> Opts {
        let mut o = Opts {
            runs: 200,
            warmup: 10,
            gap: Duration::from_millis(50),
            throughput_runs: 200,
            concurrency: 4,
        };
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
                "--runs" => o.runs = num("--runs"),
                "--warmup" => o.warmup = num("--warmup"),
                "--gap-ms" => o.gap = Duration::from_millis(num("--gap-ms") as u64),
                "--throughput-runs" => o.throughput_runs = num("--throughput-runs"),
                "--concurrency" => o.concurrency = num("--concurrency"),
                "--bench" => {}
                other => eprintln!("compare: ignoring argument {other:?}"),
            }
        }
        assert!(o.runs > 0, "--runs must be at least 1");
        assert!(o.concurrency > 0, "--concurrency must be at least 1");
        assert!(
            o.throughput_runs >= o.concurrency,
            "--throughput-runs below --concurrency"
        );
        o
    }
}

/// One way of running `/bin/true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `<image>/bin/true` exec'd directly on the host.
    ForkExec,
    /// bubblewrap with every namespace unshared, the image as a read-only root.
    Bwrap,
    /// `runc run` on runbox's bundle.
    Runc {
        /// Keep runbox's `linux.seccomp` section.
        seccomp: bool,
    },
    /// `crun run` on runbox's bundle, inside the mount-namespace wrapper.
    Crun {
        /// Keep runbox's `linux.seccomp` section.
        seccomp: bool,
    },
    /// The crun wrapper alone, exec'ing `<image>/bin/true` instead of crun.
    CrunWrapper,
    /// `crun --cgroup-manager=disabled run` with no wrapper: no cgroups at all.
    CrunNoCgroups,
    /// `runbox::Root::run`, in process, with the default options (one spare monitor kept
    /// ready: forked, detached, seccomp compiled, mount namespace entered before the call).
    Runbox,
    /// `runbox::Root::run` on a root with `spare_monitors(0)`: every start execs a monitor
    /// and does all of its setup inside the timed window, as runc and crun do.
    RunboxNoSpare,
    /// `runbox::Root::run` on a root keeping one spare monitor per throughput thread, as the
    /// README advises a grader with N workers (throughput only).
    RunboxPool,
    /// `runbox::Root::run` with the image as a stored image (imported from an OCI layout of
    /// one layer): the store's lock, record and config read and the pin written on each run.
    RunboxStored,
    /// A fresh `runbox run --image IMAGE /bin/true` process (the CLI example, release build),
    /// which starts from the pre-built sandbox the previous one parked in the state root.
    RunboxCli,
    /// A fresh `runbox isolate -b 0 --run -- /bin/true` process on an initialized box (the
    /// host-based image, as isolate's), likewise.
    IsolateCli,
}

impl Variant {
    /// The row label.
    fn label(self) -> &'static str {
        match self {
            Variant::ForkExec => "fork+exec (host, no isolation)",
            Variant::Bwrap => "bwrap --unshare-all",
            Variant::Runc { seccomp: false } => "runc, no seccomp",
            Variant::Runc { seccomp: true } => "runc + seccomp",
            Variant::Crun { seccomp: false } => "crun, no seccomp (incl. wrapper)",
            Variant::Crun { seccomp: true } => "crun + seccomp (incl. wrapper)",
            Variant::CrunWrapper => "crun's wrapper alone (unshare -m + sh + mount + exec true)",
            Variant::CrunNoCgroups => "crun --cgroup-manager=disabled, no wrapper (NO cgroups)",
            Variant::Runbox => "runbox (Root::run, defaults: seccomp on, 1 spare monitor)",
            Variant::RunboxNoSpare => "runbox, spare_monitors(0)",
            Variant::RunboxPool => "runbox (Root::run, one spare monitor per thread)",
            Variant::RunboxStored => "runbox (Root::run, stored image of 1 layer)",
            Variant::RunboxCli => "runbox run (fresh CLI process, parked spare)",
            Variant::IsolateCli => "runbox isolate --run (fresh CLI process, parked spare)",
        }
    }
}

/// Where a tool lives.
#[derive(Debug, Clone)]
struct Tools {
    /// runc.
    runc: PathBuf,
    /// crun.
    crun: PathBuf,
    /// bubblewrap.
    bwrap: PathBuf,
    /// util-linux unshare, for crun's wrapper.
    unshare: PathBuf,
    /// The shell of crun's wrapper.
    sh: PathBuf,
}

/// Everything a run needs: paths, the runbox root and command, the bundle template.
struct Bench {
    /// `runbox-compare-<pid>`: the cgroup prefix of every run and the name of `base`.
    prefix: String,
    /// `/run/runbox-compare-<pid>`: holds the runbox root, runtime state and bundles.
    base: PathBuf,
    /// The busybox image.
    image: PathBuf,
    /// The other runtimes.
    tools: Tools,
    /// runbox's state root, `<base>/runbox`, default options.
    root: runbox::Root,
    /// A second state root, `<base>/runbox-nospare`, with no spare monitor.
    root_nospare: runbox::Root,
    /// `<base>/runbox-pool`, one spare monitor per throughput thread.
    root_pool: runbox::Root,
    /// `<base>/runbox-stored`, default options, its image store at `<base>/images`.
    root_stored: runbox::Root,
    /// The CLI example (release build), for the fresh-process rows; its state roots are
    /// `<base>/runbox-cli` and `<base>/runbox-isolate`.
    cli: PathBuf,
    /// `/bin/true` of the image.
    cmd: runbox::Command,
    /// `/bin/true` of the image as the stored image `bench`.
    cmd_stored: runbox::Command,
    /// runbox's `config.json`, as written by `Root::write_bundle`.
    template: Value,
    /// Counter for unique container ids.
    next_id: AtomicU64,
}

/// What one timed run gave: its latency, and for runbox how long its monitor's cleanup went
/// on after the verdict (not part of the latency).
struct Sample {
    /// Spawn to wait (runbox: the call to `Root::run`).
    latency: Duration,
    /// runbox only: from `run` returning until its sandbox directory was gone.
    cleanup_tail: Option<Duration>,
}

impl Bench {
    /// runc's `--root`.
    fn runc_state(&self) -> PathBuf {
        self.base.join("runc")
    }

    /// crun's `--root`.
    fn crun_state(&self) -> PathBuf {
        self.base.join("crun")
    }

    /// Where the per-run bundles go.
    fn bundles(&self) -> PathBuf {
        self.base.join("bundles")
    }

    /// Whether runbox's bundle has a `linux.seccomp` section.
    fn has_seccomp(&self) -> bool {
        self.template["linux"]
            .get("seccomp")
            .is_some_and(|s| !s.is_null())
    }

    /// Writes a bundle for one run: a unique id, its own cgroup, seccomp kept or removed.
    fn bundle(&self, runtime: &str, seccomp: bool) -> (String, PathBuf) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{runtime}-{n}");
        let dir = self.bundles().join(&id);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut cfg = self.template.clone();
        cfg["linux"]["cgroupsPath"] = Value::String(format!("/{}/{id}", self.prefix));
        cfg["process"]["terminal"] = Value::Bool(false);
        if !seccomp {
            cfg["linux"]
                .as_object_mut()
                .expect("linux is an object")
                .remove("seccomp");
        }
        fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap())
            .expect("write config.json");
        (id, dir)
    }

    /// The process for one run of `v` (not runbox), and the bundle it uses, if any.
    fn process(&self, v: Variant) -> (Proc, Option<PathBuf>) {
        let t = &self.tools;
        let true_bin = self.image.join("bin/true");
        match v {
            Variant::ForkExec => (Proc::new(&true_bin), None),
            Variant::Bwrap => {
                let mut c = Proc::new(&t.bwrap);
                c.args(["--unshare-all", "--die-with-parent", "--ro-bind"])
                    .arg(&self.image)
                    .args(["/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
                    .arg("/bin/true");
                (c, None)
            }
            Variant::Runc { seccomp } => {
                let (id, dir) = self.bundle("runc", seccomp);
                let mut c = Proc::new(&t.runc);
                c.arg("--root")
                    .arg(self.runc_state())
                    .args(["run", "--bundle"])
                    .arg(&dir)
                    .arg(id);
                (c, Some(dir))
            }
            Variant::Crun { seccomp } => {
                let (id, dir) = self.bundle("crun", seccomp);
                let mut c = self.crun_wrapper(&t.crun);
                c.arg("--root")
                    .arg(self.crun_state())
                    .args(["run", "--bundle"])
                    .arg(&dir)
                    .arg(id);
                (c, Some(dir))
            }
            Variant::CrunWrapper => (self.crun_wrapper(&true_bin), None),
            Variant::CrunNoCgroups => {
                let (id, dir) = self.bundle("crunnocg", false);
                let mut c = Proc::new(&t.crun);
                c.arg("--cgroup-manager=disabled")
                    .arg("--root")
                    .arg(self.crun_state())
                    .args(["run", "--bundle"])
                    .arg(&dir)
                    .arg(id);
                (c, Some(dir))
            }
            Variant::RunboxCli => {
                let mut c = Proc::new(&self.cli);
                c.arg("--root")
                    .arg(self.base.join("runbox-cli"))
                    .args(["--cgroup-parent", &self.prefix, "run", "--image"])
                    .arg(&self.image)
                    .arg("/bin/true");
                (c, None)
            }
            Variant::IsolateCli => {
                let mut c = Proc::new(&self.cli);
                c.args(["isolate", "-b", "0", "--run", "--", "/bin/true"])
                    .env("RUNBOX_ROOT", self.base.join("runbox-isolate"))
                    .env("RUNBOX_CGROUP_PARENT", &self.prefix);
                (c, None)
            }
            Variant::Runbox
            | Variant::RunboxNoSpare
            | Variant::RunboxPool
            | Variant::RunboxStored => {
                unreachable!("runbox runs in process")
            }
        }
    }

    /// `unshare -m --propagation private sh -c '<mount tmpfs> && exec PROGRAM ARGS…'`; the
    /// caller appends the arguments.
    fn crun_wrapper(&self, program: &Path) -> Proc {
        let mut c = Proc::new(&self.tools.unshare);
        c.args(["-m", "--propagation", "private"])
            .arg(&self.tools.sh)
            .args(["-c", CRUN_WRAPPER])
            .arg(program);
        c
    }

    /// One timed run of `v`; `Err` with what the program said if it failed.
    fn run(&self, v: Variant) -> Result<Sample, String> {
        if let Some(root) = self.runbox_root(v) {
            let cmd = if v == Variant::RunboxStored {
                &self.cmd_stored
            } else {
                &self.cmd
            };
            return run_runbox(root, cmd);
        }
        let (mut cmd, bundle) = self.process(v);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let status = child.wait().map_err(|e| format!("wait {cmd:?}: {e}"))?;
        let latency = t.elapsed();
        if let Some(dir) = bundle {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        }
        if !status.success() {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return Err(format!("{cmd:?} ended with {status}: {}", err.trim()));
        }
        Ok(Sample {
            latency,
            cleanup_tail: None,
        })
    }

    /// The runbox root of a runbox variant; `None` for the others.
    fn runbox_root(&self, v: Variant) -> Option<&runbox::Root> {
        match v {
            Variant::Runbox => Some(&self.root),
            Variant::RunboxNoSpare => Some(&self.root_nospare),
            Variant::RunboxPool => Some(&self.root_pool),
            Variant::RunboxStored => Some(&self.root_stored),
            _ => None,
        }
    }
}

/// Imports `image` into `root`'s image store as `bench`: one uncompressed layer (its tree,
/// symlinks kept) in an OCI layout written at `layout`.
fn import_image(image: &Path, root: &runbox::Root, layout: &Path) {
    use sha2::{Digest, Sha256};
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", image).expect("tar the image");
    let layer = builder.into_inner().expect("finish the tar");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create the layout");
    let put = |bytes: &[u8]| {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).expect("write a blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}});
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]});
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "bench"}}]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    root.image_store()
        .expect("open the image store")
        .import(layout, None, &mut |_| {})
        .expect("import the bench image");
}

/// One `Root::run`, then (untimed) waits until its monitor has removed the sandbox, so
/// that its cleanup does not run into the next variant's measurement.
fn run_runbox(root: &runbox::Root, cmd: &runbox::Command) -> Result<Sample, String> {
    let t = Instant::now();
    let verdict = root.run(cmd).map_err(|e| format!("runbox: {e}"))?;
    let latency = t.elapsed();
    if verdict.status != runbox::Status::Ok {
        return Err(format!("runbox verdict: {verdict:?}"));
    }
    let dir = root.dir().join(&verdict.id);
    let gone = wait_until(Duration::from_secs(20), || !dir.exists());
    let tail = t.elapsed() - latency;
    if !gone {
        return Err(format!(
            "runbox left {} for 20 s after the verdict",
            dir.display()
        ));
    }
    Ok(Sample {
        latency,
        cleanup_tail: Some(tail),
    })
}

/// Installs whatever of runc, crun and bubblewrap is missing; returns the tools' paths and
/// the packages installed.
fn ensure_tools() -> (Tools, Vec<&'static str>) {
    let wanted = [("runc", "runc"), ("crun", "crun"), ("bwrap", "bubblewrap")];
    let missing: Vec<&'static str> = wanted
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|&(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        println!("installing from Debian's packages: {}", missing.join(", "));
        let mut install = vec!["install", "-y", "-q"];
        install.extend(&missing);
        if !apt_get(&install) {
            assert!(apt_get(&["update", "-q"]), "apt-get update failed");
            assert!(apt_get(&install), "apt-get install {missing:?} failed");
        }
    }
    let get = |name: &str| find_tool(name).unwrap_or_else(|| panic!("{name} not found"));
    (
        Tools {
            runc: get("runc"),
            crun: get("crun"),
            bwrap: get("bwrap"),
            unshare: get("unshare"),
            sh: get("sh"),
        },
        missing,
    )
}

/// Interleaved measurement of `variants`: `warmup + runs` rounds, each running every variant
/// once, the order rotated by one each round; `gap` is slept before every start.
fn measure(
    bench: &Bench,
    variants: &[Variant],
    runs: usize,
    warmup: usize,
    gap: Option<Duration>,
) -> Vec<Vec<Sample>> {
    let n = variants.len();
    let mut out: Vec<Vec<Sample>> = (0..n).map(|_| Vec::with_capacity(runs)).collect();
    for round in 0..warmup + runs {
        for k in 0..n {
            let i = (round + k) % n;
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
            let s = bench
                .run(variants[i])
                .unwrap_or_else(|e| panic!("{} failed: {e}", variants[i].label()));
            if round >= warmup {
                out[i].push(s);
            }
        }
    }
    out
}

/// Prints one mode's Markdown table, and the notes on crun's wrapper and runbox's cleanup.
fn print_table(title: &str, variants: &[Variant], samples: &[Vec<Sample>]) {
    let sorted: Vec<Vec<Duration>> = samples
        .iter()
        .map(|s| {
            let mut v: Vec<Duration> = s.iter().map(|x| x.latency).collect();
            v.sort();
            v
        })
        .collect();
    let median_of = |v: Variant| {
        variants
            .iter()
            .position(|&x| x == v)
            .map(|i| percentile(&sorted[i], 0.5))
    };
    let base = median_of(Variant::Runbox).expect("runbox is measured");
    println!();
    println!("### {title} ({} counted runs per variant)", sorted[0].len());
    println!();
    println!("| variant | median (ms) | p90 (ms) | p99 (ms) | median / runbox median |");
    println!("|---|---|---|---|---|");
    for (v, s) in variants.iter().zip(&sorted) {
        let med = percentile(s, 0.5);
        println!(
            "| {} | {} | {} | {} | {:.2} |",
            v.label(),
            ms(med),
            ms(percentile(s, 0.9)),
            ms(percentile(s, 0.99)),
            med.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!();
    if let Some(w) = median_of(Variant::CrunWrapper) {
        for seccomp in [false, true] {
            if let Some(c) = median_of(Variant::Crun { seccomp }) {
                println!(
                    "- {}: median {} ms, of which the wrapper's median is {} ms: crun itself about {} ms",
                    Variant::Crun { seccomp }.label(),
                    ms(c),
                    ms(w),
                    ms(c.saturating_sub(w))
                );
            }
        }
    }
    for (i, v) in variants.iter().enumerate() {
        if !matches!(
            v,
            Variant::Runbox | Variant::RunboxNoSpare | Variant::RunboxPool | Variant::RunboxStored
        ) {
            continue;
        }
        let mut tails: Vec<Duration> = samples[i].iter().filter_map(|s| s.cleanup_tail).collect();
        tails.sort();
        if !tails.is_empty() {
            println!(
                "- {}: the verdict comes before the monitor's cleanup (unmount, cgroup, state \
                 dir), which went on for a median {} ms (p90 {} ms) after `run` returned; not \
                 counted above (the runc and crun rows include their delete); the harness waits \
                 for it untimed before the next start",
                v.label(),
                ms(percentile(&tails, 0.5)),
                ms(percentile(&tails, 0.9))
            );
        }
    }
}

/// `total` runs of `v` split over `threads` threads, each running back to back. Returns the
/// wall time (for runbox, until the last sandbox's cleanup is done) and every run's latency.
fn throughput(
    bench: &Bench,
    v: Variant,
    total: usize,
    threads: usize,
) -> (Duration, Vec<Duration>) {
    let t = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let n = total / threads + usize::from(k < total % threads);
                s.spawn(move || {
                    (0..n)
                        .map(|_| {
                            let r = if let Some(root) = bench.runbox_root(v) {
                                // No per-run wait for the cleanup: it overlaps the next runs.
                                let t = Instant::now();
                                let verdict = root.run(&bench.cmd);
                                let d = t.elapsed();
                                match verdict {
                                    Ok(vd) if vd.status == runbox::Status::Ok => Ok(d),
                                    other => Err(format!("{other:?}")),
                                }
                            } else {
                                bench.run(v).map(|s| s.latency)
                            };
                            r.unwrap_or_else(|e| panic!("{} failed: {e}", v.label()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("throughput thread"))
            .collect()
    });
    if let Some(root) = bench.runbox_root(v) {
        let ok = wait_until(Duration::from_secs(30), || {
            root.list().is_ok_and(|l| l.is_empty())
        });
        assert!(ok, "runbox sandboxes left 30 s after the throughput runs");
    }
    let wall = t.elapsed();
    lat.sort();
    (wall, lat)
}

/// Container ids a runtime still lists in its state directory (`<runtime> --root STATE list`).
fn runtime_ids(runtime: &Path, state: &Path) -> Result<Vec<String>, String> {
    if !state.exists() {
        return Ok(Vec::new());
    }
    let out = Proc::new(runtime)
        .arg("--root")
        .arg(state)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", runtime.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --root {} list -q: {}: {}",
            runtime.display(),
            state.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Best-effort removal of everything the run created (on success and when unwinding).
struct Cleanup {
    /// The cgroup prefix.
    prefix: String,
    /// The state directory.
    base: PathBuf,
    /// The runtimes, to delete containers they still list.
    tools: Tools,
}

impl Cleanup {
    /// Removes containers, bundles, state and cgroups; idempotent.
    fn sweep(&self) {
        let t = &self.tools;
        for (rt, dir) in [(&t.runc, "runc"), (&t.crun, "crun")] {
            let state = self.base.join(dir);
            for id in runtime_ids(rt, &state).unwrap_or_default() {
                let _ = Proc::new(rt)
                    .arg("--root")
                    .arg(&state)
                    .args(["delete", "--force", &id])
                    .stdin(Stdio::null())
                    .status();
            }
        }
        // runbox's monitors remove their own sandboxes shortly after the verdict; gc takes
        // what a dead monitor left.
        let dirs = [
            "runbox",
            "runbox-nospare",
            "runbox-pool",
            "runbox-cli",
            "runbox-isolate",
        ];
        for dir in dirs.map(|d| self.base.join(d)) {
            if !dir.is_dir() {
                continue;
            }
            if let Ok(root) = runbox::RootOptions::new()
                .cgroup_prefix(self.prefix.clone())
                .open(&dir)
            {
                wait_until(Duration::from_secs(20), || {
                    root.list().is_ok_and(|l| l.is_empty())
                });
                root.release_spares();
                let _ = fs::remove_dir_all(dir.join(".boxes"));
                let report = root.gc();
                if !report.errors.is_empty() {
                    eprintln!("compare: runbox gc: {:?}", report.errors);
                }
            }
        }
        for dir in prefix_cgroups(&self.prefix) {
            for e in remove_cgroup_tree(&dir) {
                eprintln!("compare: {e}");
            }
        }
        unmount_state_tmpfs(&self.base);
        if self.base.exists() {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compare: failed; removing what the run created");
            self.sweep();
        }
    }
}

/// Asserts that no runtime state, bundle, sandbox or cgroup is left, removing the empty
/// prefix cgroups and the state directory on the way.
fn verify_clean(bench: &Bench, cleanup: &Cleanup) {
    let t = &bench.tools;
    assert_eq!(
        runtime_ids(&t.runc, &bench.runc_state()),
        Ok(Vec::new()),
        "runc state left"
    );
    assert_eq!(
        runtime_ids(&t.crun, &bench.crun_state()),
        Ok(Vec::new()),
        "crun state left"
    );
    let left = subdirs(&bench.bundles());
    assert!(left.is_empty(), "bundles left: {left:?}");
    // The CLI rows' roots: their last runs' parked spares go, and the box.
    let isolate_cleanup = Proc::new(&bench.cli)
        .args(["isolate", "-b", "0", "--cleanup"])
        .env("RUNBOX_ROOT", bench.base.join("runbox-isolate"))
        .env("RUNBOX_CGROUP_PARENT", &bench.prefix)
        .status()
        .expect("isolate --cleanup");
    assert!(isolate_cleanup.success(), "isolate --cleanup failed");
    let cli_roots: Vec<runbox::Root> = ["runbox-cli", "runbox-isolate"]
        .iter()
        .map(|d| {
            runbox::RootOptions::new()
                .cgroup_prefix(bench.prefix.clone())
                .spare_monitors(0)
                .open(bench.base.join(d))
                .expect("open a CLI row's state root")
        })
        .collect();
    for root in [
        &bench.root,
        &bench.root_nospare,
        &bench.root_pool,
        &bench.root_stored,
    ]
    .into_iter()
    .chain(&cli_roots)
    {
        let ok = wait_until(Duration::from_secs(20), || {
            root.list().is_ok_and(|l| l.is_empty())
        });
        assert!(
            ok,
            "runbox sandboxes left in {}: {:?}",
            root.dir().display(),
            root.list()
                .map(|l| l.iter().map(|x| x.id.clone()).collect::<Vec<_>>())
        );
        // The spare monitor exits once its request socket is closed.
        root.release_spares();
    }
    common::remove_prefix_cgroups(&bench.prefix);
    let ok = wait_until(Duration::from_secs(10), || {
        processes_naming(&bench.base).is_empty()
    });
    assert!(
        ok,
        "processes still name {}: {:?}",
        bench.base.display(),
        processes_naming(&bench.base)
    );
    unmount_state_tmpfs(&bench.base);
    fs::remove_dir_all(&bench.base)
        .unwrap_or_else(|e| panic!("remove {}: {e}", bench.base.display()));
    cleanup.sweep();
    assert!(!bench.base.exists(), "{} left", bench.base.display());
}

/// Sets up, measures both modes and throughput, prints Markdown, checks the cleanup.
fn main() {
    runbox::monitor_main();
    let opts = Opts::parse();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs real containers: run as root"
    );
    let load_at_start = loadavg();
    let started = Instant::now();

    let (tools, installed) = ensure_tools();
    let image = image();
    let pid = std::process::id();
    let prefix = format!("runbox-compare-{pid}");
    let base = PathBuf::from(format!("/run/{prefix}"));
    let cleanup = Cleanup {
        prefix: prefix.clone(),
        base: base.clone(),
        tools: tools.clone(),
    };
    fs::create_dir_all(&base).expect("create the state directory");
    let state_fs = state_on_tmpfs(&base);
    for d in ["bundles", "runc", "crun", "template"] {
        fs::create_dir_all(base.join(d)).expect("create the state directories");
    }
    let root = runbox::RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .open(base.join("runbox"))
        .expect("open the runbox state root");
    let root_nospare = runbox::RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .spare_monitors(0)
        .open(base.join("runbox-nospare"))
        .expect("open the second runbox state root");
    let root_pool = runbox::RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .spare_monitors(opts.concurrency)
        .open(base.join("runbox-pool"))
        .expect("open the third runbox state root");
    let root_stored = runbox::RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .image_store(base.join("images"))
        .open(base.join("runbox-stored"))
        .expect("open the fourth runbox state root");
    import_image(&image, &root_stored, &base.join("layout"));
    let mut cmd_stored = runbox::Command::new("/bin/true");
    cmd_stored.stored_image("bench");
    let cli = build_cli();
    let init = Proc::new(&cli)
        .args(["isolate", "-b", "0", "--init"])
        .env("RUNBOX_ROOT", base.join("runbox-isolate"))
        .env("RUNBOX_CGROUP_PARENT", &prefix)
        .stdout(Stdio::null())
        .status()
        .expect("runbox isolate --init");
    assert!(init.success(), "runbox isolate --init failed");
    let mut cmd = runbox::Command::new("/bin/true");
    cmd.image(&image);
    root.write_bundle(&cmd, &base.join("template"))
        .expect("runbox write_bundle");
    let template: Value =
        serde_json::from_slice(&fs::read(base.join("template/config.json")).unwrap()).unwrap();
    fs::remove_dir_all(base.join("template")).unwrap();

    let bench = Bench {
        prefix,
        base,
        image,
        tools,
        root,
        root_nospare,
        root_pool,
        root_stored,
        cli,
        cmd,
        cmd_stored,
        template,
        next_id: AtomicU64::new(0),
    };

    // Which variants run here: one probe run each.
    let seccomp = bench.has_seccomp();
    let mut candidates = vec![
        Variant::ForkExec,
        Variant::Bwrap,
        Variant::Runc { seccomp: false },
    ];
    if seccomp {
        candidates.push(Variant::Runc { seccomp: true });
    }
    candidates.push(Variant::Crun { seccomp: false });
    if seccomp {
        candidates.push(Variant::Crun { seccomp: true });
    }
    candidates.extend([
        Variant::CrunWrapper,
        Variant::CrunNoCgroups,
        Variant::RunboxNoSpare,
        Variant::Runbox,
        Variant::RunboxStored,
        Variant::RunboxCli,
        Variant::IsolateCli,
    ]);
    let mut notes = Vec::new();
    notes.push(
        "the runc/crun bundle's root is the image itself, read-only (write_bundle's escape \
         hatch): no overlay and no writable layer, which runbox mounts for every run"
            .to_string(),
    );
    if seccomp {
        let entries = bench.template["linux"]["seccomp"]["syscalls"]
            .as_array()
            .map_or(0, Vec::len);
        notes.push(format!(
            "runbox's `linux.seccomp` profile: {entries} syscall entries, default action {}",
            bench.template["linux"]["seccomp"]["defaultAction"]
        ));
    } else {
        notes.push(
            "runbox's write_bundle put no `linux.seccomp` in config.json: the runc + seccomp and \
             crun + seccomp variants are skipped for lack of a profile"
                .to_string(),
        );
    }
    let mut variants = Vec::new();
    for v in candidates {
        match bench.run(v) {
            Ok(_) => variants.push(v),
            Err(e) if v == Variant::CrunNoCgroups => notes.push(format!(
                "`crun --cgroup-manager=disabled` does not avoid the wrapper: crun checks the \
                 cgroup layout anyway and refuses ({e}); the crun rows keep the wrapper"
            )),
            // The profile is runbox's own and new: a runtime refusing it is reported, not fatal.
            Err(e)
                if matches!(
                    v,
                    Variant::Runc { seccomp: true } | Variant::Crun { seccomp: true }
                ) =>
            {
                notes.push(format!(
                    "{} skipped: the runtime refused runbox's seccomp profile: {e}",
                    v.label()
                ))
            }
            Err(e) => panic!("{} does not run: {e}", v.label()),
        }
    }
    if variants.contains(&Variant::CrunNoCgroups) {
        notes.push(
            "`crun --cgroup-manager=disabled` runs without the wrapper, but creates no cgroup at \
             all (no memory, pids or CPU limit): shown for reference only, the fair crun rows \
             keep the wrapper and the cgroups"
                .to_string(),
        );
    }

    // The header.
    let date = first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let uname = first_line(Path::new("uname"), &["-r"]);
    let nproc = first_line(Path::new("nproc"), &[]);
    println!();
    println!("## runbox vs fork+exec, bubblewrap, runc and crun: `/bin/true` of the busybox image");
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| date | {date} |");
    println!("| kernel (`uname -r`) | {uname} |");
    println!("| nproc | {nproc} |");
    println!(
        "| load avg (1 min) before the run | {load_at_start} (at start), {} (after setup, before measuring) |",
        loadavg()
    );
    println!(
        "| runc | {} |",
        first_line(&bench.tools.runc, &["--version"])
    );
    println!(
        "| crun | {} |",
        first_line(&bench.tools.crun, &["--version"])
    );
    println!(
        "| bwrap | {} |",
        first_line(&bench.tools.bwrap, &["--version"])
    );
    println!(
        "| installed by this run | {} |",
        if installed.is_empty() {
            "nothing".to_string()
        } else {
            installed.join(", ")
        }
    );
    println!("| image | {} |", bench.image.display());
    println!("| state directories | {state_fs} |");
    println!(
        "| rounds | {} counted + {} warm-up per mode, interleaved, order rotated each round |",
        opts.runs, opts.warmup
    );
    println!(
        "| runc/crun bundle | runbox's `write_bundle` config.json; per run: unique id, `linux.cgroupsPath` = `/{}/<id>`, `process.terminal` false{} |",
        bench.prefix,
        if seccomp { "; `linux.seccomp` removed in the no-seccomp rows" } else { "" }
    );
    println!();
    for n in &notes {
        println!("- {n}");
    }

    let b2b = measure(&bench, &variants, opts.runs, opts.warmup, None);
    print_table("Back to back", &variants, &b2b);
    let gap = measure(&bench, &variants, opts.runs, opts.warmup, Some(opts.gap));
    print_table(
        &format!(
            "With an idle gap of {} ms before each start",
            opts.gap.as_millis()
        ),
        &variants,
        &gap,
    );

    let crun_tp = if variants.contains(&Variant::Crun { seccomp: true }) {
        Variant::Crun { seccomp: true }
    } else {
        Variant::Crun { seccomp: false }
    };
    println!();
    println!(
        "### Throughput: {} runs per variant at concurrency {} ({} threads running back to back)",
        opts.throughput_runs, opts.concurrency, opts.concurrency
    );
    println!();
    println!("| variant | runs/s | median (ms) | p99 latency (ms) | wall (s) |");
    println!("|---|---|---|---|---|");
    for v in [
        Variant::Runbox,
        Variant::RunboxPool,
        crun_tp,
        Variant::Bwrap,
    ] {
        // A few untimed runs first, so every variant starts warm.
        throughput(&bench, v, opts.concurrency * 2, opts.concurrency);
        let (wall, lat) = throughput(&bench, v, opts.throughput_runs, opts.concurrency);
        println!(
            "| {} | {:.1} | {} | {} | {:.2} |",
            v.label(),
            opts.throughput_runs as f64 / wall.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            wall.as_secs_f64()
        );
    }
    println!();
    println!("- runbox's throughput wall time runs until its last sandbox's cleanup is done");

    verify_clean(&bench, &cleanup);
    println!(
        "- cleanup checked: no runc/crun state, no bundles, no runbox sandboxes, no cgroups under \
         /sys/fs/cgroup/*/{}, state directory {} removed",
        bench.prefix,
        bench.base.display()
    );
    println!(
        "- total time of this run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
