//! The per-sandbox monitor: an exec'd, single-threaded process that owns one sandbox from
//! rootfs mount to result file, so the controller never runs libcontainer in its own process.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup};
use crate::config::SandboxConfig;
use crate::config::Stdin;
use crate::error::{Error, ErrorKind, Result};
use crate::init::{ProgramRequest, SandboxInit};
use crate::rootfs;
use crate::seccomp::Filters;
use crate::spec::{self, SpecStage};
use crate::state::{
    self, ExitRecord, Layout, MonitorRecord, Phase, ProcIdentity, SandboxRecord, Scratch,
};
use crate::sys;
use crate::verdict::{Facts, LimitKind, Usage, Verdict, SCHEMA_VERSION};

/// CLOCK_MONOTONIC (shared by all processes) in microseconds.
pub(crate) fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
    })
}

/// When each step of this monitor ended (diagnostics for benchmarks; single-threaded process).
static PHASES: std::sync::Mutex<Vec<(&'static str, u64)>> = std::sync::Mutex::new(Vec::new());

fn mark(phase: &'static str) {
    if let Ok(mut p) = PHASES.lock() {
        p.push((phase, monotonic_us()));
    }
}

/// `argv[1]` that turns a host binary into a runbox monitor (see [`crate::monitor_main`]).
pub const MONITOR_ARG: &str = "--runbox-monitor-v1";

/// How long the monitor drains output after the sandbox's first process exited before it
/// kills whatever still holds the pipes.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// One line the monitor writes to the controller over its stdout pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The container is built and waits for `start` (create mode).
    Created {
        /// The monitor's identity.
        monitor: ProcIdentity,
    },
    /// The program is running; the monitor is this process.
    Started {
        /// The monitor's identity.
        monitor: ProcIdentity,
    },
    /// The run ended (sandboxes removed on exit): the result, sent before cleanup.
    Exited {
        /// The exit record, as also written to `exit.json`.
        record: Box<ExitRecord>,
    },
    /// Answer to the `ping` mode: the monitor started, forked and detached.
    Pong,
    /// Launch failed and everything was rolled back.
    Failed {
        /// The error kind.
        kind: ErrorKind,
        /// The error with its causes.
        message: String,
    },
}

/// Whether the monitor starts the program at once or waits for `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Create and start.
    Run,
    /// Create, then wait for a write to the start FIFO.
    Create,
}

impl Mode {
    /// The word passed on the monitor's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Create => "create",
        }
    }
}

/// Entry point of a monitor process: `argv = [exe, MONITOR_ARG, SANDBOX_DIR, run|create]`
/// (or `ping`, which only detaches and answers, for benchmarks).
/// Never returns.
pub(crate) fn main(args: Vec<OsString>) -> ! {
    mark("monitor_exec");
    let mode = match args.get(3).and_then(|m| m.to_str()) {
        Some("create") => Mode::Create,
        Some("run") => Mode::Run,
        Some("spare") => spare(
            PathBuf::from(&args[2]),
            args.get(4).and_then(|p| p.to_str()).map(str::to_string),
        ),
        Some("factory") => factory(
            PathBuf::from(&args[2]),
            args.get(4).and_then(|p| p.to_str()).unwrap_or_default(),
        ),
        Some("ping") => {
            // Measures what a monitor costs before it does any work (see benches/cycle.rs).
            if sys::fork_and_detach().is_ok() {
                let _ = nix::unistd::setsid();
                let _ = report(&Report::Pong);
            }
            std::process::exit(0);
        }
        _ => {
            eprintln!("usage: runbox-monitor {MONITOR_ARG} SANDBOX_DIR run|create|spare");
            std::process::exit(2);
        }
    };
    let dir = PathBuf::from(&args[2]);
    detach();
    redirect_stderr(&dir.join("monitor.log"));
    exit_with(Prepared::new(None).and_then(|p| Monitor::run(&dir, mode, p, None)))
}

