//! How the controller starts monitor processes: finding the monitor executable, exec'ing it
//! with its [`MonitorArgs`] (the one place that does), and reading its first report. Runs in
//! the controller, which may be multi-threaded: it only ever execs, never forks into Rust.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::signal_verified;
use crate::host::state::{self, MonitorRecord};
use crate::host::sys;
use crate::layout::Layout;
use crate::proto::frame::ProtoError;
use crate::proto::{MonitorArgs, Report, ReportReader};

/// Name of the standalone monitor binary looked up next to the current executable.
pub const MONITOR_BIN: &str = "runbox-monitor";

/// How long a launch waits for the monitor's first report.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Set when the host binary dispatches monitor invocations itself (see [`crate::monitor_main`]).
pub(crate) static SELF_DISPATCH: AtomicBool = AtomicBool::new(false);

/// The monitor executable: `explicit`; `$RUNBOX_MONITOR`; the current executable if it
/// called [`crate::monitor_main`]; `runbox-monitor` next to the current executable or in its
/// parent directory; `runbox-monitor` in `PATH`.
pub(super) fn find_monitor(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
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

/// Execs the monitor `exe` as `args`, with an empty environment, `stdin` and `stdout` (each
/// `/dev/null` if `None`) and no stderr (a monitor logs into its sandbox's directory), and no
/// other descriptor of this process: the caller's (a grader's `flock`ed file, say) would
/// otherwise live on in the monitor, and in a spare for as long as it is parked. With
/// `cgroup` (the root's cgroup v2 monitors directory, see [`crate::host::cgroup::monitors_cgroup_v2`]) the
/// monitor is born there (`CLONE_INTO_CGROUP`), so it is never in the controller's cgroup,
/// which a service manager may kill at any moment; where that fails (a kernel before 5.7) it
/// is exec'd plainly and moves itself. Every monitor forks and detaches at once: the caller
/// reaps the returned first process ([`reap`]), at once or when convenient, so it never holds
/// a zombie for long.
pub(super) fn spawn_monitor(
    exe: &Path,
    args: &MonitorArgs,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<FirstProcess> {
    let failed = |e: std::io::Error| {
        // Out of descriptors is this process's condition, not the monitor's: an I/O error.
        let kind = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => ErrorKind::Io,
            _ => ErrorKind::LaunchFailed,
        };
        Error::with_source(kind, format!("exec monitor {}", exe.display()), e)
    };
    let words = args.to_args();
    if let Some(cgroup) = cgroup {
        let null = File::open("/dev/null").map_err(failed)?;
        let cexe = CString::new(exe.as_os_str().as_bytes())
            .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let mut argv = vec![cexe.clone()];
        for w in &words {
            argv.push(
                CString::new(w.as_bytes()).map_err(|e| {
                    failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?,
            );
        }
        let stdio = [
            stdin.as_ref().map_or(null.as_fd(), AsFd::as_fd),
            stdout.as_ref().map_or(null.as_fd(), AsFd::as_fd),
            null.as_fd(),
        ];
        match sys::spawn_into_cgroup(&cexe, &argv, stdio, cgroup).map_err(failed)? {
            Ok(pid) => return Ok(FirstProcess::Cloned { pid, status: None }),
            // Nothing started (clone3 refused): exec it the plain way below.
            Err(e) => {
                tracing::debug!("clone3 into the monitors' cgroup failed ({e}); exec'ing plainly");
            }
        }
    }
    let stdio = |fd: Option<OwnedFd>| fd.map_or_else(Stdio::null, Stdio::from);
    let mut command = std::process::Command::new(exe);
    command
        .args(words)
        .env_clear()
        .stdin(stdio(stdin))
        .stdout(stdio(stdout))
        .stderr(Stdio::null());
    sys::exec_with_stdio_only(&mut command);
    command.spawn().map(FirstProcess::Exec).map_err(failed)
}

/// The first process of a monitor, as started by [`spawn_monitor`].
#[derive(Debug)]
pub(super) enum FirstProcess {
    /// Exec'd by `std::process::Command`.
    Exec(Child),
    /// Cloned into the monitors' cgroup; `status` once reaped.
    Cloned {
        pid: i32,
        status: Option<std::process::ExitStatus>,
    },
}

/// Reaps the first process of a monitor (it exits as soon as it has forked). Calling it
/// again returns the same status.
pub(super) fn reap(first: &mut FirstProcess) -> Result<std::process::ExitStatus> {
    let failed = |e| Error::with_source(ErrorKind::LaunchFailed, "wait for the monitor", e);
    match first {
        FirstProcess::Exec(child) => child.wait().map_err(failed),
        FirstProcess::Cloned {
            status: Some(status),
            ..
        } => Ok(*status),
        FirstProcess::Cloned { pid, status } => {
            use std::os::unix::process::ExitStatusExt;
            let got = std::process::ExitStatus::from_raw(sys::wait_pid(*pid).map_err(failed)?);
            *status = Some(got);
            Ok(got)
        }
    }
}

/// Reads a sandbox monitor's first report: started or created (the report pipe is returned
/// for the handle), or the launch error. `status` is the exit status of the monitor's first
/// process, if this controller exec'd it.
pub(super) fn read_first_report(
    layout: &Layout,
    mut reader: ReportReader,
    status: Option<std::process::ExitStatus>,
) -> Result<ReportReader> {
    // A monitor that neither reports nor exits (stuck in a mount, say) must not hang the
    // caller: past the deadline it is killed, and the launch fails (and is cleaned up).
    let mut fds = [PollFd::new(reader.pipe().as_fd(), PollFlags::POLLIN)];
    if matches!(
        sys::poll_until(&mut fds, Some(Instant::now() + LAUNCH_TIMEOUT)),
        Ok(0)
    ) {
        if let Ok(m) = state::read_json::<MonitorRecord>(&layout.monitor()) {
            let _ = signal_verified(m.monitor, libc::SIGKILL);
        }
        return Err(Error::new(
            ErrorKind::LaunchFailed,
            format!("the monitor did not report within {LAUNCH_TIMEOUT:?}; it was killed"),
        ));
    }
    match reader.recv() {
        Ok(Report::Started { .. } | Report::Created { .. }) => Ok(reader),
        Ok(Report::Failed { error }) => Err(error.into()),
        // A monitor that breaks the protocol (another binary's, say) failed the launch.
        Err(e @ (ProtoError::Decode(_) | ProtoError::TooLarge { .. })) => Err(Error::with_source(
            ErrorKind::LaunchFailed,
            "read the monitor's first report",
            e,
        )),
        _ => {
            let log = std::fs::read_to_string(layout.dir.join("monitor.log")).unwrap_or_default();
            // Status 2 before any report: the monitor refused its command line, which is
            // what a monitor binary of another protocol version does.
            let refused = status.and_then(|s| s.code()) == Some(2);
            Err(Error::new(
                ErrorKind::LaunchFailed,
                format!(
                    "the monitor exited{} without reporting{}; its log: {}",
                    status.map_or(String::new(), |s| format!(" ({s})")),
                    if refused {
                        " (it refused its command line: a monitor binary of another runbox version?)"
                    } else {
                        ""
                    },
                    log.trim()
                ),
            ))
        }
    }
}

/// True if no process holds the write end of the pipe `file` reads any more.
pub(super) fn no_writer(file: &File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    matches!(sys::poll_until(&mut fds, Some(Instant::now())), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}
