//! A handle on one sandbox: a view of its state directory, usable from any process, and the
//! cleanup of a sandbox whose monitor died. Dropping a handle never touches the sandbox. Runs
//! in the controller.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::error::{Error, ErrorKind, Result};
use crate::host::proc::{self, ProcIdentity};
use crate::host::state::{self, ExitRecord, MonitorPhase, MonitorRecord, SandboxRecord};
use crate::host::{cgroup, mounts, sys};
use crate::layout::Layout;
use crate::proto::control::{ControlRequest, ControlResponse, Stats};
use crate::proto::frame::ProtoError;
use crate::proto::{Report, ReportReader, WireError};
use crate::signal::Signal;

use super::control::{Client, ClientError};
use crate::verdict::{Status, Usage, Verdict, SCHEMA_VERSION};

/// Where a sandbox is in its life (runc's "status"; not to be confused with a verdict's
/// [`Status`], how a finished run ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SandboxState {
    /// Being set up by its monitor.
    Creating,
    /// Set up; the program waits for [`Sandbox::start`].
    Created,
    /// The program runs.
    Running,
    /// The program is frozen ([`Sandbox::pause`]) until [`Sandbox::resume`].
    Paused,
    /// Finished; the verdict is available.
    Stopped,
    /// Its monitor died without a verdict; [`crate::Root::gc`] or a forced delete cleans it up.
    Lost,
}

/// What [`Sandbox::info`] and [`crate::Root::list`] report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// The sandbox id.
    pub id: String,
    /// Its state (serialized as `status`, as runc's `state` prints it).
    #[serde(rename = "status")]
    pub state: SandboxState,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The monitor's pid, once it runs.
    pub monitor_pid: Option<i32>,
    /// The sandbox's init (its pid 1) as seen from the host, once built.
    pub init_pid: Option<i32>,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The sandbox runs in a container a spare monitor built before the launch (see
    /// [`crate::RootOptions::prebuild`]).
    #[serde(default)]
    pub prebuilt: bool,
}

/// A sandbox's state, derived from its records: stopped once `exit.json` exists
/// (`exit_written`, asked again after a dead monitor is seen, since it may have finished
/// between the two looks); else the phase of a live monitor; creating while the creator
/// lives and no monitor has recorded itself; lost otherwise. `alive` tells whether a recorded
/// process still runs.
pub(super) fn derive_state(
    exit_written: impl Fn() -> bool,
    monitor: Option<&MonitorRecord>,
    creator: &ProcIdentity,
    alive: impl Fn(&ProcIdentity) -> bool,
) -> SandboxState {
    if exit_written() {
        return SandboxState::Stopped;
    }
    match monitor {
        Some(m) if alive(&m.monitor) => match m.phase {
            MonitorPhase::Creating => SandboxState::Creating,
            MonitorPhase::Created => SandboxState::Created,
            MonitorPhase::Running => SandboxState::Running,
            MonitorPhase::Paused => SandboxState::Paused,
        },
        Some(_) if exit_written() => SandboxState::Stopped,
        Some(_) => SandboxState::Lost,
        None if alive(creator) => SandboxState::Creating,
        None => SandboxState::Lost,
    }
}

/// A handle on one sandbox: a view of its state on disk. It holds nothing of its root's (no
/// spare monitors); dropping it never touches the sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    layout: Layout,
    /// The monitor's report pipe, held by the controller that launched it: end of file means
    /// the monitor exited.
    report: Option<ReportReader>,
}

impl Sandbox {
    /// The handle of a sandbox this controller just launched, with its monitor's report pipe.
    pub(super) fn launched(id: String, layout: Layout, report: ReportReader) -> Self {
        Sandbox {
            id,
            layout,
            report: Some(report),
        }
    }