/// Ends the monitor: status 0, or 1 after reporting the error to the controller.
fn exit_with(result: Result<()>) -> ! {
    if let Err(e) = result {
        let _ = report(&Report::Failed {
            kind: e.kind(),
            message: e.chain(),
        });
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// Forks away from the spawner and starts a new session.
fn detach() {
    if let Err(e) = sys::fork_and_detach() {
        let _ = report(&Report::Failed {
            kind: ErrorKind::LaunchFailed,
            message: format!("monitor fork: {e}"),
        });
        std::process::exit(1);
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    mark("detached");
}

/// A spare monitor: does everything that does not depend on a sandbox (detach, seccomp compile,
/// mount namespace), then reads request lines on stdin:
/// - `warm CGROUP_PATH CONFIG_JSON` (optional, first): builds a container of that shape in
///   that cgroup ahead of time, program-less (see [`SandboxConfig::build_shape`]);
/// - `run|create SANDBOX_DIR`: takes that sandbox, with the pre-built container if its
///   record matches it, else building one.
///
/// End of file (the controller dropped its root or died) tears a pre-built container down and
/// ends the spare.
fn spare(root: PathBuf, prefix: Option<String>) -> ! {
    detach();
    let prepared = match Prepared::new(prefix.as_deref()) {
        Ok(p) => p,
        Err(_) => std::process::exit(1), // the controller falls back to a fresh monitor
    };
    spare_loop(root, prepared)
}

/// The request loop of a spare (exec'd, or forked by a factory).
fn spare_loop(root: PathBuf, prepared: Prepared) -> ! {
    let mut warm: Option<Built> = None;
    let mut stdin = io::stdin().lock();
    loop {
        let mut line = String::new();
        let got = stdin.read_line(&mut line);
        if !matches!(got, Ok(n) if n > 0) {
            drop(warm); // tears the pre-built container down
            std::process::exit(0);
        }
        let line = line.trim_end_matches('\n');
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mode = match word {
            "warm" if warm.is_none() => {
                warm = prebuild(&root, &prepared, rest);
                continue;
            }
            "run" => Mode::Run,
            "create" => Mode::Create,
            _ => {
                drop(warm); // tears the pre-built container down
                std::process::exit(2)
            }
        };
        if let Ok(mut p) = PHASES.lock() {
            p.clear();
        }
        mark("spare_taken");
        let dir = PathBuf::from(rest);
        redirect_stderr(&dir.join("monitor.log"));
        exit_with(Monitor::run(&dir, mode, prepared, warm))
    }
}

/// A spare factory: one per `Root`, exec'd once. It detaches, compiles the seccomp filter and
/// leaves the controller's cgroups, then for each message on stdin (`spare`, with the new
/// spare's request socket and report pipe as `SCM_RIGHTS` descriptors) forks a spare that
/// starts from that state: no exec, no dynamic linking, no filter compilation and no cgroup
/// migration per spare. The spare forks once more so that, like an exec'd monitor, it is
/// reparented to init and the factory reaps only the short-lived middle process. End of file
/// (the controller released its spares or died) ends the factory; its spares live on.
fn factory(root: PathBuf, prefix: &str) -> ! {
    detach();
    let Ok(filters) = Filters::compile_default() else {
        std::process::exit(1); // the controller falls back to exec'd spares
    };
    let left_cgroups = !prefix.is_empty() && leave_cgroups(prefix);
    let stdin = io::stdin().as_raw_fd();
    loop {
        let mut buf = [0u8; 64];
        let (n, fds) = match sys::recv_with_fds(stdin, &mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => std::process::exit(1),
        };
        if n == 0 {
            std::process::exit(0);
        }
        let [request, report]: [OwnedFd; 2] = match fds.try_into() {
            Ok(pair) if &buf[..n] == b"spare\n" => pair,
            _ => continue, // malformed: ignored (its descriptors are closed)
        };
        match sys::fork_single_threaded() {
            Ok(Some(child)) => {
                drop((request, report));
                let _ = waitpid(nix::unistd::Pid::from_raw(child), None);
            }
            Ok(None) => {
                // The forked spare: the new descriptors become its stdin and stdout.
                let ok = nix::unistd::dup2(request.as_raw_fd(), 0).is_ok()
                    && nix::unistd::dup2(report.as_raw_fd(), 1).is_ok();
                drop((request, report));
                if !ok || sys::fork_and_detach().is_err() {
                    sys::exit_now(1);
                }
                if let Ok(mut p) = PHASES.lock() {
                    p.clear();
                }
                let prepared = private_mount_namespace().map(|()| Prepared {
                    filters: filters.clone(),
                    left_cgroups,
                });
                match prepared {
                    Ok(prepared) => spare_loop(root, prepared),
                    Err(_) => std::process::exit(1),
                }
            }
            Err(_) => drop((request, report)),
        }
    }
}

/// Builds the container a `warm CGROUP_PATH CONFIG_JSON` line describes; `None` if the line is
/// malformed or the build fails (the spare then builds when its request comes).
fn prebuild(root: &Path, prepared: &Prepared, rest: &str) -> Option<Built> {
    let (cgroup_path, json) = rest.split_once(' ')?;
    let cfg: SandboxConfig = serde_json::from_str(json).ok()?;
    Built::new(&cfg, cgroup_path, root, prepared).ok()
}

/// What a monitor sets up before it knows its sandbox.
struct Prepared {
    filters: Filters,
    /// The monitor already left the cgroups it inherited from its controller.
    left_cgroups: bool,
}

impl Prepared {
    /// `prefix`: the root's cgroup prefix, if known yet (a spare is told it on its command line).
    fn new(prefix: Option<&str>) -> Result<Prepared> {
        let filters = Filters::compile_default().map_err(|e| {
            Error::with_source(ErrorKind::UnsupportedHost, "compile seccomp filters", e)
        })?;
        mark("seccomp_compiled");
        private_mount_namespace()?;
        mark("mount_namespace");
        let left_cgroups = prefix.is_some_and(leave_cgroups);
        Ok(Prepared {
            filters,
            left_cgroups,
        })
    }
}

/// In the monitor's own mount namespace only, unmounts the cgroup hierarchies that carry
/// nothing of the sandbox's ([`cgroup::limitless_hierarchies`]), so that libcontainer neither
/// creates, joins nor removes a cgroup in each of them for every sandbox. The sandbox's
/// processes stay in the monitor's cgroup there. Idempotent; failures are ignored
/// (libcontainer then uses the hierarchy as before). The host's mounts are untouched.
fn trim_cgroup_mounts() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in cgroup::limitless_hierarchies(&mounts) {
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Leaves the controller's cgroups (best effort: a failure is logged, the sandbox still runs).
fn leave_cgroups(prefix: &str) -> bool {
    match cgroup::leave_inherited_cgroups(prefix) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("runbox monitor: could not leave the controller's cgroups: {e}");
            false
        }
    }
}

/// Waits (at most 10 s) for the controller to close its end of the report pipe, then tells
/// whether it had read everything written to it: the result reached a live controller.
fn result_delivered() -> bool {
    let out = io::stdout();
    let fd = out.as_fd();
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    // A pipe's write end reports POLLERR once no reader is left.
    let closed = loop {
        match poll(&mut fds, PollTimeout::from(10_000u16)) {
            Ok(0) => break false,
            Ok(_) => break true,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break false,
        }
    };
    closed && sys::pipe_unread(fd).is_ok_and(|n| n == 0)
}

/// Writes one report line to the controller; true if it was written. A controller that went
/// away is not an error.
fn report(r: &Report) -> bool {
    let Ok(mut line) = serde_json::to_vec(r) else {
        return false;
    };
    line.push(b'\n');
    let mut out = io::stdout().lock();
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}

fn redirect_stderr(path: &Path) {
    if let Ok(f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&f), 2);
    }
}

