//! The monitor's supervision of a running sandbox: one `poll` over the init's pidfd, its
//! status pipe and the output pipes, with a timeout at the next wall-clock deadline or
//! CPU-time check; each limit is its own check, the state an explicit enum. The control
//! socket is served in the same poll (signal, pause and resume, stats, execs); a paused span
//! does not count against the wall-time limit nor the verdict's wall time. The sandbox's
//! execs ([`super::execs`]) are served in the same poll too: their output pipes, deadlines
//! and ends. Runs in the sandbox's monitor while the program runs.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::config::RunLimits;
use crate::error::ErrorKind;
use crate::host::cgroup::{Cgroup, CpuUsage};
use crate::host::state::MonitorPhase;
use crate::host::sys;
use crate::layout::Layout;
use crate::proto::control::{ControlRequest, ControlResponse};
use crate::proto::frame::ProtoError;
use crate::proto::{ExecEnd, InitStatus, StatusFrames, WireError};
use crate::verdict::{Facts, LimitKind};

use super::built::{Init, Streams};
use super::control::{self, ClientId, Handler, Server};
use super::execs::Execs;
use super::phases;
use super::sink::{Pump, Sink};

/// How long a pause may take to freeze every process before it is undone and fails.
const FREEZE_WITHIN: Duration = Duration::from_secs(10);

/// The control channel during supervision: the server, and how the monitor records a phase
/// (`paused`, `running`) in `monitor.json`.
pub(super) struct Control<'a> {
    /// The control server (none if it could not be made).
    pub server: Option<Server>,
    /// Records the phase.
    pub record_phase: &'a mut dyn FnMut(MonitorPhase) -> crate::error::Result<()>,
    /// The sandbox's execs.
    pub execs: &'a mut Execs,
}

/// How long the monitor drains output after the sandbox's first process exited before it
/// kills whatever still holds the pipes.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What supervision learned.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// The init reported the program's end but was not waited for yet.
    pub init_unreaped: bool,
    /// How the program ended, and why.
    pub facts: Facts,
    /// Wall time from start to the program's end, paused spans left out.
    pub wall: Duration,
    /// Stdout was cut at the output limit.
    pub stdout_truncated: bool,
    /// Stderr was cut at the output limit.
    pub stderr_truncated: bool,
    /// Output the state root could not take (full, say): what was lost, for the verdict's
    /// message. The output is then cut there, and the program's verdict stands.
    pub output_lost: Option<String>,
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The program runs; every limit is checked.
    Running,
    /// A limit fired and the init was killed; waiting for its end (no deadline: the kill
    /// ends it).
    Killed,
    /// The program's end is known (`at`); the output is drained for at most [`DRAIN_GRACE`]
    /// after it, and the init is waited for if it was not yet.
    Ended { at: Instant, init_reaped: bool },
}

/// When the CPU-time budget is next worth reading, given the CPU time `used` so far, the
/// kill threshold `limit` and the bandwidth `rate` (CPUs): the earliest moment the rest of the
/// budget could be used up, at least 1 ms ahead; `None` once `used` has reached `limit`.
pub(super) fn next_cpu_check(
    now: Instant,
    used: Duration,
    limit: Duration,
    rate: f64,
) -> Option<Instant> {
    let left = limit.checked_sub(used).filter(|l| !l.is_zero())?;
    Some(now + left.div_f64(rate).max(Duration::from_millis(1)))
}

