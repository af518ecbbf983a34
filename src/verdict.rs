//! The grader's answer for one run: the stable JSON result (contract v1) and how it is
//! derived from what happened. Pure; built in the monitor, read by controllers.

use serde::{Deserialize, Serialize};

/// Version of the [`Verdict`] JSON schema.
pub const SCHEMA_VERSION: u32 = 1;

/// How the run ended, from the grader's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Exited with code 0 within every limit.
    Ok,
    /// Exited with a non-zero code.
    RuntimeError,
    /// Killed by a signal that no runbox limit sent.
    Signaled,
    /// The CPU-time limit fired.
    TimeLimit,
    /// The wall-clock limit fired.
    WallTimeLimit,
    /// The memory limit fired (the kernel's OOM killer ran in the sandbox).
    MemoryLimit,
    /// The output limit fired.
    OutputLimit,
    /// runbox itself failed during the run; see `message`.
    InternalError,
}

/// Which limit ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitKind {
    /// CPU time of the whole process tree.
    CpuTime,
    /// Wall-clock time.
    WallTime,
    /// Memory (cgroup).
    Memory,
    /// Captured output size.
    Output,
}

/// The result of one run, as printed by `runbox run --json` and `runbox wait --json`.
///
/// Field names and meanings are stable within a `schema_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Verdict {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The sandbox id.
    pub id: String,
    /// How the run ended.
    pub status: Status,
    /// Exit code if the program exited.
    pub exit_code: Option<i32>,
    /// Signal number if the program was killed by a signal.
    pub signal: Option<i32>,
    /// CPU time (user + system) of the whole process tree, from the cgroup.
    pub cpu_time_us: u64,
    /// User CPU time of the whole process tree.
    pub cpu_user_us: u64,
    /// System CPU time of the whole process tree.
    pub cpu_system_us: u64,
    /// Wall time from start to the exit of the sandbox's first process.
    pub wall_time_us: u64,
    /// Peak memory of the sandbox's cgroup, in bytes (includes tmpfs pages it wrote).
    pub memory_peak_bytes: u64,
    /// True if the kernel's OOM killer killed a process in the sandbox.
    pub oom_killed: bool,
    /// Which limit fired, if any.
    pub limit: Option<LimitKind>,
    /// Captured stdout, lossy UTF-8, at most the output limit.
    pub stdout: String,
    /// Captured stderr, lossy UTF-8, at most the output limit.
    pub stderr: String,
    /// True if stdout was cut at the output limit.
    pub stdout_truncated: bool,
    /// True if stderr was cut at the output limit.
    pub stderr_truncated: bool,
    /// A human-readable explanation for limits and internal errors.
    pub message: Option<String>,
}

impl Verdict {
    /// The exit status `runbox run` uses without `--json`: the exit code, 128+N for signal N,
    /// 125 for an internal error.
    pub fn shell_status(&self) -> i32 {
        match (self.status, self.exit_code, self.signal) {
            (Status::InternalError, _, _) => 125,
            (_, Some(code), _) => code,
            (_, None, Some(sig)) => 128 + sig,
            _ => 125,
        }
    }
}

