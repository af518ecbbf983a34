//! Exec and pause latency into an already running container: the anchors runbox's `exec`,
//! `pause` and `resume` are measured against, side by side in one run.
//!
//! Rows (each a [`Row`]: a name, a count and a step that returns the time of one operation):
//! - `runc exec` of `/bin/true` into a container started with `runc run -d` from a bundle
//!   over the busybox test image (`runc spec`, the image as a read-only root, `sleep`), its
//!   own `--root` state directory on a tmpfs, timed from spawn until `runc exec` returns;
//! - `docker exec` of `/bin/true`, with a dockerd the bench starts itself (Debian's
//!   docker.io: `--bridge=none --iptables=false --ip-forward=false`, its own data root,
//!   exec root, pid file, socket, config file and cgroup parent), the image imported from a
//!   tar of the busybox image, the container `docker run -d --network none IMG sleep`;
//! - `podman exec` of `/bin/true` (Debian's podman with `--runtime runc`, since its crun
//!   refuses this host's hybrid cgroups; its own `--root`, `--runroot`, `--tmpdir`, runc
//!   state root (runc given as a script adding `--root`), `--cgroup-manager cgroupfs`,
//!   `podman import`, `--network none`, and `--ulimit` for open files and processes that
//!   runc can set here);
//! - pause and resume of each of the three (`runc pause/resume`, `docker pause/unpause`,
//!   `podman pause/unpause`), each its own row: the pause row times the pause and undoes it
//!   untimed, the resume row pauses untimed and times the resume.
//!
//! Every step of every row is a fresh CLI process timed from spawn to exit, as a user sees it.
//! Rows are interleaved round-robin (each round runs every row that still owes samples, in an
//! order rotated by one each round; a row with fewer runs is spread evenly over the rounds),
//! so load from the rest of the machine hits all rows alike.
//!
//! A tool that cannot be installed or started makes its rows say "unavailable (why)" rather
//! than failing the bench. Missing runc, docker.io or podman are installed from Debian's
//! packages with apt-get. At the end the harness removes the containers, stops dockerd and
//! checks that nothing is left: no runtime state, container, cgroup under the bench's prefix,
//! mount, process naming the bench's directories, directory, or new file in the tools'
//! default places (`/var/lib/docker`, `/run/docker`, `/var/lib/containers/storage`, …).
//!
//! Run as root: `nice cargo bench --bench exec` or
//! `cargo bench --bench exec -- --runs 200 --heavy-runs 50 --warmup 3`. Options: `--runs N`
//! (default 200: the runc rows, and in-process style rows), `--heavy-runs N` (default 50: the
//! docker and podman rows), `--warmup N` (default 3 rounds, not counted).
//!
//! runbox's own rows (`runbox exec (in process)`, `runbox exec (fresh CLI)`,
//! `runbox pause/resume`) are added in [`runbox_rows`].

mod common;

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    ensure_packages, find_tool, first_line, image, is_executable, loadavg, mounts_below, ms,
    percentile, populated_cgroups, prefix_cgroups, processes_naming, remove_cgroup_tree,
    state_on_tmpfs, unmount_state_tmpfs, wait_until,
};

/// The source name of the state tmpfs the harness mounts.
const TMPFS_SOURCE: &str = "runbox-execbench";

/// How long the containers' `sleep` runs: longer than any run of the bench.
const SLEEP_SECONDS: &str = "100000";

/// Places the tools use by default: the bench points every tool elsewhere, and checks that
/// none of these appears during the run.
const DEFAULT_PLACES: &[&str] = &[
    "/var/lib/docker",
    "/run/docker",
    "/run/docker.sock",
    "/run/docker.pid",
    "/etc/docker/key.json",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/containers/storage",
    "/run/containers/storage",
    "/run/libpod",
    "/run/runc",
];

/// What the tools create at fixed paths whatever their options: containerd 1.6's shim
/// sockets (`/run/containerd/s`), dockerd's plugin discovery (`/run/docker/plugins`),
/// directories, deepest first; and podman's shared-memory lock segment
/// (`/dev/shm/libpod_lock`, a file; an earlier run of this bench left one). The harness
/// removes each one that did not exist before the run (directories must be empty by then)
/// and says so.
const FIXED_PLACES: &[&str] = &[
    "/run/containerd/s",
    "/run/containerd",
    "/run/docker/plugins",
    "/run/docker",
    "/dev/shm/libpod_lock",
];

/// Removes the [`FIXED_PLACES`] that were not in `before`; returns those removed.
fn remove_fixed_places(before: &[String]) -> Result<Vec<&'static str>, String> {
    let mut removed = Vec::new();
    for p in FIXED_PLACES {
        if before.iter().any(|b| b == p) || !Path::new(p).exists() {
            continue;
        }
        let removed_it = if Path::new(p).is_dir() {
            fs::remove_dir(p)
        } else {
            fs::remove_file(p)
        };
        removed_it.map_err(|e| format!("remove {p} (created during the run): {e}"))?;
        removed.push(*p);
    }
    Ok(removed)
}

/// Command-line options.
#[derive(Debug, Clone)]
struct Opts {
    /// Counted samples of the light rows (runc; runbox's).
    runs: usize,
    /// Counted samples of the heavy rows (docker, podman).
    heavy_runs: usize,
    /// Rounds before the counted ones.
    warmup: usize,
    /// The tools measured (`--only runbox,runc`); all of them by default.
    only: Option<Vec<String>>,
}

impl Opts {
    /// Parses the options; unknown arguments (cargo passes `--bench`) are ignored.
    fn parse() -> Opts {
        let mut o = Opts {
            runs: 200,
            heavy_runs: 50,
            warmup: 3,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut num = |name: &str| common::option_number(&mut args, name);
            match a.as_str() {
                "--runs" => o.runs = num("--runs"),
                "--heavy-runs" => o.heavy_runs = num("--heavy-runs"),
                "--warmup" => o.warmup = num("--warmup"),
                "--only" => {
                    let v = common::option_value(&mut args, "--only");
                    o.only = Some(v.split(',').map(str::to_string).collect());
                }
                "--bench" => {}
                other => eprintln!("exec: ignoring argument {other:?}"),
            }
        }
        assert!(
            o.runs > 0 && o.heavy_runs > 0,
            "--runs and --heavy-runs must be at least 1"
        );
        o
    }