    /// A handle on the existing sandbox `id` of the state root `root`.
    pub(super) fn open(root: &Path, id: &str) -> Result<Sandbox> {
        config::validate_id(id)?;
        let layout = Layout::new(root, id);
        if !layout.dir.is_dir() {
            return Err(Error::new(ErrorKind::NotFound, format!("no sandbox {id}")));
        }
        Ok(Sandbox {
            id: id.to_string(),
            layout,
            report: None,
        })
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its files.
    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(super) fn record(&self) -> Result<SandboxRecord> {
        let path = self.layout.record();
        let r: SandboxRecord = state::read_json(&path).map_err(|e| self.not_found(e))?;
        state::check_format(r.format_version, &path)?;
        Ok(r)
    }

    pub(super) fn monitor_record(&self) -> Result<Option<MonitorRecord>> {
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

    /// The sandbox's state, from its state files and a liveness check of its monitor
    /// (pid and start time, never a bare pid).
    ///
    /// # Errors
    /// `NotFound` if the sandbox is gone; `Io` if a state file is unreadable or corrupt.
    pub fn state(&self) -> Result<SandboxState> {
        Ok(self.state_with_records()?.0)
    }

    fn state_with_records(&self) -> Result<(SandboxState, SandboxRecord, Option<MonitorRecord>)> {
        let record = self.record()?;
        let monitor = self.monitor_record()?;
        let state = derive_state(
            || self.layout.exit().exists(),
            monitor.as_ref(),
            &record.creator,
            ProcIdentity::is_alive,
        );
        Ok((state, record, monitor))
    }

    /// Status and identity of the sandbox.
    ///
    /// # Errors
    /// As [`Sandbox::state`].
    pub fn info(&self) -> Result<SandboxInfo> {
        let (state, record, monitor) = self.state_with_records()?;
        Ok(SandboxInfo {
            id: self.id.clone(),
            state,
            created_unix_ms: record.created_unix_ms,
            monitor_pid: monitor.as_ref().map(|m| m.monitor.pid),
            init_pid: monitor.as_ref().and_then(|m| m.init.map(|i| i.pid)),
            command: record.config.run.args,
            prebuilt: monitor.is_some_and(|m| m.prebuilt),
        })
    }

    /// Sends `request` to the sandbox's monitor over its control socket. `Ok(None)` if no
    /// monitor listens (not yet or no longer serving, dead, or one of an older runbox that
    /// has no control socket): the caller decides from the sandbox's state.
    fn control(&self, request: ControlRequest) -> Result<Option<ControlResponse>> {
        self.control_with_fds(request, &[])
    }

    /// [`Sandbox::control`] with descriptors on the request (an exec's streams).
    pub(super) fn control_with_fds(
        &self,
        request: ControlRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Option<ControlResponse>> {
        Ok(self
            .control_keeping(request, fds)?
            .map(|(answer, _client)| answer))
    }

    /// [`Sandbox::control_with_fds`] that also returns the connection, for more requests.
    pub(super) fn control_keeping(
        &self,
        request: ControlRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Option<(ControlResponse, Client)>> {
        let monitor = self.monitor_record()?.map(|m| m.monitor);
        let answer = Client::connect(&self.layout, monitor).and_then(|mut c| {
            let answer = if fds.is_empty() {
                c.request(&request)
            } else {
                c.request_with_fds(&request, fds, crate::proto::control::MAX_EXEC_FRAME)
            };
            answer.map(|a| (a, c))
        });
        match answer {
            Ok(answer) => Ok(Some(answer)),
            Err(ClientError::NotListening(_)) => Ok(None),
            // It ended (or died) in between: say what it is now.
            Err(ClientError::Gone) => Ok(None),
            Err(e) => Err(Error::with_source(
                ErrorKind::Io,
                format!("talk to the monitor of sandbox {}", self.id),
                e,
            )),
        }
    }

    /// The error for a `verb` no monitor answered: the sandbox's state says why.
    pub(super) fn not_served(&self, verb: &str) -> Error {
        match self.state() {
            Ok(SandboxState::Lost) => Error::new(
                ErrorKind::InvalidState,
                format!(
                    "sandbox {} is lost (its monitor died): cannot {verb} it; gc or a forced \
                     delete cleans it up",
                    self.id
                ),
            ),
            Ok(state) => Error::new(
                ErrorKind::InvalidState,
                format!("sandbox {} is {state:?}: cannot {verb} it", self.id),
            ),
            Err(e) => e,
        }
    }

    /// The monitor's answer to a request that expects `Done`.
    fn done(&self, answer: ControlResponse) -> Result<()> {
        match answer {
            ControlResponse::Done => Ok(()),
            ControlResponse::Failed(w) => Err(self.refused(w)),
            other => Err(Error::new(
                ErrorKind::Io,
                format!("the monitor of sandbox {} answered {other:?}", self.id),
            )),
        }
    }

    /// A refusal of the monitor, naming the sandbox.
    pub(super) fn refused(&self, w: WireError) -> Error {
        let mut w = w;
        w.message = format!("sandbox {}: {}", self.id, w.message);
        Error::from(w)
    }

    /// Starts the program of a created sandbox.
    ///
    /// # Errors
    /// `InvalidState` if the sandbox is not in the created state; `NotFound` if it is gone.
    pub fn start(&self) -> Result<()> {
        match self.control(ControlRequest::Start)? {
            Some(answer) => self.done(answer),
            // A sandbox made by an older runbox: its monitor waits on the start FIFO.
            None if self.layout.start_fifo().exists() => self.start_by_fifo(),
            None => Err(self.not_served("start")),
        }
    }

    /// Starts a created sandbox of an older monitor, which waits on `start.fifo`.
    fn start_by_fifo(&self) -> Result<()> {
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
                return Err(self.not_served("start"));
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        fifo.write_all(b"s")
            .map_err(|e| Error::io("write", &path, e))
    }

    /// Freezes every process of a running sandbox (the cgroup freezer: v1's freezer
    /// hierarchy, v2's `cgroup.freeze`) until [`Sandbox::resume`]. While paused, neither
    /// its wall-time limit nor its verdict's wall time advance, and CPU time cannot.
    ///
    /// # Errors
    /// `InvalidState` if the sandbox is not running (created, paused, stopped, or lost: its
    /// monitor died); `NotFound` if it is gone; `Io` if the freeze failed.
    pub fn pause(&self) -> Result<()> {
        match self.control(ControlRequest::Pause)? {
            Some(answer) => self.done(answer),
            None => Err(self.not_served("pause")),
        }
    }

    /// Thaws a paused sandbox.
    ///
    /// # Errors
    /// `InvalidState` if the sandbox is not paused; `NotFound` if it is gone; `Io`.
    pub fn resume(&self) -> Result<()> {
        match self.control(ControlRequest::Resume)? {
            Some(answer) => self.done(answer),
            None => Err(self.not_served("resume")),
        }
    }

    /// The sandbox's live figures, read from its cgroup by its monitor (created, running or
    /// paused).
    ///
    /// # Errors
    /// `InvalidState` if the sandbox is not live (stopped, or lost: its monitor died);
    /// `NotFound` if it is gone; `Io` if the figures cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        match self.control(ControlRequest::Stats)? {
            Some(ControlResponse::Stats(stats)) => Ok(stats),
            Some(other) => self.done(other).and_then(|()| {
                Err(Error::new(
                    ErrorKind::Io,
                    format!("the monitor of sandbox {} sent no figures", self.id),
                ))
            }),
            None => Err(self.not_served("read the figures of")),
        }
    }

    /// Blocks until the sandbox has finished and its monitor has cleaned up; returns the
    /// verdict. A lost sandbox gives an `internal_error` verdict. (In an async program, call
    /// it from a blocking task.)
    ///
    /// # Errors
    /// `NotFound` if the sandbox is gone; `Io` if its result is unreadable.
    pub fn wait(&mut self) -> Result<Verdict> {
        Ok(self.wait_to_end()?.verdict)
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

    /// The monitor's report pipe, if this handle launched the sandbox: it becomes readable
    /// (end of file) when the monitor exits, for a caller that waits on several sandboxes.
    #[cfg(feature = "worker")]
    pub(crate) fn report_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.report.as_ref().map(|r| r.pipe().as_fd())
    }

    /// The verdict if the sandbox has finished, else `None`, without blocking.
    ///
    /// # Errors
    /// As [`Sandbox::wait`].
    pub fn try_wait(&mut self) -> Result<Option<Verdict>> {
        self.wait_timeout(Duration::ZERO)
    }

    /// Usage figures beyond the verdict (CPU throttling). Blocks until the sandbox has
    /// finished, as [`Sandbox::wait`] does.
    ///
    /// # Errors
    /// As [`Sandbox::wait`].
    pub fn usage(&mut self) -> Result<Usage> {
        Ok(self.wait_to_end()?.usage)
    }

    /// Waits without a deadline for the exit record.
    fn wait_to_end(&mut self) -> Result<ExitRecord> {
        self.wait_record(None)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("waiting for sandbox {} ended without a result", self.id),
            )
        })
    }

    /// For a sandbox removed on exit, launched by this handle: reads the monitor's report pipe
    /// until the result arrives (the monitor cleans up afterwards, on its own).
    pub(crate) fn wait_for_report(&mut self) -> Result<ExitRecord> {
        let Some(mut reader) = self.report.take() else {
            return Err(Error::new(ErrorKind::Io, "no report pipe for this sandbox"));
        };
        loop {
            match reader.recv() {
                Ok(Report::Exited { record }) => return Ok(*record),
                Ok(_) => {}
                // The monitor exited (or died mid-report) without the result.
                Err(ProtoError::Closed | ProtoError::Truncated) => return Ok(self.lost_record()),
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
                if !wait_readable(reader.pipe().as_fd(), deadline)? {
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
    /// it; SIGKILL ends the whole sandbox at once. A created sandbox is ended by any signal. A
    /// paused sandbox gets it once resumed, except SIGKILL, which resumes it to end it.
    ///
    /// # Errors
    /// `InvalidState` if the sandbox is not created or running, `NotFound` if it is gone.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        let state = self.state()?;
        if !matches!(
            state,
            SandboxState::Created | SandboxState::Running | SandboxState::Paused
        ) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("sandbox {} is {state:?}: nothing to signal", self.id),
            ));
        }
        // Through the monitor, which signals its init by pidfd (and thaws a paused sandbox
        // for SIGKILL).
        if let Some(answer) = self.control(ControlRequest::Kill {
            signal: signal.as_raw(),
        })? {
            return self.done(answer);
        }
        // No monitor listens: an older runbox's monitor, or it ended meanwhile. The init's
        // identity is verified before it is signalled, as before the control channel.
        let (state, _, monitor) = self.state_with_records()?;
        let init = match (state, monitor.and_then(|m| m.init)) {
            (SandboxState::Created | SandboxState::Running, Some(init)) => init,
            (state, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("sandbox {} is {state:?}: nothing to signal", self.id),
                ))
            }
        };
        let signal = if state == SandboxState::Created {
            Signal::SIGKILL
        } else {
            signal
        };
        proc::signal_verified(init, signal.as_raw()).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidState,
                format!("sandbox {} is no longer running", self.id),
                e,
            )
        })
    }

    /// Removes the sandbox. A stopped or lost sandbox is removed at once (a lost one after its
    /// processes, cgroup and mounts are cleaned); a created or running one only with `force`,
    /// which kills it and waits for its monitor to finish first.
    ///
    /// Blocks while a forced delete waits for the monitor.
    ///
    /// # Errors
    /// `InvalidState` for a live sandbox without `force`; `NotFound` if it is gone; `Io`.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let _lock = state::lock(&self.layout.dir, true)?
            .ok_or_else(|| Error::new(ErrorKind::Io, "sandbox lock unavailable"))?;
        let (sandbox_state, record, monitor) = self.state_with_records()?;
        match sandbox_state {
            SandboxState::Stopped => {
                // The result is out, but the monitor may still be cleaning up (cgroup, mounts):
                // the id must not be reused before it is done.
                if let Some(m) = &monitor {
                    wait_for_exit(m.monitor, None)?;
                }
                if !self.layout.dir.exists() {
                    return Ok(()); // a one-shot sandbox's monitor removed it itself
                }
            }
            SandboxState::Lost => clean_lost(&self.layout, &record)?,
            live if !force => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
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
                // Through the monitor first: it thaws a paused sandbox, whose frozen init
                // would not die of the signal alone on cgroup v1.
                let by_monitor = matches!(
                    self.control(ControlRequest::Kill {
                        signal: libc::SIGKILL
                    }),
                    Ok(Some(ControlResponse::Done))
                );
                let init_killed = by_monitor
                    || monitor
                        .as_ref()
                        .and_then(|m| m.init)
                        .is_some_and(|init| proc::signal_verified(init, libc::SIGKILL).is_ok());
                if !init_killed {
                    match &monitor {
                        Some(m) => {
                            let _ = proc::signal_verified(m.monitor, libc::SIGKILL);
                        }
                        // Still creating and no monitor record yet: wait for it to appear (or
                        // for its creator to die), then stop that monitor.
                        None => loop {
                            if let Some(m) = self.monitor_record()? {
                                let _ = proc::signal_verified(m.monitor, libc::SIGKILL);
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
                    clean_lost(&self.layout, &record)?;
                }
            }
        }
        state::remove_sandbox_dir(&self.layout.dir)
    }

    /// The monitor of a one-shot run that has reported its result and is still cleaning up
    /// (it removes the directory itself when done), if that is what this sandbox is.
    pub(super) fn finishing_one_shot(&self) -> Option<ProcIdentity> {
        let (state, record, monitor) = self.state_with_records().ok()?;
        let monitor = monitor?.monitor;
        (record.remove_on_exit && state == SandboxState::Stopped && monitor.is_alive())
            .then_some(monitor)
    }

    /// If the sandbox is lost and nobody else holds its lock, cleans it up and removes it.
    pub(super) fn collect_if_lost(&self) -> Result<bool> {
        let Some(_lock) = state::lock(&self.layout.dir, false)? else {
            return Ok(false);
        };
        let (sandbox_state, record, monitor) = self.state_with_records()?;
        // A sandbox removed on exit whose monitor died after reporting is garbage too.
        let abandoned = record.remove_on_exit
            && sandbox_state == SandboxState::Stopped
            && monitor.is_none_or(|m| !m.monitor.is_alive());
        if sandbox_state != SandboxState::Lost && !abandoned {
            return Ok(false);
        }
        clean_lost(&self.layout, &record)?;
        state::remove_sandbox_dir(&self.layout.dir)?;
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

/// Cleans up after a sandbox whose monitor died: kills every process left in its cgroup,
/// removes the cgroup and any mount under its directory. The caller holds the sandbox's lock
/// and removes the directory afterwards.
pub(super) fn clean_lost(layout: &Layout, record: &SandboxRecord) -> Result<()> {
    cgroup::kill_and_remove(&record.cgroup_path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("remove the sandbox's cgroup {}", record.cgroup_path),
            e,
        )
    })?;
    // Mounts live in the dead monitor's mount namespace; any under the directory on the
    // host's side (an older layout) go too.
    unmount_under(&layout.dir)
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
pub(super) fn unmount_under(dir: &Path) -> Result<()> {
    let mut targets = mounts::under(dir);
    targets.sort_by_key(|t| std::cmp::Reverse(t.as_os_str().len()));
    for t in targets {
        nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            Error::with_source(ErrorKind::Io, format!("unmount {}", t.display()), e)
        })?;
    }
    Ok(())
}

