//! The controller's side: a state root handle that launches monitors, and sandbox handles that
//! are views of on-disk state (dropping one never touches the sandbox).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{self, Command, Stdin};
use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::monitor::{Report, MONITOR_ARG};
use crate::state::{self, ExitRecord, Layout, ProcIdentity, SandboxRecord};
use crate::verdict::{Usage, Verdict};

/// Directory under the state root holding shared images (a dot keeps it apart from ids).
pub(crate) const IMAGES_DIR: &str = ".images";

/// Default state root when neither the caller nor `RUNBOX_ROOT` names one.
pub const DEFAULT_ROOT: &str = "/run/runbox";

/// Name of the standalone monitor binary looked up next to the current executable.
pub const MONITOR_BIN: &str = "runbox-monitor";

/// Set when the host binary dispatches monitor invocations itself (see [`crate::monitor_main`]).
pub(crate) static SELF_DISPATCH: AtomicBool = AtomicBool::new(false);

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
}

/// Options for opening a [`Root`].
#[derive(Debug, Clone, Default)]
pub struct RootOptions {
    cgroup_prefix: Option<String>,
    monitor: Option<PathBuf>,
}

impl RootOptions {
    /// Default options: cgroup prefix `runbox`, monitor found as described on [`Root::open`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts every sandbox's cgroup under `/<prefix>/<id>` in each hierarchy. Default `runbox`.
    pub fn cgroup_prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.cgroup_prefix = Some(prefix.into());
        self
    }

    /// Uses this monitor executable, overriding every other way of finding one.
    pub fn monitor_path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.monitor = Some(path.into());
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
            .unwrap_or_else(|| "runbox".into());
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

    /// The OCI runtime spec runbox would give libcontainer for `cmd`, with the image itself as a
    /// read-only root instead of the per-sandbox overlay (the escape hatch for other runtimes).
    ///
    /// The spec carries everything but the seccomp filter, which runbox installs itself.
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
        crate::spec::build(&cfg, &lower, true, &cgroup, crate::spec::CpuQuota::Include)
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
    pub fn run(&self, cmd: &Command) -> Result<Verdict> {
        let mut sandbox = self.spawn(cmd)?;
        let verdict = sandbox.wait();
        let deleted = sandbox.delete();
        let verdict = verdict?;
        deleted?;
        Ok(verdict)
    }

    /// Creates and starts a sandbox running `cmd`; returns once the program runs.
    ///
    /// # Errors
    /// `InvalidConfig` (checked before any side effect), `AlreadyExists`, `LaunchFailed`
    /// (everything the launch set up is removed again), `UnsupportedHost`, `Io`.
    pub fn spawn(&self, cmd: &Command) -> Result<Sandbox> {
        let cfg = cmd.to_config(|| self.host_image())?;
        let monitor = self.monitor_exe()?;
        let (id, layout) = self.allocate(cmd.name.as_deref())?;
        let span = tracing::debug_span!("spawn", sandbox = %id);
        let _enter = span.enter();
        match self.launch(&id, &layout, cfg, &monitor, cmd) {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                let _ = fs::remove_dir_all(&layout.dir);
                Err(e)
            }
        }
    }

    fn launch(
        &self,
        id: &str,
        layout: &Layout,
        cfg: config::SandboxConfig,
        monitor: &Path,
        cmd: &Command,
    ) -> Result<Sandbox> {
        if let Stdin::Bytes(bytes) = &cmd.stdin {
            state::write_atomic(&layout.stdin(), bytes)?;
        }
        let record = SandboxRecord {
            format_version: state::FORMAT_VERSION,
            id: id.to_string(),
            cgroup_path: format!("/{}/{id}", self.inner.cgroup_prefix),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            config: cfg,
        };
        state::write_json_atomic(&layout.record(), &record)?;
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
        let mut child = std::process::Command::new(monitor)
            .arg(MONITOR_ARG)
            .arg(&layout.dir)
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
        let mut reader = BufReader::new(fs::File::from(report_r));
        let mut line = String::new();
        let got = reader.read_line(&mut line).map_err(|e| {
            Error::with_source(ErrorKind::LaunchFailed, "read the monitor's report", e)
        })?;
        let report: Option<Report> = (got > 0)
            .then(|| serde_json::from_str(&line).ok())
            .flatten();
        match report {
            Some(Report::Started { monitor }) => Ok(Sandbox {
                root: self.clone(),
                id: id.to_string(),
                layout: layout.clone(),
                monitor: Some(monitor),
                report: Some(reader),
            }),
            Some(Report::Failed { kind, message }) => Err(Error::new(kind, message)),
            None => {
                let log = fs::read_to_string(layout.dir.join("monitor.log")).unwrap_or_default();
                Err(Error::new(
                    ErrorKind::LaunchFailed,
                    format!(
                        "the monitor exited ({status}) without reporting; its log: {}",
                        log.trim()
                    ),
                ))
            }
        }
    }

    /// Creates the sandbox directory, atomically claiming the id.
    fn allocate(&self, name: Option<&str>) -> Result<(String, Layout)> {
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
            let layout = Layout::new(&self.inner.dir, &id);
            match fs::DirBuilder::new().mode(0o700).create(&layout.dir) {
                Ok(()) => return Ok((id, layout)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if name.is_some() {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            format!("sandbox {id} already exists"),
                        ));
                    }
                }
                Err(e) => return Err(Error::io("create sandbox directory", &layout.dir, e)),
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