    /// Whether `tool`'s rows are measured.
    fn wants(&self, tool: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|t| t == tool))
    }
}

/// One timed operation: each call is one sample, the time of the operation alone (any untimed
/// preparation or undo inside the call is not counted). `Err` says what went wrong.
type Step<'a> = Box<dyn FnMut() -> Result<Duration, String> + 'a>;

/// One row of the table.
struct Row<'a> {
    /// The label.
    name: String,
    /// Counted samples.
    runs: usize,
    /// The step, or why the row cannot run here.
    step: Result<Step<'a>, String>,
}

impl<'a> Row<'a> {
    /// A row that runs `step` `runs` times.
    fn new(name: impl Into<String>, runs: usize, step: Step<'a>) -> Row<'a> {
        Row {
            name: name.into(),
            runs,
            step: Ok(step),
        }
    }

    /// A row that cannot run here, and why.
    fn unavailable(name: impl Into<String>, why: impl Into<String>) -> Row<'a> {
        Row {
            name: name.into(),
            runs: 0,
            step: Err(why.into()),
        }
    }
}

/// What the measurement gave for one row.
enum Outcome {
    /// The samples, sorted.
    Measured(Vec<Duration>),
    /// The row could not run here.
    Unavailable(String),
    /// A step failed after this many counted samples.
    Failed(usize, String),
}

/// What every row may use: the image, the bench's directories and cgroup prefix, and a runbox
/// state root under them (for runbox's rows; its cleanup is checked with the rest).
struct Ctx {
    /// The busybox test image (a directory).
    image: PathBuf,
    /// A tar of the image, for `docker import` and `podman import`.
    image_tar: PathBuf,
    /// `runbox-execbench-<pid>`: the cgroup parent of every container.
    prefix: String,
    /// `/run/<prefix>`, a tmpfs: runtime state (runc's root, dockerd's exec root, podman's
    /// runroot, runbox's state root).
    state: PathBuf,
    /// `/var/tmp/<prefix>`, on disk: data roots (dockerd's, podman's storage), logs.
    data: PathBuf,
    /// runbox's state root, `<state>/runbox`, default options, cgroups under `prefix`.
    root: runbox::Root,
    /// What rows registered to run after the measurement, before the leak check (ending the
    /// sandbox they exec into, say); see [`Ctx::on_teardown`].
    teardown: RefCell<Vec<Teardown>>,
}

/// One thing to end after the measurement; `Err` says what went wrong.
type Teardown = Box<dyn FnOnce() -> Result<(), String>>;

impl Ctx {
    /// Registers `f` to run after the measurement, before the leak check; an error there fails
    /// the bench.
    fn on_teardown(&self, f: impl FnOnce() -> Result<(), String> + 'static) {
        self.teardown.borrow_mut().push(Box::new(f));
    }
}

/// Runs a command to completion with no stdin; its stdout if it succeeded, else what it said.
fn run_ok(cmd: &mut Proc) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Times `cmd` from spawn to exit (stdout discarded, stderr kept for the error).
fn timed(mut cmd: Proc) -> Result<Duration, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let status = child.wait().map_err(|e| format!("wait {cmd:?}: {e}"))?;
    let took = t.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            if let Err(e) = s.read_to_string(&mut err) {
                err = format!("(its stderr unreadable: {e})");
            }
        }
        return Err(format!("{cmd:?} ended with {status}: {}", err.trim()));
    }
    Ok(took)
}

/// Checks an exec into a container for real: `/bin/true` succeeds and `/bin/false` fails (so
/// the exit status comes from the program run inside).
fn check_exec(mut exec: impl FnMut(&str) -> Proc) -> Result<(), String> {
    run_ok(&mut exec("/bin/true")).map_err(|e| format!("exec /bin/true: {e}"))?;
    match run_ok(&mut exec("/bin/false")) {
        Ok(_) => Err("exec /bin/false reported success: exit statuses do not come through".into()),
        Err(_) => Ok(()),
    }
}

/// Checks pause and resume for real: `status` reports `paused` after `pause` and `running`
/// after `resume`.
fn check_pause(
    pause: &mut Proc,
    resume: &mut Proc,
    mut status: impl FnMut() -> Result<String, String>,
) -> Result<(), String> {
    run_ok(pause)?;
    let s = status()?;
    if s != "paused" {
        return Err(format!("after pause the container is {s:?}, not paused"));
    }
    run_ok(resume)?;
    let s = status()?;
    if s != "running" {
        return Err(format!("after resume the container is {s:?}, not running"));
    }
    Ok(())
}

/// A runc container running `sleep`, with its own state root.
struct Runc {
    /// runc.
    bin: PathBuf,
    /// `--root`, on the tmpfs.
    root: PathBuf,
    /// The container id.
    id: String,
    /// Deleted already.
    gone: bool,
}