impl Verdict {
    /// The verdict in isolate's meta-file format (`key:value` lines), for graders written
    /// against isolate (CMS, Judge0). `time` is CPU time and `max-rss` and `cg-mem` are the
    /// cgroup's peak memory, in seconds and KiB; `status` is RE, SG, TO or XX (absent on
    /// success, decided as isolate does: TO for time limits, else from the exit code or
    /// signal); `killed:1` marks a kill by a time or output limit.
    pub fn isolate_meta(&self) -> String {
        let mut m = String::new();
        let mut line = |k: &str, v: String| {
            m.push_str(k);
            m.push(':');
            m.push_str(&v);
            m.push('\n');
        };
        let secs = |us: u64| format!("{}.{:03}", us / 1_000_000, us % 1_000_000 / 1000);
        line("time", secs(self.cpu_time_us));
        line("time-wall", secs(self.wall_time_us));
        line("max-rss", (self.memory_peak_bytes / 1024).to_string());
        line("cg-mem", (self.memory_peak_bytes / 1024).to_string());
        if self.oom_killed {
            line("cg-oom-killed", "1".to_string());
        }
        if let Some(code) = self.exit_code {
            line("exitcode", code.to_string());
        }
        if let Some(sig) = self.signal {
            line("exitsig", sig.to_string());
        }
        // isolate writes `killed` when it killed the program itself (a time limit; runbox's
        // output limit too), not for the kernel's OOM kill.
        if self.limit.is_some_and(|l| l != LimitKind::Memory) {
            line("killed", "1".to_string());
        }
        // As isolate decides: a time limit is TO; otherwise the program's own end says RE or
        // SG (an OOM kill only adds `cg-oom-killed`); no status key on a clean exit.
        let (status, msg) = match (self.status, self.exit_code, self.signal) {
            (Status::TimeLimit, _, _) => (Some("TO"), Some("Time limit exceeded".to_string())),
            (Status::WallTimeLimit, _, _) => (
                Some("TO"),
                Some("Time limit exceeded (wall clock)".to_string()),
            ),
            (Status::InternalError, _, _) => (Some("XX"), self.message.clone()),
            (_, Some(0), _) => (None, None),
            (_, Some(code), _) => (Some("RE"), Some(format!("Exited with error status {code}"))),
            (_, None, Some(sig)) => (Some("SG"), Some(format!("Caught fatal signal {sig}"))),
            (_, None, None) => (Some("XX"), self.message.clone()),
        };
        if let Some(st) = status {
            line("status", st.to_string());
        }
        if let Some(msg) = msg {
            line("message", msg.replace('\n', " "));
        }
        m
    }
}

/// Figures beyond the verdict, kept in the sandbox's exit record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// CFS periods in which the sandbox was throttled by its CPU quota.
    pub cpu_throttled_periods: u64,
    /// CFS periods that elapsed while the sandbox was runnable.
    pub cpu_periods: u64,
    /// Forks or clones refused by the pids limit.
    #[serde(default)]
    pub pids_limit_hits: u64,
    /// Diagnostics: when each step of the monitor ended, as CLOCK_MONOTONIC microseconds
    /// (comparable across processes), in order. For benchmarks (the `bench` feature); names
    /// may change.
    #[cfg(feature = "bench")]
    #[serde(default)]
    pub phases_monotonic_us: Vec<(String, u64)>,
}

/// Raw facts about a finished run, from which the status follows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// A limit runbox enforced itself (CPU time, wall time, output) and killed for.
    pub killed_for: Option<LimitKind>,
    pub internal_error: Option<String>,
}