fn launch(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::LaunchFailed, what.to_string(), e)
}

/// The libcontainer id of every container (each monitor has its own libcontainer root).
const CONTAINER_ID: &str = "sandbox";

/// A container built and parked before start, with no program yet: rootfs mounted, bundle
/// written, cgroup made, libcontainer's init waiting for `start`. Built for a request, or
/// ahead of one by a spare. Undoes exactly what was set up.
struct Built {
    /// The [`SandboxConfig::build_shape`] it was built for.
    shape: SandboxConfig,
    cgroup_path: String,
    cgroup: Cgroup,
    scratch: Scratch,
    mounted: rootfs::Mounted,
    container: Option<Container>,
    /// The container's init, once built.
    init: Option<Init>,
    /// Taken by the run that uses the container.
    streams: Option<Streams>,
    /// The container's init has been waited for.
    init_reaped: bool,
    /// Identity of the image directory and each bind source when the container was built
    /// (`None` if one changed during the build): a request is served only if they still match.
    sources: Option<Vec<SourceId>>,
    /// [`Built::teardown`] ran: nothing is left to undo.
    torn_down: bool,
}

impl Drop for Built {
    /// A container nobody tore down explicitly (a spare's that was never used, a launch that
    /// failed before its monitor took it over) is torn down here.
    fn drop(&mut self) {
        if !self.torn_down {
            let _ = self.teardown();
        }
    }
}

/// The container's init: our child (libcontainer clones it with CLONE_PARENT), so its pid
/// names it until we reap it; the pidfd is for polling and signalling.
struct Init {
    pid: i32,
    pidfd: OwnedFd,
}

/// A host path and the (device, inode) it resolved to.
type SourceId = (PathBuf, Option<(u64, u64)>);

/// The identity of the image directory and of every bind source of `cfg`, as resolved now.
fn source_ids(lower: &Path, cfg: &SandboxConfig) -> Vec<SourceId> {
    use std::os::unix::fs::MetadataExt;
    std::iter::once(lower)
        .chain(cfg.binds.iter().map(|(src, _)| src.as_path()))
        .map(|p| {
            let id = fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
            (p.to_path_buf(), id)
        })
        .collect()
}

impl Built {
    /// Mounts the rootfs and builds the container for `cfg`'s shape in `cgroup_path`.
    /// On failure everything is rolled back.
    fn new(
        cfg: &SandboxConfig,
        cgroup_path: &str,
        root: &Path,
        prepared: &Prepared,
    ) -> Result<Built> {
        let lower = match &cfg.image {
            Some(dir) => dir.clone(),
            None => crate::image::Image::host_default(&root.join(crate::root::IMAGES_DIR))?.lower,
        };
        trim_cgroup_mounts();
        let cgroups = cgroup::Layout::detect()
            .map_err(|e| Error::with_source(ErrorKind::UnsupportedHost, "read cgroup mounts", e))?;
        let scratch = Scratch::of_root(root);
        let before = source_ids(&lower, cfg);
        let mounted = rootfs::mount_rootfs(&scratch, cfg.limits.scratch_bytes, &lower)
            .map_err(|e| launch("mount the sandbox rootfs", e))?;
        mark("rootfs_mounted");
        let mut built = Built {
            shape: cfg.build_shape(),
            cgroup_path: cgroup_path.to_string(),
            cgroup: cgroups.cgroup(cgroup_path),
            scratch,
            mounted,
            container: None,
            init: None,
            streams: None,
            init_reaped: false,
            sources: None,
            torn_down: false,
        };
        match built.build(cfg, prepared.filters.clone()) {
            Ok(()) => {
                // A source replaced while it was being mounted leaves the identity unknown.
                built.sources = (source_ids(&lower, cfg) == before).then_some(before);
                Ok(built)
            }
            Err(e) => Err(built.rollback(e)),
        }
    }

    /// True if this container can serve `cfg`: built in `cgroup_path` for its build shape,
    /// from an image directory and bind sources that are still the same files (a grader may
    /// swap a directory for another under the same path between runs: the pre-built mounts
    /// would still show the old one).
    fn serves(&self, cfg: &SandboxConfig, cgroup_path: &str) -> bool {
        self.cgroup_path == cgroup_path
            && self.shape == cfg.build_shape()
            && self.sources.as_ref().is_some_and(|ids| {
                ids.first()
                    .is_some_and(|(lower, _)| &source_ids(lower, cfg) == ids)
            })
    }