impl Runc {
    /// Writes the bundle, starts the container and checks exec and pause once.
    fn start(ctx: &Ctx) -> Result<Runc, String> {
        let bin = find_tool("runc").ok_or("runc not found")?;
        let root = ctx.state.join("runc");
        let bundle = ctx.state.join("runc-bundle");
        for d in [&root, &bundle] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        run_ok(Proc::new(&bin).args(["spec", "--bundle"]).arg(&bundle))?;
        let path = bundle.join("config.json");
        let mut cfg: Value = serde_json::from_slice(
            &fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?,
        )
        .map_err(|e| format!("parse {}: {e}", path.display()))?;
        cfg["root"] = serde_json::json!({"path": ctx.image, "readonly": true});
        cfg["process"]["terminal"] = Value::Bool(false);
        cfg["process"]["args"] = serde_json::json!(["sleep", SLEEP_SECONDS]);
        cfg["linux"]["cgroupsPath"] = Value::String(format!("/{}/runc", ctx.prefix));
        fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("serialize"))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let mut r = Runc {
            bin,
            root,
            id: "bench".into(),
            gone: true,
        };
        // Detached with no terminal, runc hands its stdio to the container: all null, and
        // its errors go to a log file.
        let log = ctx.data.join("runc.log");
        let status = r
            .cmd(&[])
            .arg("--log")
            .arg(&log)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&r.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("spawn runc run: {e}"))?;
        r.gone = false;
        if !status.success() {
            return Err(format!(
                "runc run -d ended with {status}: {}",
                fs::read_to_string(&log).unwrap_or_default().trim()
            ));
        }
        check_exec(|p| r.exec(p))?;
        check_pause(
            &mut r.cmd(&["pause", &r.id]),
            &mut r.cmd(&["resume", &r.id]),
            || r.status(),
        )?;
        Ok(r)
    }

    /// `runc --root ROOT ARGS…`.
    fn cmd(&self, args: &[&str]) -> Proc {
        let mut c = Proc::new(&self.bin);
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    /// `runc exec ID PROGRAM`.
    fn exec(&self, program: &str) -> Proc {
        self.cmd(&["exec", &self.id, program])
    }

    /// The container's status from `runc state`.
    fn status(&self) -> Result<String, String> {
        let out = run_ok(&mut self.cmd(&["state", &self.id]))?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("runc state: {e}"))?;
        Ok(v["status"].as_str().unwrap_or("?").to_string())
    }

    /// Deletes the container.
    fn stop(&mut self) -> Result<(), String> {
        if self.gone {
            return Ok(());
        }
        self.gone = true;
        run_ok(&mut self.cmd(&["delete", "--force", &self.id])).map(drop)
    }

    /// Container ids runc still lists.
    fn listed(&self) -> Result<Vec<String>, String> {
        Ok(run_ok(&mut self.cmd(&["list", "-q"]))?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// Checks that runc lists no container in the state root `root` (a tool's own), if it exists.
fn runc_root_empty(runc: &Path, root: &Path) -> Result<(), String> {
    if !root.exists() {
        return Ok(());
    }
    let listed = run_ok(Proc::new(runc).arg("--root").arg(root).args(["list", "-q"]))?;
    if listed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "runc still lists in {}: {}",
            root.display(),
            listed.replace('\n', ", ")
        ))
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("exec: runc delete: {e}");
        }
    }
}

/// A dockerd of the bench's own and a container running `sleep` in it.
struct Docker {
    /// The client.
    client: PathBuf,
    /// `unix://<state>/docker.sock`.
    host: String,
    /// The client's own config directory (`DOCKER_CONFIG`).
    config: PathBuf,
    /// The daemon, until stopped.
    dockerd: Option<Child>,
    /// The daemon's log.
    log: PathBuf,
    /// The container id, once running.
    id: Option<String>,
    /// dockerd's and the client's versions, the storage driver.
    about: String,
    /// runc, and the state root dockerd's containerd gives it (`<exec root>/runtime-runc/moby`).
    runc: (PathBuf, PathBuf),
}

/// The image name `docker import` and `podman import` give the busybox tar.
const IMAGE_NAME: &str = "localhost/runbox-execbench:bench";

impl Docker {
    /// Starts dockerd, imports the image, runs the container, checks exec and pause once.
    fn start(ctx: &Ctx) -> Result<Docker, String> {
        let dockerd = find_tool("dockerd").ok_or("dockerd not found")?;
        // The client of the same package as the daemon (a newer static client may sit
        // earlier in PATH).
        let client = ["/usr/bin/docker"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
            .or_else(|| find_tool("docker"))
            .ok_or("the docker client not found")?;
        let data_root = ctx.data.join("docker");
        let exec_root = ctx.state.join("docker");
        let config = ctx.data.join("docker-client");
        for d in [&data_root, &exec_root, &config] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let daemon_json = ctx.data.join("daemon.json");
        // Without a key path, dockerd 20.10 writes its trust key to /etc/docker/key.json.
        let daemon_cfg =
            serde_json::json!({"deprecated-key-path": ctx.data.join("docker-key.json")});
        fs::write(&daemon_json, daemon_cfg.to_string())
            .map_err(|e| format!("write daemon.json: {e}"))?;
        let log = ctx.data.join("dockerd.log");
        let log_file = fs::File::create(&log).map_err(|e| format!("create dockerd.log: {e}"))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("dup dockerd.log: {e}"))?;
        let sock = ctx.state.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let help = Proc::new(&dockerd)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut cmd = Proc::new(&dockerd);
        cmd.args([
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ]);
        if help.contains("--ip6tables") {
            cmd.arg("--ip6tables=false");
        }
        cmd.arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(ctx.state.join("docker.pid"))
            .arg("--config-file")
            .arg(&daemon_json)
            .arg("--cgroup-parent")
            .arg(format!("/{}/docker", ctx.prefix))
            .arg("-H")
            .arg(&host)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd.spawn().map_err(|e| format!("spawn dockerd: {e}"))?;
        let mut d = Docker {
            client,
            host,
            config,
            dockerd: Some(child),
            log,
            id: None,
            about: String::new(),
            runc: (
                find_tool("runc").ok_or("runc not found (dockerd runs it)")?,
                exec_root.join("runtime-runc/moby"),
            ),
        };
        let t = Instant::now();
        loop {
            if run_ok(&mut d.cmd(&["version"])).is_ok() {
                break;
            }
            let exited = d.dockerd.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                d.dockerd = None;
                return Err(format!("dockerd ended with {status}: {}", d.log_tail()));
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "dockerd not answering after 60 s: {}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        d.about = format!(
            "dockerd {}, client {}, storage driver {}",
            run_ok(&mut d.cmd(&["version", "-f", "{{.Server.Version}}"]))?,
            run_ok(&mut d.cmd(&["version", "-f", "{{.Client.Version}}"]))?,
            run_ok(&mut d.cmd(&["info", "-f", "{{.Driver}}"]))?
        );
        run_ok(d.cmd(&["import"]).arg(&ctx.image_tar).arg(IMAGE_NAME))?;
        let id = run_ok(&mut d.cmd(&[
            "run",
            "-d",
            "--network",
            "none",
            IMAGE_NAME,
            "sleep",
            SLEEP_SECONDS,
        ]))?;
        d.id = Some(id);
        check_exec(|p| d.exec(p))?;
        let id = d.id().to_string();
        check_pause(
            &mut d.cmd(&["pause", &id]),
            &mut d.cmd(&["unpause", &id]),
            || run_ok(&mut d.cmd(&["inspect", "-f", "{{.State.Status}}", &id])),
        )?;
        Ok(d)
    }

