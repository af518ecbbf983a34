//! The state root: opening it, launching monitors (create, run), listing and collecting garbage.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{self, Command, SandboxConfig, Stdin};
use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::monitor::{Mode, Report, MONITOR_ARG};
use crate::sandbox::{Sandbox, SandboxInfo};
use crate::state::{self, Layout, ProcIdentity, SandboxRecord};
use crate::verdict::Verdict;

/// Directory under the state root holding shared images (a dot keeps it apart from ids).
pub(crate) const IMAGES_DIR: &str = ".images";

/// Prefix of the temporary directories sandboxes are prepared in before their id is claimed.
pub(crate) const NEW_PREFIX: &str = ".new-";

/// Prefix of the cgroups spares pre-build containers in, followed by the controller's pid and
/// start time and a counter (sandbox ids cannot start with `_`).
pub(crate) const WARM_PREFIX: &str = "_warm-";

/// How long a launch waits for the monitor's first report.
const LAUNCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Default state root when neither the caller nor `RUNBOX_ROOT` names one.
pub const DEFAULT_ROOT: &str = "/run/runbox";

/// Name of the standalone monitor binary looked up next to the current executable.
pub const MONITOR_BIN: &str = "runbox-monitor";

/// Set when the host binary dispatches monitor invocations itself (see [`crate::monitor_main`]).
pub(crate) static SELF_DISPATCH: AtomicBool = AtomicBool::new(false);

/// One entry of [`Root::list`]: a sandbox id and what could be learned about it. A corrupt
/// state file makes only its own entry an error.
#[derive(Debug)]
pub struct Listing {
    /// The sandbox id (its directory name).
    pub id: String,
    /// Its state, or why it could not be read.
    pub info: Result<SandboxInfo>,
}

/// What [`Root::gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Ids of lost sandboxes whose processes, cgroups, mounts and state were removed.
    pub removed: Vec<String>,
    /// Other leftovers removed (stray mounts, empty orphan cgroups, unfinished temp dirs).
    pub cleaned: Vec<String>,
    /// What could not be cleaned, with the reason.
    pub errors: Vec<String>,
}

/// A state root: the directory holding one directory per sandbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Root {
    inner: Arc<RootInner>,
}

#[derive(Debug)]
struct RootInner {
    dir: PathBuf,
    cgroup_prefix: String,
    monitor: Option<PathBuf>,
    host_image: OnceLock<Image>,
    /// Idle monitors that have done their sandbox-independent setup, ready for a request.
    spares: Mutex<Vec<Spare>>,
    spare_target: usize,
    /// Spares pre-build a container shaped like the last launch.
    prebuild: bool,
    /// The build shape of the last launch (what new spares pre-build).
    last_shape: Mutex<Option<SandboxConfig>>,
    /// The spare factory (forks spares), once started; `Err` once it could not be started.
    factory: Mutex<std::result::Result<Option<Factory>, ()>>,
}

/// A spare factory (see the monitor's `factory` mode): the socket it takes fork requests on.
/// Dropping it ends the factory.
#[derive(Debug)]
struct Factory {
    request: std::os::fd::OwnedFd,
}

impl RootInner {
    fn release_spares(&self) {
        if let Ok(mut spares) = self.spares.lock() {
            for spare in spares.drain(..) {
                spare.release();
            }
        }
        if let Ok(mut factory) = self.factory.lock() {
            // End of file: the factory exits (the spares it forked are on their own).
            if let Ok(f) = factory.as_mut() {
                *f = None;
            }
        }
    }
}

impl Drop for RootInner {
    fn drop(&mut self) {
        self.release_spares();
    }
}

/// A spare monitor: its request socket (we write request lines), its report pipe, the
/// short-lived first process of its double fork if we exec'd it (reaped when the spare is
/// taken; a factory reaps those of the spares it forks), and what it pre-builds, if anything.
#[derive(Debug)]
struct Spare {
    request: std::os::fd::OwnedFd,
    report: BufReader<fs::File>,
    first: Option<std::process::Child>,
    warm: Option<Warm>,
}

/// A container a spare builds ahead of its request: in this cgroup, of this build shape.
#[derive(Debug)]
struct Warm {
    cgroup_path: String,
    shape: SandboxConfig,
}