    /// Writes the bundle and builds the container (the init waits for start).
    fn build(&mut self, cfg: &SandboxConfig, filters: Filters) -> Result<()> {
        let bundle = self.scratch.bundle();
        let rootfs = self.scratch.rootfs();
        let first = spec::build(
            cfg,
            &rootfs,
            false,
            &self.cgroup_path,
            SpecStage::ForLibcontainer,
        )?;
        spec::write_bundle(&first, &bundle)?;
        mark("bundle_written");
        let (status_r, status_w) = pipe()?;
        nix::fcntl::fcntl(
            status_r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| launch("make the status pipe non-blocking", e))?;
        // The init holds the read end; its hang-up tells the init the monitor died.
        let (lifeline_r, lifeline_w) = pipe()?;
        let (request_init, request) =
            sys::stream_socket_pair().map_err(|e| launch("create the request socket", e))?;
        let executor = SandboxInit::new(
            filters,
            status_w.as_raw_fd(),
            (lifeline_r.as_raw_fd(), lifeline_w.as_raw_fd()),
            (request_init.as_raw_fd(), request.as_raw_fd()),
        );
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null: OwnedFd = File::open("/dev/null")
            .map_err(|e| launch("open /dev/null", e))?
            .into();
        let lc_root = self.scratch.libcontainer_root();
        fs::create_dir_all(&lc_root).map_err(|e| Error::io("create", &lc_root, e))?;
        let container = ContainerBuilder::new(CONTAINER_ID.to_string(), SyscallType::Linux)
            .with_root_path(&lc_root)
            .map_err(|e| launch("set libcontainer root", e))?
            .with_executor(executor)
            .with_stdin(null)
            .with_stdout(out_w)
            .with_stderr(err_w)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| launch("build the container", e))?;
        mark("container_built");
        // Only the init may hold these ends, so its exit is end of file on them.
        drop(status_w);
        drop(lifeline_r);
        drop(request_init);
        let init = container
            .pid()
            .ok_or_else(|| Error::new(ErrorKind::LaunchFailed, "container has no init pid"))?
            .as_raw();
        self.container = Some(container);
        let pidfd = sys::pidfd_open(init).map_err(|e| launch("pidfd_open init", e))?;
        self.init = Some(Init { pid: init, pidfd });
        self.streams = Some(Streams {
            out: out_r,
            err: err_r,
            status: File::from(status_r),
            _lifeline: lifeline_w,
            request,
            status_text: String::new(),
        });
        Ok(())
    }

    /// Undoes whatever was set up and returns `err` (with any cleanup error appended).
    fn rollback(&mut self, err: Error) -> Error {
        match self.teardown() {
            Ok(()) => err,
            Err(cleanup) => Error::new(
                err.kind(),
                format!("{}; cleanup also failed: {}", err.chain(), cleanup.chain()),
            ),
        }
    }

    /// Kills what is left of the container, removes its cgroup and unmounts the rootfs (with
    /// libcontainer's state on it). Safe to call after a partial setup; once only does work.
    fn teardown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Ok(());
        }
        let mut errors = Vec::new();
        if !self.init_reaped {
            if let Some(init) = &self.init {
                // Our unreaped child: SIGKILL takes its pid namespace down with it.
                let _ = sys::pidfd_send_signal(&init.pidfd, libc::SIGKILL);
                let _ = waitpid(nix::unistd::Pid::from_raw(init.pid), None);
                self.init_reaped = true;
            }
        }
        if self.init_reaped {
            // The init was reaped, so its pid namespace is empty: what libcontainer's delete
            // would do (a new cgroup manager, a kill, rmdirs) reduces to the rmdirs below.
            self.container = None;
            if let Err(e) = crate::gc::kill_cgroup(&self.cgroup, &self.cgroup_path) {
                errors.push(e.chain());
            }
        } else {
            let lc_dir = self.scratch.libcontainer_root().join(CONTAINER_ID);
            let container = self
                .container
                .take()
                .or_else(|| Container::load(lc_dir).ok());
            if let Some(mut c) = container {
                if let Err(e) = c.delete(true) {
                    errors.push(format!("delete container: {e}"));
                }
            }
        }
        if let Err(e) = self.cgroup.remove() {
            errors.push(format!("remove cgroup: {e}"));
        }
        if let Err(e) = rootfs::unmount(&mut self.mounted) {
            errors.push(format!("{e}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Io, errors.join("; ")))
        }
    }
}

/// A sandbox's monitor: its state directory, record and container.
struct Monitor {
    layout: Layout,
    record: SandboxRecord,
    built: Built,
    /// The cgroup's CPU usage just before start (libcontainer's setup), subtracted from figures.
    cpu_baseline: cgroup::CpuUsage,
}