/// Supervises the started sandbox until the program has ended and its output is drained.
/// Kills the sandbox (its init, which takes the pid namespace down) on a limit.
#[allow(clippy::too_many_arguments)]
pub(super) fn supervise(
    init: &Init,
    cgroup: &Cgroup,
    cpu_baseline: CpuUsage,
    limits: &RunLimits,
    layout: &Layout,
    streams: Streams,
    started: Instant,
    control: Control<'_>,
) -> Outcome {
    let mut outcome = Outcome::default();
    // The monitor made both files when it opened the sandbox: opening them takes no space.
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
    };
    let sinks = match (open(&layout.stdout()), open(&layout.stderr())) {
        (Ok(o), Ok(e)) => [Sink::new(streams.out, o), Sink::new(streams.err, e)],
        (Err(e), _) | (_, Err(e)) => {
            outcome.facts.internal_error = Some(format!("create output files: {e}"));
            let _ = sys::pidfd_send_signal(&init.pidfd, libc::SIGKILL);
            let _ = waitpid(nix::unistd::Pid::from_raw(init.pid), None);
            return outcome;
        }
    };
    let cpu_rate = limits.cpus.min(available_cpus());
    // The kill threshold: the CPU-time limit plus its grace.
    let cpu_kill_at = limits.cpu_time.map(|c| c + limits.cpu_time_grace);
    let mut s = Supervisor {
        init,
        cgroup,
        cpu_baseline,
        cpu_rate,
        cpu_kill_at,
        wall_deadline: limits.wall_time.map(|w| started + w),
        next_cpu_check: cpu_kill_at
            .and_then(|l| next_cpu_check(started, Duration::ZERO, l, cpu_rate)),
        budget: limits.output_bytes,
        sinks,
        status: streams.status,
        lines: streams.lines,
        status_open: true,
        request: streams.request.as_fd(),
        execs: control.execs,
        started,
        state: State::Running,
        outcome,
        server: control.server,
        record_phase: control.record_phase,
        paused_since: None,
        paused_total: Duration::ZERO,
        exec_waiters: Vec::new(),
    };
    s.run();
    s.execs_end();
    s.answer_exec_waiters();
    // Nobody is answered from here on: the socket goes before the teardown.
    s.server = None;
    s.outcome.stdout_truncated = s.sinks[0].truncated;
    s.outcome.stderr_truncated = s.sinks[1].truncated;
    let lost: Vec<String> = ["stdout", "stderr"]
        .iter()
        .zip(&s.sinks)
        .filter_map(|(name, sink)| {
            let (at, e) = sink.lost.as_ref()?;
            Some(format!("{name} cut at {at} bytes ({e})"))
        })
        .collect();
    if !lost.is_empty() {
        s.outcome.output_lost = Some(format!(
            "output lost: the state root took no more: {}",
            lost.join(", ")
        ));
    }
    s.outcome.init_unreaped = matches!(
        s.state,
        State::Ended {
            init_reaped: false,
            ..
        }
    );
    s.outcome
}

struct Supervisor<'a> {
    init: &'a Init,
    cgroup: &'a Cgroup,
    cpu_baseline: CpuUsage,
    cpu_rate: f64,
    cpu_kill_at: Option<Duration>,
    wall_deadline: Option<Instant>,
    next_cpu_check: Option<Instant>,
    /// Output bytes still allowed, stdout and stderr together.
    budget: u64,
    sinks: [Sink; 2],
    status: File,
    lines: StatusFrames,
    /// The status pipe is still read (not at its end, no protocol error).
    status_open: bool,
    /// The init's request socket (execs and their kills).
    request: BorrowedFd<'a>,
    execs: &'a mut Execs,
    started: Instant,
    state: State,
    outcome: Outcome,
    server: Option<Server>,
    record_phase: &'a mut dyn FnMut(MonitorPhase) -> crate::error::Result<()>,
    /// Paused (frozen) since then.
    paused_since: Option<Instant>,
    /// Paused spans that ended.
    paused_total: Duration,
    /// Clients waiting for an exec's end ([`ControlRequest::ExecWait`]), answered when its
    /// verdict is written.
    exec_waiters: Vec<(ClientId, u64)>,
}

