//! The state root as callers see it: opening it, launching sandboxes (see `launch.rs`),
//! handles on existing ones, listing, gc, spares. Runs in the controller, the process linking
//! runbox (often multi-threaded): it never forks, only execs monitors.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libcontainer::oci_spec::runtime::Spec;

use crate::config::{self, Command};
use crate::error::{Error, ErrorKind, Result};
use crate::host::cgroup;
use crate::host::image::Image;
use crate::host::state;
use crate::host::uids::UidRange;
use crate::images::{ImageStore, ResolvedImage};
use crate::layout::IMAGES_DIR;
use crate::policy::spec::{self, SpecStage};
use crate::proto::Mode;
use crate::verdict::Verdict;

use super::exec;
use super::gc::{self, GcReport};
use super::resolve::resolve;
use super::sandbox::{Sandbox, SandboxInfo};
use super::spares::{Spares, Target};

/// Default state root when neither the caller nor `RUNBOX_ROOT` names one.
pub const DEFAULT_ROOT: &str = "/run/runbox";

/// One entry of [`Root::list`]: a sandbox id and what could be learned about it. A corrupt
/// state file makes only its own entry an error.
#[derive(Debug)]
#[non_exhaustive]
pub struct Listing {
    /// The sandbox id (its directory name).
    pub id: String,
    /// Its state, or why it could not be read.
    pub info: Result<SandboxInfo>,
}

/// A state root: the directory holding one directory per sandbox. Cheap to clone; `Send` and
/// `Sync`, so one `Root` serves every thread of a grader. Its spare monitors live as long as
/// the last clone.
#[derive(Debug, Clone)]
pub struct Root {
    pub(super) inner: Arc<RootInner>,
}

#[derive(Debug)]
pub(super) struct RootInner {
    pub dir: PathBuf,
    pub cgroup_prefix: String,
    monitor: Option<PathBuf>,
    /// The host uids sandboxes get theirs from.
    pub uid_range: UidRange,
    host_image: OnceLock<Image>,
    /// The cgroup v2 directory monitors are born in, if they leave the controller's cgroup
    /// there ([`cgroup::monitors_cgroup_v2`]).
    pub monitors_cgroup: Option<std::os::fd::OwnedFd>,
    /// Idle monitors ready for a request (released when the root is dropped).
    pub spares: Spares,
    /// Parked spares to keep per build shape after a launch (see [`RootOptions::parked_spares`]).
    pub parked: usize,
    /// How long a parked spare waits for a claim.
    pub parked_idle: std::time::Duration,
    /// Spares this root asked to park that may not have yet.
    pub parking: std::sync::Mutex<Vec<super::parked::Parking>>,
    /// One-shot runs' spares to park once their verdict is in: (monitor, build shape).
    pub park_later: std::sync::Mutex<Vec<(PathBuf, config::SandboxSpec)>>,
    /// Where stored images are ([`RootOptions::image_store`]).
    image_store_dir: PathBuf,
    image_store: OnceLock<ImageStore>,
}

/// Options for opening a [`Root`].
#[derive(Debug, Clone, Default)]
pub struct RootOptions {
    cgroup_base: Option<String>,
    cgroup_prefix: Option<String>,
    monitor: Option<PathBuf>,
    spare_monitors: Option<usize>,
    no_prebuild: bool,
    uid_range: Option<UidRange>,
    parked_spares: usize,
    parked_idle: Option<std::time::Duration>,
    image_store: Option<PathBuf>,
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

    /// Puts the prefix under the cgroup `base` instead of a hierarchy's root: sandboxes at
    /// `<base>/<prefix>/<id>`, monitors at `<base>/<prefix>/_monitors`, and nothing written
    /// outside `base` by runbox. For a host that delegates runbox a subtree, e.g. a systemd
    /// unit with `Delegate=yes` (README: "On a systemd host"); `base` must exist. Its own
    /// processes are moved into `<base>/runbox-leaf` on cgroup v2, where a cgroup that gives
    /// controllers to children may hold no processes. Default `/`.
    ///
    /// Sandboxes outlive their controller only if `base` does: a base inside the
    /// controller's own service goes when that service is stopped; a separate unit's does not.
    pub fn cgroup_base(&mut self, base: impl Into<String>) -> &mut Self {
        self.cgroup_base = Some(base.into());
        self
    }

