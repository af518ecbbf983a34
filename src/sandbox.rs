//! A handle on one sandbox: a view of its state directory, usable from any process. Dropping a
//! handle never touches the sandbox.

use std::fs;
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::root::Root;
use crate::state::{self, ExitRecord, Layout, MonitorRecord, Phase, ProcIdentity, SandboxRecord};
use crate::verdict::{Status, Usage, Verdict, SCHEMA_VERSION};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Being set up by its monitor.
    Creating,
    /// Set up; the program waits for [`Sandbox::start`].
    Created,
    /// The program runs.
    Running,
    /// Finished; the verdict is available.
    Stopped,
    /// Its monitor died without a verdict; [`Root::gc`] or a forced delete cleans it up.
    Lost,
}

/// What [`Sandbox::info`] and [`Root::list`] report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The sandbox id.
    pub id: String,
    /// Its status.
    pub status: SandboxStatus,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The monitor's pid, once it runs.
    pub monitor_pid: Option<i32>,
    /// The sandbox's init (its pid 1) as seen from the host, once built.
    pub init_pid: Option<i32>,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// A handle on one sandbox. See the module docs: it is a view of on-disk state.
#[derive(Debug)]
pub struct Sandbox {
    root: Root,
    id: String,
    layout: Layout,
    /// The monitor's report pipe, held by the controller that launched it: end of file means
    /// the monitor exited.
    report: Option<BufReader<fs::File>>,
}

impl Sandbox {
    pub(crate) fn new(
        root: Root,
        id: String,
        layout: Layout,
        report: Option<BufReader<fs::File>>,
    ) -> Self {
        Sandbox {
            root,
            id,
            layout,
            report,
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state root this sandbox lives in.
    pub fn root(&self) -> &Root {
        &self.root
    }

    fn record(&self) -> Result<SandboxRecord> {
        let path = self.layout.record();
        let r: SandboxRecord = state::read_json(&path).map_err(|e| self.not_found(e))?;
        state::check_format(r.format_version, &path)?;
        Ok(r)
    }

    fn monitor_record(&self) -> Result<Option<MonitorRecord>> {
        let path = self.layout.monitor();
        match state::read_json::<MonitorRecord>(&path) {
            Ok(r) => {
                state::check_format(r.format_version, &path)?;
                Ok(Some(r))
            }
            Err(e) if e.kind() == ErrorKind::NotFound && self.layout.dir.is_dir() => Ok(None),
            Err(e) => Err(self.not_found(e)),
        }
    }

    /// Maps "file missing because the whole sandbox is gone" to a NotFound naming the sandbox.
    fn not_found(&self, e: Error) -> Error {
        if e.kind() == ErrorKind::NotFound && !self.layout.dir.is_dir() {
            Error::new(ErrorKind::NotFound, format!("no sandbox {}", self.id))
        } else {
            e
        }
    }

    /// The sandbox's status, from its state files and a liveness check of its monitor
    /// (pid and start time, never a bare pid).
    ///
    /// # Errors
    /// `NotFound` if the sandbox is gone; `Io` if a state file is unreadable or corrupt.
    pub fn status(&self) -> Result<SandboxStatus> {
        Ok(self.status_with_records()?.0)
    }

    fn status_with_records(&self) -> Result<(SandboxStatus, SandboxRecord, Option<MonitorRecord>)> {
        let record = self.record()?;
        if self.layout.exit().exists() {
            return Ok((SandboxStatus::Stopped, record, self.monitor_record()?));
        }
        let monitor = self.monitor_record()?;
        let status = match &monitor {
            Some(m) if m.monitor.is_alive() => match m.phase {
                Phase::Creating => SandboxStatus::Creating,
                Phase::Created => SandboxStatus::Created,
                Phase::Running => SandboxStatus::Running,
            },
            // The monitor may have finished between the two looks.
            Some(_) if self.layout.exit().exists() => SandboxStatus::Stopped,
            Some(_) => SandboxStatus::Lost,
            None if record.creator.is_alive() => SandboxStatus::Creating,
            None => SandboxStatus::Lost,
        };
        Ok((status, record, monitor))
    }

    /// Status and identity of the sandbox.
    ///
    /// # Errors
    /// As [`Sandbox::status`].
    pub fn info(&self) -> Result<SandboxInfo> {
        let (status, record, monitor) = self.status_with_records()?;
        Ok(SandboxInfo {
            id: self.id.clone(),
            status,
            created_unix_ms: record.created_unix_ms,
            monitor_pid: monitor.as_ref().map(|m| m.monitor.pid),
            init_pid: monitor.as_ref().and_then(|m| m.init.map(|i| i.pid)),
            command: record.config.args,
        })
    }

    /// Starts the program of a created sandbox.
    ///
    /// # Errors
    /// `InvalidConfig` if the sandbox is not in the created state; `NotFound` if it is gone.
    pub fn start(&self) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.layout.start_fifo();
        let fifo = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        let mut fifo = match fifo {
            Ok(f) => f,
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    || e.kind() == std::io::ErrorKind::NotFound =>
            {
                let status = self.status()?;
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "sandbox {} is {status:?}, not created: cannot start it",
                        self.id
                    ),
                ));
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        fifo.write_all(b"s")
            .map_err(|e| Error::io("write", &path, e))
    }

