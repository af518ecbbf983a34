//! Launching a sandbox, top to bottom: resolve the command (every check before a side effect),
//! stage its directory, take a spare, claim the id atomically, hand the sandbox to the spare
//! or exec a monitor, read its first report, top the spares up. Runs in the controller.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Command, RunSpec, SandboxSpec, Stdin, User};
use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::ProcIdentity;
use crate::host::state::SandboxRecord;
use crate::host::uids::{self, UidLease};
use crate::host::{cgroup, state, sys};
use crate::layout::{Layout, NEW_PREFIX};
use crate::proto::{Mode, MonitorArgs, ReportReader, StreamFds};

use super::exec::{no_writer, read_first_report, reap, spawn_monitor};
use super::parked;
use super::resolve::resolve;
use super::root::Root;
use super::sandbox::{clean_lost, wait_for_exit, Sandbox};
use super::spares::Spare;

impl Root {
    /// Launches `cmd` in `mode`; `remove_on_exit` for one-shot runs (the monitor removes the
    /// sandbox once it has reported the verdict).
    pub(super) fn launch(
        &self,
        cmd: &Command,
        mode: Mode,
        remove_on_exit: bool,
    ) -> Result<Sandbox> {
        // A stored image holds the store's lock from here until the sandbox pins it.
        let stored = self.resolve_stored(cmd)?;
        let mut cfg = resolve(cmd, stored.as_ref(), || self.host_image())?;
        let mut streams = inherited_streams(&cfg.run)?;
        // The work dirs travel with the streams, as detached copies of their mount trees
        // made here, where their paths were resolved (a spare's own mount namespace may
        // predate them: a box's disk mounted after the spare was built).
        streams.extend(rw_trees(&cfg.sandbox)?);
        let monitor = self.monitor_exe()?;
        let me = ProcIdentity::own()
            .map_err(|e| Error::with_source(ErrorKind::Io, "identify this process", e))?;
        let tmp = self.stage(&cmd.stdin)?;
        // A spare whose pre-built container fits is taken first: the sandbox then lives in
        // that container's cgroup.
        let shape = cfg.sandbox.shape();
        // Of the root's own spares one of this shape, else one parked by any process (unless
        // this root builds nothing ahead), else any of its own.
        let inner = &self.inner;
        let spare = inner
            .spares
            .take(&shape, true)
            .or_else(|| {
                inner.spares.prebuilds().then(|| {
                    parked::claim(
                        &inner.dir,
                        &shape,
                        inner.uid_range,
                        &inner.cgroup_prefix,
                        &monitor,
                    )
                })?
            })
            .or_else(|| self.inner.spares.take(&shape, false));
        let warm_cgroup = spare
            .as_ref()
            .filter(|s| s.fits(&shape))
            .and_then(|s| s.warm_cgroup())
            .map(str::to_string);
        // A uid of the sandbox's own: the spare's (its container may be built as it; the
        // spare holds its lease), else a fresh lease, owned by the staging directory's name
        // until the record names it, and given back by its guard if the launch fails first.
        let spare_uid = spare.as_ref().and_then(Spare::warm_uid);
        let leased = match (cfg.sandbox.uid_leased, spare_uid) {
            (false, _) => Ok((None, None)),
            (true, Some(uid)) => Ok((Some(uid), None)),
            (true, None) => self
                .lease_uid(&tmp)
                .map(|lease| (Some(lease.uid()), Some(lease))),
        };
        let (uid, lease) = match leased {
            Ok(leased) => leased,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if let Some(spare) = spare {
                    self.inner.spares.put_back(spare);
                }
                return Err(e);
            }
        };
        if let Some(uid) = uid {
            cfg.sandbox.user = User { uid, gid: uid };
        }
        let claimed = self.claim(&tmp, cmd.name.as_deref(), |id| SandboxRecord {
            format_version: state::FORMAT_VERSION,
            id: id.to_string(),
            cgroup_path: warm_cgroup
                .clone()
                .unwrap_or_else(|| format!("/{}/{id}", self.inner.cgroup_prefix)),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            creator: me,
            remove_on_exit,
            config: cfg.clone(),
        });
        let (id, layout) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                drop(lease); // nothing ran as it: given back
                if let Some(spare) = spare {
                    self.inner.spares.put_back(spare);
                }
                return Err(e);
            }
        };
        // The sandbox owns its uid's lease from now on (it outlives this controller; its
        // removal gives the uid back). A spare's uid the sandbox does not take (it names its
        // own user) is given back by the spare, once it has torn its container down.
        match (lease, uid) {
            (Some(lease), _) => lease.transfer(&id),
            (None, Some(spare_uid)) => uids::transfer(&self.inner.dir, spare_uid, &id),
            (None, None) => {}
        }
        let span = tracing::debug_span!("launch", sandbox = %id, mode = mode.as_str());
        let _enter = span.enter();
        self.inner.spares.remember_shape(shape.clone());
        // The image's layers stay while the sandbox directory exists (`image rm`, `prune`).
        let pinned = stored.map_or(Ok(()), |img| img.pin(&layout.dir));
        let unused_warm = spare.as_ref().and_then(|s| s.unused_warm_cgroup(&shape));
        let started = match pinned {
            Ok(()) => self.start_monitor(&layout, &monitor, mode, spare, &streams),
            Err(e) => Err(e),
        };
        if started.is_ok() && self.inner.parked > 0 {
            if remove_on_exit {
                // A one-shot run parks after its verdict (`Root::run`): the new spare's build
                // then does not compete with this run for the CPU.
                if let Ok(mut later) = self.inner.park_later.lock() {
                    later.push((monitor.clone(), shape));
                }
            } else {
                self.park_spares(&monitor, &shape);
            }
        }
        // The monitor's first report came: a spare that took the sandbox is past the point
        // where it tears down what it pre-built (one that died first was replaced, its
        // cgroup removed, in `start_monitor`).
        if let (Some(path), true) = (unused_warm, started.is_ok()) {
            let _ = cgroup::kill_and_remove(&path);
        }
        match started {
            Ok(report) => Ok(Sandbox::launched(id, layout, report)),
            Err(e) => {
                // A monitor that reported its failure has rolled back; one that died without a
                // report may have left an init waiting inside libcontainer and its cgroup:
                // clean those up as for a lost sandbox before the directory goes.
                if let Ok(record) = state::read_json::<SandboxRecord>(&layout.record()) {
                    let _ = clean_lost(&layout, &record);
                }
                let _ = state::remove_sandbox_dir(&layout.dir);
                Err(e)
            }
        }
    }

    /// Parks spares of `shape` for other processes (see [`crate::RootOptions::parked_spares`]).
    pub(super) fn park_spares(&self, monitor: &Path, shape: &SandboxSpec) {
        let target = self.spare_target(monitor);
        let inner = &self.inner;
        parked::replenish(
            &target,
            shape,
            inner.parked,
            inner.parked_idle,
            &inner.parking,
        );
    }

    /// Leases a uid of the root's range for the sandbox staged in `tmp`. When every uid is
    /// held, a parked spare holding one is evicted (parked spares are a cache), as many
    /// times as it takes; only then, with uids held by sandboxes, boxes and live spares
    /// alone, is the range full.
    fn lease_uid(&self, tmp: &Path) -> Result<UidLease> {
        let owner = tmp.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let range = self.inner.uid_range;
        let dir = &self.inner.dir;
        let lease = || loop {
            match range.lease(dir, owner) {
                Ok(None) if parked::evict(dir, |uid| range.contains(uid.into())) => continue,
                other => return other,
            }
        };
        match lease() {
            Ok(Some(lease)) => Ok(lease),
            Ok(None) => Err(Error::new(
                ErrorKind::LaunchFailed,
                format!(
                    "every uid of the range {}+{} is held by a sandbox: remove some, or widen the range",
                    range.first, range.count
                ),
            )),
            Err(e) => Err(Error::with_source(ErrorKind::Io, "lease a uid", e)),
        }
    }

    /// A private directory to prepare a sandbox in, `.new-<pid>-<start time>-<n>` (so that gc
    /// can tell when its creator died before claiming an id), holding the program's stdin.
    fn stage(&self, stdin: &Stdin) -> Result<PathBuf> {
        let name = state::owned_name(NEW_PREFIX)?;
        let tmp = self.inner.dir.join(&name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        let layout = Layout::new(&self.inner.dir, &name);
        // The sandbox gets a private copy: an fd to the caller's own file could be reopened
        // for writing through /proc/self/fd/0 by a program running as uid 0.
        let written = match stdin {
            Stdin::Bytes(bytes) => state::write_atomic(&layout.stdin(), bytes),
            Stdin::File(path) => fs::copy(path, layout.stdin())
                .map(drop)
                .map_err(|e| Error::io("copy stdin from", path, e)),
            // Null, Inherit (the descriptor goes with the launch).
            _ => Ok(()),
        };
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
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
                    let micros = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    format!("rb-{micros:x}-{:x}-{n:x}", std::process::id())
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
                                wait_for_exit(monitor, None)?;
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

    /// Hands the sandbox to `spare` if given and alive, else execs a new monitor, with the
    /// caller's descriptors it inherits (`streams`); then reads the monitor's first report
    /// and tops the spares up again. Returns the report pipe.
    fn start_monitor(
        &self,
        layout: &Layout,
        monitor: &Path,
        mode: Mode,
        spare: Option<Spare>,
        streams: &[OwnedFd],
    ) -> Result<ReportReader> {
        let streams: Vec<BorrowedFd<'_>> = streams.iter().map(AsFd::as_fd).collect();
        let result = match spare {
            Some(spare) => {
                let warm_cgroup = spare.warm_cgroup().map(str::to_string);
                let taken = spare.hand_over(layout, mode, &streams).map(|reader| {
                    let probe = reader.pipe().try_clone().ok();
                    (read_first_report(layout, reader, None), probe)
                });
                match taken {
                    Ok((Ok(report), _)) => Ok(report),
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
                            let _ = cgroup::kill_and_remove(&path);
                        }
                        exec_monitor(layout, monitor, mode, self.monitors_cgroup(), &streams)
                    }
                }
            }
            None => exec_monitor(layout, monitor, mode, self.monitors_cgroup(), &streams),
        };
        if result.is_ok() {
            self.inner.spares.replenish(&self.spare_target(monitor));
        }
        result
    }
}

