//! The end of a run: the cgroup's figures, the files collected out, the verdict, `exit.json`,
//! and the teardown (before the result, or after it for one-shot runs, whose controller gets
//! the verdict first). Runs in the sandbox's monitor once the program has ended.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::wait::waitpid;

use crate::host::cgroup::CpuUsage;
use crate::host::state::{self, ExitRecord, SandboxRecord};
use crate::host::{rootfs, sys};
use crate::layout::Layout;
use crate::proto::Report;
use crate::verdict::{LimitKind, Usage, Verdict, SCHEMA_VERSION};

use super::built::Built;
use super::phases;
use super::process;
use super::supervise::Outcome;

/// Reads the cgroup's figures, collects files, tears everything down and writes `exit.json`
/// (a sandbox removed on exit reports first and cleans up after; otherwise the result is
/// written only once everything is cleaned, so a waiter finds nothing left).
pub(super) fn finish(
    layout: &Layout,
    record: &SandboxRecord,
    mut built: Built,
    cpu_baseline: CpuUsage,
    mut outcome: Outcome,
) -> crate::error::Result<()> {
    let figures = built.cgroup.figures().map(|mut f| {
        f.cpu = f.cpu.since(cpu_baseline);
        f
    });
    phases::mark("figures_read");
    let limits = &record.config.run.limits;
    let file_size_bytes = record.config.sandbox.limits.file_size_bytes;
    let collected = rootfs::collect_out(
        &built.scratch.rootfs(),
        &record.config.run.collects,
        file_size_bytes,
        limits.collect_bytes,
    )
    .unwrap_or_else(|e| {
        outcome
            .facts
            .internal_error
            .get_or_insert(format!("collect files: {}", error_chain(&e)));
        rootfs::Collected::default()
    });
    if !record.remove_on_exit {
        reap_init(&mut built, &mut outcome);
        if let Err(e) = built.teardown() {
            outcome.facts.internal_error.get_or_insert(e.chain());
        }
        phases::mark("torn_down");
    }
    let figures = figures.unwrap_or_else(|e| {
        outcome
            .facts
            .internal_error
            .get_or_insert(format!("read cgroup figures: {e}"));
        Default::default()
    });
    outcome.facts.oom_killed = figures.oom_kills > 0;
    // Past the CPU-time limit is a time limit even if the program ended within the grace.
    if let Some(limit) = limits.cpu_time {
        if Duration::from_micros(figures.cpu.total_us) > limit
            && outcome.facts.killed_for.is_none()
            && !outcome.facts.oom_killed
        {
            outcome.facts.killed_for = Some(LimitKind::CpuTime);
        }
    }
    let (status, limit, mut message) = outcome.facts.classify();
    if let Some(note) = collected.note(limits.collect_bytes, file_size_bytes) {
        message = Some(message.map_or(note.clone(), |m| format!("{m}; {note}")));
    }
    if let Some(lost) = outcome.output_lost.take() {
        message = Some(match message {
            Some(m) => format!("{m}; {lost}"),
            None => lost,
        });
    }
    let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
    let verdict = Verdict {
        schema_version: SCHEMA_VERSION,
        id: record.id.clone(),
        status,
        exit_code: outcome.facts.exit_code,
        signal: outcome.facts.signal,
        cpu_time_us: figures.cpu.total_us,
        cpu_user_us: figures.cpu.user_us,
        cpu_system_us: figures.cpu.system_us,
        wall_time_us: u64::try_from(outcome.wall.as_micros()).unwrap_or(u64::MAX),
        memory_peak_bytes: figures.memory_peak_bytes,
        oom_killed: outcome.facts.oom_killed,
        limit,
        stdout: read_capped(&layout.stdout(), cap),
        stderr: read_capped(&layout.stderr(), cap),
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        message,
    };
    let exit = ExitRecord {
        format_version: state::FORMAT_VERSION,
        verdict,
        usage: Usage {
            cpu_throttled_periods: figures.throttled_periods,
            cpu_periods: figures.periods,
            pids_limit_hits: figures.pids_limit_hits,
            #[cfg(feature = "bench")]
            phases_monotonic_us: phases::taken(),
        },
    };
    let written = write_exit(layout, &exit);
    if record.remove_on_exit {
        let sent = process::report(&Report::Exited {
            record: Box::new(exit),
        });
        // Nobody waits for this part; a failure leaves the directory for `gc`.
        reap_init(&mut built, &mut outcome);
        match built.teardown() {
            Ok(()) if sent && process::result_delivered() => {
                let _ = state::remove_sandbox_dir(&layout.dir);
            }
            // The controller died before reading the result: keep it for a later `wait`.
            Ok(()) => {}
            Err(e) => eprintln!(
                "runbox monitor: cleanup after the result failed: {}",
                e.chain()
            ),
        }
    }
    written
}