impl Facts {
    /// Decides status, limit and message. A limit runbox killed for wins over the kill's
    /// signal; an OOM kill is a memory limit even if the program then exited on its own.
    pub fn classify(&self) -> (Status, Option<LimitKind>, Option<String>) {
        if let Some(msg) = &self.internal_error {
            return (Status::InternalError, None, Some(msg.clone()));
        }
        if let Some(limit) = self.killed_for {
            let (status, msg) = match limit {
                LimitKind::CpuTime => (Status::TimeLimit, "cpu time limit exceeded"),
                LimitKind::WallTime => (Status::WallTimeLimit, "wall time limit exceeded"),
                LimitKind::Output => (Status::OutputLimit, "output limit exceeded"),
                LimitKind::Memory => (Status::MemoryLimit, "memory limit exceeded"),
            };
            return (status, Some(limit), Some(msg.to_string()));
        }
        if self.oom_killed {
            return (
                Status::MemoryLimit,
                Some(LimitKind::Memory),
                Some("memory limit exceeded (killed by the oom killer)".to_string()),
            );
        }
        match (self.exit_code, self.signal) {
            (Some(0), _) => (Status::Ok, None, None),
            (Some(code), _) => (
                Status::RuntimeError,
                None,
                Some(format!("exited with code {code}")),
            ),
            (None, Some(sig)) => (
                Status::Signaled,
                None,
                Some(format!("killed by signal {sig}")),
            ),
            (None, None) => (
                Status::InternalError,
                None,
                Some("no exit status was collected".to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let f = |exit_code, signal, oom_killed, killed_for| Facts {
            exit_code,
            signal,
            oom_killed,
            killed_for,
            internal_error: None,
        };
        assert_eq!(f(Some(0), None, false, None).classify().0, Status::Ok);
        assert_eq!(
            f(Some(3), None, false, None).classify().0,
            Status::RuntimeError
        );
        assert_eq!(
            f(None, Some(11), false, None).classify().0,
            Status::Signaled
        );
        assert_eq!(
            f(None, Some(9), true, None).classify().0,
            Status::MemoryLimit
        );
        assert_eq!(
            f(None, Some(9), false, Some(LimitKind::WallTime))
                .classify()
                .0,
            Status::WallTimeLimit
        );
        assert_eq!(
            f(None, None, false, None).classify().0,
            Status::InternalError
        );
    }

    #[test]
    fn json_field_names_are_the_contract() {
        let v = Verdict {
            schema_version: SCHEMA_VERSION,
            id: "x".into(),
            status: Status::WallTimeLimit,
            exit_code: None,
            signal: Some(9),
            cpu_time_us: 1,
            cpu_user_us: 1,
            cpu_system_us: 0,
            wall_time_us: 2,
            memory_peak_bytes: 3,
            oom_killed: false,
            limit: Some(LimitKind::WallTime),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            message: None,
        };
        let json = serde_json::to_value(&v).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cpu_system_us",
                "cpu_time_us",
                "cpu_user_us",
                "exit_code",
                "id",
                "limit",
                "memory_peak_bytes",
                "message",
                "oom_killed",
                "schema_version",
                "signal",
                "status",
                "stderr",
                "stderr_truncated",
                "stdout",
                "stdout_truncated",
                "wall_time_us"
            ]
        );
        assert_eq!(json["status"], "wall_time_limit");
        assert_eq!(json["limit"], "wall_time");
        assert_eq!(v.shell_status(), 137);
        let meta = v.isolate_meta();
        assert!(meta.contains("status:TO\n"), "{meta}");
        assert!(meta.contains("exitsig:9\n"), "{meta}");
        assert!(meta.contains("killed:1\n"), "{meta}");
        assert!(meta.contains("time-wall:0.000\n"), "{meta}");
        assert!(
            meta.contains("message:Time limit exceeded (wall clock)\n"),
            "{meta}"
        );
    }

    #[test]
    fn meta_status_follows_isolate_an_oom_kill_only_adds_its_key() {
        let base = Verdict {
            schema_version: SCHEMA_VERSION,
            id: "x".into(),
            status: Status::MemoryLimit,
            exit_code: None,
            signal: Some(9),
            cpu_time_us: 0,
            cpu_user_us: 0,
            cpu_system_us: 0,
            wall_time_us: 0,
            memory_peak_bytes: 0,
            oom_killed: true,
            limit: Some(LimitKind::Memory),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            message: Some("memory limit exceeded".into()),
        };
        let meta = base.isolate_meta();
        for want in ["status:SG\n", "exitsig:9\n", "cg-oom-killed:1\n"] {
            assert!(meta.contains(want), "{want} in {meta}");
        }
        assert!(meta.contains("message:Caught fatal signal 9\n"), "{meta}");
        assert!(
            !meta.lines().any(|l| l == "killed:1"),
            "the kernel killed, not isolate: {meta}"
        );
        // A shell whose child the OOM killer took exits 137 itself: isolate says RE.
        let shell = Verdict {
            exit_code: Some(137),
            signal: None,
            ..base.clone()
        };
        let meta = shell.isolate_meta();
        assert!(
            meta.contains("status:RE\nmessage:Exited with error status 137\n"),
            "{meta}"
        );
        assert!(meta.contains("cg-oom-killed:1\n"), "{meta}");
        let clean = Verdict {
            status: Status::Ok,
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            limit: None,
            message: None,
            ..base
        };
        let meta = clean.isolate_meta();
        assert!(
            !meta.contains("status:") && !meta.contains("message:"),
            "{meta}"
        );
        assert!(meta.contains("exitcode:0\n"), "{meta}");
    }
}
