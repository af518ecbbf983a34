//! The monitor's table of a running sandbox's execs (further processes the init starts on
//! request): at most [`MAX_EXECS`] at once, each with its captured output under its own cap
//! in `<sandbox dir>/execs/<n>/`, its wall deadline, its CPU-time limit (the init sets it as
//! `RLIMIT_CPU`), and its verdict written to `execs/<n>/exit.json` into space reserved when it
//! started, so a controller that dies loses nothing. Runs in the sandbox's monitor during
//! supervision, inside its single poll loop (never blocking on an exec).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use crate::config::SandboxConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::host::cgroup::Cgroup;
use crate::host::state::{self, ExitRecord};
use crate::layout::{ExecLayout, Layout};
use crate::proto::exec::{ExecProcess, ExecStream};
use crate::proto::{ExecEnd, InitRequest, ProgramRequest, MAX_EXECS};
use crate::verdict::{Facts, LimitKind, Usage, Verdict, SCHEMA_VERSION};

use super::sink::{Pump, Sink};

/// How long an exec's output is drained after its process ended (its group is killed by
/// then) before its verdict is written without the rest.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A process group the init runs for the monitor.
struct Entry {
    n: u64,
    files: ExecLayout,
    started: Instant,
    wall_deadline: Option<Instant>,
    cpu_limit: Option<Duration>,
    /// Its `RLIMIT_CPU` soft limit, seconds (SIGXCPU there, SIGKILL a second later).
    cpu_rlimit_secs: Option<u64>,
    /// The cgroup's OOM-kill count when it started.
    oom_before: u64,
    /// Captured output bytes still allowed, stdout and stderr together.
    budget: u64,
    sinks: [Option<Sink>; 2],
    killed_for: Option<LimitKind>,
    internal_error: Option<String>,
    /// How it ended and when (the init's report).
    end: Option<(ExecEnd, Instant)>,
}

/// The table of the sandbox's execs.
pub(super) struct Execs {
    layout: Layout,
    sandbox_id: String,
    /// The sandbox's environment, under each exec's own variables.
    env: Vec<String>,
    cwd: String,
    output_bytes: u64,
    address_space_bytes: Option<u64>,
    stack_bytes: Option<u64>,
    next: u64,
    running: Vec<Entry>,
}

impl Execs {
    /// An empty table for the sandbox `id` of `cfg` laid out in `layout`.
    pub fn new(layout: &Layout, id: &str, cfg: &SandboxConfig) -> Self {
        Execs {
            layout: layout.clone(),
            sandbox_id: id.to_string(),
            env: cfg.run.env.clone(),
            cwd: cfg.run.cwd.clone(),
            output_bytes: cfg.run.limits.output_bytes,
            address_space_bytes: cfg.run.limits.address_space_bytes,
            stack_bytes: cfg.run.limits.stack_bytes,
            next: 1,
            running: Vec::new(),
        }
    }