/// Writes `exit.json` where it cannot fail for want of space: into the space the monitor
/// reserved when it opened the sandbox (`exit.reserve`, [`state::EXIT_RESERVE_BYTES`]) if the
/// record fits, else as a new file; if that fails too (the state root is full), into the
/// reserve with the captured output in the verdict cut to fit (the flags say it was cut, the
/// message why; the `stdout` and `stderr` files keep what they hold). The rest of the verdict
/// (status, exit code, signal, limit, figures) is always the real one.
fn write_exit(layout: &Layout, exit: &ExitRecord) -> crate::error::Result<()> {
    let reserve = layout.exit_reserve();
    let encode = |r: &ExitRecord| {
        serde_json::to_vec_pretty(r).map_err(|e| {
            crate::error::Error::with_source(crate::error::ErrorKind::Io, "encode exit.json", e)
        })
    };
    let bytes = encode(exit)?;
    // An error here (a copy-on-write file system needs new blocks even to rewrite) leaves
    // the ordinary write to try.
    if state::write_reserved(&reserve, &layout.exit(), &bytes, state::Reserved::Rename)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let unreserved = match state::write_atomic(&layout.exit(), &bytes) {
        Ok(()) => {
            let _ = std::fs::remove_file(&reserve);
            return Ok(());
        }
        Err(e) => e,
    };
    let capacity = usize::try_from(state::reserved_capacity(&reserve)).unwrap_or(usize::MAX);
    let mut cut = exit.clone();
    let note = format!(
        "output in this record cut to fit the space reserved for it ({})",
        unreserved.chain()
    );
    cut.verdict.message = Some(match cut.verdict.message.take() {
        Some(m) => format!("{m}; {note}"),
        None => note,
    });
    let mut keep = cut.verdict.stdout.len().max(cut.verdict.stderr.len());
    loop {
        for (text, truncated, full) in [
            (
                &mut cut.verdict.stdout,
                &mut cut.verdict.stdout_truncated,
                &exit.verdict.stdout,
            ),
            (
                &mut cut.verdict.stderr,
                &mut cut.verdict.stderr_truncated,
                &exit.verdict.stderr,
            ),
        ] {
            if full.len() > keep {
                *text = full[..floor_char_boundary(full, keep)].to_string();
                *truncated = true;
            }
        }
        let bytes = encode(&cut)?;
        if bytes.len() <= capacity || keep == 0 {
            return match state::write_reserved(
                &reserve,
                &layout.exit(),
                &bytes,
                state::Reserved::Rename,
            )? {
                true => Ok(()),
                false => Err(unreserved),
            };
        }
        keep /= 2;
    }
}

/// The largest index at most `at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Waits for an init that reported the program's end but had not exited yet. The init exits
/// right after its status line; one that does not within a second is killed (with its pid
/// namespace) before it is waited for.
fn reap_init(built: &mut Built, outcome: &mut Outcome) {
    if std::mem::take(&mut outcome.init_unreaped) {
        let init = &built.init;
        let mut fds = [PollFd::new(init.pidfd.as_fd(), PollFlags::POLLIN)];
        let deadline = Instant::now() + Duration::from_secs(1);
        if !matches!(sys::poll_until(&mut fds, Some(deadline)), Ok(n) if n > 0) {
            let _ = sys::pidfd_send_signal(&init.pidfd, libc::SIGKILL);
        }
        let _ = waitpid(nix::unistd::Pid::from_raw(init.pid), None);
    }
    built.init_reaped();
}

/// An error and its causes joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Reads at most `cap` bytes of `path` as lossy UTF-8.
fn read_capped(path: &Path, cap: usize) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(cap as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