    /// `docker -H HOST ARGS…` with the bench's client config.
    fn cmd(&self, args: &[&str]) -> Proc {
        let mut c = Proc::new(&self.client);
        c.env("DOCKER_CONFIG", &self.config)
            .arg("-H")
            .arg(&self.host)
            .args(args);
        c
    }

    /// The container id.
    fn id(&self) -> &str {
        self.id.as_deref().expect("the container runs")
    }

    /// `docker exec ID PROGRAM`.
    fn exec(&self, program: &str) -> Proc {
        self.cmd(&["exec", self.id(), program])
    }

    /// The end of dockerd's log.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    /// Removes the container and the image, stops dockerd (SIGTERM, then SIGKILL after 30 s).
    fn stop(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(id) = self.id.take() {
            if let Err(e) = run_ok(&mut self.cmd(&["rm", "-f", &id])) {
                errors.push(e);
            }
            if let Err(e) = run_ok(&mut self.cmd(&["rmi", IMAGE_NAME])) {
                errors.push(e);
            }
        }
        if let Some(mut child) = self.dockerd.take() {
            if let Err(e) = stop_child(&mut child, "dockerd") {
                errors.push(e);
            }
        }
        if let Err(e) = runc_root_empty(&self.runc.0, &self.runc.1) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("exec: stopping docker: {e}");
        }
    }
}

/// Ends a child we started: SIGTERM, up to 30 s for it to exit, then SIGKILL.
fn stop_child(child: &mut Child, what: &str) -> Result<(), String> {
    if child
        .try_wait()
        .map_err(|e| format!("wait {what}: {e}"))?
        .is_some()
    {
        return Err(format!("{what} had exited before it was stopped"));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("SIGTERM {what}: {e}"))?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if child
            .try_wait()
            .map_err(|e| format!("wait {what}: {e}"))?
            .is_some()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().map_err(|e| format!("SIGKILL {what}: {e}"))?;
    child.wait().map_err(|e| format!("wait {what}: {e}"))?;
    Err(format!("{what} ignored SIGTERM for 30 s and was killed"))
}

/// podman with storage and state of its own, and a container running `sleep`.
struct Podman {
    /// podman.
    bin: PathBuf,
    /// The global options every call carries.
    global: Vec<OsString>,
    /// The container id, once running.
    id: Option<String>,
    /// podman's version, its runtime's.
    about: String,
    /// runc, and the state root podman's runc calls use.
    runc: (PathBuf, PathBuf),
}

impl Podman {
    /// Imports the image, runs the container, checks exec and pause once.
    fn start(ctx: &Ctx) -> Result<Podman, String> {
        let bin = find_tool("podman").ok_or("podman not found")?;
        // Debian's podman would pick crun, which refuses the hybrid cgroup layout.
        let runc = find_tool("runc").ok_or("runc not found (podman runs it)")?;
        let dirs = [
            ("--root", ctx.data.join("podman/storage")),
            ("--runroot", ctx.state.join("podman/run")),
            ("--tmpdir", ctx.state.join("podman/tmp")),
            ("--volumepath", ctx.data.join("podman/volumes")),
            ("--network-config-dir", ctx.data.join("podman/networks")),
        ];
        let mut global: Vec<OsString> = Vec::new();
        for (flag, dir) in dirs {
            fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            global.push(flag.into());
            global.push(dir.into());
        }
        // Rootful podman leaves runc at its default state root, /run/runc, and its
        // `--runtime-flag` does not reach the `podman container cleanup` that conmon runs when
        // a container ends: podman runs runc through a two-line script named `runc` that
        // gives it a root of the bench's (one `sh` exec more per runc call).
        let runc_root = ctx.state.join("podman/runc");
        let wrapper_dir = ctx.state.join("podman/bin");
        fs::create_dir_all(&wrapper_dir)
            .map_err(|e| format!("create {}: {e}", wrapper_dir.display()))?;
        let wrapper = wrapper_dir.join("runc");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' --root '{}' \"$@\"\n",
                runc.display(),
                runc_root.display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", wrapper.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", wrapper.display()))?;
        }
        global.push("--runtime".into());
        global.push(wrapper.into());
        for a in [
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--storage-driver",
            "overlay",
        ] {
            global.push(a.into());
        }
        let mut p = Podman {
            bin,
            global,
            id: None,
            about: String::new(),
            runc: (runc.clone(), runc_root),
        };
        p.about = format!(
            "{}, runtime {}",
            run_ok(&mut p.cmd(&["version", "-f", "{{.Client.Version}}"]))?,
            first_line(&runc, &["--version"])
        );
        run_ok(p.cmd(&["import"]).arg(&ctx.image_tar).arg(IMAGE_NAME))?;
        let parent = format!("/{}/podman", ctx.prefix);
        // Rootful podman asks runc for RLIMIT_NOFILE 1048576 (even with `--ulimit host`) and
        // RLIMIT_NPROC above what its conmon has (podman caps its own at pid_max), which runc
        // cannot set without CAP_SYS_RESOURCE, missing from this host's root: the bench's own
        // open-files limit (which dockerd's containers inherit) and podman's own nproc cap.
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(|e| format!("getrlimit: {e}"))?;
        let nofile = format!("nofile={soft}:{hard}");
        let (_, nproc_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
                .map_err(|e| format!("getrlimit: {e}"))?;
        let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .map_err(|e| format!("read pid_max: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("parse pid_max: {e}"))?;
        let nproc = nproc_hard.min(pid_max);
        let nproc = format!("nproc={nproc}:{nproc}");
        let id = run_ok(&mut p.cmd(&[
            "run",
            "-d",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
            "--ulimit",
            &nofile,
            "--ulimit",
            &nproc,
            IMAGE_NAME,
            "sleep",
            SLEEP_SECONDS,
        ]))?;
        p.id = Some(id);
        check_exec(|prog| p.exec(prog))?;
        let id = p.id().to_string();
        check_pause(
            &mut p.cmd(&["pause", &id]),
            &mut p.cmd(&["unpause", &id]),
            || run_ok(&mut p.cmd(&["inspect", "-f", "{{.State.Status}}", &id])),
        )?;
        Ok(p)
    }

    /// `podman GLOBAL… ARGS…`.
    fn cmd(&self, args: &[&str]) -> Proc {
        let mut c = Proc::new(&self.bin);
        c.args(&self.global).args(args);
        c
    }

    /// The container id.
    fn id(&self) -> &str {
        self.id.as_deref().expect("the container runs")
    }

    /// `podman exec ID PROGRAM`.
    fn exec(&self, program: &str) -> Proc {
        self.cmd(&["exec", self.id(), program])
    }

    /// Removes the container and the image, and resets podman's storage (which unmounts it).
    fn stop(&mut self) -> Result<(), String> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        for args in [
            &["rm", "-f", "-t", "0", &id][..],
            &["rmi", "-f", IMAGE_NAME],
            &["system", "reset", "-f"],
        ] {
            if let Err(e) = run_ok(&mut self.cmd(args)) {
                errors.push(e);
            }
        }
        if let Err(e) = runc_root_empty(&self.runc.0, &self.runc.1) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("exec: stopping podman: {e}");
        }
    }
}

