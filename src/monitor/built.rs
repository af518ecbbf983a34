//! A container built and parked before start: rootfs mounted, bundle written, cgroup made,
//! libcontainer's init waiting for `start`, with no program yet. Built for a request, or ahead
//! of one by a spare. Runs in the monitor (libcontainer clones the init from this process).

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags};
use nix::sys::wait::waitpid;

use crate::config::SandboxSpec;
use crate::error::{Error, ErrorKind, Result};
use crate::host::cgroup::{self, Cgroup};
use crate::host::image::Image;
use crate::host::{rootfs, state, sys};
use crate::init::{InheritedFds, SandboxInit};
use crate::layout::{Scratch, IMAGES_DIR};
use crate::policy::spec::{self, SpecStage};
use crate::proto::{InitStatus, StatusFrames};

use super::phases;
use super::process::{self, Prepared};

/// The libcontainer id of every container (each monitor has its own libcontainer root).
const CONTAINER_ID: &str = "sandbox";

/// How long the monitor waits for the init to take the program.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The container's init: our child (libcontainer clones it with CLONE_PARENT), so its pid
/// names it until we reap it; the pidfd is for polling and signalling.
pub(super) struct Init {
    /// Its pid in the host's pid namespace.
    pub pid: i32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
}

/// The init's output, status and request channels, from the build to the supervisor.
pub(super) struct Streams {
    /// The read end of the program's stdout.
    pub out: OwnedFd,
    /// The read end of the program's stderr.
    pub err: OwnedFd,
    /// The read end of the init's status pipe ([`InitStatus`] frames), non-blocking.
    pub status: File,
    /// The monitor's end of the lifeline, held until the monitor exits.
    _lifeline: OwnedFd,
    /// The monitor's end of the init's request socket.
    pub request: OwnedFd,
    /// Status frames read so far and not yet taken (what followed `ready`).
    pub lines: StatusFrames,
    /// The init refused the program request (a failure instead of `ready`).
    pub refused: bool,
}

impl Streams {
    /// Waits (at most 10 s) for the init's `ready`: the program request was applied and
    /// the program is being started. A failure or the init's end fails the launch.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let next = self
                .lines
                .next_status()
                .map_err(|e| launch("read the init's status", e))?;
            match next {
                Some(InitStatus::Ready) => return Ok(()),
                Some(InitStatus::Failed(why)) => {
                    self.refused = true;
                    return Err(Error::new(
                        ErrorKind::LaunchFailed,
                        format!("the sandbox's init could not start the program: {why}"),
                    ));
                }
                Some(InitStatus::Mark { label, us }) => {
                    phases::mark_at(&label, us);
                    continue;
                }
                Some(other) => {
                    return Err(Error::new(
                        ErrorKind::LaunchFailed,
                        format!("unexpected status from the sandbox's init: {other:?}"),
                    ))
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::LaunchFailed,
                    format!("the sandbox's init did not take the program within {READY_TIMEOUT:?}"),
                ));
            }
            let mut fds = [PollFd::new(self.status.as_fd(), PollFlags::POLLIN)];
            sys::poll_until(&mut fds, Some(deadline))
                .map_err(|e| launch("poll the init's status", e))?;
            match self.lines.fill_from(self.status.as_fd()) {
                Ok(false) => {
                    return Err(Error::new(
                        ErrorKind::LaunchFailed,
                        "the sandbox's init ended before taking the program",
                    ))
                }
                Ok(true) => {}
                Err(e) => return Err(launch("read the init's status", e)),
            }
        }
    }
}

/// What is left to undo of a built container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The init lives (parked before start, or running the program), unreaped.
    InitLive,
    /// The init was reaped: its pid namespace is empty; cgroup and mounts remain.
    InitReaped,
    /// Nothing is left.
    TornDown,
}

/// A host path and the (device, inode) it resolved to.
type SourceId = (PathBuf, Option<(u64, u64)>);

