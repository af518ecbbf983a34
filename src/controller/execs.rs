//! Execs from the controller's side: [`Sandbox::exec`] asks the sandbox's monitor, over its
//! control socket, to run a [`ProcessSpec`] through the sandbox's init, and the [`Exec`]
//! handle waits for (or kills) it. The verdict is read from `execs/<n>/exit.json`, which the
//! monitor writes into space reserved at the exec's start: any controller, later or after
//! the monitor is gone, reads the same verdict. A wait is told of it by the monitor on the
//! exec's control connection (`ExecWait`), and watches the directory only where no monitor
//! answers. Runs in the controller.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::config::{Output, Stdin};
use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::ProcIdentity;
use crate::host::state::{self, ExitRecord};
use crate::layout::ExecLayout;
use crate::process_spec::ProcessSpec;
use crate::proto::control::{ControlRequest, ControlResponse};
use crate::proto::exec::{ExecProcess, ExecStream};
use crate::signal::Signal;
use crate::verdict::Verdict;

use super::control::Client;
use super::sandbox::Sandbox;

/// How often a waiter checks that the monitor still lives while no verdict comes.
const LIVENESS_STEP: Duration = Duration::from_millis(200);

/// A process started in a sandbox by [`Sandbox::exec`], or found again by number
/// ([`Sandbox::exec_handle`]).
#[derive(Debug)]
pub struct Exec {
    sandbox: String,
    /// The state root.
    root: std::path::PathBuf,
    n: u64,
    files: ExecLayout,
    /// The sandbox's monitor when the handle was made: a waiter stops when it is gone.
    monitor: Option<ProcIdentity>,
    /// A connection on which an `ExecWait` is pending (a wait cut short by its deadline).
    waiter: std::sync::Mutex<Option<Client>>,
}

/// How a wait on the monitor came out.
enum Waited {
    /// The monitor says the verdict is written.
    Ended,
    /// The deadline came first.
    TimedOut,
    /// The monitor cannot answer (gone, full, or refused): read or watch the disk instead.
    NotServed,
}

impl Sandbox {
    /// Runs `spec` in this running sandbox through its init, with the sandbox's namespaces,
    /// cgroup, seccomp filter, rlimits and user, and no capabilities. Returns once the init
    /// has the request; the process may still fail to start (a missing program "exits" with
    /// 127, its stderr saying why, as in a shell).
    ///
    /// # Errors
    /// `InvalidConfig` for a bad spec (another user than the sandbox's, a terminal as a
    /// stream…); `InvalidState` if the sandbox is not running (created, paused, stopped, or
    /// lost: its monitor died) or already runs the most execs at once; `NotFound` if it is
    /// gone.
    pub fn exec(&self, spec: &ProcessSpec) -> Result<Exec> {
        spec.validate()?;
        let record = self.record()?;
        if let Some(uid) = spec.user {
            if uid != record.config.sandbox.user.uid {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "exec as uid {uid}: sandbox {} runs as uid {}, and its init has no \
                         capabilities to change user",
                        self.id(),
                        record.config.sandbox.user.uid
                    ),
                ));
            }
        }
        let mut owned: Vec<OwnedFd> = vec![stdin_of(spec, self.layout().execs().as_path())?];
        let mut modes = [ExecStream::Capture; 2];
        for (i, (out, name)) in [(spec.stdout, "stdout"), (spec.stderr, "stderr")]
            .into_iter()
            .enumerate()
        {
            let given = spec.fds[i + 1]
                .as_ref()
                .map(|fd| fd.as_fd().try_clone_to_owned());
            let fd = match (given, out) {
                (Some(fd), _) => Some(fd),
                (None, Output::Inherit) => Some(if i == 0 {
                    std::io::stdout().as_fd().try_clone_to_owned()
                } else {
                    std::io::stderr().as_fd().try_clone_to_owned()
                }),
                (None, _) => None,
            };
            if let Some(fd) = fd {
                let fd = fd.map_err(|e| {
                    Error::with_source(ErrorKind::InvalidConfig, format!("the exec's {name}"), e)
                })?;
                refuse_terminal(&fd, name)?;
                modes[i] = ExecStream::Inherit;
                owned.push(fd);
            }
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let process = ExecProcess {
            program: spec.program.clone(),
            args: std::iter::once(spec.program.clone())
                .chain(spec.args.iter().cloned())
                .collect(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: spec.cwd.clone(),
            cpu_time_ms: spec.cpu_time.map(ms),
            wall_time_ms: spec.wall_time.map(ms),
            output_bytes: spec.output_bytes,
            stdout: modes[0],
            stderr: modes[1],
        };
        let fds: Vec<BorrowedFd<'_>> = owned.iter().map(AsFd::as_fd).collect();
        match self.control_keeping(ControlRequest::Exec { process }, &fds)? {
            Some((ControlResponse::ExecStarted { exec }, mut client)) => {
                // Its end is asked for at once on the same connection, so a wait needs no
                // connection of its own (the answer waits in the socket until read).
                let monitor = client.monitor();
                let waiter = client
                    .send(&ControlRequest::ExecWait { exec })
                    .is_ok()
                    .then_some(client);
                Ok(Exec {
                    sandbox: self.id().to_string(),
                    root: root_of(self),
                    n: exec,
                    files: self.layout().exec(exec),
                    monitor,
                    waiter: std::sync::Mutex::new(waiter),
                })
            }
            Some((ControlResponse::Failed(w), _)) => Err(self.refused(w)),
            Some((other, _)) => Err(Error::new(
                ErrorKind::Io,
                format!("the monitor of sandbox {} answered {other:?}", self.id()),
            )),
            None => Err(self.not_served("exec in")),
        }
    }

    /// The exec numbered `exec` of this sandbox (as printed by `runbox exec`), for a
    /// controller other than the one that started it: its verdict outlives both.
    ///
    /// # Errors
    /// `NotFound` if the sandbox never ran such an exec.
    pub fn exec_handle(&self, exec: u64) -> Result<Exec> {
        let files = self.layout().exec(exec);
        if exec == 0 || !files.dir.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("sandbox {} has no exec {exec}", self.id()),
            ));
        }
        Ok(Exec {
            sandbox: self.id().to_string(),
            root: root_of(self),
            n: exec,
            files,
            monitor: self.monitor_record()?.map(|m| m.monitor),
            waiter: std::sync::Mutex::new(None),
        })
    }

    /// Waits for exec `exec`'s verdict (see [`Sandbox::exec_handle`] and [`Exec::wait`]).
    ///
    /// # Errors
    /// As [`Sandbox::exec_handle`] and [`Exec::wait`].
    pub fn exec_wait(&self, exec: u64) -> Result<Verdict> {
        self.exec_handle(exec)?.wait()
    }

    /// Sends `signal` to exec `exec`'s process group (nothing if it has ended).
    ///
    /// # Errors
    /// `NotFound` if there is no such exec; `InvalidState` if the sandbox's monitor no longer
    /// serves (stopped or lost).
    pub fn exec_kill(&self, exec: u64, signal: Signal) -> Result<()> {
        match self.control_with_fds(
            ControlRequest::ExecKill {
                exec,
                signal: signal.as_raw(),
            },
            &[],
        )? {
            Some(ControlResponse::Done) => Ok(()),
            Some(ControlResponse::Failed(w)) => Err(self.refused(w)),
            Some(other) => Err(Error::new(
                ErrorKind::Io,
                format!("the monitor of sandbox {} answered {other:?}", self.id()),
            )),
            None => Err(self.not_served("signal an exec of")),
        }
    }
}