/// A pause row's step: the time of `pause`, which it then undoes with `resume` (not
/// counted). Each of the two does its operation and returns its time (a CLI's: [`timed`]).
fn pause_step<'a>(
    mut pause: impl FnMut() -> Result<Duration, String> + 'a,
    mut resume: impl FnMut() -> Result<Duration, String> + 'a,
) -> Step<'a> {
    Box::new(move || {
        let took = pause()?;
        resume()?;
        Ok(took)
    })
}

/// A resume row's step: pauses (not counted), then the time of `resume`.
fn resume_step<'a>(
    mut pause: impl FnMut() -> Result<Duration, String> + 'a,
    mut resume: impl FnMut() -> Result<Duration, String> + 'a,
) -> Step<'a> {
    Box::new(move || {
        pause()?;
        resume()
    })
}

/// The three rows of one tool (exec, pause, resume), or the three saying why not.
fn tool_rows<'a>(
    tool: &str,
    verbs: [&str; 3],
    runs: usize,
    env: &'a Result<impl Tool, String>,
) -> Vec<Row<'a>> {
    let names = verbs.map(|v| format!("{tool} {v}"));
    let [exec_name, pause_name, resume_name] = names;
    match env {
        Ok(t) => vec![
            Row::new(
                format!("{exec_name} /bin/true"),
                runs,
                Box::new(move || timed(t.exec_cmd("/bin/true"))),
            ),
            Row::new(
                pause_name,
                runs,
                pause_step(|| timed(t.pause_cmd()), || timed(t.resume_cmd())),
            ),
            Row::new(
                resume_name,
                runs,
                resume_step(|| timed(t.pause_cmd()), || timed(t.resume_cmd())),
            ),
        ],
        Err(why) => vec![
            Row::unavailable(format!("{exec_name} /bin/true"), why.clone()),
            Row::unavailable(pause_name, why.clone()),
            Row::unavailable(resume_name, why.clone()),
        ],
    }
}

/// The commands of one tool's rows.
trait Tool {
    /// Exec `program` into the running container.
    fn exec_cmd(&self, program: &str) -> Proc;
    /// Pause the container.
    fn pause_cmd(&self) -> Proc;
    /// Resume it.
    fn resume_cmd(&self) -> Proc;
}

impl Tool for Runc {
    fn exec_cmd(&self, program: &str) -> Proc {
        self.exec(program)
    }
    fn pause_cmd(&self) -> Proc {
        self.cmd(&["pause", &self.id])
    }
    fn resume_cmd(&self) -> Proc {
        self.cmd(&["resume", &self.id])
    }
}

impl Tool for Docker {
    fn exec_cmd(&self, program: &str) -> Proc {
        self.exec(program)
    }
    fn pause_cmd(&self) -> Proc {
        self.cmd(&["pause", self.id()])
    }
    fn resume_cmd(&self) -> Proc {
        self.cmd(&["unpause", self.id()])
    }
}

impl Tool for Podman {
    fn exec_cmd(&self, program: &str) -> Proc {
        self.exec(program)
    }
    fn pause_cmd(&self) -> Proc {
        self.cmd(&["pause", self.id()])
    }
    fn resume_cmd(&self) -> Proc {
        self.cmd(&["unpause", self.id()])
    }
}