/// The identity of the image directory and of every bind source of `cfg` mounted at build,
/// as resolved now (read-write binds are attached at each run, from their source then).
fn source_ids(lower: &Path, cfg: &SandboxSpec) -> Vec<SourceId> {
    use std::os::unix::fs::MetadataExt;
    std::iter::once(lower)
        .chain(cfg.image_layers.iter().map(PathBuf::as_path))
        .chain(
            cfg.image_trees
                .iter()
                .chain(&cfg.binds)
                .map(|(src, _)| src.as_path()),
        )
        .map(|p| {
            let id = fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
            (p.to_path_buf(), id)
        })
        .collect()
}

/// The overlay's lower dirs, top first: the image dir, then a stored image's other layers.
fn lowers<'a>(lower: &'a Path, cfg: &'a SandboxSpec) -> Vec<&'a Path> {
    std::iter::once(lower)
        .chain(cfg.image_layers.iter().map(PathBuf::as_path))
        .collect()
}

/// A built container (see the module docs). Dropping it tears it down.
pub(super) struct Built {
    /// The [`SandboxSpec::shape`] it was built for.
    shape: SandboxSpec,
    cgroup_path: String,
    /// The sandbox's cgroup.
    pub cgroup: Cgroup,
    /// The scratch the rootfs and libcontainer's state live on.
    pub scratch: Scratch,
    mounted: rootfs::Mounted,
    container: Container,
    /// The container's init.
    pub init: Init,
    /// Identity of the image directory and each bind source when the container was built
    /// (`None` if one changed during the build): a request is served only if they still match.
    sources: Option<Vec<SourceId>>,
    stage: Stage,
}