    /// Starts an exec: its directory (with its verdict's space reserved), its output pipes,
    /// and the request to the init on `request` with `fds` (stdin, then each inherited
    /// stream). Returns its number. Nothing is left behind on an error.
    pub fn start(
        &mut self,
        request: BorrowedFd<'_>,
        cgroup: &Cgroup,
        process: &ExecProcess,
        fds: Vec<OwnedFd>,
    ) -> Result<u64> {
        if fds.len() != process.fd_count() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "an exec request with {} descriptors, not {}",
                    fds.len(),
                    process.fd_count()
                ),
            ));
        }
        if self.running.len() >= MAX_EXECS {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "sandbox {} already runs {MAX_EXECS} execs, the most at once",
                    self.sandbox_id
                ),
            ));
        }
        let n = self.next;
        let files = self.layout.exec(n);
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| Error::io("create the exec's directory", &files.dir, e))?;
        match self.start_in(request, cgroup, process, fds, n, files.clone()) {
            Ok(entry) => {
                self.next += 1;
                self.running.push(entry);
                Ok(n)
            }
            Err(e) => {
                if let Err(rm) = std::fs::remove_dir_all(&files.dir) {
                    eprintln!(
                        "runbox monitor: remove {} after a failed exec: {rm}",
                        files.dir.display()
                    );
                }
                Err(e)
            }
        }
    }

    fn start_in(
        &self,
        request: BorrowedFd<'_>,
        cgroup: &Cgroup,
        process: &ExecProcess,
        fds: Vec<OwnedFd>,
        n: u64,
        files: ExecLayout,
    ) -> Result<Entry> {
        state::reserve(&files.exit_reserve(), state::EXIT_RESERVE_BYTES)?;
        let mut fds = fds.into_iter();
        let stdin = fds
            .next()
            .ok_or_else(|| Error::new(ErrorKind::InvalidConfig, "an exec without stdin"))?;
        let mut sinks = [None, None];
        let mut ends: Vec<OwnedFd> = vec![stdin];
        for (i, (mode, path)) in [
            (process.stdout, files.stdout()),
            (process.stderr, files.stderr()),
        ]
        .into_iter()
        .enumerate()
        {
            match mode {
                ExecStream::Inherit => ends.push(fds.next().ok_or_else(|| {
                    Error::new(ErrorKind::InvalidConfig, "an inherited stream is missing")
                })?),
                ExecStream::Capture => {
                    let file = File::create(&path)
                        .map_err(|e| Error::io("create the exec's output file", &path, e))?;
                    let (r, w) = nix::unistd::pipe2(
                        nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
                    )
                    .map_err(|e| Error::io("create an output pipe for", &path, e.into()))?;
                    // The write end blocks: the exec waits for the monitor, never loses bytes.
                    nix::fcntl::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(&w),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                    )
                    .map_err(|e| Error::io("configure an output pipe for", &path, e.into()))?;
                    sinks[i] = Some(Sink::new(r, file));
                    ends.push(w);
                }
            }
        }
        let mut env = self.env.clone();
        for var in &process.env {
            let key = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            env.push(var.clone());
        }
        let cpu_limit = process.cpu_time_ms.map(Duration::from_millis);
        // Whole seconds, rounded up.
        let cpu_rlimit_secs = cpu_limit.map(|c| c.as_secs() + u64::from(c.subsec_nanos() > 0));
        let program = ProgramRequest {
            exe: process.program.clone(),
            args: process.args.clone(),
            env,
            cwd: process.cwd.clone().unwrap_or_else(|| self.cwd.clone()),
            cpu_rlimit_secs,
            address_space_bytes: self.address_space_bytes,
            stack_bytes: self.stack_bytes,
            redirects: Default::default(),
            stdout_fd: true,
            stderr_fd: true,
        };
        let oom_before = cgroup.oom_kills_and_peak(false).map_or(0, |(n, _)| n);
        let borrowed: Vec<BorrowedFd<'_>> = ends.iter().map(AsFd::as_fd).collect();
        InitRequest::Exec { exec: n, program }
            .send(request, &borrowed)
            .map_err(|e| {
                Error::with_source(ErrorKind::LaunchFailed, "send the exec to the init", e)
            })?;
        let started = Instant::now();
        Ok(Entry {
            n,
            files,
            started,
            wall_deadline: process
                .wall_time_ms
                .map(|ms| started + Duration::from_millis(ms)),
            cpu_limit,
            cpu_rlimit_secs,
            oom_before,
            budget: process.output_bytes.unwrap_or(self.output_bytes),
            sinks,
            killed_for: None,
            internal_error: None,
            end: None,
        })
    }

    /// Sends `signal` to exec `n`'s process group. An exec that has ended is `not_found`
    /// if it never was, else nothing happens (its verdict stands).
    pub fn kill(&mut self, request: BorrowedFd<'_>, n: u64, signal: i32) -> Result<()> {
        if n == 0 || n >= self.next {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("sandbox {} has no exec {n}", self.sandbox_id),
            ));
        }
        if self.running.iter().any(|e| e.n == n && e.end.is_none()) {
            InitRequest::Kill { exec: n, signal }
                .send(request, &[])
                .map_err(|e| Error::with_source(ErrorKind::Io, "send a kill to the init", e))?;
        }
        Ok(())
    }

    /// Whether exec `n` was ever started here.
    pub fn known(&self, n: u64) -> bool {
        n > 0 && n < self.next
    }

    /// Whether exec `n` still runs or drains (its verdict is not written yet).
    pub fn is_running(&self, n: u64) -> bool {
        self.running.iter().any(|e| e.n == n)
    }

    /// Moves every wall deadline by `by` (a paused span, which does not count).
    pub fn shift_deadlines(&mut self, by: Duration) {
        for e in &mut self.running {
            e.wall_deadline = e.wall_deadline.map(|d| d + by);
            e.started += by;
            if let Some((_, at)) = &mut e.end {
                *at += by;
            }
        }
    }

    /// Adds the output pipes to `fds`; returns where they are.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Range<usize> {
        let from = fds.len();
        for e in &self.running {
            for sink in e.sinks.iter().flatten() {
                if sink.open {
                    fds.push(PollFd::new(sink.pipe.as_fd(), PollFlags::POLLIN));
                }
            }
        }
        from..fds.len()
    }

    /// The next moment an exec needs the monitor without an event: a wall deadline, or the
    /// end of an ended exec's drain.
    pub fn deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .filter_map(|e| match e.end {
                Some((_, at)) => Some(at + DRAIN_GRACE),
                None if e.killed_for.is_none() => e.wall_deadline,
                None => None,
            })
            .min()
    }

    /// Handles what the poll reported for the pipes of [`Execs::poll_fds`] (`ready`, in the
    /// same order), then the deadlines (not while the sandbox is `paused`), then writes the
    /// verdicts of execs that are done.
    pub fn handle(
        &mut self,
        ready: &[bool],
        request: BorrowedFd<'_>,
        cgroup: &Cgroup,
        paused: bool,
    ) {
        let mut at = 0;
        let mut overflowed = Vec::new();
        for e in &mut self.running {
            for sink in e.sinks.iter_mut().flatten() {
                if !sink.open {
                    continue;
                }
                let is_ready = ready.get(at).copied().unwrap_or(false);
                at += 1;
                if !is_ready {
                    continue;
                }
                match sink.pump(&mut e.budget) {
                    Pump::Ok => {}
                    Pump::Overflow => overflowed.push(e.n),
                    Pump::Failed(err) => {
                        e.internal_error
                            .get_or_insert_with(|| format!("capture output: {err}"));
                    }
                }
            }
        }
        for n in overflowed {
            self.kill_for(request, n, LimitKind::Output);
        }
        let now = Instant::now();
        let due: Vec<u64> = self
            .running
            .iter()
            .filter(|e| !paused && e.end.is_none() && e.killed_for.is_none())
            .filter(|e| e.wall_deadline.is_some_and(|d| now >= d))
            .map(|e| e.n)
            .collect();
        for n in due {
            self.kill_for(request, n, LimitKind::WallTime);
        }
        self.finish_done(now, cgroup, false);
    }

    /// Kills exec `n`'s group for `limit` (the first limit stands).
    fn kill_for(&mut self, request: BorrowedFd<'_>, n: u64, limit: LimitKind) {
        let Some(e) = self.running.iter_mut().find(|e| e.n == n) else {
            return;
        };
        if e.killed_for.is_some() || e.end.is_some() {
            return;
        }
        e.killed_for = Some(limit);
        let kill = InitRequest::Kill {
            exec: n,
            signal: libc::SIGKILL,
        };
        if let Err(err) = kill.send(request, &[]) {
            e.internal_error = Some(format!("kill the exec for its {limit:?} limit: {err}"));
        }
    }

    /// The init reported exec `end.exec`'s end: its verdict is written now if its output is
    /// drained already (else when it is, or at the end of the drain's grace).
    pub fn ended(&mut self, end: ExecEnd, cgroup: &Cgroup) {
        let now = Instant::now();
        if let Some(e) = self.running.iter_mut().find(|e| e.n == end.exec) {
            e.end.get_or_insert((end, now));
        }
        self.finish_done(now, cgroup, false);
    }

    /// The sandbox's program ended, and with the init every exec: those that had not
    /// ended were killed. Drains what their pipes hold and writes every verdict.
    pub fn sandbox_ended(&mut self, cgroup: &Cgroup) {
        let now = Instant::now();
        for e in &mut self.running {
            if e.end.is_none() {
                e.end = Some((
                    ExecEnd {
                        exec: e.n,
                        exit_code: None,
                        signal: Some(libc::SIGKILL),
                        cpu_user_us: 0,
                        cpu_system_us: 0,
                    },
                    now,
                ));
                e.internal_error.get_or_insert_with(|| {
                    "killed: the sandbox's program ended, and every exec with it".to_string()
                });
            }
            for sink in e.sinks.iter_mut().flatten() {
                while sink.open {
                    if !matches!(sink.pump(&mut e.budget), Pump::Ok) {
                        break;
                    }
                    if sink.would_block {
                        break;
                    }
                }
            }
        }
        self.finish_done(now, cgroup, true);
    }

    /// Writes the verdict of every exec that has ended and whose output is drained (or
    /// whose drain took too long; every one if `all`).
    fn finish_done(&mut self, now: Instant, cgroup: &Cgroup, all: bool) {
        let done: Vec<usize> = (0..self.running.len())
            .rev()
            .filter(|&i| {
                let e = &self.running[i];
                e.end.is_some_and(|(_, at)| {
                    all || now >= at + DRAIN_GRACE || e.sinks.iter().flatten().all(|s| !s.open)
                })
            })
            .collect();
        if done.is_empty() {
            return;
        }
        let figures = cgroup.oom_kills_and_peak(true).ok();
        for i in done {
            let e = self.running.remove(i);
            let verdict = self.verdict(&e, figures.as_ref());
            if let Err(err) = write_exit(&e.files, &verdict) {
                eprintln!(
                    "runbox monitor: the verdict of exec {} of {}: {}",
                    e.n,
                    self.sandbox_id,
                    err.chain()
                );
            }
        }
    }

    /// `figures`: the cgroup's OOM kills and memory peak now.
    fn verdict(&self, e: &Entry, figures: Option<&(u64, u64)>) -> Verdict {
        let (end, ended_at) = e.end.unwrap_or((
            ExecEnd {
                exec: e.n,
                exit_code: None,
                signal: None,
                cpu_user_us: 0,
                cpu_system_us: 0,
            },
            Instant::now(),
        ));
        let cpu_us = end.cpu_user_us.saturating_add(end.cpu_system_us);
        let mut facts = Facts {
            exit_code: end.exit_code,
            signal: end.signal,
            killed_for: e.killed_for,
            internal_error: e.internal_error.clone(),
            ..Facts::default()
        };
        // The cgroup's OOM killer ran while it ran, and it died of SIGKILL: it was the one.
        facts.oom_killed = end.signal == Some(libc::SIGKILL)
            && figures.is_some_and(|&(kills, _)| kills > e.oom_before);
        if facts.oom_killed {
            // Ended by the sandbox's memory limit, not by runbox: no internal error.
            facts.internal_error = None;
        }
        if let (Some(limit), Some(secs)) = (e.cpu_limit, e.cpu_rlimit_secs) {
            // The kernel's SIGXCPU at the soft limit, its SIGKILL past it (the CPU time of
            // rusage runs a little behind the scheduler's, which the kernel checks), or a
            // process that ended on its own past the limit.
            let by_rlimit = end.signal == Some(libc::SIGXCPU)
                || (end.signal == Some(libc::SIGKILL)
                    && u128::from(cpu_us) * 10 >= u128::from(secs) * 1_000_000 * 9);
            if (by_rlimit || u128::from(cpu_us) > limit.as_micros())
                && facts.killed_for.is_none()
                && !facts.oom_killed
            {
                facts.killed_for = Some(LimitKind::CpuTime);
            }
        }
        let (status, limit, message) = facts.classify();
        let lost = e
            .sinks
            .iter()
            .flatten()
            .filter_map(|s| {
                s.lost
                    .as_ref()
                    .map(|(at, err)| format!("cut at {at} bytes ({err})"))
            })
            .collect::<Vec<_>>();
        let message = match (message, lost.is_empty()) {
            (m, true) => m,
            (Some(m), false) => Some(format!("{m}; output lost: {}", lost.join(", "))),
            (None, false) => Some(format!("output lost: {}", lost.join(", "))),
        };
        let text = |i: usize| {
            e.sinks[i]
                .as_ref()
                .map(|_| read_all(&[e.files.stdout(), e.files.stderr()][i]))
                .unwrap_or_default()
        };
        Verdict {
            schema_version: SCHEMA_VERSION,
            id: self.sandbox_id.clone(),
            status,
            exit_code: end.exit_code,
            signal: end.signal,
            cpu_time_us: cpu_us,
            cpu_user_us: end.cpu_user_us,
            cpu_system_us: end.cpu_system_us,
            wall_time_us: u64::try_from(ended_at.saturating_duration_since(e.started).as_micros())
                .unwrap_or(u64::MAX),
            memory_peak_bytes: figures.map_or(0, |&(_, peak)| peak),
            oom_killed: facts.oom_killed,
            limit,
            stdout: text(0),
            stderr: text(1),
            stdout_truncated: e.sinks[0].as_ref().is_some_and(|s| s.truncated),
            stderr_truncated: e.sinks[1].as_ref().is_some_and(|s| s.truncated),
            message,
        }
    }
}

