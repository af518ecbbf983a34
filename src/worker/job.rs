//! The job document a worker reads from a stream entry (schema version 1), checked as
//! hostile input and turned into a [`Command`]; and the result document it publishes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::{Command, Stdin};
use crate::verdict::Verdict;

/// The job document's schema version this worker reads.
pub const JOB_SCHEMA_VERSION: u32 = 1;

/// Largest job document (bytes of its JSON).
const MAX_JOB_BYTES: usize = 32 << 20;
/// Most bytes of files a job may carry in.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Most files a job may carry in.
const MAX_FILES: usize = 256;
/// Longest path a job may name (a file copied in or collected), in bytes.
const MAX_PATH: usize = 4096;
/// Longest `message` a result carries, in bytes (a longer one is cut, and says so).
const MAX_MESSAGE: usize = 16 << 10;
/// Bytes of a result beyond its captured output, its collected files and its message:
/// the verdict's other fields and the document's own syntax.
const RESULT_SLACK: u64 = 16 << 10;

/// The most bytes a job may ask for of each bounded resource: set by the worker's operator
/// ([`super::WorkerOptions`]); a job asking for more is rejected, never clamped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maxima {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_time: Duration,
    pub wall_time: Duration,
    pub output_bytes: u64,
    pub collect_bytes: u64,
}

impl Maxima {
    /// The most bytes a result document of a job within these maxima can take, JSON
    /// escaping at its worst included: each captured stream is read back up to the output
    /// limit, a byte that is not UTF-8 becomes U+FFFD (3 bytes) and a control byte
    /// `\u00XX` (6 bytes); collected files are base64 (4 bytes per 3, plus padding); at
    /// most [`crate::config::MAX_COLLECTS`] paths of [`MAX_PATH`] bytes, escaped, twice
    /// (in `files` and in a note of files left out); a message of [`MAX_MESSAGE`] bytes,
    /// escaped.
    pub fn result_bytes(&self) -> u64 {
        let paths = crate::config::MAX_COLLECTS as u64 * (MAX_PATH as u64 * 6 + 64);
        (self.output_bytes.saturating_mul(2 * 6))
            .saturating_add(self.collect_bytes.div_ceil(3).saturating_mul(4))
            .saturating_add(crate::config::MAX_COLLECTS as u64 * 4)
            .saturating_add(2 * paths)
            .saturating_add(MAX_MESSAGE as u64 * 6)
            .saturating_add(RESULT_SLACK)
    }
}

/// Why a job was not run, as the `rejected` field of its result names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectKind {
    /// The document is not a valid job (not JSON, a missing or unknown field, a bad id,
    /// path or value).
    Invalid,
    /// A limit above this worker's maximum, or a list longer than the worker takes.
    AboveMaximum,
    /// With result keys, a job whose id already has a result.
    DuplicateJobId,
    /// The job could not be launched (an image that does not exist, a limit the sandbox
    /// refuses, the worker's directories full).
    LaunchFailed,
    /// The job's sandbox failed (its verdict could not be read).
    SandboxFailed,
    /// The job ran, but Redis refused its result (too large for it, or any error reply):
    /// this small result stands in for it.
    ResultRefused,
}

impl RejectKind {
    fn as_str(self) -> &'static str {
        match self {
            RejectKind::Invalid => "invalid",
            RejectKind::AboveMaximum => "above_maximum",
            RejectKind::DuplicateJobId => "duplicate_job_id",
            RejectKind::LaunchFailed => "launch_failed",
            RejectKind::SandboxFailed => "sandbox_failed",
            RejectKind::ResultRefused => "result_refused",
        }
    }
}

/// A job that is not run: its kind and the reason.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