impl Supervisor<'_> {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            if self.state == State::Running {
                self.check_wall_time(now);
            }
            if self.state == State::Running {
                self.check_cpu_time(now);
            }
            if let State::Ended { at, .. } = self.state {
                if self.sinks.iter().all(|s| !s.open) {
                    return;
                }
                if now >= at + DRAIN_GRACE {
                    self.drain_timed_out();
                    return;
                }
            }
            let go_on = self.poll_once();
            self.answer_exec_waiters();
            if !go_on {
                return;
            }
        }
    }

    /// Kills the sandbox for `limit`, unless a limit already did (the first one stands).
    fn kill_for(&mut self, limit: LimitKind) {
        if self.outcome.facts.killed_for.is_some() {
            return;
        }
        self.outcome.facts.killed_for = Some(limit);
        let _ = sys::pidfd_send_signal(&self.init.pidfd, libc::SIGKILL);
        self.thaw_for_kill();
        if self.state == State::Running {
            self.state = State::Killed;
        }
    }

    fn check_wall_time(&mut self, now: Instant) {
        if self.paused_since.is_none() && self.wall_deadline.is_some_and(|d| now >= d) {
            self.kill_for(LimitKind::WallTime);
        }
    }

    /// Reads the cgroup's CPU usage once the budget could be used up, and schedules the next
    /// read at the earliest moment the rest could be.
    fn check_cpu_time(&mut self, now: Instant) {
        let (Some(at), Some(limit)) = (self.next_cpu_check, self.cpu_kill_at) else {
            return;
        };
        if now < at {
            return;
        }
        match self.cgroup.cpu_usage() {
            Ok(u) => {
                let used = Duration::from_micros(u.since(self.cpu_baseline).total_us);
                self.next_cpu_check = next_cpu_check(now, used, limit, self.cpu_rate);
                if self.next_cpu_check.is_none() {
                    self.kill_for(LimitKind::CpuTime);
                }
            }
            Err(e) => {
                self.outcome.facts.internal_error = Some(format!("read cpu usage: {e}"));
                self.next_cpu_check = None;
            }
        }
    }

    /// Something still holds the pipes after the program ended (its pid namespace is going
    /// down): stop reading. Without a status it is runbox's failure; with one, the status
    /// stands (a program must not turn its verdict into an internal error by stalling its own
    /// teardown).
    fn drain_timed_out(&mut self) {
        let facts = &mut self.outcome.facts;
        if facts.exit_code.is_none() && facts.signal.is_none() {
            facts.internal_error.get_or_insert_with(|| {
                "output pipes stayed open after the sandbox exited".to_string()
            });
        }
    }

    /// The next moment something must be done without an event.
    fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Ended { at, .. } => Some(at + DRAIN_GRACE),
            State::Killed => None,
            // Paused: no deadline (wall time stands still, CPU time cannot move).
            State::Running if self.paused_since.is_some() => None,
            State::Running => [
                self.wall_deadline,
                self.next_cpu_check,
                self.execs.deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// One poll and the handling of what it reports; false when supervision must stop.
    fn poll_once(&mut self) -> bool {
        let init_waited = matches!(
            self.state,
            State::Ended {
                init_reaped: true,
                ..
            }
        );
        let ended = matches!(self.state, State::Ended { .. });
        let mut fds = Vec::with_capacity(4);
        let pidfd_at = (!init_waited).then(|| {
            fds.push(PollFd::new(self.init.pidfd.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let status_at = (!ended && self.status_open).then(|| {
            fds.push(PollFd::new(self.status.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mut sink_at = [None; 2];
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.open {
                fds.push(PollFd::new(sink.pipe.as_fd(), PollFlags::POLLIN));
                sink_at[i] = Some(fds.len() - 1);
            }
        }
        let execs_at = if ended {
            fds.len()..fds.len()
        } else {
            self.execs.poll_fds(&mut fds)
        };
        let control_at = self.server.as_ref().map(|s| s.poll_fds(&mut fds));
        let deadline = [
            self.deadline(),
            self.server.as_ref().and_then(Server::deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Err(e) = sys::poll_until(&mut fds, deadline) {
            self.outcome.facts.internal_error = Some(format!("poll: {e}"));
            let _ = sys::pidfd_send_signal(&self.init.pidfd, libc::SIGKILL);
            if !init_waited {
                self.init_exited();
            }
            return false;
        }
        let ready: Vec<bool> = fds.iter().map(sys::has_event).collect();
        drop(fds);
        if !ended {
            let paused = self.paused_since.is_some();
            self.execs
                .handle(&ready[execs_at], self.request, self.cgroup, paused);
        }
        if let (Some(range), Some(mut server)) = (control_at, self.server.take()) {
            server.handle(&ready[range], self);
            server.tick(Instant::now());
            self.server = Some(server);
        }
        let ready = |at: Option<usize>| at.is_some_and(|i| ready[i]);
        for (i, at) in sink_at.into_iter().enumerate() {
            if ready(at) {
                self.pump(i);
            }
        }
        if ready(status_at) {
            self.read_status();
        }
        if ready(pidfd_at) {
            self.init_exited();
        }
        true
    }

    /// Copies what output pipe `i` holds; past the budget the sandbox is killed (also while
    /// the output is drained after the program's end: the verdict is then `output_limit`).
    fn pump(&mut self, i: usize) {
        match self.sinks[i].pump(&mut self.budget) {
            Pump::Ok => {}
            Pump::Overflow => self.kill_for(LimitKind::Output),
            Pump::Failed(e) => {
                self.outcome
                    .facts
                    .internal_error
                    .get_or_insert_with(|| format!("capture output: {e}"));
            }
        }
    }

    /// Reads the init's statuses; the program's end is recorded when reported, an exec's
    /// goes to the exec table.
    fn read_status(&mut self) {
        let read = self.lines.fill_from(self.status.as_fd());
        let mut exec_ends = Vec::new();
        let taken = take_status(&mut self.lines, &mut self.outcome.facts, &mut exec_ends);
        for end in exec_ends {
            self.execs.ended(end, self.cgroup);
        }
        match (read, taken) {
            (_, Ok(true)) => self.program_ended(false),
            (Ok(true), Ok(false)) => {}
            // End of file: the init is ending; its pidfd says when.
            (Ok(false), Ok(false)) => self.status_open = false,
            (Err(e), _) | (_, Err(e)) => {
                self.status_open = false;
                self.outcome
                    .facts
                    .internal_error
                    .get_or_insert_with(|| format!("the init's status: {e}"));
                let _ = sys::pidfd_send_signal(&self.init.pidfd, libc::SIGKILL);
            }
        }
    }

    /// The init exited (pidfd readable): reap it, and take the program's end from its last
    /// status lines or, if it was killed before writing one, from its own wait status.
    fn init_exited(&mut self) {
        let was_ended = matches!(self.state, State::Ended { .. });
        let wait = waitpid(nix::unistd::Pid::from_raw(self.init.pid), None);
        if !was_ended {
            let mut exec_ends = Vec::new();
            let read = self.lines.drain(self.status.as_fd());
            let taken = take_status(&mut self.lines, &mut self.outcome.facts, &mut exec_ends);
            for end in exec_ends {
                self.execs.ended(end, self.cgroup);
            }
            if let Err(e) = read {
                self.outcome
                    .facts
                    .internal_error
                    .get_or_insert_with(|| format!("the init's status: {e}"));
            }
            if !matches!(taken, Ok(true)) {
                facts_from_wait(wait, &mut self.outcome.facts);
            }
        }
        self.program_ended(true);
    }

    /// Answers the clients waiting for execs whose verdicts are written now.
    fn answer_exec_waiters(&mut self) {
        if self.exec_waiters.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.exec_waiters)
            .into_iter()
            .partition(|(_, exec)| !self.execs.is_running(*exec));
        self.exec_waiters = waiting;
        let Some(mut server) = self.server.take() else {
            return;
        };
        for (client, exec) in done {
            // False: the client hung up meanwhile; nobody to tell.
            server.answer(client, &ControlResponse::ExecExited { exec }, self);
        }
        self.server = Some(server);
    }

    /// The program has ended (and with the init every exec, now or in a moment): the exec
    /// ends the init reported last are taken, and every exec's verdict is written.
    fn execs_end(&mut self) {
        if self.status_open {
            // Non-blocking: what the init wrote before its end is there.
            if let Ok(more) = self.lines.drain(self.status.as_fd()) {
                self.status_open = more;
            }
            let mut exec_ends = Vec::new();
            let mut facts = Facts::default();
            // The program's end is known already: only the execs' matter here.
            let _ = take_status(&mut self.lines, &mut facts, &mut exec_ends);
            for end in exec_ends {
                self.execs.ended(end, self.cgroup);
            }
        }
        self.execs.sandbox_ended(self.cgroup);
    }

    fn program_ended(&mut self, init_reaped: bool) {
        if init_reaped {
            // With the init gone every exec is: their verdicts are written now.
            self.execs.sandbox_ended(self.cgroup);
        }
        if !matches!(self.state, State::Ended { .. }) {
            let paused =
                self.paused_total + self.paused_since.map_or(Duration::ZERO, |p| p.elapsed());
            self.outcome.wall = self.started.elapsed().saturating_sub(paused);
            phases::mark("program_exited");
        }
        self.state = State::Ended {
            at: Instant::now(),
            init_reaped,
        };
    }
}

impl Supervisor<'_> {
    /// A SIGKILL reaches a frozen process only once thawed (v1): a paused sandbox that is
    /// killed is resumed (its phase recorded as running until it ends).
    fn thaw_for_kill(&mut self) {
        if self.paused_since.is_none() {
            return;
        }
        if let Err(e) = self.cgroup.thaw() {
            self.outcome
                .facts
                .internal_error
                .get_or_insert_with(|| format!("thaw the paused sandbox to kill it: {e}"));
        }
        self.end_pause();
    }

    /// Ends the paused span: the wall deadline moves by it, and the phase is `running`.
    fn end_pause(&mut self) {
        if let Some(since) = self.paused_since.take() {
            let span = since.elapsed();
            self.paused_total += span;
            self.wall_deadline = self.wall_deadline.map(|d| d + span);
            self.execs.shift_deadlines(span);
            if let Err(e) = (self.record_phase)(MonitorPhase::Running) {
                eprintln!("runbox monitor: record the running phase: {}", e.chain());
            }
        }
    }

    fn pause(&mut self) -> ControlResponse {
        if self.state != State::Running {
            return control::invalid_state("the sandbox's program has ended");
        }
        if self.paused_since.is_some() {
            return control::invalid_state("the sandbox is paused already");
        }
        // This blocks the monitor's loop until every process is frozen, which is acceptable:
        // - nothing the freeze waits for needs this loop. A process blocked on a full output
        //   or status pipe sleeps interruptibly and freezes like any other; the sandbox has
        //   no uninterruptible wait on the monitor (no FUSE, no socket the kernel waits on
        //   for us), so the freeze settles in microseconds and a straggler in an
        //   uninterruptible sleep (disk I/O) only makes it slower, never stuck;
        // - nothing is lost meanwhile: the pipes hold what was written and block writers,
        //   and pidfd, status and client events stay pending for the next poll;
        // - limits hold: a running task freezes at once, so CPU time barely moves while a
        //   straggler sleeps; the freezing span counts as running time (`paused_since` is
        //   set after), so a wall deadline that passed meanwhile fires when the loop goes on
        //   (failed freeze) or at resume (the deadline moves by the paused span only);
        // - the worst case is bounded: past FREEZE_WITHIN the cgroup is thawed and the
        //   pause fails, and the loop goes on.
        if let Err(e) = self.cgroup.freeze(FREEZE_WITHIN) {
            return control::failed(ErrorKind::Io, format!("freeze the sandbox: {e}"));
        }
        if let Err(e) = (self.record_phase)(MonitorPhase::Paused) {
            // Frozen but not recorded: `state` would say running. Undo it.
            let _ = self.cgroup.thaw();
            return control::failed(
                ErrorKind::Io,
                format!("record the paused phase: {}", e.chain()),
            );
        }
        self.paused_since = Some(Instant::now());
        phases::mark("paused");
        ControlResponse::Done
    }

    fn resume(&mut self) -> ControlResponse {
        if self.paused_since.is_none() {
            return control::invalid_state(match self.state {
                State::Running => "the sandbox is running, not paused",
                _ => "the sandbox's program has ended",
            });
        }
        if let Err(e) = self.cgroup.thaw() {
            return control::failed(ErrorKind::Io, format!("thaw the sandbox: {e}"));
        }
        self.end_pause();
        ControlResponse::Done
    }

    /// Starts an exec: only while the program runs and the sandbox is not paused.
    fn exec(
        &mut self,
        process: &crate::proto::exec::ExecProcess,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> ControlResponse {
        if self.state != State::Running {
            return control::invalid_state("the sandbox's program has ended");
        }
        if self.paused_since.is_some() {
            return control::invalid_state("the sandbox is paused: resume it first");
        }
        match self.execs.start(self.request, self.cgroup, process, fds) {
            Ok(exec) => ControlResponse::ExecStarted { exec },
            Err(e) => ControlResponse::Failed(WireError::from(&e)),
        }
    }

    fn signal(&mut self, signal: i32) -> ControlResponse {
        if matches!(self.state, State::Ended { .. }) {
            return control::invalid_state("the sandbox's program has ended");
        }
        if let Err(e) = sys::pidfd_send_signal(&self.init.pidfd, signal) {
            let kind = if e.raw_os_error() == Some(libc::EINVAL) {
                ErrorKind::InvalidConfig
            } else {
                ErrorKind::InvalidState
            };
            return control::failed(kind, format!("signal {signal} to the sandbox's init: {e}"));
        }
        if signal == libc::SIGKILL {
            self.thaw_for_kill();
        }
        ControlResponse::Done
    }
}

impl Handler for Supervisor<'_> {
    fn handle(
        &mut self,
        request: ControlRequest,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> ControlResponse {
        match request {
            ControlRequest::Start => control::invalid_state("the sandbox was started already"),
            ControlRequest::Kill { signal } => self.signal(signal),
            ControlRequest::Pause => self.pause(),
            ControlRequest::Resume => self.resume(),
            ControlRequest::Stats => {
                control::stats(self.cgroup, self.cpu_baseline, self.paused_since.is_some())
            }
            ControlRequest::Exec { process } => self.exec(&process, fds),
            // A frozen init reads nothing from its request socket, which is blocking: kills
            // sent while paused would fill it and then block this loop for good (no resume
            // could arrive). Refused like an exec; killing the sandbox thaws it.
            ControlRequest::ExecKill { .. } if self.paused_since.is_some() => {
                control::invalid_state("the sandbox is paused: resume it first")
            }
            ControlRequest::ExecKill { exec, signal } => {
                match self.execs.kill(self.request, exec, signal) {
                    Ok(()) => ControlResponse::Done,
                    Err(e) => ControlResponse::Failed(WireError::from(&e)),
                }
            }
            ControlRequest::ExecWait { exec } => {
                if self.execs.known(exec) {
                    ControlResponse::ExecExited { exec }
                } else {
                    control::failed(ErrorKind::NotFound, format!("no exec {exec}"))
                }
            }
        }
    }

    fn handle_from(
        &mut self,
        client: ClientId,
        request: ControlRequest,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Option<ControlResponse> {
        match request {
            // Answered when its verdict is written (the waiter keeps its connection).
            ControlRequest::ExecWait { exec } if self.execs.is_running(exec) => {
                self.exec_waiters.push((client, exec));
                None
            }
            other => Some(self.handle(other, fds)),
        }
    }
}

/// Applies the complete statuses received so far to `facts` (exec ends go to `exec_ends`);
/// true if one reported the program's end (its exit, its signal, or the init's failure).
fn take_status(
    lines: &mut StatusFrames,
    facts: &mut Facts,
    exec_ends: &mut Vec<ExecEnd>,
) -> Result<bool, ProtoError> {
    let mut ended = false;
    while let Some(status) = lines.next_status()? {
        match status {
            InitStatus::Exited(code) => facts.exit_code = Some(code),
            InitStatus::Signaled(sig) => facts.signal = Some(sig),
            InitStatus::Failed(why) => {
                facts.internal_error = Some(format!("in the sandbox's init: {why}"));
            }
            InitStatus::Mark { label, us } => {
                phases::mark_at(&label, us);
                continue;
            }
            InitStatus::ExecEnded(end) => {
                exec_ends.push(end);
                continue;
            }
            InitStatus::Ready => continue,
        }
        ended = true;
    }
    Ok(ended)
}

/// How the program ended, from the init's own wait status (the init was killed before it
/// could report).
fn facts_from_wait(wait: nix::Result<WaitStatus>, facts: &mut Facts) {
    match wait {
        Ok(WaitStatus::Exited(_, code)) => facts.exit_code = Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => facts.signal = Some(sig as i32),
        Ok(other) => facts.internal_error = Some(format!("unexpected wait status {other:?}")),
        Err(e) => facts.internal_error = Some(format!("waitpid init: {e}")),
    }
}

/// Reaps the init of a sandbox killed before it started, taking its end as
/// [`Supervisor::init_exited`] does.
pub(super) fn collect_unstarted(init: &Init, streams: &mut Streams, facts: &mut Facts) {
    let wait = waitpid(nix::unistd::Pid::from_raw(init.pid), None);
    // Before start the init reports no exec; a broken status is told by the wait status.
    let read = streams.lines.drain(streams.status.as_fd());
    let taken = take_status(&mut streams.lines, facts, &mut Vec::new());
    if read.is_err() || !matches!(taken, Ok(true)) {
        facts_from_wait(wait, facts);
    }
}

fn available_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| {
        f64::from(u32::try_from(n.get()).unwrap_or(u32::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_check_comes_when_the_rest_of_the_budget_could_be_used_up() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Nothing used, 1 CPU: the whole budget away.
        assert_eq!(next_cpu_check(now, s(0), s(2), 1.0), Some(now + s(2)));
        // Half a CPU stretches it, two CPUs shrink it.
        assert_eq!(next_cpu_check(now, s(1), s(2), 0.5), Some(now + s(2)));
        assert_eq!(next_cpu_check(now, s(1), s(2), 2.0), Some(now + ms(500)));
        // Converging on the limit: never closer than 1 ms, and over it means kill.
        assert_eq!(
            next_cpu_check(now, s(2) - Duration::from_micros(10), s(2), 1.0),
            Some(now + ms(1))
        );
        assert_eq!(next_cpu_check(now, s(2), s(2), 1.0), None);
        assert_eq!(next_cpu_check(now, s(3), s(2), 1.0), None);
    }

    #[test]
    fn statuses_decide_the_facts_and_the_end() {
        let frame = |s: InitStatus| crate::proto::frame::encode(&s, 1 << 16).unwrap();
        let mut lines = StatusFrames::default();
        let mut facts = Facts::default();
        let mut ends = Vec::new();
        lines
            .push(&frame(InitStatus::Mark {
                label: "spawned".into(),
                us: 5,
            }))
            .unwrap();
        let end = ExecEnd {
            exec: 2,
            exit_code: Some(0),
            signal: None,
            cpu_user_us: 1,
            cpu_system_us: 1,
        };
        lines.push(&frame(InitStatus::ExecEnded(end))).unwrap();
        assert!(
            !take_status(&mut lines, &mut facts, &mut ends).unwrap(),
            "a mark or an exec's end is not the end"
        );
        assert_eq!(ends, [end]);
        let exit = frame(InitStatus::Exited(3));
        lines.push(&exit).unwrap();
        lines.push(&exit[..3]).unwrap();
        assert!(take_status(&mut lines, &mut facts, &mut ends).unwrap());
        assert_eq!(facts.exit_code, Some(3));
        lines.push(&exit[3..]).unwrap();
        lines.push(&frame(InitStatus::Signaled(9))).unwrap();
        assert!(take_status(&mut lines, &mut facts, &mut ends).unwrap());
        assert_eq!(facts.signal, Some(9));
        let mut facts = Facts::default();
        lines
            .push(&frame(InitStatus::failed("execve /x: ENOENT")))
            .unwrap();
        assert!(take_status(&mut lines, &mut facts, &mut ends).unwrap());
        assert_eq!(
            facts.internal_error.as_deref(),
            Some("in the sandbox's init: execve /x: ENOENT")
        );
    }

    #[test]
    fn a_wait_status_stands_in_for_a_missing_status_line() {
        let pid = nix::unistd::Pid::from_raw(1);
        let mut facts = Facts::default();
        facts_from_wait(
            Ok(WaitStatus::Signaled(
                pid,
                nix::sys::signal::Signal::SIGKILL,
                false,
            )),
            &mut facts,
        );
        assert_eq!(facts.signal, Some(9));
        let mut facts = Facts::default();
        facts_from_wait(Ok(WaitStatus::Exited(pid, 137)), &mut facts);
        assert_eq!(facts.exit_code, Some(137));
        let mut facts = Facts::default();
        facts_from_wait(Err(nix::Error::ECHILD), &mut facts);
        assert!(facts.internal_error.is_some());
    }
}