/// runbox's rows: `runbox exec (in process)`, `runbox exec (fresh CLI)`, `runbox pause`,
/// `runbox resume`, each a [`Row`] over `ctx.root` (its sandboxes' cgroups fall under
/// `ctx.prefix`; the final check wants the root empty). They come with runbox's `exec`,
/// `pause` and `resume`; until then there are none, and the table says so.
///
/// Shape: start the sandbox here (`ctx.root.spawn` of `sleep` on `ctx.image`), share it
/// between the rows' closures (`Rc`), end it with [`Ctx::on_teardown`]; then
/// `Row::new("runbox exec /bin/true (in process)", opts.runs, Box::new(move || { let t =
/// Instant::now(); /* exec, wait for its verdict, check it */ Ok(t.elapsed()) }))`. A
/// fresh-CLI row times the release CLI (`common::build_cli()`) with [`timed`]; pause and resume
/// rows are [`pause_step`] and [`resume_step`] over two closures that each do the operation and
/// return its time (a CLI's through [`timed`], an in-process call's around the call).
fn runbox_rows<'a>(ctx: &'a Ctx, opts: &Opts) -> Vec<Row<'a>> {
    let names = [
        "runbox exec /bin/true (in process)",
        "runbox exec /bin/true (fresh CLI)",
        "runbox pause (in process)",
        "runbox resume (in process)",
        "floor: the image's /bin/true spawned on the host, no sandbox",
        "floor: runbox --version (fresh CLI, no sandbox)",
    ];
    let mut sleeper = runbox::Command::new("/bin/sleep");
    sleeper.arg("100000").image(&ctx.image);
    sleeper.limits_mut().wall_time = None;
    let sandbox = match ctx.root.spawn(&sleeper) {
        Ok(sb) => Rc::new(sb),
        Err(e) => {
            return names
                .iter()
                .map(|n| Row::unavailable(*n, format!("spawn the sandbox: {}", e.chain())))
                .collect()
        }
    };
    let end = Rc::clone(&sandbox);
    ctx.on_teardown(move || {
        let sb = Rc::try_unwrap(end).map_err(|_| "the sandbox handle is still shared")?;
        sb.delete(true)
            .map_err(|e| format!("delete the exec sandbox: {}", e.chain()))
    });
    let cli = common::build_cli();
    let root_dir = ctx.state.join("runbox");
    let id = sandbox.id().to_string();
    let timed_call = |f: &dyn Fn() -> runbox::Result<()>| -> Result<Duration, String> {
        let t = Instant::now();
        f().map_err(|e| e.chain())?;
        Ok(t.elapsed())
    };
    let (p1, r1, p2, r2) = (
        Rc::clone(&sandbox),
        Rc::clone(&sandbox),
        Rc::clone(&sandbox),
        Rc::clone(&sandbox),
    );
    let in_process = Rc::clone(&sandbox);
    vec![
        Row::new(
            names[0],
            opts.runs,
            Box::new(move || {
                let spec = runbox::ProcessSpec::new("/bin/true");
                let t = Instant::now();
                let verdict = in_process
                    .exec(&spec)
                    .and_then(|exec| exec.wait())
                    .map_err(|e| e.chain())?;
                let took = t.elapsed();
                if verdict.status != runbox::Status::Ok || verdict.exit_code != Some(0) {
                    return Err(format!("exec /bin/true: {verdict:?}"));
                }
                Ok(took)
            }),
        ),
        Row::new(
            names[1],
            opts.runs,
            Box::new(move || {
                let mut cmd = Proc::new(&cli);
                cmd.arg("--root")
                    .arg(&root_dir)
                    .args(["exec", &id, "/bin/true"]);
                timed(cmd)
            }),
        ),
        Row::new(
            names[2],
            opts.runs,
            pause_step(
                move || timed_call(&|| p1.pause()),
                move || timed_call(&|| r1.resume()),
            ),
        ),
        Row::new(
            names[3],
            opts.runs,
            resume_step(
                move || timed_call(&|| p2.pause()),
                move || timed_call(&|| r2.resume()),
            ),
        ),
        // What no exec can beat here: the process itself, started, run and reaped by this
        // process, and the CLI's own start (loading the binary, parsing its arguments).
        Row::new(names[4], opts.runs, {
            let bare = ctx.image.join("bin/true");
            Box::new(move || timed(Proc::new(&bare)))
        }),
        Row::new(names[5], opts.runs, {
            let cli = common::build_cli();
            Box::new(move || {
                let mut cmd = Proc::new(&cli);
                cmd.arg("--version");
                timed(cmd)
            })
        }),
    ]
}

/// Interleaved measurement: `warmup` rounds of every available row, then rounds until every
/// row has its count, each round in an order rotated by one; a row with fewer runs than the
/// most is spread evenly over the rounds.
fn measure(rows: &mut [Row<'_>], warmup: usize) -> Vec<Outcome> {
    let n = rows.len();
    let mut samples: Vec<Vec<Duration>> = rows.iter().map(|r| Vec::with_capacity(r.runs)).collect();
    let mut failed: Vec<Option<String>> = vec![None; n];
    let max = rows
        .iter()
        .filter(|r| r.step.is_ok())
        .map(|r| r.runs)
        .max()
        .unwrap_or(0);
    for round in 0..warmup + max {
        for k in 0..n {
            let i = (round + k) % n;
            let runs = rows[i].runs;
            let Ok(step) = rows[i].step.as_mut() else {
                continue;
            };
            if failed[i].is_some() {
                continue;
            }
            let counted = round >= warmup;
            if counted {
                // Row i takes its sample in counted round r when r·runs/max crosses an integer.
                let r = round - warmup;
                if (r + 1) * runs / max == r * runs / max {
                    continue;
                }
            }
            match step() {
                Ok(d) if counted => samples[i].push(d),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("exec: {} failed: {e}", rows[i].name);
                    failed[i] = Some(e);
                }
            }
        }
    }
    rows.iter()
        .zip(samples)
        .zip(failed)
        .map(|((row, mut s), f)| match (&row.step, f) {
            (Err(why), _) => Outcome::Unavailable(why.clone()),
            (Ok(_), Some(e)) => Outcome::Failed(s.len(), e),
            (Ok(_), None) => {
                s.sort();
                Outcome::Measured(s)
            }
        })
        .collect()
}