impl Rejection {
    /// A rejection of `kind`; the reason is cut to [`MAX_MESSAGE`] bytes (it may quote the
    /// job, whose strings are hostile).
    pub fn new(kind: RejectKind, reason: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            reason: bounded_message(&reason.into()),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::new(RejectKind::Invalid, reason)
}

fn above(reason: impl Into<String>) -> Rejection {
    Rejection::new(RejectKind::AboveMaximum, reason)
}

/// True for `/a/b`: absolute, no empty, `.` or `..` component, at most [`MAX_PATH`] bytes
/// (one spelling per path, so equal paths are equal strings).
fn clean_path(p: &str) -> bool {
    p.len() <= MAX_PATH
        && p.len() > 1
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A job (schema version 1): what to run and its limits. Names follow `runbox run`'s
/// options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Job {
    pub schema_version: u32,
    pub id: String,
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: Option<String>,
    /// A stored image by name or digest (never a host directory: a job is not trusted).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    /// CPU-time limit, seconds.
    #[serde(default)]
    pub time: Option<f64>,
    /// Wall-time limit, seconds.
    #[serde(default)]
    pub wall_time: Option<f64>,
    #[serde(default)]
    pub output_limit: Option<u64>,
    #[serde(default)]
    pub files: Vec<JobFile>,
    #[serde(default)]
    pub collect: Vec<String>,
}

/// A file copied into the sandbox before the program starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFile {
    pub path: String,
    pub content_base64: String,
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

/// A collected file in a result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultFile {
    pub path: String,
    pub content_base64: String,
}