/// Waits until `fd` is readable (true) or the deadline passes (false).
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let n = sys::poll_until(&mut fds, deadline)
        .map_err(|e| Error::with_source(ErrorKind::Io, "poll", e))?;
    Ok(n > 0)
}

/// Reads what the report pipe holds; true at end of file (the monitor exited).
fn drain(reader: &mut ReportReader) -> bool {
    loop {
        match reader.fill() {
            Ok(false) => return true,
            Ok(true) => {
                // More reports (e.g. "started" after "created"), not needed here; the
                // monitor is alive unless end of file follows, which a further poll tells.
                while let Ok(Some(_)) = reader.next() {}
                if !wait_readable(reader.pipe().as_fd(), Some(Instant::now())).unwrap_or(false) {
                    return false;
                }
            }
            // A broken frame: nothing more can be read from the pipe.
            Err(_) => return true,
        }
    }
}

/// Waits for the monitor `who` to exit (true) or the deadline (false).
pub(super) fn wait_for_exit(who: ProcIdentity, deadline: Option<Instant>) -> Result<bool> {
    proc::wait_for_exit(who, deadline)
        .map_err(|e| Error::with_source(ErrorKind::Io, "wait for the monitor", e))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(phase: MonitorPhase) -> MonitorRecord {
        MonitorRecord {
            format_version: state::FORMAT_VERSION,
            monitor: ProcIdentity {
                pid: 10,
                start_time: 1,
            },
            init: None,
            phase,
            prebuilt: false,
        }
    }

    #[test]
    fn the_state_is_derived_from_the_records_and_who_lives() {
        let creator = ProcIdentity {
            pid: 20,
            start_time: 2,
        };
        let all = |_: &ProcIdentity| true;
        let none = |_: &ProcIdentity| false;
        let only_creator = |p: &ProcIdentity| p.pid == 20;
        let running = monitor(MonitorPhase::Running);
        let created = monitor(MonitorPhase::Created);
        let creating = monitor(MonitorPhase::Creating);
        let no = || false;
        assert_eq!(
            derive_state(|| true, Some(&running), &creator, all),
            SandboxState::Stopped
        );
        assert_eq!(
            derive_state(no, Some(&running), &creator, all),
            SandboxState::Running
        );
        assert_eq!(
            derive_state(no, Some(&created), &creator, all),
            SandboxState::Created
        );
        assert_eq!(
            derive_state(no, Some(&creating), &creator, all),
            SandboxState::Creating
        );
        let paused = monitor(MonitorPhase::Paused);
        assert_eq!(
            derive_state(no, Some(&paused), &creator, all),
            SandboxState::Paused
        );
        assert_eq!(
            derive_state(no, Some(&paused), &creator, only_creator),
            SandboxState::Lost
        );
        // A dead monitor without a result: lost, whoever else lives.
        assert_eq!(
            derive_state(no, Some(&running), &creator, only_creator),
            SandboxState::Lost
        );
        // ...unless the result appeared between the two looks.
        let looks = std::cell::Cell::new(0);
        let second_look = || {
            looks.set(looks.get() + 1);
            looks.get() > 1
        };
        assert_eq!(
            derive_state(second_look, Some(&running), &creator, none),
            SandboxState::Stopped
        );
        // No monitor yet: creating while the creator lives, lost after.
        assert_eq!(
            derive_state(no, None, &creator, only_creator),
            SandboxState::Creating
        );
        assert_eq!(derive_state(no, None, &creator, none), SandboxState::Lost);
    }
}