    /// Gives each sandbox a host uid and gid of its own (the same number) from `count` ids
    /// starting at `first`, unless its [`Command::user`] names one. Default 60000 and 1000
    /// (isolate's `first_uid` and `num_boxes`). The kernel keeps budgets per uid (pending
    /// signals, message queue bytes, inotify instances and watches, in-flight descriptors,
    /// pipe buffers, processes): a uid per sandbox keeps one sandbox from draining them for
    /// the others. Controllers sharing a state root never hand out one uid twice; a uid
    /// returns to the range when its sandbox is removed (or by [`Root::gc`] after a crash).
    ///
    /// [`RootOptions::open`] refuses a range that holds a user or group of the host's
    /// `/etc/passwd` or `/etc/group`, or overlaps a range of `/etc/subuid` or `/etc/subgid`,
    /// 65534 or 65535. Launches fail with `LaunchFailed` while every uid of it is in use.
    pub fn uid_range(&mut self, first: u32, count: u32) -> &mut Self {
        self.uid_range = Some(UidRange { first, count });
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
    /// cost of a spare that pre-built nothing). What must match (the sandbox's part of the
    /// config): image, user (any uid of the range serves a sandbox of its own uid), hostname,
    /// binds, memory, pids, cpuset, CFS period, the open-files, file-size, pending-signals,
    /// message-queue, locked-memory and core limits, scratch and shm sizes. What may differ
    /// (the run's part): program, arguments, environment, working directory, streams, copies
    /// in and out, CPU bandwidth, CPU and wall time, output, collect, address-space and stack
    /// limits.
    ///
    /// A pre-built container holds its mounts, cgroup and namespaces while it waits (a few
    /// MiB); it is torn down when the [`Root`] is dropped or its controller dies. Off, the
    /// root also neither parks spares nor claims those other processes parked.
    pub fn prebuild(&mut self, on: bool) -> &mut Self {
        self.no_prebuild = !on;
        self
    }

    /// How many pre-built sandboxes of a launch's build shape to keep *parked* in the state
    /// root after each launch (default 0): spare monitors that leave this process, wait in
    /// `<root>/.spares`, and serve a launch of the same shape from any process that opens
    /// the root, atomically claimed (one claim wins) and replaced after each claim. For
    /// controllers that live for one launch (the CLI, a grader that runs `runbox` per test),
    /// which an in-process spare ([`RootOptions::spare_monitors`]) cannot serve. A parked
    /// spare holds what a pre-built one holds (its mounts, cgroup, namespaces and a uid of
    /// the range; about 3 MiB of memory with its monitor) until claimed or idle for
    /// [`RootOptions::parked_idle`]; none is a daemon: its death loses nothing, and `gc`
    /// collects what a killed one left. [`Root::release_spares`] ends them all. They are a
    /// cache: a launch or [`Root::init_box`] that needs a uid a parked spare holds evicts it
    /// (waiting for its teardown) rather than fail.
    pub fn parked_spares(&mut self, n: usize) -> &mut Self {
        self.parked_spares = n;
        self
    }

    /// How long a parked spare waits for a claim before it tears its container down and
    /// exits (default 60 s).
    pub fn parked_idle(&mut self, idle: std::time::Duration) -> &mut Self {
        self.parked_idle = Some(idle);
        self
    }

    /// The image store [`Command::stored_image`] takes images from. Default:
    /// `$RUNBOX_IMAGE_STORE`, else [`DEFAULT_IMAGE_STORE`](crate::DEFAULT_IMAGE_STORE). It is
    /// opened (created) on first use.
    pub fn image_store(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.image_store = Some(dir.into());
        self
    }

    /// Opens (creating if needed, mode 0700) the state root `dir`.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad path, prefix or cgroup base (or a base that does not exist);
    /// `Io` if the directory cannot be created or the base prepared.
    pub fn open(&self, dir: impl AsRef<Path>) -> Result<Root> {
        let dir = dir.as_ref();
        if !valid_root_path(dir) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "state root {dir:?} must be an absolute utf-8 path without '..', ',', ':' or control characters"
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
        let uid_range = self.uid_range.unwrap_or_default();
        uid_range
            .validate()
            .and_then(|()| uid_range.check_host(Path::new("/etc")))
            .map_err(|msg| Error::new(ErrorKind::InvalidConfig, msg))?;
        let base = self.cgroup_base.as_deref().unwrap_or("/");
        if !cgroup::valid_base(base) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "cgroup base {base:?} must be an absolute cgroup path without '..', ',' or ':'"
                ),
            ));
        }
        cgroup::prepare_base(base).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::InvalidConfig
            } else {
                ErrorKind::Io
            };
            Error::with_source(kind, format!("prepare the cgroup base {base}"), e)
        })?;
        // The prefix as every cgroup path uses it, relative to the hierarchy's root.
        let prefix = match base.trim_matches('/') {
            "" => prefix,
            base => format!("{base}/{prefix}"),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create state root", dir, e))?;
        Ok(Root {
            inner: Arc::new(RootInner {
                monitors_cgroup: cgroup::monitors_cgroup_v2(&prefix),
                dir: dir.to_path_buf(),
                cgroup_prefix: prefix,
                monitor: self.monitor.clone(),
                uid_range,
                host_image: OnceLock::new(),
                spares: Spares::new(self.spare_monitors.unwrap_or(1), !self.no_prebuild),
                parked: if self.no_prebuild {
                    0
                } else {
                    self.parked_spares
                },
                parked_idle: self
                    .parked_idle
                    .unwrap_or(std::time::Duration::from_secs(60)),
                parking: std::sync::Mutex::new(Vec::new()),
                park_later: std::sync::Mutex::new(Vec::new()),
                image_store_dir: self
                    .image_store
                    .clone()
                    .unwrap_or_else(ImageStore::default_dir),
                image_store: OnceLock::new(),
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
    ///
    /// # Errors
    /// As [`RootOptions::open`].
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

    /// The cgroup prefix sandboxes are created under, relative to a hierarchy's root (with
    /// the cgroup base in front, if one was given: `system.slice/x.service/runbox`).
    pub fn cgroup_prefix(&self) -> &str {
        &self.inner.cgroup_prefix
    }

    /// The host-based default image (its skeleton made once per root).
    pub(super) fn host_image(&self) -> Result<&Image> {
        if let Some(img) = self.inner.host_image.get() {
            return Ok(img);
        }
        let img = Image::host_default(&self.inner.dir.join(IMAGES_DIR))?;
        Ok(self.inner.host_image.get_or_init(|| img))
    }

    /// The stored image `cmd` names, resolved (holding the store's shared lock), if any.
    pub(super) fn resolve_stored(&self, cmd: &Command) -> Result<Option<ResolvedImage>> {
        match &cmd.stored_image {
            Some(reference) => Ok(Some(self.image_store()?.resolve(reference)?)),
            None => Ok(None),
        }
    }

    /// The image store of this root ([`RootOptions::image_store`]), opened on first use.
    pub fn image_store(&self) -> Result<ImageStore> {
        if let Some(store) = self.inner.image_store.get() {
            return Ok(store.clone());
        }
        let store = ImageStore::open(&self.inner.image_store_dir)?;
        Ok(self.inner.image_store.get_or_init(|| store).clone())
    }

    /// The monitor executable (see [`Root::open`]).
    pub(super) fn monitor_exe(&self) -> Result<PathBuf> {
        exec::find_monitor(self.inner.monitor.as_deref())
    }

    /// Where this root's spares are made, with the monitor `exe`.
    pub(super) fn spare_target<'a>(&'a self, exe: &'a Path) -> Target<'a> {
        Target {
            exe,
            root: &self.inner.dir,
            prefix: &self.inner.cgroup_prefix,
            cgroup: self.monitors_cgroup(),
            uid_range: self.inner.uid_range,
        }
    }

    /// The cgroup v2 directory monitors are born in, if any.
    pub(super) fn monitors_cgroup(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.inner.monitors_cgroup.as_ref().map(AsFd::as_fd)
    }

    /// The complete OCI runtime spec of a sandbox running `cmd`, with the image itself as a
    /// read-only root instead of the per-sandbox overlay (the escape hatch for other runtimes),
    /// as the JSON document a bundle's `config.json` holds (runtime-spec 1.x): a plain
    /// [`serde_json::Value`], so that runbox's API does not move with any crate's spec types.
    /// (libcontainer itself builds from this spec minus the program, the quota and the
    /// seccomp section, which runbox applies itself.)
    ///
    /// The program runs as the command's [`Command::user`], else as 65534 (a bundle gets no
    /// uid of the root's range: runbox does not see when it ends).
    ///
    /// The spec is complete: program, limits (CPU quota included) and runbox's seccomp policy
    /// as an OCI profile, so `runc run` confines the program as runbox does.
    ///
    /// # Errors
    /// `InvalidConfig` as for [`Root::spawn`].
    pub fn oci_spec(&self, cmd: &Command) -> Result<serde_json::Value> {
        let spec = self.spec(cmd)?;
        serde_json::to_value(&spec)
            .map_err(|e| Error::with_source(ErrorKind::Io, "encode the OCI spec", e))
    }

    /// [`Root::oci_spec`] as libcontainer's type.
    fn spec(&self, cmd: &Command) -> Result<Spec> {
        let stored = self.resolve_stored(cmd)?;
        let mut cfg = resolve(cmd, stored.as_ref(), || self.host_image())?;
        if !cfg.sandbox.image_layers.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a bundle's root is one directory: an image of several layers cannot be written as one (runbox mounts them as an overlay)",
            ));
        }
        // A bundle is run by another runtime, outside runbox's leases: uid 65534 unless the
        // command names one.
        cfg.sandbox.uid_leased = false;
        let lower = match &cfg.sandbox.image {
            Some(dir) => dir.clone(),
            None => self.host_image()?.lower.clone(),
        };
        let id = cmd.name.as_deref().unwrap_or("bundle");
        let cgroup = format!("/{}/{id}", self.inner.cgroup_prefix);
        let masked = crate::host::proc::root_only_proc_files();
        spec::build(
            &cfg.sandbox,
            &lower,
            true,
            &cgroup,
            SpecStage::Final(&cfg.run),
            &masked,
        )
    }

    /// Writes [`Root::oci_spec`] as `<bundle>/config.json`, a bundle `runc run` accepts.
    ///
    /// # Errors
    /// As [`Root::oci_spec`], and `Io` if the file cannot be written.
    pub fn write_bundle(&self, cmd: &Command, bundle: &Path) -> Result<()> {
        state::write_bundle(&self.spec(cmd)?, bundle)
    }

    /// Runs `cmd` in a new sandbox, **blocks until it has finished**, and returns the verdict;
    /// the sandbox is removed. (In an async program, call it from a blocking task.)
    ///
    /// # Errors
    /// Errors are about runbox, never about the program: a program that fails, crashes or hits
    /// a limit still gives `Ok` with the matching [`Verdict::status`].
    ///
    /// The verdict arrives as soon as the monitor has it; the monitor then removes the sandbox
    /// (cgroup, mounts, state directory) on its own, so that cleanup is not on the caller's time.
    pub fn run(&self, cmd: &Command) -> Result<Verdict> {
        let mut sandbox = self.launch(cmd, Mode::Run, true)?;
        let verdict = sandbox.wait_for_report().map(|r| r.verdict);
        // Closing the report pipe lets the monitor tear down and give its uid back at once,
        // while the spares below start (one parked may need that uid).
        drop(sandbox);
        let later = match self.inner.park_later.lock() {
            Ok(mut later) => std::mem::take(&mut *later),
            Err(_) => Vec::new(),
        };
        for (monitor, shape) in later {
            self.park_spares(&monitor, &shape);
        }
        verdict
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
        Sandbox::open(&self.inner.dir, id)
    }

    /// Every sandbox in this state root with its state, sorted by id.
    ///
    /// # Errors
    /// `Io` if the state root cannot be read. A sandbox whose state is unreadable or corrupt
    /// gives an error in its own [`Listing`] only.
    pub fn list(&self) -> Result<Vec<Listing>> {
        let mut out = Vec::new();
        for id in state::sandbox_ids(&self.inner.dir)? {
            let info = self.sandbox(&id).and_then(|s| s.info());
            out.push(Listing { id, info });
        }
        Ok(out)
    }

    /// Removes what crashes left behind: sandboxes whose monitor died (their processes, cgroup,
    /// libcontainer state, mounts and directory), stray mounts under the state root, empty
    /// cgroups under this root's prefix that belong to no sandbox, and unfinished temp dirs.
    /// Idempotent; never touches a live sandbox.
    pub fn gc(&self) -> GcReport {
        gc::collect(&self.inner.dir, &self.inner.cgroup_prefix)
    }

    /// Releases the spare monitors and returns once they have exited (a spare building a
    /// container finishes and tears it down first; at most a minute); new ones are made on
    /// the next launch. Dropping the last clone of a `Root` does the same for this root's
    /// own spares; this call also ends every spare parked in the state root, whichever
    /// process parked it ([`RootOptions::parked_spares`]).
    pub fn release_spares(&self) {
        self.inner.spares.release();
        super::parked::release_all(&self.inner.dir);
    }

    /// Stops waiting for the parked spares this root started that have not parked yet: for
    /// a process about to exit, which would otherwise wait, when the root is dropped, for
    /// each one's first process (it exits once the spare has detached, a millisecond or two
    /// after the exec). Those processes are then reaped by whoever adopts them when this
    /// process exits (init, or a subreaper). The spares themselves are unaffected. A
    /// long-lived process should not call it: each unfinished start would stay a zombie
    /// until the process exits.
    pub fn stop_waiting_for_spares(&self) {
        if let Ok(mut parking) = self.inner.parking.lock() {
            parking.drain(..).for_each(super::parked::Parking::abandon);
        }
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
        let stored = self.resolve_stored(cmd)?;
        let shape = resolve(cmd, stored.as_ref(), || self.host_image())?
            .sandbox
            .shape();
        let exe = self.monitor_exe()?;
        self.inner.spares.warm_up(shape, &self.spare_target(&exe));
        Ok(())
    }
}

/// `runbox` for the default state root, `runbox-<hash of the path>` for any other, so that two
/// state roots never share sandbox cgroups (ids are unique per root only).
fn default_cgroup_prefix(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_ROOT) {
        return "runbox".to_string();
    }
    let h = crate::layout::fnv1a(dir.as_os_str().as_encoded_bytes());
    // The low 32 bits, as earlier releases named them.
    format!("runbox-{:08x}", h & 0xffff_ffff)
}