/// Parses and checks a job document against the worker's maxima: `Err` is why the job is
/// rejected. The `collect` list comes back without repeated paths.
pub(crate) fn parse(bytes: &[u8], max: &Maxima) -> Result<Job, Rejection> {
    if bytes.len() > MAX_JOB_BYTES {
        return Err(above(format!(
            "job document larger than {MAX_JOB_BYTES} bytes"
        )));
    }
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<u32>,
    }
    let v: Version = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("job is not a JSON object: {e}")))?;
    match v.schema_version {
        Some(JOB_SCHEMA_VERSION) => {}
        Some(n) => {
            return Err(invalid(format!(
                "job schema_version {n} is not supported (1 is)"
            )))
        }
        None => return Err(invalid("job has no schema_version")),
    }
    let mut job: Job = serde_json::from_slice(bytes).map_err(|e| invalid(format!("job: {e}")))?;
    let id_ok = !job.id.is_empty()
        && job.id.len() <= 128
        && job
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !id_ok {
        return Err(invalid(format!(
            "job id {:?} must be 1-128 of [A-Za-z0-9_.:-]",
            job.id
        )));
    }
    if let Some(m) = job.memory {
        if m > max.memory_bytes {
            return Err(above(format!(
                "memory {m} above this worker's maximum ({} bytes)",
                max.memory_bytes
            )));
        }
    }
    if let Some(p) = job.pids {
        if p > max.pids {
            return Err(above(format!(
                "pids {p} above this worker's maximum ({})",
                max.pids
            )));
        }
    }
    for (name, secs, most) in [
        ("time", job.time, max.cpu_time),
        ("wall_time", job.wall_time, max.wall_time),
    ] {
        if let Some(s) = secs {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(format!(
                    "{name} {s} is not a positive number of seconds"
                )));
            }
            if s > most.as_secs_f64() {
                return Err(above(format!(
                    "{name} {s} s above this worker's maximum ({} s)",
                    most.as_secs_f64()
                )));
            }
        }
    }
    if let Some(o) = job.output_limit {
        if o > max.output_bytes {
            return Err(above(format!(
                "output_limit {o} above this worker's maximum ({} bytes)",
                max.output_bytes
            )));
        }
    }
    if job.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err(invalid("cpus must be a positive number"));
    }
    if job.files.len() > MAX_FILES {
        return Err(above(format!(
            "{} files, more than the {MAX_FILES} a job may carry",
            job.files.len()
        )));
    }
    let mut total = 0u64;
    for f in &job.files {
        total += f.content_base64.len() as u64 / 4 * 3;
        if !clean_path(&f.path) {
            return Err(invalid(format!(
                "file path {:?} must be absolute, without empty, . or .. components, at most \
                 {MAX_PATH} bytes",
                f.path
            )));
        }
    }
    if total > MAX_FILE_BYTES {
        return Err(above(format!("files larger than {MAX_FILE_BYTES} bytes")));
    }
    if job.collect.len() > crate::config::MAX_COLLECTS {
        return Err(above(format!(
            "{} collect paths, more than the {} a job may list",
            job.collect.len(),
            crate::config::MAX_COLLECTS
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &job.collect {
        if !clean_path(c) {
            return Err(invalid(format!(
                "collect path {c:?} must be absolute, without empty, . or .. components, at \
                 most {MAX_PATH} bytes"
            )));
        }
    }
    job.collect.retain(|c| seen.insert(c.clone()));
    Ok(job)
}

/// The `id` of a job document that was rejected, if it has a usable one (else empty).
pub(crate) fn id_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .filter(|id| {
            id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        })
        .unwrap_or_default()
}

/// The command for `job`, named `name`, within the worker's maxima `max` (the job's
/// defaults are the library's, or the maximum where that is lower); its files are written
/// under `dir` (the job's own directory in the state root) and collected there too.
pub(crate) fn command(job: &Job, name: &str, dir: &Path, max: &Maxima) -> Result<Command, String> {
    let mut cmd = Command::new(job.program.clone());
    cmd.args(job.args.iter().cloned()).name(name);
    for (k, v) in &job.env {
        cmd.env(k.clone(), v.clone());
    }
    if let Some(image) = &job.image {
        cmd.stored_image(image.clone());
    }
    if let Some(s) = &job.stdin {
        cmd.stdin(Stdin::Bytes(s.clone().into_bytes()));
    }
    let limits = cmd.limits_mut();
    limits.memory_bytes = job
        .memory
        .unwrap_or(limits.memory_bytes.min(max.memory_bytes));
    // The writable layer is charged to the memory limit: keep it below a small one, as
    // `runbox run --memory` does.
    if limits.scratch_bytes >= limits.memory_bytes {
        limits.scratch_bytes = (limits.memory_bytes / 4).max(1 << 20);
    }
    limits.pids = job.pids.unwrap_or(limits.pids.min(max.pids));
    if let Some(c) = job.cpus {
        limits.cpus = c;
    }
    if let Some(t) = job.time {
        limits.cpu_time = Some(Duration::from_secs_f64(t));
    }
    limits.wall_time = Some(match job.wall_time {
        Some(t) => Duration::from_secs_f64(t),
        None => limits
            .wall_time
            .map_or(max.wall_time, |w| w.min(max.wall_time)),
    });
    if limits.cpu_time.is_none() && max.cpu_time < limits.wall_time.unwrap_or(Duration::MAX) {
        limits.cpu_time = Some(max.cpu_time);
    }
    limits.output_bytes = job
        .output_limit
        .unwrap_or(limits.output_bytes.min(max.output_bytes));
    limits.collect_bytes = max.collect_bytes;
    let files = dir.join("in");
    for (n, f) in job.files.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.content_base64)
            .map_err(|e| format!("file {}: content_base64: {e}", f.path))?;
        fs::create_dir_all(&files)
            .map_err(|e| format!("the job's directory {}: {e}", files.display()))?;
        let host = files.join(n.to_string());
        fs::write(&host, &bytes).map_err(|e| format!("write {}: {e}", host.display()))?;
        // Permission bits only: no setuid, setgid or sticky bit from a job.
        fs::set_permissions(&host, fs::Permissions::from_mode(f.mode & 0o777))
            .map_err(|e| format!("job file: {e}"))?;
        cmd.copy_in(host, f.path.clone());
    }
    for (n, inside) in job.collect.iter().enumerate() {
        cmd.collect(inside.clone(), collected(dir, n));
    }
    Ok(cmd)
}

/// Where the `n`th collected file of the job in `dir` lands.
fn collected(dir: &Path, n: usize) -> PathBuf {
    dir.join("out").join(n.to_string())
}

/// `s` cut to at most [`MAX_MESSAGE`] bytes (on a character boundary), saying so.
fn bounded_message(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE - 16;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut]", &s[..end])
}

