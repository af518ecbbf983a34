//! What a worker is told to do ([`WorkerOptions`]) and the maxima jobs are held to. Runs in
//! the worker's process.

use std::time::Duration;

use crate::Root;

use super::job;

/// The hard ceiling of [`WorkerOptions::max_pids`]: the host's ([`crate::pids_ceiling`], half
/// of `kernel.pid_max`), so that one job never takes the host's pid table.
pub(crate) use crate::host::proc::pids_ceiling;

/// What a worker is told to do: [`WorkerOptions::new`], then set the fields to change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis_url: String,
    /// The jobs' stream.
    pub stream: String,
    /// The consumer group (created at the stream's start if missing).
    pub group: String,
    /// This worker's consumer name: keep it across restarts of the same worker (the default
    /// is the host name and a hash of the state root).
    pub consumer: String,
    /// Sandboxes running at once.
    pub concurrency: usize,
    /// The results' stream (default `<stream>:results`).
    pub results: String,
    /// If set, each result is also stored under the key `<prefix><job id>`.
    pub result_keys: Option<String>,
    /// How long a worker may be silent before its entries are taken over by others.
    pub lease: Duration,
    /// The most memory a job may ask for (`memory`). Default 4 GiB.
    pub max_memory_bytes: u64,
    /// The most processes and threads a job may ask for (`pids`). Default 1024 (or the
    /// ceiling if lower); at most half of the host's `kernel.pid_max`.
    pub max_pids: u64,
    /// The longest CPU time a job may ask for (`time`); also the CPU-time limit of a job
    /// that sets none. Default 3600 s.
    pub max_cpu_time: Duration,
    /// The longest wall time a job may ask for (`wall_time`). Default 3600 s.
    pub max_wall_time: Duration,
    /// The most captured output a job may ask for (`output_limit`). Default 16 MiB.
    pub max_output_bytes: u64,
    /// The most bytes of collected files a job's result may carry, all files together (the
    /// monitor stops copying there). Default 16 MiB.
    pub max_collect_bytes: u64,
}

impl WorkerOptions {
    /// Options for `stream` and `group` on the Redis at `redis_url`, for a worker on
    /// `root`: concurrency 1, lease 30 s, results to `<stream>:results`.
    pub fn new(redis_url: &str, stream: &str, group: &str, root: &Root) -> WorkerOptions {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "host".into());
        WorkerOptions {
            redis_url: redis_url.to_string(),
            stream: stream.to_string(),
            group: group.to_string(),
            consumer: format!(
                "{host}-{:016x}",
                crate::layout::fnv1a(root.dir().as_os_str().as_encoded_bytes())
            ),
            concurrency: 1,
            results: format!("{stream}:results"),
            result_keys: None,
            lease: Duration::from_secs(30),
            max_memory_bytes: 4 << 30,
            max_pids: 1024.min(pids_ceiling()),
            max_cpu_time: Duration::from_secs(3600),
            max_wall_time: Duration::from_secs(3600),
            max_output_bytes: 16 << 20,
            max_collect_bytes: 16 << 20,
        }
    }

    pub(super) fn maxima(&self) -> job::Maxima {
        job::Maxima {
            memory_bytes: self.max_memory_bytes,
            pids: self.max_pids,
            cpu_time: self.max_cpu_time,
            wall_time: self.max_wall_time,
            output_bytes: self.max_output_bytes,
            collect_bytes: self.max_collect_bytes,
        }
    }

    /// The most bytes one result document can take with these maxima, JSON escaping at its
    /// worst included (an output of NULs takes 6 bytes per byte): at most 512 MiB, what
    /// Redis takes by default. A result larger than the Redis server takes is replaced by
    /// a small `internal_error` result saying so.
    pub fn max_result_bytes(&self) -> u64 {
        self.maxima().result_bytes()
    }
}