    /// Blocks until the sandbox has finished and its monitor has cleaned up; returns the verdict.
    /// A lost sandbox gives an `internal_error` verdict.
    ///
    /// # Errors
    /// `NotFound` if the sandbox is gone; `Io` if its result is unreadable.
    pub fn wait(&mut self) -> Result<Verdict> {
        Ok(self
            .wait_record(None)?
            .expect("no deadline means a result")
            .verdict)
    }

    /// As [`Sandbox::wait`], but gives up after `timeout` and returns `None`.
    ///
    /// # Errors
    /// As [`Sandbox::wait`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Verdict>> {
        Ok(self
            .wait_record(Some(Instant::now() + timeout))?
            .map(|r| r.verdict))
    }

    /// The verdict if the sandbox has finished, else `None`, without blocking.
    ///
    /// # Errors
    /// As [`Sandbox::wait`].
    pub fn try_wait(&mut self) -> Result<Option<Verdict>> {
        self.wait_timeout(Duration::ZERO)
    }

    /// Usage figures beyond the verdict (CPU throttling); waits for the sandbox to finish.
    ///
    /// # Errors
    /// As [`Sandbox::wait`].
    pub fn usage(&mut self) -> Result<Usage> {
        Ok(self
            .wait_record(None)?
            .expect("no deadline means a result")
            .usage)
    }

    /// For a sandbox removed on exit, launched by this handle: reads the monitor's report pipe
    /// until the result arrives (the monitor cleans up afterwards, on its own).
    pub(crate) fn wait_for_report(&mut self) -> Result<ExitRecord> {
        use std::io::BufRead;
        let Some(mut reader) = self.report.take() else {
            return Err(Error::new(ErrorKind::Io, "no report pipe for this sandbox"));
        };
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(self.lost_record()),
                Ok(_) => {
                    if let Ok(crate::monitor::Report::Exited { record }) =
                        serde_json::from_str(&line)
                    {
                        return Ok(*record);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::with_source(
                        ErrorKind::Io,
                        "read the monitor's report",
                        e,
                    ))
                }
            }
        }
    }

    /// Waits for the monitor to exit (until `deadline`), then reads the exit record.
    fn wait_record(&mut self, deadline: Option<Instant>) -> Result<Option<ExitRecord>> {
        if !self.wait_monitor(deadline)? {
            return Ok(None);
        }
        let path = self.layout.exit();
        match state::read_json::<ExitRecord>(&path) {
            Ok(r) => {
                state::check_format(r.format_version, &path)?;
                Ok(Some(r))
            }
            Err(e) if e.kind() == ErrorKind::NotFound && self.layout.dir.is_dir() => {
                Ok(Some(self.lost_record()))
            }
            Err(e) => Err(self.not_found(e)),
        }
    }

    /// The exit record of a sandbox whose monitor died without writing one.
    fn lost_record(&self) -> ExitRecord {
        ExitRecord {
            format_version: state::FORMAT_VERSION,
            verdict: Verdict {
                schema_version: SCHEMA_VERSION,
                id: self.id.clone(),
                status: Status::InternalError,
                exit_code: None,
                signal: None,
                cpu_time_us: 0,
                cpu_user_us: 0,
                cpu_system_us: 0,
                wall_time_us: 0,
                memory_peak_bytes: 0,
                oom_killed: false,
                limit: None,
                stdout: String::new(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                message: Some("sandbox lost: its monitor died before writing a result".to_string()),
            },
            usage: Usage::default(),
        }
    }

    /// Returns true once the monitor has exited (or never will run), false at the deadline.
    fn wait_monitor(&mut self, deadline: Option<Instant>) -> Result<bool> {
        if let Some(reader) = self.report.as_mut() {
            // The launching controller: the report pipe reaches end of file when the monitor exits.
            loop {
                if !wait_readable(reader.get_ref().as_fd(), deadline)? {
                    return Ok(false);
                }
                if drain(reader) {
                    self.report = None;
                    // End of file comes as the monitor closes its files while exiting; wait
                    // for the exit itself so that status() agrees.
                    if let Some(m) = self.monitor_record()? {
                        wait_for_exit(m.monitor, None)?;
                    }
                    return Ok(true);
                }
            }
        }
        loop {
            if self.layout.exit().exists() {
                return Ok(true);
            }
            match self.monitor_record()? {
                Some(m) => return wait_for_exit(m.monitor, deadline),
                None => {
                    // Still being created: wait for monitor.json to appear (or the creator to die).
                    if !self.record()?.creator.is_alive() && self.monitor_record()?.is_none() {
                        return Ok(true);
                    }
                    // Re-check the creator at least every second while waiting.
                    let soon = Instant::now() + Duration::from_secs(1);
                    let step = deadline.map_or(soon, |d| d.min(soon));
                    if !wait_for_file(&self.layout, "monitor.json", Some(step))?
                        && deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Sends `signal` to the sandbox: to the program through the sandbox's init, which forwards
    /// it; SIGKILL ends the whole sandbox at once. A created sandbox is ended by any signal.
    ///
    /// # Errors
    /// `InvalidConfig` if the sandbox is not created or running (or the signal is invalid),
    /// `NotFound` if it is gone.
    pub fn kill(&self, signal: i32) -> Result<()> {
        if nix::sys::signal::Signal::try_from(signal).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{signal} is not a signal"),
            ));
        }
        let (status, _, monitor) = self.status_with_records()?;
        let init = match (status, monitor.and_then(|m| m.init)) {
            (SandboxStatus::Created | SandboxStatus::Running, Some(init)) => init,
            (status, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("sandbox {} is {status:?}: nothing to signal", self.id),
                ))
            }
        };
        let signal = if status == SandboxStatus::Created {
            libc::SIGKILL
        } else {
            signal
        };
        signal_verified(init, signal).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("sandbox {} is no longer running", self.id),
                e,
            )
        })
    }

    /// Removes the sandbox. A stopped or lost sandbox is removed at once (a lost one after its
    /// processes, cgroup and mounts are cleaned); a created or running one only with `force`,
    /// which kills it and waits for its monitor to finish first.
    ///
    /// # Errors
    /// `InvalidConfig` for a live sandbox without `force`; `NotFound` if it is gone; `Io`.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let _lock = crate::gc::lock(&self.layout.dir, true)?
            .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox lock unavailable"))?;
        let (status, record, monitor) = self.status_with_records()?;
        match status {
            SandboxStatus::Stopped => {
                // The result is out, but the monitor may still be cleaning up (cgroup, mounts):
                // the id must not be reused before it is done.
                if let Some(m) = &monitor {
                    wait_for_exit(m.monitor, None)?;
                }
                if !self.layout.dir.exists() {
                    return Ok(()); // a one-shot sandbox's monitor removed it itself
                }
            }
            SandboxStatus::Lost => crate::gc::clean_lost(&self.layout, &record)?,
            live if !force => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "sandbox {} is {live:?}; stop it first or delete with force",
                        self.id
                    ),
                ))
            }
            _ => {
                // Kill the init (the whole pid namespace goes with it). If there is no init yet,
                // or it cannot be verified, kill the monitor: its init then dies of the lifeline
                // and what remains is cleaned up as lost.
                let init_killed = monitor
                    .as_ref()
                    .and_then(|m| m.init)
                    .is_some_and(|init| signal_verified(init, libc::SIGKILL).is_ok());
                if !init_killed {
                    match &monitor {
                        Some(m) => {
                            let _ = signal_verified(m.monitor, libc::SIGKILL);
                        }
                        // Still creating and no monitor record yet: wait for it to appear (or
                        // for its creator to die), then stop that monitor.
                        None => loop {
                            if let Some(m) = self.monitor_record()? {
                                let _ = signal_verified(m.monitor, libc::SIGKILL);
                                break;
                            }
                            if !record.creator.is_alive() {
                                break;
                            }
                            let soon = Instant::now() + Duration::from_secs(1);
                            wait_for_file(&self.layout, "monitor.json", Some(soon))?;
                        },
                    }
                }
                self.wait_monitor(None)?;
                if !self.layout.exit().exists() {
                    crate::gc::clean_lost(&self.layout, &record)?;
                }
            }
        }
        crate::state::remove_sandbox_dir(&self.layout.dir)
    }

    /// The monitor of a one-shot run that has reported its result and is still cleaning up
    /// (it removes the directory itself when done), if that is what this sandbox is.
    pub(crate) fn finishing_one_shot(&self) -> Option<ProcIdentity> {
        let (status, record, monitor) = self.status_with_records().ok()?;
        let monitor = monitor?.monitor;
        (record.remove_on_exit && status == SandboxStatus::Stopped && monitor.is_alive())
            .then_some(monitor)
    }

    /// If the sandbox is lost and nobody else holds its lock, cleans it up and removes it.
    pub(crate) fn collect_if_lost(&self) -> Result<bool> {
        let Some(_lock) = crate::gc::lock(&self.layout.dir, false)? else {
            return Ok(false);
        };
        let (status, record, monitor) = self.status_with_records()?;
        // A sandbox removed on exit whose monitor died after reporting is garbage too.
        let abandoned = record.remove_on_exit
            && status == SandboxStatus::Stopped
            && monitor.is_none_or(|m| !m.monitor.is_alive());
        if status != SandboxStatus::Lost && !abandoned {
            return Ok(false);
        }
        crate::gc::clean_lost(&self.layout, &record)?;
        crate::state::remove_sandbox_dir(&self.layout.dir)?;
        Ok(true)
    }

    /// The captured stdout and stderr so far (complete once the sandbox has stopped).
    ///
    /// # Errors
    /// `NotFound` if the sandbox is gone.
    pub fn logs(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |p: std::path::PathBuf| match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.layout.dir.is_dir() => {
                Ok(Vec::new())
            }
            Err(e) => Err(self.not_found(Error::io("read", p, e))),
        };
        Ok((read(self.layout.stdout())?, read(self.layout.stderr())?))
    }
}