/// Reads a captured output file (already within its cap) as lossy UTF-8.
fn read_all(path: &std::path::Path) -> String {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            if let Err(e) = f.read_to_end(&mut buf) {
                eprintln!("runbox monitor: read {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("runbox monitor: open {}: {e}", path.display()),
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Writes an exec's `exit.json`: into its reserved space if the record fits, else as a new
/// file, else (a full state root) into the reserve with the output left out of the record
/// (the `stdout` and `stderr` files keep it; the flags and message say so).
fn write_exit(files: &ExecLayout, verdict: &Verdict) -> Result<()> {
    let record = |v: &Verdict| ExitRecord {
        format_version: state::FORMAT_VERSION,
        verdict: v.clone(),
        usage: Usage::default(),
    };
    let encode = |r: &ExitRecord| {
        serde_json::to_vec_pretty(r)
            .map_err(|e| Error::with_source(ErrorKind::Io, "encode an exec's exit.json", e))
    };
    let bytes = encode(&record(verdict))?;
    let reserve = files.exit_reserve();
    if state::write_reserved(&reserve, &files.exit(), &bytes, state::Reserved::Rename)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let unreserved = match state::write_atomic(&files.exit(), &bytes) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(&reserve) {
                eprintln!("runbox monitor: remove {}: {e}", reserve.display());
            }
            return Ok(());
        }
        Err(e) => e,
    };
    let mut cut = verdict.clone();
    cut.stdout_truncated |= !cut.stdout.is_empty();
    cut.stderr_truncated |= !cut.stderr.is_empty();
    cut.stdout.clear();
    cut.stderr.clear();
    let note = format!(
        "output left out of this record for want of space ({})",
        unreserved.chain()
    );
    cut.message = Some(cut.message.map_or(note.clone(), |m| format!("{m}; {note}")));
    match state::write_reserved(
        &reserve,
        &files.exit(),
        &encode(&record(&cut))?,
        state::Reserved::Rename,
    )? {
        true => Ok(()),
        false => Err(unreserved),
    }
}