/// The result document: the verdict's JSON plus `files`, the collected files that exist
/// (at most `max.collect_bytes` in all, which the monitor already held them to; one that
/// would go past is left out, and the message says so). At most
/// [`Maxima::result_bytes`] once serialized.
pub(crate) fn result(job: &Job, dir: &Path, verdict: &Verdict, max: &Maxima) -> serde_json::Value {
    use std::io::Read;
    let mut value = serde_json::to_value(verdict).unwrap_or_default();
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut left_out = Vec::new();
    for (n, inside) in job.collect.iter().enumerate() {
        let Ok(f) = fs::File::open(collected(dir, n)) else {
            continue;
        };
        let room = max.collect_bytes.saturating_sub(total);
        let mut bytes = Vec::new();
        if f.take(room.saturating_add(1))
            .read_to_end(&mut bytes)
            .is_err()
        {
            continue;
        }
        if bytes.len() as u64 > room {
            left_out.push(inside.clone());
            continue;
        }
        total += bytes.len() as u64;
        files.push(ResultFile {
            path: inside.clone(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        });
    }
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "files".into(),
            serde_json::to_value(files).unwrap_or_default(),
        );
        let mut message = obj
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string);
        if !left_out.is_empty() {
            let note = format!(
                "collected files left out (over {} bytes): {left_out:?}",
                max.collect_bytes
            );
            message = Some(message.map_or(note.clone(), |m| format!("{m}; {note}")));
        }
        if let Some(m) = message {
            obj.insert("message".into(), bounded_message(&m).into());
        }
        // Every string a sandbox or a job controls is bounded above; the verdict's id is
        // the worker's sandbox name.
    }
    value
}