impl Spare {
    /// Lets the spare go: end of file on its socket makes it tear down what it pre-built and
    /// exit.
    fn release(mut self) {
        drop(self.request);
        if let Some(first) = self.first.as_mut() {
            let _ = first.wait();
        }
    }

    /// True if the spare's pre-built container can serve a config of build shape `shape`.
    fn fits(&self, shape: &SandboxConfig) -> bool {
        self.warm.as_ref().is_some_and(|w| &w.shape == shape)
    }
}

/// Options for opening a [`Root`].
#[derive(Debug, Clone, Default)]
pub struct RootOptions {
    cgroup_prefix: Option<String>,
    monitor: Option<PathBuf>,
    spare_monitors: Option<usize>,
    no_prebuild: bool,
}

impl RootOptions {
    /// Default options: cgroup prefix `runbox`, monitor found as described on [`Root::open`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts every sandbox's cgroup under `/<prefix>/<id>` in each hierarchy. Default `runbox`
    /// for the default state root and `runbox-<8 hex digits of a hash of its path>` for others,
    /// so that two roots never share cgroups.
    pub fn cgroup_prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.cgroup_prefix = Some(prefix.into());
        self
    }

    /// Uses this monitor executable, overriding every other way of finding one.
    pub fn monitor_path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.monitor = Some(path.into());
        self
    }

    /// How many idle monitors to keep ready (default 1; a grader with N worker threads, or
    /// rotating between N build shapes, wants N). A spare is forked by the root's spare
    /// factory with its seccomp filter compiled, enters its own mount namespace and, unless
    /// [`RootOptions::prebuild`] is off, builds the next sandbox ahead of its request. It
    /// costs under 1 MiB of memory and exits when the [`Root`] is dropped. 0 disables spares
    /// (and the factory): every launch execs a monitor.
    pub fn spare_monitors(&mut self, n: usize) -> &mut Self {
        self.spare_monitors = Some(n);
        self
    }

    /// Whether spare monitors pre-build a container (default true): each new spare builds a
    /// sandbox shaped like the last launch (same image, user, binds, memory and pids limits…;
    /// see below) up to the point where only the program is missing, so a launch of the same
    /// shape only binds its program, stdin, copies and CPU limits and starts it. A launch of
    /// another shape finds the spare's container torn down and builds its own (about the
    /// cost of a spare that pre-built nothing). What must match: image, user, hostname, binds,
    /// memory, pids, cpuset, CFS period, open-files and file-size limits, scratch and shm
    /// sizes. What may differ: program, arguments, environment, working directory, stdin,
    /// copies in and out, CPU bandwidth, CPU and wall time, output limit.
    ///
    /// A pre-built container holds its mounts, cgroup and namespaces while it waits (a few
    /// MiB); it is torn down when the [`Root`] is dropped or its controller dies.
    pub fn prebuild(&mut self, on: bool) -> &mut Self {
        self.no_prebuild = !on;
        self
    }

    /// Opens (creating if needed, mode 0700) the state root `dir`.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad path or prefix; `Io` if the directory cannot be created.
    pub fn open(&self, dir: impl AsRef<Path>) -> Result<Root> {
        let dir = dir.as_ref();
        if !config::is_clean_absolute(dir) || dir.to_str().is_none_or(|s| s.contains([',', ':'])) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "state root {} must be an absolute utf-8 path without '..', ',' or ':'",
                    dir.display()
                ),
            ));
        }
        let prefix = self
            .cgroup_prefix
            .clone()
            .unwrap_or_else(|| default_cgroup_prefix(dir));
        let prefix_ok = prefix
            .split('/')
            .all(|part| config::validate_id(part).is_ok());
        if !prefix_ok {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("cgroup prefix {prefix:?} must be '/'-separated names like ids"),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create state root", dir, e))?;
        Ok(Root {
            inner: Arc::new(RootInner {
                dir: dir.to_path_buf(),
                cgroup_prefix: prefix,
                monitor: self.monitor.clone(),
                host_image: OnceLock::new(),
                spares: Mutex::new(Vec::new()),
                spare_target: self.spare_monitors.unwrap_or(1),
                prebuild: !self.no_prebuild,
                last_shape: Mutex::new(None),
                factory: Mutex::new(Ok(None)),
            }),
        })
    }
}