impl Drop for Built {
    /// A container nobody tore down explicitly (a spare's that was never used, a launch that
    /// failed before its monitor took it over) is torn down here.
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl Built {
    /// Mounts the rootfs and builds the container for `cfg`'s shape in `cgroup_path`, under
    /// the state root `root`. On failure everything is rolled back.
    pub fn new(
        cfg: &SandboxSpec,
        cgroup_path: &str,
        root: &Path,
        prepared: &Prepared,
    ) -> Result<(Built, Streams)> {
        let lower = match &cfg.image {
            Some(dir) => dir.clone(),
            None => Image::host_default(&root.join(IMAGES_DIR))?.lower,
        };
        process::hide_limitless_hierarchies();
        // libcontainer changes the whole process's directory (into the scratch, at start):
        // after a container was torn down and its scratch unmounted (a dead pre-built one
        // replaced), that directory is unreachable and the next build fails to get it.
        std::env::set_current_dir("/").map_err(|e| launch("change to /", e))?;
        let cgroup = cgroup::Layout::detect()
            .map_err(|e| Error::with_source(ErrorKind::UnsupportedHost, "read cgroup mounts", e))?
            .cgroup(cgroup_path);
        cgroup
            .create_parents()
            .map_err(|e| launch("create the cgroup prefix", e))?;
        let scratch = Scratch::of_root(root);
        let before = source_ids(&lower, cfg);
        let mut mounted = rootfs::mount_rootfs(
            &scratch,
            cfg.limits.scratch_bytes,
            &lowers(&lower, cfg),
            &cfg.image_trees,
            &cfg.rw_binds
                .iter()
                .map(|(_, dest)| dest.as_str())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| launch("mount the sandbox rootfs", e))?;
        phases::mark("rootfs_mounted");
        match build_container(cfg, &scratch, cgroup_path, prepared) {
            Ok((container, init, streams)) => {
                // A source replaced while it was being mounted leaves the identity unknown.
                let sources = (source_ids(&lower, cfg) == before).then_some(before);
                let mut built = Built {
                    shape: cfg.shape(),
                    cgroup_path: cgroup_path.to_string(),
                    cgroup,
                    scratch,
                    mounted,
                    container,
                    init,
                    sources,
                    stage: Stage::InitLive,
                };
                if let Err(e) = built.cgroup.forbid_swap() {
                    return Err(built.rollback(launch("forbid swap", e)));
                }
                Ok((built, streams))
            }
            Err(Unbuilt { error, container }) => {
                let undone = undo_unbuilt(container, &scratch, &cgroup, cgroup_path, &mut mounted);
                Err(match undone {
                    Ok(()) => error,
                    Err(cleanup) => error.with_cleanup_error(&cleanup),
                })
            }
        }
    }

    /// True if this container can serve `cfg`: built in `cgroup_path` for a spec it fits,
    /// from an image directory and bind sources that are still the same files (a grader may
    /// swap a directory for another under the same path between runs: the pre-built mounts
    /// would still show the old one).
    pub fn serves(&self, cfg: &SandboxSpec, cgroup_path: &str) -> bool {
        self.cgroup_path == cgroup_path
            && self.shape.fits(cfg)
            && self.sources.as_ref().is_some_and(|ids| {
                ids.first()
                    .is_some_and(|(lower, _)| &source_ids(lower, cfg) == ids)
            })
    }

    /// True while the container's init lives: a pre-built one may have been killed while
    /// its spare waited (its pidfd is then readable), and serves no launch.
    pub fn init_alive(&self) -> bool {
        if self.stage != Stage::InitLive {
            return false;
        }
        let mut fds = [PollFd::new(self.init.pidfd.as_fd(), PollFlags::POLLIN)];
        !matches!(sys::poll_until(&mut fds, Some(Instant::now())), Ok(n) if n > 0)
    }

    /// True if the container's init has ended, or ends within `grace` (a SIGKILLed init
    /// takes a moment to exit: its pid namespace and mounts go first).
    pub fn init_ended_within(&self, grace: Duration) -> bool {
        if self.stage != Stage::InitLive {
            return true;
        }
        let mut fds = [PollFd::new(self.init.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(sys::poll_until(&mut fds, Some(Instant::now() + grace)), Ok(n) if n > 0)
    }

    /// Starts the container: the init goes on to read its program request.
    pub fn start(&mut self) -> Result<()> {
        self.container
            .start()
            .map_err(|e| launch("start the container", e))
    }

    /// Records that the caller has reaped the init.
    pub fn init_reaped(&mut self) {
        if self.stage == Stage::InitLive {
            self.stage = Stage::InitReaped;
        }
    }

    /// Undoes whatever was set up and returns `err` (with any cleanup error appended).
    pub fn rollback(&mut self, err: Error) -> Error {
        match self.teardown() {
            Ok(()) => err,
            Err(cleanup) => err.with_cleanup_error(&cleanup),
        }
    }

    /// Kills what is left of the container, removes its cgroup and unmounts the rootfs (with
    /// libcontainer's state on it). Only the first call does work.
    pub fn teardown(&mut self) -> Result<()> {
        if self.stage == Stage::TornDown {
            return Ok(());
        }
        if self.stage == Stage::InitLive {
            // Our unreaped child: SIGKILL takes its pid namespace down with it.
            let _ = sys::pidfd_send_signal(&self.init.pidfd, libc::SIGKILL);
            let _ = waitpid(nix::unistd::Pid::from_raw(self.init.pid), None);
        }
        self.stage = Stage::TornDown;
        let mut errors = Vec::new();
        // The init was reaped, so its pid namespace is empty: what libcontainer's delete
        // would do (a new cgroup manager, a kill, rmdirs) reduces to the rmdirs below.
        if let Err(e) = cgroup::kill_cgroup(&self.cgroup, &self.cgroup_path) {
            errors.push(format!("empty the cgroup: {e}"));
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

/// A failed build: the error, and the container if libcontainer had made it.
struct Unbuilt {
    error: Error,
    container: Option<Box<Container>>,
}

impl From<Error> for Unbuilt {
    fn from(error: Error) -> Self {
        Unbuilt {
            error,
            container: None,
        }
    }
}

/// Writes the bundle and builds the container (the init then waits for start).
fn build_container(
    cfg: &SandboxSpec,
    scratch: &Scratch,
    cgroup_path: &str,
    prepared: &Prepared,
) -> std::result::Result<(Container, Init, Streams), Unbuilt> {
    let bundle = scratch.bundle();
    let first = spec::build(
        cfg,
        &scratch.rootfs(),
        false,
        cgroup_path,
        SpecStage::ForLibcontainer,
        &crate::host::proc::root_only_proc_files(),
    )?;
    state::write_bundle(&first, &bundle)?;
    phases::mark("bundle_written");
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
        prepared.filters.clone(),
        InheritedFds {
            status: status_w.as_raw_fd(),
            lifeline: lifeline_r.as_raw_fd(),
            request: request_init.as_raw_fd(),
            monitor_ends: [lifeline_w.as_raw_fd(), request.as_raw_fd()],
        },
    );
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null: OwnedFd = File::open("/dev/null")
        .map_err(|e| launch("open /dev/null", e))?
        .into();
    let lc_root = scratch.libcontainer_root();
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
    phases::mark("container_built");
    // Only the init may hold these ends, so its exit is end of file on them.
    drop((status_w, lifeline_r, request_init));
    let Some(pid) = container.pid().map(|p| p.as_raw()) else {
        return Err(Unbuilt {
            error: Error::new(ErrorKind::LaunchFailed, "container has no init pid"),
            container: Some(Box::new(container)),
        });
    };
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            return Err(Unbuilt {
                error: launch("pidfd_open init", e),
                container: Some(Box::new(container)),
            })
        }
    };
    let streams = Streams {
        out: out_r,
        err: err_r,
        status: File::from(status_r),
        _lifeline: lifeline_w,
        request,
        lines: StatusFrames::default(),
        refused: false,
    };
    Ok((container, Init { pid, pidfd }, streams))
}

/// Undoes a build that failed before the container's init was ours: deletes what
/// libcontainer made (through its own delete, since the init may not be known), removes the
/// cgroup (at `cgroup_path`) and unmounts the rootfs.
///
/// The cgroup is emptied first, waiting until its processes are gone: a build that failed
/// in the container's init (a bind source removed meanwhile, say) leaves the intermediate
/// process and the init SIGKILLed by libcontainer's cleanup but possibly not yet exited (a
/// loaded host, a mount namespace to tear down), and libcontainer gives up removing the
/// cgroup after ~100 ms. A cgroup left here is one nobody else removes while its controller
/// lives when it is a spare's `_warm-*` one (the spare stays cold and forgets it).
fn undo_unbuilt(
    container: Option<Box<Container>>,
    scratch: &Scratch,
    cgroup: &Cgroup,
    cgroup_path: &str,
    mounted: &mut rootfs::Mounted,
) -> Result<()> {
    let mut errors = Vec::new();
    let lc_dir = scratch.libcontainer_root().join(CONTAINER_ID);
    if let Some(mut c) = container.or_else(|| Container::load(lc_dir).ok().map(Box::new)) {
        if let Err(e) = c.delete(true) {
            errors.push(format!("delete container: {e}"));
        }
    }
    if let Err(e) = cgroup::kill_cgroup(cgroup, cgroup_path) {
        errors.push(format!("empty the cgroup: {e}"));
    }
    if let Err(e) = cgroup.remove() {
        errors.push(format!("remove cgroup: {e}"));
    }
    if let Err(e) = rootfs::unmount(mounted) {
        errors.push(format!("{e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Io, errors.join("; ")))
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| launch("create a pipe", e))
}

/// A launch step's error.
pub(super) fn launch(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::LaunchFailed, what.to_string(), e)
}