/// The result of a job that was not run (or whose result Redis refused): status
/// `internal_error`, `rejected` its kind and `message` the reason, every other field of
/// the verdict schema empty. Small whatever the reason.
pub(crate) fn rejection(r: &Rejection) -> serde_json::Value {
    serde_json::json!({
        "schema_version": crate::verdict::SCHEMA_VERSION,
        "id": null,
        "status": "internal_error",
        "exit_code": null,
        "signal": null,
        "cpu_time_us": 0,
        "cpu_user_us": 0,
        "cpu_system_us": 0,
        "wall_time_us": 0,
        "memory_peak_bytes": 0,
        "oom_killed": false,
        "limit": null,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": false,
        "stderr_truncated": false,
        "message": bounded_message(&match r.kind {
            RejectKind::ResultRefused => format!("the job ran, but its result was refused: {}", r.reason),
            _ => format!("job rejected: {}", r.reason),
        }),
        "rejected": r.kind.as_str(),
        "files": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maxima() -> Maxima {
        Maxima {
            memory_bytes: 1 << 30,
            pids: 100,
            cpu_time: Duration::from_secs(10),
            wall_time: Duration::from_secs(20),
            output_bytes: 1 << 20,
            collect_bytes: 1 << 20,
        }
    }

    #[test]
    fn hostile_job_documents_are_rejected_with_a_reason() {
        let ok = br#"{"schema_version":1,"id":"j1","program":"/bin/true"}"#;
        assert_eq!(parse(ok, &maxima()).unwrap().program, "/bin/true");
        for (doc, says) in [
            (&b"not json"[..], "not a JSON object"),
            (br#"{"schema_version":2,"id":"j","program":"x"}"#, "schema_version 2"),
            (br#"{"id":"j","program":"x"}"#, "no schema_version"),
            (br#"{"schema_version":1,"id":"j"}"#, "program"),
            (br#"{"schema_version":1,"id":"a b","program":"x"}"#, "job id"),
            (br#"{"schema_version":1,"id":"j","program":"x","time":-1}"#, "time"),
            (br#"{"schema_version":1,"id":"j","program":"x","bind":"/"}"#, "unknown field"),
            (
                br#"{"schema_version":1,"id":"j","program":"x","files":[{"path":"../x","content_base64":""}]}"#,
                "file path",
            ),
            (br#"{"schema_version":1,"id":"j","program":"x","collect":["/a/./b"]}"#, "collect path"),
            (br#"{"schema_version":1,"id":"j","program":"x","collect":["/a//b"]}"#, "collect path"),
        ] {
            let e = parse(doc, &maxima()).unwrap_err();
            assert_eq!(e.kind, RejectKind::Invalid, "{}", String::from_utf8_lossy(doc));
            assert!(e.reason.contains(says), "{}: {e:?}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn jobs_above_the_maxima_are_rejected_never_clamped() {
        let base = serde_json::json!({"schema_version": 1, "id": "j", "program": "x"});
        let many: Vec<String> = (0..=crate::config::MAX_COLLECTS)
            .map(|i| format!("/w/{i}"))
            .collect();
        for (field, value) in [
            ("memory", serde_json::json!((1u64 << 30) + 1)),
            ("pids", serde_json::json!(101)),
            ("time", serde_json::json!(10.5)),
            ("wall_time", serde_json::json!(21)),
            ("output_limit", serde_json::json!((1u64 << 20) + 1)),
            ("collect", serde_json::json!(many)),
        ] {
            let mut doc = base.clone();
            doc[field] = value;
            let e = parse(doc.to_string().as_bytes(), &maxima()).unwrap_err();
            assert_eq!(e.kind, RejectKind::AboveMaximum, "{field}: {e:?}");
            assert!(
                e.reason.contains(field) || field == "collect",
                "{field}: {e:?}"
            );
        }
        // At the maxima: accepted as asked.
        let mut doc = base.clone();
        doc["pids"] = 100.into();
        doc["output_limit"] = (1u64 << 20).into();
        let job = parse(doc.to_string().as_bytes(), &maxima()).unwrap();
        let dir = std::env::temp_dir();
        let cmd = command(&job, "n", &dir, &maxima()).unwrap();
        assert_eq!(cmd.limits.pids, 100);
        assert_eq!(cmd.limits.output_bytes, 1 << 20);
        assert_eq!(cmd.limits.collect_bytes, 1 << 20);
        // Unset: the library's default or the maximum where that is lower.
        let job = parse(base.to_string().as_bytes(), &maxima()).unwrap();
        let cmd = command(&job, "n", &dir, &maxima()).unwrap();
        assert_eq!(cmd.limits.pids, 100);
        assert_eq!(cmd.limits.wall_time, Some(Duration::from_secs(20)));
        assert_eq!(cmd.limits.cpu_time, Some(Duration::from_secs(10)));
    }

    #[test]
    fn repeated_collect_paths_count_once() {
        let paths = vec!["/work/big"; 40];
        let doc =
            serde_json::json!({"schema_version": 1, "id": "j", "program": "x", "collect": paths});
        let job = parse(doc.to_string().as_bytes(), &maxima()).unwrap();
        assert_eq!(job.collect, vec!["/work/big".to_string()]);
    }

    /// The worst a sandbox can make of a result (every output byte a NUL, collected files
    /// at the budget, the longest paths and message) stays within `result_bytes`.
    #[test]
    fn a_result_is_bounded_by_construction() {
        let max = Maxima {
            output_bytes: 64 << 10,
            collect_bytes: 96 << 10,
            ..maxima()
        };
        let dir = std::env::temp_dir().join(format!("runbox-result-bound-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("out")).unwrap();
        let n = crate::config::MAX_COLLECTS;
        let collect: Vec<String> = (0..n)
            .map(|i| format!("/{i}{}", "\u{1}".repeat(MAX_PATH - 4)))
            .collect();
        for i in 0..n {
            fs::write(collected(&dir, i), vec![0u8; 3 << 10]).unwrap();
        }
        let doc =
            serde_json::json!({"schema_version": 1, "id": "j", "program": "x", "collect": collect});
        let job = parse(doc.to_string().as_bytes(), &max).unwrap();
        let half = usize::try_from(max.output_bytes).unwrap();
        let verdict = Verdict {
            schema_version: crate::verdict::SCHEMA_VERSION,
            id: "x".repeat(64),
            status: crate::verdict::Status::InternalError,
            exit_code: Some(i32::MIN),
            signal: Some(i32::MIN),
            cpu_time_us: u64::MAX,
            cpu_user_us: u64::MAX,
            cpu_system_us: u64::MAX,
            wall_time_us: u64::MAX,
            memory_peak_bytes: u64::MAX,
            oom_killed: true,
            limit: Some(crate::verdict::LimitKind::Output),
            stdout: "\0".repeat(half),
            stderr: "\u{fffd}".repeat(half),
            stdout_truncated: true,
            stderr_truncated: true,
            message: Some("\0".repeat(1 << 20)),
        };
        let text = result(&job, &dir, &verdict, &max).to_string();
        let _ = fs::remove_dir_all(&dir);
        assert!(
            text.len() as u64 <= max.result_bytes(),
            "{} > {}",
            text.len(),
            max.result_bytes()
        );
    }
}