/// Prints the Markdown table.
fn print_table(rows: &[Row<'_>], outcomes: &[Outcome]) {
    println!();
    println!("| row | runs | median (ms) | p90 (ms) | p99 (ms) | min (ms) |");
    println!("|---|---|---|---|---|---|");
    for (row, o) in rows.iter().zip(outcomes) {
        match o {
            Outcome::Measured(s) => println!(
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                s.len(),
                ms(percentile(s, 0.5)),
                ms(percentile(s, 0.9)),
                ms(percentile(s, 0.99)),
                ms(s[0])
            ),
            Outcome::Unavailable(why) => {
                println!("| {} | 0 | unavailable ({}) | | | |", row.name, cell(why))
            }
            Outcome::Failed(k, e) => {
                println!("| {} | {k} | FAILED ({}) | | | |", row.name, cell(e))
            }
        }
    }
    println!();
}

/// `text` fit for a table cell: one line, `|` escaped, at most 300 characters (the whole
/// message is on stderr).
fn cell(text: &str) -> String {
    let one_line = text.replace('\n', " ").replace('|', "\\|");
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Which of [`DEFAULT_PLACES`], [`FIXED_PLACES`] and the tools' default cgroup parents
/// (`libpod_parent`, `docker` in every hierarchy) exist.
fn default_places_present() -> Vec<String> {
    let mut places: Vec<String> = DEFAULT_PLACES
        .iter()
        .chain(FIXED_PLACES)
        .map(|p| p.to_string())
        .collect();
    for parent in ["libpod_parent", "docker"] {
        places.push(format!("/sys/fs/cgroup/{parent}"));
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            places.extend(
                rd.flatten()
                    .map(|e| e.path().join(parent).display().to_string()),
            );
        }
    }
    places.retain(|p| Path::new(p).exists());
    places
}

/// Best-effort removal of what the run created, when unwinding; the tools' own `Drop`s
/// (which run first) have removed their containers and stopped dockerd.
struct Cleanup {
    /// The cgroup prefix.
    prefix: String,
    /// The tmpfs state directory.
    state: PathBuf,
    /// The data directory.
    data: PathBuf,
    /// Which default and fixed places existed before the run.
    places_before: Vec<String>,
}

impl Cleanup {
    /// Unmounts and removes everything under the bench's directories and its cgroups.
    fn sweep(&self) {
        // runbox's sandboxes: a row's teardown may not have run.
        let runbox_dir = self.state.join("runbox");
        if runbox_dir.is_dir() {
            match runbox::RootOptions::new()
                .cgroup_prefix(self.prefix.clone())
                .spare_monitors(0)
                .open(&runbox_dir)
            {
                Ok(root) => {
                    for l in root.list().unwrap_or_default() {
                        let deleted = root.sandbox(&l.id).and_then(|sb| sb.delete(true));
                        if let Err(e) = deleted {
                            eprintln!("exec: delete runbox sandbox {}: {e}", l.id);
                        }
                    }
                    root.release_spares();
                    let report = root.gc();
                    if !report.errors.is_empty() {
                        eprintln!("exec: runbox gc: {:?}", report.errors);
                    }
                }
                Err(e) => eprintln!("exec: open {}: {e}", runbox_dir.display()),
            }
        }
        for dir in [&self.state, &self.data] {
            for m in mounts_below(dir) {
                if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                    eprintln!("exec: umount {}: {e}", m.display());
                }
            }
        }
        for dir in prefix_cgroups(&self.prefix) {
            for e in remove_cgroup_tree(&dir) {
                eprintln!("exec: {e}");
            }
        }
        unmount_state_tmpfs(&self.state, TMPFS_SOURCE);
        if let Err(e) = remove_fixed_places(&self.places_before) {
            eprintln!("exec: {e}");
        }
        for dir in [&self.state, &self.data] {
            if dir.exists() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    eprintln!("exec: remove {}: {e}", dir.display());
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("exec: failed; removing what the run created");
            self.sweep();
        }
    }
}