/// Execs a new monitor for the sandbox at `layout`, sends it the caller's descriptors the
/// sandbox inherits (`streams`, on a socket that is the monitor's stdin) and reads its first
/// report.
fn exec_monitor(
    layout: &Layout,
    monitor: &Path,
    mode: Mode,
    cgroup: Option<BorrowedFd<'_>>,
    streams: &[BorrowedFd<'_>],
) -> Result<ReportReader> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::with_source(ErrorKind::Io, "create the report pipe", e))?;
    let args = MonitorArgs::Sandbox {
        dir: layout.dir.clone(),
        mode,
    };
    let (socket, monitor_stdin) = if streams.is_empty() {
        (None, None)
    } else {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::with_source(ErrorKind::Io, "create the streams socket", e))?;
        (Some(mine), Some(theirs))
    };
    let mut first = spawn_monitor(monitor, &args, monitor_stdin, Some(report_w), cgroup)?;
    if let Some(socket) = &socket {
        // A small message into an empty socket buffer: it does not block. A monitor that
        // died already shows in its report below, and one that refused them says why there.
        if let Err(e) = StreamFds::send(socket.as_fd(), streams) {
            tracing::debug!(error = %e, "the inherited streams were not sent");
        }
    }
    let status = reap(&mut first)?;
    read_first_report(
        layout,
        ReportReader::new(fs::File::from(report_r)),
        Some(status),
    )
}