/// What the event loop learned.
#[derive(Default)]
struct Outcome {
    /// The init, when it reported the program's end but was not waited for yet.
    pending_init: Option<i32>,
    facts: Facts,
    wall: Duration,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

impl Monitor {
    /// Runs the sandbox to completion and leaves its result in `exit.json`. `warm` is a
    /// container a spare built ahead: used if the record asks for exactly it, else torn down
    /// (on an early error, when it is dropped).
    fn run(dir: &Path, mode: Mode, prepared: Prepared, warm: Option<Built>) -> Result<()> {
        // Privileged setup, in order; nothing here runs in another thread.
        let layout = Layout {
            dir: dir.to_path_buf(),
        };
        let record: SandboxRecord = state::read_json(&layout.record())?;
        state::check_format(record.format_version, &layout.record())?;
        let me = ProcIdentity::of(std::process::id() as i32)
            .ok_or_else(|| Error::new(ErrorKind::LaunchFailed, "cannot read own /proc entry"))?;
        let mut status = MonitorRecord {
            format_version: state::FORMAT_VERSION,
            monitor: me,
            init: None,
            phase: Phase::Creating,
        };
        state::write_json_atomic(&layout.monitor(), &status)?;
        mark("records");
        if !prepared.left_cgroups {
            let prefix = Path::new(&record.cgroup_path)
                .parent()
                .and_then(|p| p.to_str())
                .map(|p| p.trim_start_matches('/').to_string())
                .unwrap_or_default();
            if !prefix.is_empty() {
                leave_cgroups(&prefix);
            }
        }
        let root = dir
            .parent()
            .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox dir has no parent"))?;
        let built = match warm {
            Some(b) if b.serves(&record.config, &record.cgroup_path) => {
                mark("prebuilt_taken");
                b
            }
            other => {
                if let Some(mut b) = other {
                    // Built for another shape (or from sources since replaced): it must go
                    // first (it may hold this cgroup).
                    let _ = b.teardown();
                }
                Built::new(&record.config, &record.cgroup_path, root, &prepared)?
            }
        };
        let mut m = Monitor {
            layout,
            record,
            built,
            cpu_baseline: Default::default(),
        };
        let mut streams = m
            .built
            .streams
            .take()
            .expect("a built container has streams");
        let stdin = match m.bind() {
            Ok(stdin) => stdin,
            Err(e) => return Err(m.rollback(e)),
        };
        status.init = ProcIdentity::of(m.init().pid);
        if mode == Mode::Create {
            let fifo = match m.start_fifo() {
                Ok(f) => f,
                Err(e) => return Err(m.rollback(e)),
            };
            status.phase = Phase::Created;
            if let Err(e) = state::write_json_atomic(&m.layout.monitor(), &status) {
                return Err(m.rollback(e));
            }
            let _ = report(&Report::Created { monitor: me });
            if !wait_for_start(&fifo, &m.init().pidfd) {
                // Killed (or deleted) before it started.
                let _ = fs::remove_file(m.layout.start_fifo());
                let mut outcome = Outcome::default();
                collect_status(m.init().pid, &streams.status, &mut outcome.facts);
                return m.finish(outcome);
            }
            let _ = fs::remove_file(m.layout.start_fifo());
        }
        // CPU the sandbox's cgroup used for libcontainer's setup is not the program's.
        m.cpu_baseline = m.built.cgroup.cpu_usage().unwrap_or_default();
        if let Err(e) = m.container_mut().start() {
            return Err(m.rollback(launch("start the container", e)));
        }
        let request = ProgramRequest::for_config(&m.record.config);
        if let Err(e) = request.send(&streams.request, &stdin) {
            return Err(m.rollback(launch("send the program to the init", e)));
        }
        drop(stdin);
        if let Err(e) = streams.wait_ready() {
            return Err(m.rollback(e));
        }
        let started = Instant::now();
        mark("started");
        status.phase = Phase::Running;
        let saved = state::write_json_atomic(&m.layout.monitor(), &status);
        let _ = report(&Report::Started { monitor: me });
        // The monitor may idle for as long as the program runs: keep only what it uses.
        sys::release_free_heap();
        let mut outcome = m.supervise(streams, started);
        if let Err(e) = saved {
            outcome.facts.internal_error.get_or_insert(e.chain());
        }
        m.finish(outcome)
    }

    /// Prepares the built container for this run: working directory and copies in the
    /// rootfs, CPU quota. Returns the program's stdin. (The bundle keeps the spec libcontainer
    /// built from: it lives in this monitor's mount namespace only, and libcontainer reads
    /// its own saved copy at start; [`crate::Root::oci_spec`] gives the complete one.)
    fn bind(&mut self) -> Result<OwnedFd> {
        let cfg = &self.record.config;
        rootfs::prepare_run(&self.built.scratch.rootfs(), cfg)
            .map_err(|e| launch("prepare the sandbox rootfs", e))?;
        let limits = &cfg.limits;
        self.built
            .cgroup
            .set_cpu_quota(limits.cpu_quota_us(), limits.cpu_period_us)
            .map_err(|e| launch("write the cpu quota", e))?;
        mark("bound");
        let stdin = match &cfg.stdin {
            Stdin::Null => File::open("/dev/null"),
            Stdin::Bytes(_) | Stdin::File(_) => File::open(self.layout.stdin()),
        }
        .map_err(|e| launch("open stdin", e))?;
        Ok(stdin.into())
    }