impl Exec {
    /// Its number in the sandbox (`runbox wait --exec N`).
    pub fn id(&self) -> u64 {
        self.n
    }

    /// The sandbox it runs in.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox
    }

    /// Its verdict if it has ended.
    ///
    /// # Errors
    /// `Io` if the verdict is unreadable.
    pub fn try_wait(&self) -> Result<Option<Verdict>> {
        let path = self.files.exit();
        match state::read_json::<ExitRecord>(&path) {
            Ok(r) => {
                state::check_format(r.format_version, &path)?;
                Ok(Some(r.verdict))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blocks until it has ended; returns its verdict (the same schema as a run's: its own
    /// exit code or signal, CPU and wall time, output, the limit that fired).
    ///
    /// # Errors
    /// `InvalidState` if the sandbox's monitor died before writing it (the sandbox is lost);
    /// `Io`.
    pub fn wait(&self) -> Result<Verdict> {
        loop {
            if let Some(v) = self.wait_timeout(Duration::from_secs(3600))? {
                return Ok(v);
            }
        }
    }

    /// [`Exec::wait`] for at most `timeout`: `None` if it still runs then.
    ///
    /// # Errors
    /// As [`Exec::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Verdict>> {
        let deadline = Instant::now() + timeout;
        if let Some(v) = self.try_wait()? {
            return Ok(Some(v));
        }
        // Asked of the monitor, which answers once the verdict is written; where it cannot
        // (it has ended, or has no room for one more connection), the directory is watched.
        match self.wait_on_monitor(deadline)? {
            Waited::Ended => match self.try_wait()? {
                Some(v) => Ok(Some(v)),
                None => Err(self.lost()),
            },
            Waited::TimedOut => Ok(None),
            Waited::NotServed => self.watch_until(deadline),
        }
    }

    /// Waits for the monitor's word that the verdict is written, on a connection kept
    /// between calls (a wait cut short by its deadline is picked up by the next).
    fn wait_on_monitor(&self, deadline: Instant) -> Result<Waited> {
        let mut held = self
            .waiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_none() {
            let layout = crate::layout::Layout::new(&self.root, &self.sandbox);
            let Ok(mut client) = Client::connect(&layout, self.monitor) else {
                return Ok(Waited::NotServed);
            };
            if client
                .send(&ControlRequest::ExecWait { exec: self.n })
                .is_err()
            {
                return Ok(Waited::NotServed);
            }
            *held = Some(client);
        }
        let Some(client) = held.as_mut() else {
            return Ok(Waited::NotServed);
        };
        match client.recv_until(deadline) {
            Ok(None) => Ok(Waited::TimedOut),
            Ok(Some(ControlResponse::ExecExited { .. })) => {
                *held = None;
                Ok(Waited::Ended)
            }
            // No such exec any more (its verdict was written before the wait came), or the
            // monitor refused: the verdict on disk (or its absence) decides.
            Ok(Some(_)) | Err(_) => {
                *held = None;
                Ok(Waited::NotServed)
            }
        }
    }

    /// Watches the exec's directory until its verdict lands, `deadline`, or the monitor is
    /// gone without one.
    fn watch_until(&self, deadline: Instant) -> Result<Option<Verdict>> {
        // The monitor renames the verdict into the directory: a watch wakes the waiter.
        let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .ok()
            .filter(|i| {
                i.add_watch(
                    &self.files.dir,
                    AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
                )
                .is_ok()
            });
        loop {
            if let Some(v) = self.try_wait()? {
                return Ok(Some(v));
            }
            if self.monitor.is_none_or(|m| !m.is_alive()) {
                // The verdict may have landed just before the monitor ended.
                return match self.try_wait()? {
                    Some(v) => Ok(Some(v)),
                    None => Err(self.lost()),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let step = (deadline - now).min(LIVENESS_STEP);
            match &watch {
                Some(w) => {
                    let mut fds = [nix::poll::PollFd::new(
                        w.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let ms = u16::try_from(step.as_millis().max(1)).unwrap_or(u16::MAX);
                    // Interrupted or failed: the loop checks again.
                    if nix::poll::poll(&mut fds, ms).is_ok_and(|n| n > 0) {
                        // Drained only to re-arm; what the events say is read from the disk,
                        // so a failed read (EAGAIN after another reader) changes nothing.
                        drop(w.read_events());
                    }
                }
                None => std::thread::sleep(step.min(Duration::from_millis(5))),
            }
        }
    }

    /// The error for an exec without a verdict whose monitor is gone.
    fn lost(&self) -> Error {
        Error::new(
            ErrorKind::InvalidState,
            format!(
                "exec {} of sandbox {} has no verdict and the sandbox's monitor is gone \
                 (the sandbox is lost)",
                self.n, self.sandbox
            ),
        )
    }

    /// Sends `signal` to its process group (nothing if it has ended).
    ///
    /// # Errors
    /// As [`Sandbox::exec_kill`].
    pub fn kill(&self, signal: Signal) -> Result<()> {
        Sandbox::open(&self.root, &self.sandbox)?.exec_kill(self.n, signal)
    }
}

/// The state root of `sandbox`.
fn root_of(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox
        .layout()
        .dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The exec's stdin, as a descriptor to send.
fn stdin_of(spec: &ProcessSpec, tmp_dir: &std::path::Path) -> Result<OwnedFd> {
    if let Some(fd) = &spec.fds[0] {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "the exec's stdin", e))?;
        refuse_terminal(&fd, "stdin")?;
        return Ok(fd);
    }
    if let Some(path) = spec.stdin_path() {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::io("open the exec's stdin", path, e))?;
        return Ok(f.into());
    }
    match &spec.stdin {
        Stdin::Inherit => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| {
                Error::with_source(ErrorKind::InvalidConfig, "this process's stdin", e)
            })?;
            refuse_terminal(&fd, "stdin")?;
            Ok(fd)
        }
        Stdin::Bytes(bytes) => {
            use std::io::{Seek, Write};
            // An unlinked file in the sandbox's directory (root's, on the state root).
            fs::create_dir_all(tmp_dir).map_err(|e| Error::io("create", tmp_dir, e))?;
            let mut f = unlinked_file_in(tmp_dir)
                .map_err(|e| Error::io("make the exec's stdin in", tmp_dir, e))?;
            f.write_all(bytes)
                .and_then(|()| f.rewind())
                .map_err(|e| Error::io("write the exec's stdin in", tmp_dir, e))?;
            Ok(f.into())
        }
        _ => {
            let f = fs::File::open("/dev/null").map_err(|e| Error::io("open", "/dev/null", e))?;
            Ok(f.into())
        }
    }
}

/// A new file in `dir` that has no name: `O_TMPFILE`, or where the state root's filesystem
/// has none (9p, some network filesystems: `EOPNOTSUPP`), a file created exclusively under a
/// name of this process's and unlinked at once.
fn unlinked_file_in(dir: &std::path::Path) -> std::io::Result<fs::File> {
    let tmpfile = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match tmpfile {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) => {}
        other => return other,
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".stdin-{}-{n}", std::process::id()));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(f)
}

/// A sandbox never gets the caller's terminal (TIOCSTI and job control would reach the
/// caller's session): a terminal is refused.
fn refuse_terminal(fd: &OwnedFd, name: &str) -> Result<()> {
    if nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the exec's {name} is a terminal: a sandbox never gets the caller's terminal \
                 (pass a pipe, redirect it, or capture the output)"
            ),
        ));
    }
    Ok(())
}