impl Root {
    /// Opens the state root `dir` with default options. See [`RootOptions::open`].
    ///
    /// The monitor executable is, in order: [`RootOptions::monitor_path`]; `$RUNBOX_MONITOR`;
    /// the current executable if it called [`crate::monitor_main`] at the top of `main`;
    /// `runbox-monitor` next to the current executable or in its parent directory (where
    /// `cargo test` and `cargo build` put it); `runbox-monitor` in `PATH`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Root> {
        RootOptions::new().open(dir)
    }

    /// The state root named by `RUNBOX_ROOT`, else [`DEFAULT_ROOT`].
    pub fn default_dir() -> PathBuf {
        std::env::var_os("RUNBOX_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    /// The state root directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The cgroup prefix sandboxes are created under.
    pub fn cgroup_prefix(&self) -> &str {
        &self.inner.cgroup_prefix
    }

    fn host_image(&self) -> Result<&Image> {
        if let Some(img) = self.inner.host_image.get() {
            return Ok(img);
        }
        let img = Image::host_default(&self.inner.dir.join(IMAGES_DIR))?;
        Ok(self.inner.host_image.get_or_init(|| img))
    }

    /// The complete OCI runtime spec of a sandbox running `cmd`, with the image itself as a
    /// read-only root instead of the per-sandbox overlay (the escape hatch for other runtimes).
    /// (libcontainer itself builds from this spec minus the program, the quota and the
    /// seccomp section, which runbox applies itself.)
    ///
    /// The spec is complete: program, limits (CPU quota included) and runbox's seccomp policy
    /// as an OCI profile, so `runc run` confines the program as runbox does.
    ///
    /// # Errors
    /// `InvalidConfig` as for [`Root::spawn`].
    pub fn oci_spec(&self, cmd: &Command) -> Result<crate::oci_spec::runtime::Spec> {
        let cfg = cmd.to_config(|| self.host_image())?;
        let lower = match &cfg.image {
            Some(dir) => dir.clone(),
            None => self.host_image()?.lower.clone(),
        };
        let id = cmd.name.as_deref().unwrap_or("bundle");
        let cgroup = format!("/{}/{id}", self.inner.cgroup_prefix);
        crate::spec::build(&cfg, &lower, true, &cgroup, crate::spec::SpecStage::Final)
    }

    /// Writes [`Root::oci_spec`] as `<bundle>/config.json`, a bundle `runc run` accepts.
    ///
    /// # Errors
    /// As [`Root::oci_spec`], and `Io` if the file cannot be written.
    pub fn write_bundle(&self, cmd: &Command, bundle: &Path) -> Result<()> {
        let spec = self.oci_spec(cmd)?;
        crate::spec::write_bundle(&spec, bundle)
    }

    /// Runs `cmd` in a new sandbox, waits for it, removes the sandbox and returns the verdict.
    ///
    /// # Errors
    /// Errors are about runbox, never about the program: a program that fails, crashes or hits
    /// a limit still gives `Ok` with the matching [`Verdict::status`].
    ///
    /// The verdict arrives as soon as the monitor has it; the monitor then removes the sandbox
    /// (cgroup, mounts, state directory) on its own, so that cleanup is not on the caller's time.
    pub fn run(&self, cmd: &Command) -> Result<Verdict> {
        let mut sandbox = self.launch(cmd, Mode::Run, true)?;
        Ok(sandbox.wait_for_report()?.verdict)
    }

    /// Creates and starts a sandbox running `cmd`; returns once the program runs. The sandbox
    /// runs on whatever happens to the caller; dropping the handle does not stop it.
    ///
    /// # Errors
    /// `InvalidConfig` (checked before any side effect), `AlreadyExists`, `LaunchFailed`
    /// (everything the launch set up is removed again), `UnsupportedHost`, `Io`.
    pub fn spawn(&self, cmd: &Command) -> Result<Sandbox> {
        self.launch(cmd, Mode::Run, false)
    }

    /// Creates a sandbox for `cmd` whose program does not run until [`Sandbox::start`].
    ///
    /// # Errors
    /// As [`Root::spawn`].
    pub fn create(&self, cmd: &Command) -> Result<Sandbox> {
        self.launch(cmd, Mode::Create, false)
    }

    /// A handle on the existing sandbox `id`, from any process.
    ///
    /// # Errors
    /// `InvalidConfig` for a malformed id, `NotFound` if there is no such sandbox.
    pub fn sandbox(&self, id: &str) -> Result<Sandbox> {
        config::validate_id(id)?;
        let layout = Layout::new(&self.inner.dir, id);
        if !layout.dir.is_dir() {
            return Err(Error::new(ErrorKind::NotFound, format!("no sandbox {id}")));
        }
        Ok(Sandbox::new(self.clone(), id.to_string(), layout, None))
    }

    /// Every sandbox in this state root with its status, sorted by id.
    ///
    /// # Errors
    /// `Io` if the state root cannot be read. A sandbox whose state is unreadable or corrupt
    /// gives an error in its own [`Listing`] only.
    pub fn list(&self) -> Result<Vec<Listing>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let info = self.sandbox(&id).and_then(|s| s.info());
            out.push(Listing { id, info });
        }
        Ok(out)
    }

    /// The ids of every sandbox directory, sorted.
    pub(crate) fn ids(&self) -> Result<Vec<String>> {
        let dir = &self.inner.dir;
        let mut ids: Vec<String> = fs::read_dir(dir)
            .map_err(|e| Error::io("read state root", dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| config::validate_id(n).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes what crashes left behind: sandboxes whose monitor died (their processes, cgroup,
    /// libcontainer state, mounts and directory), stray mounts under the state root, empty
    /// cgroups under this root's prefix that belong to no sandbox, and unfinished temp dirs.
    /// Idempotent; never touches a live sandbox.
    pub fn gc(&self) -> GcReport {
        crate::gc::collect(self)
    }

    fn launch(&self, cmd: &Command, mode: Mode, remove_on_exit: bool) -> Result<Sandbox> {
        let cfg = cmd.to_config(|| self.host_image())?;
        let monitor = self.monitor_exe()?;
        let me = ProcIdentity::of(std::process::id() as i32)
            .ok_or_else(|| Error::new(ErrorKind::Io, "cannot read own /proc entry"))?;
        let (tmp, tmp_layout) = self.temp_dir()?;
        let prepared = (|| {
            // The sandbox gets a private copy: an fd to the caller's own file could be reopened
            // for writing through /proc/self/fd/0 by a program running as uid 0.
            match &cmd.stdin {
                Stdin::Bytes(bytes) => state::write_atomic(&tmp_layout.stdin(), bytes)?,
                Stdin::File(path) => {
                    fs::copy(path, tmp_layout.stdin())
                        .map_err(|e| Error::io("copy stdin from", path, e))?;
                }
                Stdin::Null => {}
            }
            Ok::<_, Error>(())
        })();
        if let Err(e) = prepared {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // A spare whose pre-built container fits is taken first: the sandbox then lives in
        // that container's cgroup.
        let shape = cfg.build_shape();
        let spare = self.take_spare(&shape);
        let warm_cgroup = spare
            .as_ref()
            .filter(|s| s.fits(&shape))
            .and_then(|s| s.warm.as_ref())
            .map(|w| w.cgroup_path.clone());
        let (id, layout) = match self.claim(&tmp, cmd.name.as_deref(), |id| SandboxRecord {
            format_version: state::FORMAT_VERSION,
            id: id.to_string(),
            cgroup_path: warm_cgroup
                .clone()
                .unwrap_or_else(|| format!("/{}/{id}", self.inner.cgroup_prefix)),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            creator: me,
            remove_on_exit,
            config: cfg.clone(),
        }) {
            Ok(claimed) => claimed,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if let Some(spare) = spare {
                    self.put_back(spare);
                }
                return Err(e);
            }
        };
        let span = tracing::debug_span!("launch", sandbox = %id, mode = mode.as_str());
        let _enter = span.enter();
        if self.inner.prebuild {
            if let Ok(mut last) = self.inner.last_shape.lock() {
                *last = Some(shape);
            }
        }
        match self.start_monitor(&id, &layout, &monitor, mode, spare) {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                // A monitor that reported its failure has rolled back; one that died without a
                // report may have left an init waiting inside libcontainer and its cgroup:
                // clean those up as for a lost sandbox before the directory goes.
                if let Ok(record) = state::read_json::<SandboxRecord>(&layout.record()) {
                    let _ = crate::gc::clean_lost(&layout, &record);
                }
                let _ = state::remove_sandbox_dir(&layout.dir);
                Err(e)
            }
        }
    }

    /// Takes a spare monitor, preferring one whose pre-built container fits `shape`.
    fn take_spare(&self, shape: &SandboxConfig) -> Option<Spare> {
        let mut spares = self.inner.spares.lock().ok()?;
        let i = spares
            .iter()
            .rposition(|s| s.fits(shape))
            .or_else(|| spares.len().checked_sub(1))?;
        Some(spares.swap_remove(i))
    }

    /// Returns an unused spare to the pool.
    fn put_back(&self, spare: Spare) {
        if let Ok(mut spares) = self.inner.spares.lock() {
            spares.push(spare);
        }
    }

    /// Releases the spare monitors (they exit); new ones are made on the next launch.
    pub fn release_spares(&self) {
        self.inner.release_spares();
    }

    /// Starts the spare monitors now, each pre-building a sandbox shaped like `cmd` (see
    /// [`RootOptions::prebuild`]), so that even the first launch of that shape finds one
    /// ready: a grader calls it at start-up with a typical command. Idle spares of another
    /// shape are released. Returns once the spares are started, not built (they build in
    /// the background). Does nothing with `spare_monitors(0)` or `prebuild(false)`.
    ///
    /// # Errors
    /// `InvalidConfig` as for [`Root::spawn`]; `UnsupportedHost` if no monitor is found.
    pub fn warm_up(&self, cmd: &Command) -> Result<()> {
        let shape = cmd.to_config(|| self.host_image())?.build_shape();
        let monitor = self.monitor_exe()?;
        if !self.inner.prebuild || self.inner.spare_target == 0 {
            return Ok(());
        }
        if let Ok(mut last) = self.inner.last_shape.lock() {
            *last = Some(shape.clone());
        }
        let stale: Vec<Spare> = match self.inner.spares.lock() {
            Ok(mut spares) => {
                let (keep, stale) = spares.drain(..).partition(|s| s.fits(&shape));
                *spares = keep;
                stale
            }
            Err(_) => Vec::new(),
        };
        for spare in stale {
            spare.release();
        }
        self.replenish(&monitor);
        Ok(())
    }

    /// Hands the sandbox to `spare` if given and alive, else execs a new monitor; then reads
    /// the monitor's first report and tops the spares up again.
    fn start_monitor(
        &self,
        id: &str,
        layout: &Layout,
        monitor: &Path,
        mode: Mode,
        spare: Option<Spare>,
    ) -> Result<Sandbox> {
        let result = match spare {
            Some(spare) => {
                let warm_cgroup = spare.warm.as_ref().map(|w| w.cgroup_path.clone());
                let taken = use_spare(spare, layout, mode).map(|reader| {
                    let probe = reader.get_ref().try_clone().ok();
                    (self.read_first_report(id, layout, reader, None), probe)
                });
                match taken {
                    Ok((Ok(sandbox), _)) => Ok(sandbox),
                    // A failure of a spare that took the sandbox, or of one that may still
                    // be alive (it timed out), stands.
                    Ok((Err(e), probe))
                        if layout.monitor().exists() || !probe.as_ref().is_some_and(no_writer) =>
                    {
                        Err(e)
                    }
                    // The spare died before it took the sandbox (the request could not be
                    // sent, or its report pipe closed before it wrote monitor.json): start a
                    // fresh monitor instead, once the dead spare's container (if any) is gone
                    // from the cgroup the record may name.
                    _ => {
                        if let Some(path) = warm_cgroup {
                            let _ = crate::gc::kill_and_remove_cgroup(&path);
                        }
                        self.exec_monitor(id, layout, monitor, mode)
                    }
                }
            }
            None => self.exec_monitor(id, layout, monitor, mode),
        };
        if result.is_ok() {
            self.replenish(monitor);
        }
        result
    }

    /// Starts spare monitors up to the target; failures are ignored (a launch then execs).
    fn replenish(&self, monitor: &Path) {
        loop {
            let have = self.inner.spares.lock().map_or(usize::MAX, |s| s.len());
            if have >= self.inner.spare_target {
                return;
            }
            match self.spawn_spare(monitor) {
                Ok(spare) => self.put_back(spare),
                Err(_) => return,
            }
        }
    }

    fn spawn_spare(&self, monitor: &Path) -> Result<Spare> {
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
        // A socket, not a pipe: writing to a spare that died must not raise SIGPIPE in the caller.
        let (request_r, request_w) = crate::sys::stream_socket_pair()
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the request socket", e))?;
        // Forked by the factory if there is one; else exec'd.
        let first = if self.fork_spare(monitor, &request_r, &report_w) {
            drop((request_r, report_w));
            None
        } else {
            Some(
                std::process::Command::new(monitor)
                    .arg(MONITOR_ARG)
                    .arg(&self.inner.dir)
                    .arg("spare")
                    .arg(&self.inner.cgroup_prefix)
                    .env_clear()
                    .stdin(Stdio::from(request_r))
                    .stdout(Stdio::from(report_w))
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| {
                        Error::with_source(ErrorKind::LaunchFailed, "exec a spare monitor", e)
                    })?,
            )
        };
        let mut spare = Spare {
            request: request_w,
            report: BufReader::new(fs::File::from(report_r)),
            first,
            warm: None,
        };
        // Set only when pre-building is on.
        let shape = self.inner.last_shape.lock().ok().and_then(|s| s.clone());
        if let Some(shape) = shape {
            self.send_warm(&mut spare, shape);
        }
        Ok(spare)
    }

    /// Has the spare factory fork a spare with these ends of its request socket and report
    /// pipe, starting the factory first if needed. False if there is no working factory (the
    /// caller execs the spare instead).
    fn fork_spare(
        &self,
        monitor: &Path,
        request: &std::os::fd::OwnedFd,
        report: &std::os::fd::OwnedFd,
    ) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(mut slot) = self.inner.factory.lock() else {
            return false;
        };
        let Ok(factory) = slot.as_mut() else {
            return false; // could not be started before: exec spares
        };
        if factory.is_none() {
            match self.start_factory(monitor) {
                Ok(f) => *factory = Some(f),
                Err(_) => {
                    *slot = Err(());
                    return false;
                }
            }
        }
        let Some(f) = factory.as_ref() else {
            return false;
        };
        let fds = [request.as_raw_fd(), report.as_raw_fd()];
        let sent = nix::sys::socket::sendmsg::<()>(
            f.request.as_raw_fd(),
            &[std::io::IoSlice::new(b"spare\n")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            None,
        );
        if matches!(sent, Ok(6)) {
            return true;
        }
        // The factory died (or is stuck): start another next time.
        *factory = None;
        false
    }

    /// Execs the spare factory (it detaches at once) and reaps its first process.
    fn start_factory(&self, monitor: &Path) -> Result<Factory> {
        let (ours, theirs) = crate::sys::stream_socket_pair()
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the factory socket", e))?;
        let mut first = std::process::Command::new(monitor)
            .arg(MONITOR_ARG)
            .arg(&self.inner.dir)
            .arg("factory")
            .arg(&self.inner.cgroup_prefix)
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::with_source(ErrorKind::LaunchFailed, "exec the spare factory", e)
            })?;
        let status = first
            .wait()
            .map_err(|e| Error::with_source(ErrorKind::LaunchFailed, "wait for the factory", e))?;
        if !status.success() {
            return Err(Error::new(
                ErrorKind::LaunchFailed,
                format!("the spare factory failed to start ({status})"),
            ));
        }
        Ok(Factory { request: ours })
    }

    /// Asks `spare` to pre-build a container of `shape` in a cgroup of its own,
    /// `/<prefix>/_warm-<controller pid>-<start time>-<n>` (ids cannot start with `_`).
    fn send_warm(&self, spare: &mut Spare, shape: SandboxConfig) {
        let (Ok(name), Ok(json)) = (
            state::owned_name(WARM_PREFIX),
            serde_json::to_string(&shape),
        ) else {
            return;
        };
        let cgroup_path = format!("/{}/{name}", self.inner.cgroup_prefix);
        let line = format!("warm {cgroup_path} {json}\n");
        // The line must go whole into the socket's buffer (the spare reads it when it can);
        // one that does not fit is not sent, and the spare stays cold.
        if line.len() > 64 * 1024 {
            return;
        }
        if send_line(&spare.request, &line) {
            spare.warm = Some(Warm { cgroup_path, shape });
        }
    }

    /// Execs a new monitor for the sandbox and reads its first report.
    fn exec_monitor(
        &self,
        id: &str,
        layout: &Layout,
        monitor: &Path,
        mode: Mode,
    ) -> Result<Sandbox> {
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
        let mut child = std::process::Command::new(monitor)
            .arg(MONITOR_ARG)
            .arg(&layout.dir)
            .arg(mode.as_str())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(report_w))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::LaunchFailed,
                    format!("exec monitor {}", monitor.display()),
                    e,
                )
            })?;
        // The monitor forks and its first process exits at once; reap that one.
        let status = child
            .wait()
            .map_err(|e| Error::with_source(ErrorKind::LaunchFailed, "wait for the monitor", e))?;
        let reader = BufReader::new(fs::File::from(report_r));
        self.read_first_report(id, layout, reader, Some(status))
    }

    /// Reads the monitor's first report: started or created (a handle), or the launch error.
    fn read_first_report(
        &self,
        id: &str,
        layout: &Layout,
        mut reader: BufReader<fs::File>,
        status: Option<std::process::ExitStatus>,
    ) -> Result<Sandbox> {
        // A monitor that neither reports nor exits (stuck in a mount, say) must not hang the
        // caller: past the deadline it is killed, and the launch fails (and is cleaned up).
        if !readable_within(reader.get_ref(), LAUNCH_TIMEOUT) {
            if let Ok(m) = state::read_json::<crate::state::MonitorRecord>(&layout.monitor()) {
                let _ = crate::sandbox::signal_verified(m.monitor, libc::SIGKILL);
            }
            return Err(Error::new(
                ErrorKind::LaunchFailed,
                format!("the monitor did not report within {LAUNCH_TIMEOUT:?}; it was killed"),
            ));
        }
        let mut line = String::new();
        let got = reader.read_line(&mut line).map_err(|e| {
            Error::with_source(ErrorKind::LaunchFailed, "read the monitor's report", e)
        })?;
        let report: Option<Report> = (got > 0)
            .then(|| serde_json::from_str(&line).ok())
            .flatten();
        match report {
            Some(Report::Started { .. }) | Some(Report::Created { .. }) => Ok(Sandbox::new(
                self.clone(),
                id.to_string(),
                layout.clone(),
                Some(reader),
            )),
            Some(Report::Failed { kind, message }) => Err(Error::new(kind, message)),
            Some(Report::Pong) | Some(Report::Exited { .. }) | None => {
                let log = fs::read_to_string(layout.dir.join("monitor.log")).unwrap_or_default();
                Err(Error::new(
                    ErrorKind::LaunchFailed,
                    format!(
                        "the monitor exited{} without reporting; its log: {}",
                        status.map_or(String::new(), |s| format!(" ({s})")),
                        log.trim()
                    ),
                ))
            }
        }
    }

    /// A private directory to prepare a sandbox in: `.new-<pid>-<start time>-<n>`, so that gc
    /// can tell when its creator died before claiming an id.
    fn temp_dir(&self) -> Result<(PathBuf, Layout)> {
        let name = state::owned_name(NEW_PREFIX)?;
        let tmp = self.inner.dir.join(&name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        let layout = Layout::new(&self.inner.dir, &name);
        Ok((tmp, layout))
    }

    /// Writes `sandbox.json` into `tmp` and renames `tmp` to `<root>/<id>` without replacing
    /// anything, so an id is claimed atomically and a sandbox directory always has its record.
    fn claim(
        &self,
        tmp: &Path,
        name: Option<&str>,
        record: impl Fn(&str) -> SandboxRecord,
    ) -> Result<(String, Layout)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        for _ in 0..16 {
            let id = match name {
                Some(n) => n.to_string(),
                None => {
                    let nanos = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "rb-{:x}-{:x}-{n:x}",
                        (nanos / 1000) as u64,
                        std::process::id()
                    )
                }
            };
            state::write_json_atomic(&tmp.join("sandbox.json"), &record(&id))?;
            let layout = Layout::new(&self.inner.dir, &id);
            match nix::fcntl::renameat2(
                None,
                tmp,
                None,
                &layout.dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok((id, layout)),
                Err(nix::Error::EEXIST) if name.is_none() => continue,
                Err(nix::Error::EEXIST) => {
                    // The name may still be held by a finished one-shot run whose monitor is
                    // cleaning up (a few ms): wait for that, then try again. The directory may
                    // also vanish while we look (it is renamed away before removal).
                    match self.sandbox(&id) {
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                        Ok(s) => {
                            if let Some(monitor) = s.finishing_one_shot() {
                                crate::sandbox::wait_for_exit(monitor, None)?;
                                continue;
                            }
                            // Its records could not be read because it went meanwhile.
                            if !layout.dir.exists() {
                                continue;
                            }
                        }
                    }
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("sandbox {id} already exists"),
                    ));
                }
                Err(e) => {
                    return Err(Error::with_source(
                        ErrorKind::Io,
                        format!("claim sandbox directory {}", layout.dir.display()),
                        e,
                    ))
                }
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            "could not allocate a unique sandbox id",
        ))
    }

    fn monitor_exe(&self) -> Result<PathBuf> {
        if let Some(p) = &self.inner.monitor {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("RUNBOX_MONITOR") {
            return Ok(PathBuf::from(p));
        }
        if SELF_DISPATCH.load(Ordering::Relaxed) {
            return Ok(PathBuf::from("/proc/self/exe"));
        }
        let exe = std::env::current_exe().ok();
        let near = exe.iter().flat_map(|e| {
            let dir = e.parent().map(Path::to_path_buf);
            let parent = dir.as_ref().and_then(|d| d.parent()).map(Path::to_path_buf);
            [dir, parent].into_iter().flatten()
        });
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        for dir in near.chain(path_dirs) {
            let candidate = dir.join(MONITOR_BIN);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        Err(Error::new(
            ErrorKind::UnsupportedHost,
            "no runbox monitor found: call runbox::monitor_main() at the top of main, set RUNBOX_MONITOR, or put runbox-monitor next to the executable or in PATH",
        ))
    }
}

/// Gives a sandbox to a spare monitor: its report reader, or `Err` if the spare is gone.
fn use_spare(
    mut spare: Spare,
    layout: &Layout,
    mode: Mode,
) -> std::result::Result<BufReader<fs::File>, ()> {
    if let Some(first) = spare.first.as_mut() {
        let _ = first.wait();
    }
    let line = format!("{} {}\n", mode.as_str(), layout.dir.display());
    if send_line(&spare.request, &line) {
        Ok(spare.report)
    } else {
        Err(())
    }
}

/// Writes `line` whole to a spare's request socket without blocking or raising SIGPIPE.
fn send_line(socket: &std::os::fd::OwnedFd, line: &str) -> bool {
    let sent = nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(socket),
        line.as_bytes(),
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    );
    matches!(sent, Ok(n) if n == line.len())
}

/// `runbox` for the default state root, `runbox-<hash of the path>` for any other, so that two
/// state roots never share sandbox cgroups (ids are unique per root only).
fn default_cgroup_prefix(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_ROOT) {
        return "runbox".to_string();
    }
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("runbox-{:08x}", h as u32)
}

/// True if no process holds the write end of the pipe `file` reads any more.
fn no_writer(file: &fs::File) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        file.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
}

/// True if `file` becomes readable (data or end of file) within `timeout`.
fn readable_within(file: &fs::File, timeout: std::time::Duration) -> bool {
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = nix::poll::PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return true, // let the read report the error
        }
    }
}