/// A detached copy of the mount tree of each read-write bind's host directory of `sandbox`,
/// in order (the monitor attaches them to the container before start).
fn rw_trees(sandbox: &SandboxSpec) -> Result<Vec<OwnedFd>> {
    sandbox
        .rw_binds
        .iter()
        .map(|(host, _)| {
            sys::open_tree_clone(host).map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    format!("read-write bind source {}", host.display()),
                    e,
                )
            })
        })
        .collect()
}

/// Duplicates the caller's descriptors among 0, 1, 2 that `run` inherits, refusing a
/// terminal (runbox never hands a sandbox the caller's terminal: TIOCSTI and job control
/// would reach the caller's session) or a closed descriptor.
fn inherited_streams(run: &RunSpec) -> Result<Vec<OwnedFd>> {
    run.inherited_streams()
        .into_iter()
        .map(|fd| {
            let (name, own) = match fd {
                0 => ("stdin", std::io::stdin().as_fd().try_clone_to_owned()),
                1 => ("stdout", std::io::stdout().as_fd().try_clone_to_owned()),
                _ => ("stderr", std::io::stderr().as_fd().try_clone_to_owned()),
            };
            let dup = own.map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    format!("this process's {name} (fd {fd}) cannot be inherited"),
                    e,
                )
            })?;
            if nix::unistd::isatty(dup.as_raw_fd()).unwrap_or(false) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "this process's {name} is a terminal: a sandbox never gets the caller's terminal (redirect it, or capture the output)"
                    ),
                ));
            }
            Ok(dup)
        })
        .collect()
}