/// Asserts that nothing is left: no runc container, runbox sandbox, process naming the
/// bench's directories, mount below them, populated or remaining cgroup under the prefix,
/// directory, or new default place of a tool; removes the prefix cgroups and the directories
/// on the way. The tools have been stopped already.
fn verify_clean(
    ctx: &Ctx,
    runc_left: Option<Vec<String>>,
    places_before: &[String],
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(left) = runc_left {
        assert!(left.is_empty(), "runc containers left: {left:?}");
        notes.push(
            "no runc state root lists a container (the runc rows', and dockerd's and podman's as they stopped)"
                .to_string(),
        );
    }
    let ok = wait_until(Duration::from_secs(20), || {
        ctx.root.list().is_ok_and(|l| l.is_empty())
    });
    assert!(
        ok,
        "runbox sandboxes left: {:?}",
        ctx.root.list().map(|l| l.len())
    );
    ctx.root.release_spares();
    for dir in [&ctx.state, &ctx.data] {
        let ok = wait_until(Duration::from_secs(20), || processes_naming(dir).is_empty());
        assert!(
            ok,
            "processes still name {}: {:?}",
            dir.display(),
            processes_naming(dir)
        );
        let mounts = mounts_below(dir);
        assert!(
            mounts.is_empty(),
            "mounts left below {}: {mounts:?}",
            dir.display()
        );
    }
    notes.push("no process names the bench's directories, no mount below them".to_string());
    let cgroups = prefix_cgroups(&ctx.prefix);
    for dir in &cgroups {
        let ok = wait_until(Duration::from_secs(10), || {
            populated_cgroups(dir).is_empty()
        });
        assert!(ok, "processes left in {:?}", populated_cgroups(dir));
        let errors = remove_cgroup_tree(dir);
        assert!(errors.is_empty(), "cgroups not removable: {errors:?}");
    }
    let left = prefix_cgroups(&ctx.prefix);
    assert!(left.is_empty(), "cgroups left: {left:?}");
    notes.push(format!(
        "the prefix cgroups (in {} hierarchies) held no process and were removed",
        cgroups.len()
    ));
    unmount_state_tmpfs(&ctx.state, TMPFS_SOURCE);
    for dir in [&ctx.state, &ctx.data] {
        fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
    let fixed = remove_fixed_places(places_before).unwrap_or_else(|e| panic!("{e}"));
    if !fixed.is_empty() {
        notes.push(format!(
            "removed {} (created by containerd, dockerd or podman at fixed paths whatever their options, absent before the run)",
            fixed.join(", ")
        ));
    }
    let new: Vec<String> = default_places_present()
        .into_iter()
        .filter(|p| !places_before.contains(p))
        .collect();
    assert!(
        new.is_empty(),
        "the tools wrote to their default places: {new:?}"
    );
    notes.push(format!(
        "{} and {} removed; none of {} appeared, nor a `libpod_parent` or `docker` cgroup",
        ctx.state.display(),
        ctx.data.display(),
        DEFAULT_PLACES.join(", ")
    ));
    notes
}

/// Writes a tar of `image` (symlinks kept) at `out`.
fn write_tar(image: &Path, out: &Path) {
    let file = fs::File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", image).expect("tar the image");
    builder.into_inner().expect("finish the tar");
}

/// Sets up, measures, prints Markdown, stops the tools and checks the cleanup.
fn main() {
    runbox::monitor_main();
    let opts = Opts::parse();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs real containers: run as root"
    );
    let load_at_start = loadavg();
    let started = Instant::now();
    let places_before = default_places_present();

    let (installed, not_installed) = ensure_packages(&[
        ("runc", "runc"),
        ("dockerd", "docker.io"),
        ("podman", "podman"),
    ]);
    let image = image();
    let prefix = format!("runbox-execbench-{}", std::process::id());
    let state = PathBuf::from("/run").join(&prefix);
    let data = PathBuf::from("/var/tmp").join(&prefix);
    let cleanup = Cleanup {
        prefix: prefix.clone(),
        state: state.clone(),
        data: data.clone(),
        places_before: places_before.clone(),
    };
    fs::create_dir_all(&state).expect("create the state directory");
    fs::create_dir_all(&data).expect("create the data directory");
    let state_fs = state_on_tmpfs(&state, TMPFS_SOURCE);
    let image_tar = data.join("image.tar");
    write_tar(&image, &image_tar);
    let root = runbox::RootOptions::new()
        .cgroup_prefix(prefix.clone())
        .open(state.join("runbox"))
        .expect("open the runbox state root");
    let ctx = Ctx {
        image,
        image_tar,
        prefix,
        state,
        data,
        root,
        teardown: RefCell::new(Vec::new()),
    };

    let why_not = |pkg: &str| {
        not_installed
            .iter()
            .find(|(p, _)| *p == pkg)
            .map(|(_, why)| why.clone())
    };
    let not_asked = || "not asked for (--only)".to_string();
    let mut runc = match why_not("runc") {
        _ if !opts.wants("runc") => Err(not_asked()),
        Some(why) => Err(why),
        None => Runc::start(&ctx),
    };
    let mut docker = match why_not("docker.io") {
        _ if !opts.wants("docker") => Err(not_asked()),
        Some(why) => Err(why),
        None => Docker::start(&ctx),
    };
    let mut podman = match why_not("podman") {
        _ if !opts.wants("podman") => Err(not_asked()),
        Some(why) => Err(why),
        None => Podman::start(&ctx),
    };
    for (tool, env) in [
        ("runc", runc.as_ref().err()),
        ("docker", docker.as_ref().err()),
        ("podman", podman.as_ref().err()),
    ] {
        if let Some(e) = env {
            eprintln!("exec: {tool} unavailable: {e}");
        }
    }

    let mut rows: Vec<Row<'_>> = Vec::new();
    if opts.wants("runbox") {
        rows.extend(runbox_rows(&ctx, &opts));
    }
    let runbox_rows_count = rows.len();
    rows.extend(tool_rows(
        "runc",
        ["exec", "pause", "resume"],
        opts.runs,
        &runc,
    ));
    rows.extend(tool_rows(
        "docker",
        ["exec", "pause", "unpause"],
        opts.heavy_runs,
        &docker,
    ));
    rows.extend(tool_rows(
        "podman",
        ["exec", "pause", "unpause"],
        opts.heavy_runs,
        &podman,
    ));

    let date = first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let uname = first_line(Path::new("uname"), &["-r"]);
    let nproc = first_line(Path::new("nproc"), &[]);
    let load_before = loadavg();
    println!();
    println!("## exec and pause: into a running busybox container (`sleep`)");
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| date | {date} |");
    println!("| kernel (`uname -r`) | {uname} |");
    println!("| nproc | {nproc} |");
    println!(
        "| runc | {} |",
        find_tool("runc").map_or("-".into(), |r| first_line(&r, &["--version"]))
    );
    println!(
        "| docker | {} |",
        docker.as_ref().map_or_else(
            |e| format!("unavailable ({})", cell(e)),
            |d| d.about.clone()
        )
    );
    println!(
        "| podman | {} |",
        podman.as_ref().map_or_else(
            |e| format!("unavailable ({})", cell(e)),
            |p| p.about.clone()
        )
    );
    println!(
        "| installed by this run | {} |",
        if installed.is_empty() {
            "nothing".to_string()
        } else {
            installed.join(", ")
        }
    );
    println!(
        "| image | {} (busybox, rootfs/build-image.sh) |",
        ctx.image.display()
    );
    println!(
        "| state | {state_fs}: runc's --root, dockerd's --exec-root and socket, podman's --runroot and --tmpdir |"
    );
    println!(
        "| data | {} (disk): dockerd's --data-root, podman's --root |",
        ctx.data.display()
    );
    println!(
        "| samples | {} counted per runc row, {} per docker and podman row, after {} warm-up rounds; rows interleaved, order rotated each round |",
        opts.runs, opts.heavy_runs, opts.warmup
    );

    let outcomes = measure(&mut rows, opts.warmup);
    let load_after = loadavg();
    print_table(&rows, &outcomes);
    println!(
        "- load average (1 min): {load_at_start} at start, {load_before} before measuring, {load_after} after"
    );
    println!(
        "- every sample is one fresh CLI process timed from spawn to exit; a pause row undoes its pause untimed, a resume row pauses untimed first"
    );
    if runbox_rows_count == 0 {
        println!(
            "- runbox's rows (exec in process, exec from a fresh CLI, pause, resume) are to come"
        );
    }
    let measured_secs = started.elapsed().as_secs_f64();

    drop(rows);
    let mut stop_errors = Vec::new();
    for f in ctx.teardown.take() {
        if let Err(e) = f() {
            stop_errors.push(format!("a row's teardown: {e}"));
        }
    }
    let runc_left = match runc.as_mut() {
        Ok(r) => {
            if let Err(e) = r.stop() {
                stop_errors.push(format!("runc: {e}"));
            }
            Some(
                r.listed()
                    .unwrap_or_else(|e| vec![format!("(runc list failed: {e})")]),
            )
        }
        Err(_) => None,
    };
    if let Ok(d) = docker.as_mut() {
        if let Err(e) = d.stop() {
            stop_errors.push(format!("docker: {e}"));
        }
    }
    if let Ok(p) = podman.as_mut() {
        if let Err(e) = p.stop() {
            stop_errors.push(format!("podman: {e}"));
        }
    }
    assert!(
        stop_errors.is_empty(),
        "stopping the tools: {stop_errors:?}"
    );
    for note in verify_clean(&ctx, runc_left, &places_before) {
        println!("- cleanup checked: {note}");
    }
    drop(cleanup);
    println!(
        "- total time of this run: {:.0} s ({measured_secs:.0} s until the table)",
        started.elapsed().as_secs_f64()
    );
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed(..)))
        .count();
    if failed > 0 {
        eprintln!("exec: {failed} row(s) failed");
        std::process::exit(1);
    }
}