/// Whether `dir` can be a state root: absolute, UTF-8, without `..`, `,` or `:` (overlayfs
/// and mount options split on those) and without control characters (a sandbox directory is
/// sent to a spare as one line of its request protocol).
pub(crate) fn valid_root_path(dir: &Path) -> bool {
    config::is_clean_absolute(dir)
        && dir
            .to_str()
            .is_some_and(|s| !s.contains([',', ':']) && !s.contains(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `proto_frames` fuzz target's oracle: a state root with a newline was
    /// accepted, and the `run DIR` line that hands one of its sandboxes to a spare then split
    /// in two (the spare took the part before the newline for the sandbox directory).
    #[test]
    fn a_state_root_with_a_control_character_is_refused() {
        for dir in [
            "/tmp/runbox-unit\nroot",
            "/tmp/runbox-unit\rroot",
            "/tmp/runbox-unit\u{7f}",
        ] {
            let e = Root::open(dir).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{dir:?}");
            assert!(e.to_string().contains("control characters"), "{e}");
            assert!(!Path::new(dir).exists());
        }
    }

    #[test]
    fn default_cgroup_prefixes_are_stable_and_differ_per_root() {
        assert_eq!(default_cgroup_prefix(Path::new(DEFAULT_ROOT)), "runbox");
        let a = default_cgroup_prefix(Path::new("/srv/a"));
        assert_eq!(a, default_cgroup_prefix(Path::new("/srv/a")));
        assert_ne!(a, default_cgroup_prefix(Path::new("/srv/b")));
        assert!(
            a.starts_with("runbox-") && a.len() == "runbox-".len() + 8,
            "{a}"
        );
    }

    #[test]
    fn bad_state_roots_and_prefixes_are_refused_before_anything_is_made() {
        for dir in ["relative", "/a/../b", "/a,b", "/a:b"] {
            let e = Root::open(dir).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{dir}");
            assert!(!Path::new(dir).exists());
        }
        let e = RootOptions::new()
            .cgroup_prefix("bad prefix")
            .open("/nonexistent-runbox-unit/root")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(!Path::new("/nonexistent-runbox-unit").exists());
    }
}
