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
/// Most memory a job may ask for.
const MAX_MEMORY: u64 = 16 << 30;
/// Longest CPU or wall time a job may ask for.
const MAX_SECS: f64 = 3600.0;
/// Most bytes of files a job may carry, and of files collected back.
const MAX_FILE_BYTES: u64 = 16 << 20;

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

/// Parses and checks a job document: `Err` is the reason the job is rejected.
pub(crate) fn parse(bytes: &[u8]) -> Result<Job, String> {
    if bytes.len() > MAX_JOB_BYTES {
        return Err(format!("job document larger than {MAX_JOB_BYTES} bytes"));
    }
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<u32>,
    }
    let v: Version =
        serde_json::from_slice(bytes).map_err(|e| format!("job is not a JSON object: {e}"))?;
    match v.schema_version {
        Some(JOB_SCHEMA_VERSION) => {}
        Some(n) => return Err(format!("job schema_version {n} is not supported (1 is)")),
        None => return Err("job has no schema_version".into()),
    }
    let job: Job = serde_json::from_slice(bytes).map_err(|e| format!("job: {e}"))?;
    let id_ok = !job.id.is_empty()
        && job.id.len() <= 128
        && job
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !id_ok {
        return Err(format!(
            "job id {:?} must be 1-128 of [A-Za-z0-9_.:-]",
            job.id
        ));
    }
    if job.memory.is_some_and(|m| m > MAX_MEMORY) {
        return Err(format!(
            "memory above this worker's maximum ({MAX_MEMORY} bytes)"
        ));
    }
    for (name, secs) in [("time", job.time), ("wall_time", job.wall_time)] {
        if let Some(s) = secs {
            if !(s.is_finite() && s > 0.0 && s <= MAX_SECS) {
                return Err(format!(
                    "{name} {s} is not a number of seconds in (0, {MAX_SECS}]"
                ));
            }
        }
    }
    if job.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err("cpus must be a positive number".into());
    }
    let mut total = 0u64;
    for f in &job.files {
        total += f.content_base64.len() as u64 / 4 * 3;
        if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(format!(
                "file path {:?} must be absolute, without ..",
                f.path
            ));
        }
    }
    if total > MAX_FILE_BYTES {
        return Err(format!("files larger than {MAX_FILE_BYTES} bytes"));
    }
    for c in &job.collect {
        if !c.starts_with('/') || c.split('/').any(|c| c == "..") {
            return Err(format!("collect path {c:?} must be absolute, without .."));
        }
    }
    Ok(job)
}

/// The `id` of a job document that was rejected, if it has a usable one (else empty).
pub(crate) fn id_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .filter(|id| id.len() <= 128)
        .unwrap_or_default()
}

/// The command for `job`, named `name`; its files are written under `dir` (the job's own
/// directory in the state root) and collected there too.
pub(crate) fn command(job: &Job, name: &str, dir: &Path) -> Result<Command, String> {
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
    if let Some(m) = job.memory {
        limits.memory_bytes = m;
        // The writable layer is charged to the memory limit: keep it below a small one, as
        // `runbox run --memory` does.
        if limits.scratch_bytes >= m {
            limits.scratch_bytes = (m / 4).max(1 << 20);
        }
    }
    if let Some(p) = job.pids {
        limits.pids = p;
    }
    if let Some(c) = job.cpus {
        limits.cpus = c;
    }
    if let Some(t) = job.time {
        limits.cpu_time = Some(Duration::from_secs_f64(t));
    }
    if let Some(t) = job.wall_time {
        limits.wall_time = Some(Duration::from_secs_f64(t));
    }
    if let Some(o) = job.output_limit {
        limits.output_bytes = o;
    }
    let files = dir.join("in");
    for (n, f) in job.files.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.content_base64)
            .map_err(|e| format!("file {}: content_base64: {e}", f.path))?;
        fs::create_dir_all(&files).map_err(|e| format!("job dir: {e}"))?;
        let host = files.join(n.to_string());
        fs::write(&host, &bytes).map_err(|e| format!("job file: {e}"))?;
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

/// The result document: the verdict's JSON plus `files`, the collected files that exist
/// (at most [`MAX_FILE_BYTES`] in all; a larger one is left out, and the message says so).
pub(crate) fn result(job: &Job, dir: &Path, verdict: &Verdict) -> serde_json::Value {
    let mut value = serde_json::to_value(verdict).unwrap_or_default();
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut left_out = Vec::new();
    for (n, inside) in job.collect.iter().enumerate() {
        let Ok(bytes) = fs::read(collected(dir, n)) else {
            continue;
        };
        total += bytes.len() as u64;
        if total > MAX_FILE_BYTES {
            left_out.push(inside.clone());
            continue;
        }
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
        if !left_out.is_empty() {
            let note =
                format!("collected files left out (over {MAX_FILE_BYTES} bytes): {left_out:?}");
            let message = match obj.get("message").and_then(|m| m.as_str()) {
                Some(m) => format!("{m}; {note}"),
                None => note,
            };
            obj.insert("message".into(), message.into());
        }
    }
    value
}

/// The result of a job that was not run: status `internal_error` and the reason, every
/// other field of the verdict schema empty.
pub(crate) fn rejection(reason: &str) -> serde_json::Value {
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
        "message": format!("job rejected: {reason}"),
        "files": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_job_documents_are_rejected_with_a_reason() {
        let ok = br#"{"schema_version":1,"id":"j1","program":"/bin/true"}"#;
        assert_eq!(parse(ok).unwrap().program, "/bin/true");
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
        ] {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(doc));
        }
    }
}