/// A handle on one sandbox: a view of its state directory. Dropping it never kills the sandbox.
#[derive(Debug)]
pub struct Sandbox {
    root: Root,
    id: String,
    layout: Layout,
    monitor: Option<ProcIdentity>,
    /// The monitor's report pipe, held by the controller that launched it: end of file means
    /// the monitor exited.
    report: Option<BufReader<fs::File>>,
}

impl Sandbox {
    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state root this sandbox lives in.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Blocks until the sandbox has finished and its monitor has cleaned up, then returns the verdict.
    ///
    /// # Errors
    /// `Io` if the result cannot be read; `LaunchFailed` if the monitor died without a result.
    pub fn wait(&mut self) -> Result<Verdict> {
        Ok(self.wait_record()?.verdict)
    }

    /// Usage figures beyond the verdict (CPU throttling), once the sandbox has finished.
    ///
    /// # Errors
    /// As [`Sandbox::wait`], which it calls.
    pub fn usage(&mut self) -> Result<Usage> {
        Ok(self.wait_record()?.usage)
    }

    fn wait_record(&mut self) -> Result<ExitRecord> {
        if let Some(mut reader) = self.report.take() {
            // Nothing more is reported on success; read to end of file, i.e. monitor exit.
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        } else if let Some(monitor) = self.monitor {
            wait_for_exit(monitor)?;
        }
        let path = self.layout.exit();
        let record: ExitRecord = state::read_json(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::new(
                    ErrorKind::LaunchFailed,
                    format!("sandbox {} has no result: its monitor died", self.id),
                )
            } else {
                e
            }
        })?;
        state::check_format(record.format_version, &path)?;
        Ok(record)
    }

    /// Removes a finished sandbox's state directory.
    ///
    /// # Errors
    /// `Io` if the directory cannot be removed.
    pub fn delete(self) -> Result<()> {
        fs::remove_dir_all(&self.layout.dir).map_err(|e| Error::io("remove", &self.layout.dir, e))
    }
}

/// Waits for a process that is not our child to exit, through a pidfd verified against its
/// recorded start time.
fn wait_for_exit(who: ProcIdentity) -> Result<()> {
    let Ok(pidfd) = crate::sys::pidfd_open(who.pid) else {
        return Ok(()); // already gone
    };
    if !who.is_alive() {
        return Ok(()); // the pid now names another process, or a zombie
    }
    loop {
        let mut fds = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(Error::with_source(
                    ErrorKind::Io,
                    "poll the monitor's pidfd",
                    e,
                ))
            }
        }
    }
}