    /// Makes the start FIFO and opens it read-write (so it never reports hang-up).
    fn start_fifo(&self) -> Result<File> {
        let path = self.layout.start_fifo();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| launch("create the start fifo", e))?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| launch("open the start fifo", e))
    }

    fn init(&self) -> &Init {
        self.built
            .init
            .as_ref()
            .expect("a built container has an init")
    }

    fn container_mut(&mut self) -> &mut Container {
        self.built
            .container
            .as_mut()
            .expect("container is built before use")
    }

    /// Undoes whatever was set up and returns `err`.
    fn rollback(mut self, err: Error) -> Error {
        self.built.rollback(err)
    }

    /// Waits for the init to exit while capturing output and enforcing CPU, wall and output
    /// limits. Kills the sandbox (its init, which takes the pid namespace down) on a limit.
    fn supervise(&self, mut streams: Streams, started: Instant) -> Outcome {
        let init = self.init();
        let (init_pid, pidfd) = (init.pid, &init.pidfd);
        let limits = self.record.config.limits.clone();
        let mut outcome = Outcome::default();
        let mut sinks = match (
            File::create(self.layout.stdout()),
            File::create(self.layout.stderr()),
        ) {
            (Ok(o), Ok(e)) => [Sink::new(streams.out, o), Sink::new(streams.err, e)],
            (Err(e), _) | (_, Err(e)) => {
                outcome.facts.internal_error = Some(format!("create output files: {e}"));
                let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
                let _ = waitpid(nix::unistd::Pid::from_raw(init_pid), None);
                return outcome;
            }
        };
        let mut budget = limits.output_bytes;
        let wall_deadline = limits.wall_time.map(|w| started + w);
        let cpu_rate = limits.cpus.min(available_cpus());
        // The kill threshold: the CPU-time limit plus its grace.
        let cpu_kill_at = limits.cpu_time.map(|c| c + limits.cpu_time_grace);
        let mut next_cpu_check = cpu_kill_at.map(|c| started + c.div_f64(cpu_rate));
        let mut exited: Option<Instant> = None;
        // The init reports the program's status before it exits (and its pid namespace is torn
        // down); the verdict does not wait for that.
        let mut program_done: Option<Instant> = None;
        let mut status_text = std::mem::take(&mut streams.status_text);
        let mut killed = false;
        loop {
            let now = Instant::now();
            let finished = exited.or(program_done);
            // Limits first.
            if !killed && finished.is_none() {
                if wall_deadline.is_some_and(|d| now >= d) {
                    outcome.facts.killed_for = Some(LimitKind::WallTime);
                } else if let (Some(at), Some(limit)) = (next_cpu_check, cpu_kill_at) {
                    if now >= at {
                        match self
                            .built
                            .cgroup
                            .cpu_usage()
                            .map(|u| u.since(self.cpu_baseline))
                        {
                            Ok(u) if Duration::from_micros(u.total_us) >= limit => {
                                outcome.facts.killed_for = Some(LimitKind::CpuTime);
                            }
                            Ok(u) => {
                                let left = limit - Duration::from_micros(u.total_us);
                                let wait = left.div_f64(cpu_rate).max(Duration::from_millis(1));
                                next_cpu_check = Some(now + wait);
                            }
                            Err(e) => {
                                outcome.facts.internal_error = Some(format!("read cpu usage: {e}"));
                                next_cpu_check = None;
                            }
                        }
                    }
                }
                if outcome.facts.killed_for.is_some() {
                    let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
                    killed = true;
                }
            }
            let open = sinks.iter().filter(|s| s.open).count();
            if finished.is_some() && open == 0 {
                break;
            }
            if let Some(t) = finished {
                if now >= t + DRAIN_GRACE {
                    // Something still holds the pipes after the program ended (its pid namespace
                    // is going down): stop reading. Without a status it is runbox's failure;
                    // with one, the status stands (a program must not turn its verdict into
                    // an internal error by stalling its own teardown).
                    if outcome.facts.exit_code.is_none() && outcome.facts.signal.is_none() {
                        outcome.facts.internal_error.get_or_insert_with(|| {
                            "output pipes stayed open after the sandbox exited".to_string()
                        });
                    }
                    break;
                }
            }
            let mut deadline = finished.map(|t| t + DRAIN_GRACE);
            if !killed && finished.is_none() {
                for d in [wall_deadline, next_cpu_check].into_iter().flatten() {
                    deadline = Some(deadline.map_or(d, |x: Instant| x.min(d)));
                }
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
                }
            };
            let mut fds = Vec::with_capacity(3);
            let pidfd_index = if exited.is_none() {
                fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
                Some(0)
            } else {
                None
            };
            let status_index = if finished.is_none() {
                fds.push(PollFd::new(streams.status.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            } else {
                None
            };
            let base = fds.len();
            let polled: Vec<usize> = (0..2).filter(|&i| sinks[i].open).collect();
            for &i in &polled {
                fds.push(PollFd::new(sinks[i].pipe.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    outcome.facts.internal_error = Some(format!("poll: {e}"));
                    let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
                    if exited.is_none() {
                        collect_status(init_pid, &streams.status, &mut outcome.facts);
                        outcome.wall = started.elapsed();
                    }
                    break;
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            for (k, &i) in polled.iter().enumerate() {
                if ready[base + k] {
                    match sinks[i].pump(&mut budget) {
                        Pump::Ok => {}
                        Pump::Overflow if !killed => {
                            outcome.facts.killed_for = Some(LimitKind::Output);
                            let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
                            killed = true;
                        }
                        Pump::Overflow => {}
                        Pump::Failed(e) if outcome.facts.internal_error.is_none() => {
                            outcome.facts.internal_error = Some(format!("capture output: {e}"));
                        }
                        Pump::Failed(_) => {}
                    }
                }
            }
            if status_index.is_some_and(|i| ready[i]) {
                let mut buf = [0u8; 512];
                if let Ok(n) = (&streams.status).read(&mut buf) {
                    status_text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                if parse_status(&status_text, &mut outcome.facts) {
                    outcome.wall = started.elapsed();
                    mark("program_exited");
                    program_done = Some(Instant::now());
                }
            }
            if pidfd_index.is_some_and(|i| ready[i]) {
                if program_done.is_none() {
                    outcome.wall = started.elapsed();
                    mark("program_exited");
                    collect_status(init_pid, &streams.status, &mut outcome.facts);
                } else {
                    let _ = waitpid(nix::unistd::Pid::from_raw(init_pid), None);
                }
                exited = Some(Instant::now());
            }
        }
        outcome.stdout_truncated = sinks[0].truncated;
        outcome.stderr_truncated = sinks[1].truncated;
        if exited.is_none() {
            outcome.pending_init = Some(init_pid);
        }
        outcome
    }

    /// Waits for an init that reported the program's end but had not exited yet.
    /// The init exits right after its status line; one that does not within a second is
    /// killed (with its pid namespace) before it is waited for.
    fn reap_pending(&mut self, outcome: &mut Outcome) {
        if let Some(init) = outcome.pending_init.take() {
            // Our unreaped child: its pid cannot name another process.
            if let Ok(pidfd) = sys::pidfd_open(init) {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::from(1000u16)), Ok(n) if n > 0) {
                    let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                }
            }
            let _ = waitpid(nix::unistd::Pid::from_raw(init), None);
        }
        self.built.init_reaped = true;
    }

    /// Reads the cgroup's figures, tears everything down and writes `exit.json`.
    fn finish(mut self, mut outcome: Outcome) -> Result<()> {
        let figures = self.built.cgroup.figures().map(|mut f| {
            f.cpu = f.cpu.since(self.cpu_baseline);
            f
        });
        mark("figures_read");
        let limits = &self.record.config.limits;
        if let Err(e) = rootfs::collect_out(
            &self.built.scratch.rootfs(),
            &self.record.config.collects,
            limits.file_size_bytes,
        ) {
            outcome
                .facts
                .internal_error
                .get_or_insert(format!("collect files: {}", error_chain(&e)));
        }
        // A sandbox removed on exit reports first and cleans up after; otherwise the result is
        // written only once everything is cleaned, so a waiter finds nothing left.
        let remove_on_exit = self.record.remove_on_exit;
        if !remove_on_exit {
            self.reap_pending(&mut outcome);
            if let Err(e) = self.built.teardown() {
                let msg = e.chain();
                outcome.facts.internal_error.get_or_insert(msg);
            }
            mark("torn_down");
        }
        let figures = match figures {
            Ok(f) => f,
            Err(e) => {
                outcome
                    .facts
                    .internal_error
                    .get_or_insert(format!("read cgroup figures: {e}"));
                Default::default()
            }
        };
        outcome.facts.oom_killed = figures.oom_kills > 0;
        // Past the CPU-time limit is a time limit even if the program ended within the grace.
        if let Some(limit) = self.record.config.limits.cpu_time {
            if Duration::from_micros(figures.cpu.total_us) > limit
                && outcome.facts.killed_for.is_none()
                && !outcome.facts.oom_killed
            {
                outcome.facts.killed_for = Some(LimitKind::CpuTime);
            }
        }
        let (status, limit, message) = outcome.facts.classify();
        let cap = self.record.config.limits.output_bytes as usize;
        let verdict = Verdict {
            schema_version: SCHEMA_VERSION,
            id: self.record.id.clone(),
            status,
            exit_code: outcome.facts.exit_code,
            signal: outcome.facts.signal,
            cpu_time_us: figures.cpu.total_us,
            cpu_user_us: figures.cpu.user_us,
            cpu_system_us: figures.cpu.system_us,
            wall_time_us: outcome.wall.as_micros() as u64,
            memory_peak_bytes: figures.memory_peak_bytes,
            oom_killed: outcome.facts.oom_killed,
            limit,
            stdout: read_capped(&self.layout.stdout(), cap),
            stderr: read_capped(&self.layout.stderr(), cap),
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            message,
        };
        let record = ExitRecord {
            format_version: state::FORMAT_VERSION,
            verdict,
            usage: Usage {
                cpu_throttled_periods: figures.throttled_periods,
                cpu_periods: figures.periods,
                pids_limit_hits: figures.pids_limit_hits,
                phases_monotonic_us: PHASES
                    .lock()
                    .map(|p| p.iter().map(|(n, t)| (n.to_string(), *t)).collect())
                    .unwrap_or_default(),
            },
        };
        state::write_json_atomic(&self.layout.exit(), &record)?;
        if remove_on_exit {
            let sent = report(&Report::Exited {
                record: Box::new(record),
            });
            // Nobody waits for this part; a failure leaves the directory for `gc`.
            self.reap_pending(&mut outcome);
            match self.built.teardown() {
                Ok(()) if sent && result_delivered() => {
                    let _ = state::remove_sandbox_dir(&self.layout.dir);
                }
                // The controller died before reading the result: keep it for a later `wait`.
                Ok(()) => {}
                Err(e) => eprintln!(
                    "runbox monitor: cleanup after the result failed: {}",
                    e.chain()
                ),
            }
        }
        Ok(())
    }
}

/// The init's output, status and request channels, handed from `Built::build` to `supervise`.
struct Streams {
    out: OwnedFd,
    err: OwnedFd,
    /// The read end of the init's status pipe (see [`SandboxInit`]).
    status: File,
    /// The monitor's end of the lifeline, held until the monitor exits.
    _lifeline: OwnedFd,
    /// The monitor's end of the init's request socket (see [`ProgramRequest`]).
    request: OwnedFd,
    /// Status text read before supervision began (what followed `ready`).
    status_text: String,
}

impl Streams {
    /// Waits (at most 10 s) for the init's `ready` line: the program request was applied and
    /// the program is being started. An `error` line or the init's end fails the launch.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.status_text.find('\n') {
                let line = self.status_text[..end].to_string();
                self.status_text.drain(..=end);
                return match line.split_once(' ') {
                    _ if line == "ready" => Ok(()),
                    Some(("error", why)) => Err(Error::new(
                        ErrorKind::LaunchFailed,
                        format!("the sandbox's init could not start the program: {why}"),
                    )),
                    _ => Err(Error::new(
                        ErrorKind::LaunchFailed,
                        format!("unexpected line from the sandbox's init: {line:?}"),
                    )),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::LaunchFailed,
                    "the sandbox's init did not take the program within 10 s",
                ));
            }
            let ms = PollTimeout::try_from(left.as_millis().min(10_000) as i32)
                .unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.status.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(launch("poll the init's status", e)),
            }
            let mut buf = [0u8; 512];
            match (&self.status).read(&mut buf) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::LaunchFailed,
                        "the sandbox's init ended before taking the program",
                    ))
                }
                Ok(n) => self
                    .status_text
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(launch("read the init's status", e)),
            }
        }
    }
}