/// Signals exactly the process `who` names: through a pidfd opened first and then checked
/// against the recorded start time, so a reused pid is never signalled.
pub(crate) fn signal_verified(who: ProcIdentity, signal: i32) -> std::io::Result<()> {
    let pidfd = crate::sys::pidfd_open(who.pid)?;
    if !who.is_alive() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("pid {} is not the recorded process any more", who.pid),
        ));
    }
    crate::sys::pidfd_send_signal(&pidfd, signal)
}

fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Waits until `fd` is readable (true) or the deadline passes (false).
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool> {
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::with_source(ErrorKind::Io, "poll", e)),
        }
    }
}

/// Reads what the report pipe holds; true at end of file (the monitor exited).
fn drain(reader: &mut BufReader<fs::File>) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {
                // More report lines (e.g. "started" after "created"); the monitor is alive
                // unless end of file follows, which a further poll will tell.
                let mut fds = [PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Waits for a process that is not our child to exit (true), through a pidfd verified
/// against its recorded start time, or until the deadline (false).
pub(crate) fn wait_for_exit(who: ProcIdentity, deadline: Option<Instant>) -> Result<bool> {
    let Ok(pidfd) = crate::sys::pidfd_open(who.pid) else {
        return Ok(true); // already gone
    };
    if !who.is_alive() {
        return Ok(true); // the pid now names another process, or a zombie
    }
    wait_readable(pidfd.as_fd(), deadline)
}

/// Waits until `name` exists in the sandbox directory (true) or the deadline passes (false),
/// with inotify rather than sleeping.
fn wait_for_file(layout: &Layout, name: &str, deadline: Option<Instant>) -> Result<bool> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| Error::with_source(ErrorKind::Io, "inotify_init", e))?;
    inotify
        .add_watch(
            &layout.dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE_SELF,
        )
        .map_err(|e| Error::with_source(ErrorKind::Io, "inotify_add_watch", e))?;
    loop {
        if layout.dir.join(name).exists() || !layout.dir.is_dir() {
            return Ok(true);
        }
        if !wait_readable(inotify.as_fd(), deadline)? {
            return Ok(false);
        }
        let _ = inotify.read_events();
    }
}