enum Pump {
    Ok,
    Overflow,
    Failed(io::Error),
}

/// One captured stream: a pipe copied into a file, within the shared output budget.
struct Sink {
    pipe: File,
    file: File,
    open: bool,
    truncated: bool,
}

impl Sink {
    fn new(pipe: OwnedFd, file: File) -> Self {
        Sink {
            pipe: File::from(pipe),
            file,
            open: true,
            truncated: false,
        }
    }

    /// Copies what the pipe holds now; at end of file marks the sink closed.
    fn pump(&mut self, budget: &mut u64) -> Pump {
        let mut buf = [0u8; 64 * 1024];
        match self.pipe.read(&mut buf) {
            Ok(0) => {
                self.open = false;
                Pump::Ok
            }
            Ok(n) => {
                let keep = (n as u64).min(*budget) as usize;
                *budget -= keep as u64;
                if let Err(e) = self.file.write_all(&buf[..keep]) {
                    return Pump::Failed(e);
                }
                if keep < n {
                    self.truncated = true;
                    self.open = false;
                    Pump::Overflow
                } else {
                    Pump::Ok
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Pump::Ok,
            Err(e) => {
                self.open = false;
                Pump::Failed(e)
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| launch("create a pipe", e))
}

/// Waits in the created state until a controller writes to the start FIFO (true) or the init
/// dies (false: killed or deleted before start).
fn wait_for_start(fifo: &File, init: &OwnedFd) -> bool {
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(init.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return false,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return false;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let mut byte = [0u8; 16];
            if matches!((&*fifo).read(&mut byte), Ok(n) if n > 0) {
                return true;
            }
        }
    }
}

/// Parses the init's complete status lines (`exit N`, `signal N`, `error TEXT`) into `facts`;
/// true once the program's end was reported.
fn parse_status(text: &str, facts: &mut Facts) -> bool {
    let mut reported = false;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, rest.parse::<i32>()) {
            ("exit", Ok(code)) => facts.exit_code = Some(code),
            ("signal", Ok(sig)) => facts.signal = Some(sig),
            ("t", _) => {
                // The init's timestamps, kept once each as phases.
                let (label, t) = rest.split_once(' ').unwrap_or((rest, ""));
                let label = match label {
                    "spawned" => "init_spawned",
                    "reaped" => "init_reaped",
                    _ => continue,
                };
                if let (Ok(t), Ok(mut p)) = (t.parse::<u64>(), PHASES.lock()) {
                    if !p.iter().any(|(n, _)| *n == label) {
                        p.push((label, t));
                    }
                }
                continue;
            }
            ("error", _) => {
                facts.internal_error = Some(format!("in the sandbox's init: {rest}"));
            }
            _ => continue,
        }
        reported = true;
    }
    reported
}

/// Reaps the init and records how the program ended: from the init's status line, or from
/// the init's own wait status when it was killed before it could write one.
fn collect_status(init: i32, mut status: &File, facts: &mut Facts) {
    let init_status = waitpid(nix::unistd::Pid::from_raw(init), None);
    let mut text = String::new();
    let _ = status.read_to_string(&mut text);
    if parse_status(&text, facts) {
        return;
    }
    match init_status {
        Ok(WaitStatus::Exited(_, code)) => facts.exit_code = Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => facts.signal = Some(sig as i32),
        Ok(other) => {
            facts.internal_error = Some(format!("unexpected wait status {other:?}"));
        }
        Err(e) => facts.internal_error = Some(format!("waitpid init: {e}")),
    }
}

/// Moves the monitor into its own mount namespace, so its mounts vanish with it. The
/// namespace is a slave of the host's: mounts made on the host later (a spare monitor waits
/// for its sandbox) still appear in it, and none of the monitor's leak out.
fn private_mount_namespace() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::with_source(ErrorKind::UnsupportedHost, "unshare the mount namespace", e)
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| Error::with_source(ErrorKind::UnsupportedHost, "make mounts private", e))
}

fn available_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// An error and its causes joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Reads at most `cap` bytes of `path` as lossy UTF-8.
fn read_capped(path: &Path, cap: usize) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(cap as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
