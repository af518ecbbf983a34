//! A grader fleet's worker on Redis Streams (feature `worker`): jobs come from a stream
//! through a consumer group, each runs in a sandbox named after its delivery (the stream
//! entry id), and its verdict is published to a results stream and acked in one atomic
//! step. A thin layer over [`Root`]; it runs in the caller's process, and its death touches
//! no sandbox: a restarted worker adopts its sandboxes and publishes what they produced.
//!
//! The rules that make a redeploy free:
//! - a delivery is launched at most once per state root: the sandbox's name is derived from
//!   the entry id, and the state root's atomic name claim refuses a second one;
//! - while a sandbox runs, its worker keeps the entry claimed (`XCLAIM … JUSTID` every
//!   lease/3), so other workers' `XAUTOCLAIM` with the lease as idle time never steals it;
//! - a restarted worker first lists its pending entries (`XPENDING`) and its sandboxes:
//!   pending ones with a sandbox are adopted, pending ones without are launched, sandboxes
//!   whose entry is no longer its own are killed and removed, never published;
//! - publishing is a Lua script that checks the entry is still pending for this consumer,
//!   `XADD`s the result and `XACK`s the entry at once: a result is published once per
//!   delivery, by its owner only;
//! - entries of a worker dead longer than the lease are taken over (`XAUTOCLAIM`) and run
//!   again by another worker;
//! - Redis unreachable: sandboxes go on, results wait in memory (and in the sandboxes'
//!   state), the worker reconnects with backoff and publishes then.

pub(crate) mod job;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamClaimOptions, StreamId,
    StreamPendingCountReply, StreamRangeReply, StreamReadOptions, StreamReadReply,
};
use redis::Commands;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::{Root, Sandbox};

pub use job::JOB_SCHEMA_VERSION;
use job::{RejectKind, Rejection};

/// The state root's directory of jobs' files (files copied in, files collected), one
/// directory per sandbox, removed once its result is published.
const JOBS_DIR: &str = ".jobs";

/// The publish step: checks that `ARGV[1]` (the entry) is pending for `ARGV[2]` (this
/// consumer), then adds the result to `KEYS[2]`, sets the result key if one is given, and
/// acks. The result key is set only if it does not exist (`SET NX`): it holds the first
/// result published for a job id. Returns 1 if published, 0 if the entry is no longer
/// pending (done already), -1 if another consumer owns it.
const PUBLISH: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[4], 'delivery', ARGV[1], 'verdict', ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', ARGV[6], ARGV[5], 'NX') end
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
return 1
"#;

/// What Redis accepts as one argument unless configured otherwise (`proto-max-bulk-len`).
const REDIS_DEFAULT_BULK: u64 = 512 << 20;

/// Times in a row a result's publish may lose the connection (with Redis reachable again
/// each time) before the result is taken for one Redis will not take, and a small result
/// saying so stands in for it.
const MAX_LOST_PUBLISHES: u32 = 3;

/// The hard ceiling of [`WorkerOptions::max_pids`]: half of the host's `kernel.pid_max`
/// (32768 if it cannot be read), so that one job never takes the host's pid table.
pub(crate) fn pids_ceiling() -> u64 {
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(32768);
    pid_max / 2
}

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

    fn maxima(&self) -> job::Maxima {
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

/// Something a worker did, for its log (the CLI prints each as a JSON line). More events,
/// and more fields of one, may come: match with `_` and `..`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A job's sandbox was created and started.
    #[non_exhaustive]
    Launched {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// A sandbox launched by an earlier life of this worker was taken over.
    #[non_exhaustive]
    Adopted {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// A result was published and its entry acked.
    #[non_exhaustive]
    Published {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The verdict's status.
        status: String,
    },
    /// A result was not published: its entry was acked already.
    #[non_exhaustive]
    Duplicate {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
    },
    /// A job was not run: a rejection result was published and its entry acked.
    #[non_exhaustive]
    Rejected {
        /// Its stream entry id.
        delivery: String,
        /// Why.
        reason: String,
    },
    /// A sandbox whose entry another worker owns now was killed and removed, unpublished.
    #[non_exhaustive]
    OrphanRemoved {
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// An entry of a worker silent for longer than the lease was taken over.
    #[non_exhaustive]
    Reclaimed {
        /// Its stream entry id.
        delivery: String,
    },
    /// Redis could not be reached; sandboxes go on.
    #[non_exhaustive]
    RedisDown {
        /// What failed.
        error: String,
    },
    /// Redis is reachable again.
    RedisUp,
    /// Redis refused a job's result (too large for it, or an error reply): a small
    /// `internal_error` result saying why is published in its place.
    #[non_exhaustive]
    ResultRefused {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// Why.
        reason: String,
    },
}

/// A job whose sandbox runs (or ran) on this worker.
struct InFlight {
    job: job::Job,
    sandbox: Sandbox,
    /// The result, once the sandbox has finished, until it is published.
    result: Option<serde_json::Value>,
    /// Publishes of `result` that lost the connection, in a row.
    lost_publishes: u32,
    /// Redis refused even a small result for it: not before this instant again.
    retry_at: Option<Instant>,
}

/// A worker: see the module documentation.
pub struct Worker {
    root: Root,
    opts: WorkerOptions,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// By delivery (stream entry id).
    inflight: BTreeMap<String, InFlight>,
    /// Sandboxes of an earlier life not yet known to have started, by delivery.
    starting: BTreeMap<String, Starting>,
    /// Sandbox names of this stream and group start with this.
    prefix: String,
    down_since: Option<Instant>,
    last_refresh: Instant,
    /// What jobs may ask for.
    maxima: job::Maxima,
    /// The largest argument the Redis server takes (`proto-max-bulk-len`), read at each
    /// connection.
    bulk_limit: u64,
}

/// How long a sandbox whose creator died may go without a monitor before it is taken for a
/// launch that never started (a monitor records itself within milliseconds of taking one).
const START_GRACE: Duration = Duration::from_secs(10);

/// Whether the sandbox of an earlier life's launch was taken by a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// A monitor took it (or its state cannot be read: its own verdict says what became of
    /// it).
    Started,
    /// It was created by a launch whose process died before any monitor took it, more than
    /// [`START_GRACE`] ago: its program never ran, so launching the job again runs it once.
    Never,
    /// Its creator died and no monitor has recorded itself yet, but [`START_GRACE`] has not
    /// passed: looked at again on the worker's next rounds (never waited for in place, which
    /// would stall every other entry of this worker, past their lease).
    Undecided,
}

/// Where the launch of `sandbox` stands (see [`Start`]); never waits.
fn start_of(sandbox: &Sandbox) -> Start {
    let Ok(info) = sandbox.info() else {
        return Start::Started;
    };
    if info.state != crate::SandboxState::Lost || info.monitor_pid.is_some() {
        return Start::Started;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let grace = u64::try_from(START_GRACE.as_millis()).unwrap_or(u64::MAX);
    if now.saturating_sub(info.created_unix_ms) >= grace {
        Start::Never
    } else {
        Start::Undecided
    }
}

/// A sandbox of an earlier life whose launch is [`Start::Undecided`]: its entry stays
/// claimed by this worker and takes a slot until it is adopted or launched again.
#[derive(Debug, Clone)]
struct Starting {
    /// The sandbox's name.
    name: String,
    /// The job document (to launch it again).
    doc: Vec<u8>,
}

/// What [`Worker::adopt`] made of a sandbox of an earlier life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adoption {
    /// It runs (or ran) under this worker now.
    Adopted,
    /// It is gone (it never started, or had no usable job file): launch the job again.
    Relaunch,
    /// Undecided yet: kept in [`Worker::starting`], looked at again on later rounds.
    Waiting,
}

/// A stream entry rebuilt from its id and job document (to launch it again).
fn entry_again(delivery: &str, doc: &[u8]) -> StreamId {
    let mut map = std::collections::HashMap::new();
    map.insert("job".to_string(), redis::Value::BulkString(doc.to_vec()));
    StreamId {
        id: delivery.to_string(),
        map,
    }
}

/// Removes the directory `dir` (a job's, or a part of one) if it exists; a failure is logged:
/// what is left is removed by the next reconcile (see [`Worker::remove_stray_job_dirs`]).
fn remove_dir_logged(dir: &std::path::Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("worker: remove {}: {e}", dir.display()),
    }
}

fn redis_err(what: &str, e: redis::RedisError) -> Error {
    Error::with_source(ErrorKind::Io, format!("redis: {what}"), e)
}

/// Why a publish did not happen.
enum PublishError {
    /// Redis answered with an error (a result too large for it, out of memory, a key of
    /// the wrong type…): retrying the same result would get the same answer.
    Refused(String),
    /// The connection failed: reconnect and try again.
    Lost(Error),
    /// Redis cannot serve anyone now (loading its data, a script running, a failover):
    /// reconnect and try again, without counting it against the result.
    Busy(Error),
}

/// True if `e` says the connection failed (not an answer of the server).
fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// True if `e` is an answer saying Redis cannot serve anyone now (loading its data after a
/// restart, a script running, a failover under way), not a refusal of this command.
fn server_busy(e: &redis::RedisError) -> bool {
    use redis::RetryMethod as M;
    matches!(
        e.retry_method(),
        M::WaitAndRetry | M::Reconnect | M::ReconnectFromInitialConnections
    ) || e.kind() == redis::ErrorKind::ReadOnly
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
        )
}

impl Worker {
    /// A worker on `root` with `opts` (nothing is contacted yet).
    ///
    /// # Errors
    /// `InvalidConfig` for a bad URL, concurrency 0, an empty lease, or maxima out of range
    /// (pids above half of `kernel.pid_max`, memory below 8 MiB, a zero time or output, results
    /// that could exceed 512 MiB).
    pub fn new(root: Root, opts: WorkerOptions) -> Result<Worker> {
        let client = redis::Client::open(opts.redis_url.as_str())
            .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "redis URL", e))?;
        if opts.concurrency == 0 || opts.lease < Duration::from_millis(300) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "concurrency must be at least 1 and the lease at least 0.3 s",
            ));
        }
        let bad = |msg: String| Err(Error::new(ErrorKind::InvalidConfig, msg));
        let ceiling = pids_ceiling();
        if opts.max_pids == 0 || opts.max_pids > ceiling {
            return bad(format!(
                "max pids {} must be within 1..={ceiling} (half of kernel.pid_max)",
                opts.max_pids
            ));
        }
        if opts.max_memory_bytes < 8 << 20 {
            return bad(format!(
                "max memory {} must be at least 8 MiB",
                opts.max_memory_bytes
            ));
        }
        if opts.max_cpu_time.is_zero() || opts.max_wall_time.is_zero() || opts.max_output_bytes == 0
        {
            return bad("max cpu time, wall time and output must be positive".into());
        }
        if opts.max_result_bytes() > REDIS_DEFAULT_BULK {
            return bad(format!(
                "with max output {} and max collected {} bytes a result could take {} bytes, \
                 more than the {REDIS_DEFAULT_BULK} Redis takes by default",
                opts.max_output_bytes,
                opts.max_collect_bytes,
                opts.max_result_bytes()
            ));
        }
        let key = format!("{}\0{}", opts.stream, opts.group);
        let prefix = format!("rbw-{:016x}-", crate::layout::fnv1a(key.as_bytes()));
        Ok(Worker {
            root,
            client,
            con: None,
            inflight: BTreeMap::new(),
            starting: BTreeMap::new(),
            prefix,
            down_since: None,
            last_refresh: Instant::now(),
            maxima: opts.maxima(),
            bulk_limit: REDIS_DEFAULT_BULK,
            opts,
        })
    }

    /// Runs until `stop` is set (then returns at once, leaving sandboxes running: a restart
    /// adopts them). `events` hears what happens.
    ///
    /// # Errors
    /// Only what cannot be retried: the state root cannot be read.
    pub fn run(&mut self, stop: &AtomicBool, events: &mut dyn FnMut(&Event)) -> Result<()> {
        // What a killed earlier life left mid-launch (a staging directory, the uid lease it
        // held) belongs to a dead process: collect it before anything else.
        for e in self.root.gc().errors {
            tracing::warn!("worker: collecting what an earlier life left: {e}");
        }
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            if self.con.is_none() {
                match self.connect(events) {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        if self.down_since.is_none() {
                            self.down_since = Some(Instant::now());
                            events(&Event::RedisDown {
                                error: e.to_string(),
                            });
                        }
                        self.finish_sandboxes();
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(3));
                        continue;
                    }
                }
            }
            if let Err(e) = self.step(events) {
                // Any Redis failure: drop the connection, reconnect, reconcile.
                self.con = None;
                self.down_since = Some(Instant::now());
                events(&Event::RedisDown {
                    error: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Connects, makes sure the group exists, and reconciles with the state root.
    fn connect(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let mut con = self
            .client
            .get_connection_with_timeout(Duration::from_secs(3))
            .map_err(|e| redis_err("connect", e))?;
        con.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| redis_err("set a timeout", e))?;
        let created: redis::RedisResult<()> =
            con.xgroup_create_mkstream(&self.opts.stream, &self.opts.group, "0");
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(redis_err("create the consumer group", e));
            }
        }
        // What this server takes as one argument: a larger result is replaced before it is
        // sent (a server refusing one drops the connection while it is being sent).
        let bulk: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("proto-max-bulk-len")
            .query(&mut con);
        self.bulk_limit = match bulk {
            Ok(v) => v
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(REDIS_DEFAULT_BULK),
            Err(e) if connection_failed(&e) || server_busy(&e) => {
                return Err(redis_err("CONFIG GET", e))
            }
            // CONFIG is disabled (a managed Redis): its default.
            Err(_) => REDIS_DEFAULT_BULK,
        };
        self.con = Some(con);
        if self.down_since.take().is_some() {
            events(&Event::RedisUp);
        }
        if let Err(e) = self.reconcile(events) {
            self.con = None;
            return Err(e);
        }
        Ok(())
    }

    fn con(&mut self) -> Result<&mut redis::Connection> {
        self.con
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, "redis: not connected"))
    }

    /// The entries pending for this consumer.
    fn pending(&mut self) -> Result<BTreeSet<String>> {
        let (stream, group, me) = (
            self.opts.stream.clone(),
            self.opts.group.clone(),
            self.opts.consumer.clone(),
        );
        let mut out = BTreeSet::new();
        let mut start = "-".to_string();
        loop {
            let reply: StreamPendingCountReply = self
                .con()?
                .xpending_consumer_count(&stream, &group, &start, "+", 1000, &me)
                .map_err(|e| redis_err("XPENDING", e))?;
            let n = reply.ids.len();
            let last = reply.ids.last().map(|p| p.id.clone());
            out.extend(reply.ids.into_iter().map(|p| p.id));
            match last {
                Some(id) if n == 1000 => start = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }

    /// After a (re)connection, and at each refresh: adopts this worker's sandboxes whose
    /// entries are pending for it, removes the others (and job directories left without a
    /// sandbox, by a kill between the two removals), and launches pending entries that have
    /// no sandbox.
    fn reconcile(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let pending = self.pending()?;
        // Sandboxes this worker no longer owns the entry of.
        let lost: Vec<String> = self
            .inflight
            .keys()
            .filter(|d| !pending.contains(*d))
            .cloned()
            .collect();
        for delivery in lost {
            if let Some(f) = self.inflight.remove(&delivery) {
                self.remove_orphan(&delivery, f.sandbox.id().to_string(), events);
            }
        }
        let lost: Vec<String> = self
            .starting
            .keys()
            .filter(|d| !pending.contains(*d))
            .cloned()
            .collect();
        for delivery in lost {
            if let Some(s) = self.starting.remove(&delivery) {
                self.remove_orphan(&delivery, s.name, events);
            }
        }
        for listing in self.root.list()? {
            let Some(delivery) = listing.id.strip_prefix(&self.prefix).map(str::to_string) else {
                continue;
            };
            if self.tracked(&delivery) {
                continue;
            }
            if pending.contains(&delivery) {
                // One that never started is launched again below, with the pending ones
                // that have no sandbox.
                self.adopt(&delivery, &listing.id, events);
            } else {
                self.remove_orphan(&delivery, listing.id.clone(), events);
            }
        }
        self.remove_stray_job_dirs();
        let missing: Vec<String> = pending
            .iter()
            .filter(|d| !self.tracked(d))
            .cloned()
            .collect();
        for delivery in missing {
            let stream = self.opts.stream.clone();
            let reply: StreamRangeReply = self
                .con()?
                .xrange(&stream, &delivery, &delivery)
                .map_err(|e| redis_err("XRANGE", e))?;
            match reply.ids.into_iter().next() {
                Some(entry) => self.launch(entry, events)?,
                // The entry was deleted from the stream: nothing to run.
                None => {
                    let group = self.opts.group.clone();
                    let _: i64 = self
                        .con()?
                        .xack(&stream, &group, &[&delivery])
                        .map_err(|e| redis_err("XACK", e))?;
                }
            }
        }
        Ok(())
    }

    /// True if `delivery` has a sandbox this worker runs or waits on.
    fn tracked(&self, delivery: &str) -> bool {
        self.inflight.contains_key(delivery) || self.starting.contains_key(delivery)
    }

    /// Free slots: the concurrency less the sandboxes this worker runs or waits on.
    fn free(&self) -> usize {
        self.opts
            .concurrency
            .saturating_sub(self.inflight.len() + self.starting.len())
    }

    /// Removes the job directories of this worker's sandboxes that no longer exist and are
    /// not tracked: a kill between a sandbox's removal and its job directory's (or during
    /// that one) leaves one, which no later pass would otherwise look at.
    fn remove_stray_job_dirs(&mut self) {
        let jobs = self.root.dir().join(JOBS_DIR);
        let entries = match fs::read_dir(&jobs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!("worker: read {}: {e}", jobs.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(delivery) = name.strip_prefix(&self.prefix) else {
                continue;
            };
            if self.tracked(delivery) || self.root.sandbox(&name).is_ok() {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(
                    "worker: remove the stray job directory {}: {e}",
                    entry.path().display()
                );
            }
        }
    }

    /// Looks again at the sandboxes of an earlier life not yet known to have started:
    /// adopts those a monitor took, launches again the jobs of those that never started.
    fn check_starting(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let waiting: Vec<String> = self.starting.keys().cloned().collect();
        for delivery in waiting {
            let Some(s) = self.starting.get(&delivery).cloned() else {
                continue;
            };
            if self.adopt(&delivery, &s.name, events) == Adoption::Relaunch {
                self.starting.remove(&delivery);
                self.launch_once(entry_again(&delivery, &s.doc), events, false)?;
            }
        }
        Ok(())
    }

    /// One round: finished sandboxes published, entries kept claimed, dead workers' entries
    /// taken over, new entries read.
    fn step(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        self.check_starting(events)?;
        self.finish_sandboxes();
        self.publish_finished(events)?;
        if self.last_refresh.elapsed() >= self.opts.lease / 3 {
            self.refresh(events)?;
            self.last_refresh = Instant::now();
        }
        let free = self.free();
        if free == 0 {
            // Every slot busy: wake when a sandbox finishes.
            self.wait_any(Duration::from_millis(50));
            return Ok(());
        }
        let (stream, group, me) = (
            self.opts.stream.clone(),
            self.opts.group.clone(),
            self.opts.consumer.clone(),
        );
        // Idle: block in Redis until a job comes. Some slots busy: block only briefly, so
        // that a sandbox finishing is seen within milliseconds too (one short read at a time
        // is what a partly busy worker costs Redis).
        let busy = !self.inflight.is_empty();
        let opts = StreamReadOptions::default()
            .group(&group, &me)
            .count(free)
            .block(if busy { 2 } else { 200 });
        let reply: Option<StreamReadReply> = self
            .con()?
            .xread_options(&[&stream], &[">"], &opts)
            .map_err(|e| redis_err("XREADGROUP", e))?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                self.launch(entry, events)?;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a sandbox launched by this life to finish (its report pipe
    /// ends); adopted ones, which have none, are looked at on the next round.
    fn wait_any(&self, timeout: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut fds: Vec<PollFd<'_>> = self
            .inflight
            .values()
            .filter(|f| f.result.is_none())
            .filter_map(|f| f.sandbox.report_fd())
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let adopted = self
            .inflight
            .values()
            .any(|f| f.result.is_none() && f.sandbox.report_fd().is_none());
        let timeout = if adopted {
            timeout.min(Duration::from_millis(10))
        } else {
            timeout
        };
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        // An error (EINTR) only ends the wait early: the next round looks at every sandbox.
        if let Err(e) = nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            tracing::debug!("worker: poll the report pipes: {e}");
        }
    }

    /// Reconciles (drops sandboxes whose entries were taken over, removes what kills left
    /// behind), keeps this worker's entries claimed (idle time reset), and takes over
    /// entries of workers silent past the lease.
    fn refresh(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let (stream, group, me) = (
            self.opts.stream.clone(),
            self.opts.group.clone(),
            self.opts.consumer.clone(),
        );
        self.reconcile(events)?;
        {
            let mine: Vec<String> = self
                .inflight
                .keys()
                .chain(self.starting.keys())
                .cloned()
                .collect();
            if !mine.is_empty() {
                let _: redis::Value = self
                    .con()?
                    .xclaim_options(
                        &stream,
                        &group,
                        &me,
                        0,
                        &mine,
                        StreamClaimOptions::default().with_justid(),
                    )
                    .map_err(|e| redis_err("XCLAIM", e))?;
            }
        }
        let free = self.free();
        if free > 0 {
            let lease_ms = u64::try_from(self.opts.lease.as_millis()).unwrap_or(u64::MAX);
            let reply: StreamAutoClaimReply = self
                .con()?
                .xautoclaim_options(
                    &stream,
                    &group,
                    &me,
                    lease_ms,
                    "0-0",
                    StreamAutoClaimOptions::default().count(free),
                )
                .map_err(|e| redis_err("XAUTOCLAIM", e))?;
            for entry in reply.claimed {
                if self.tracked(&entry.id) {
                    continue;
                }
                events(&Event::Reclaimed {
                    delivery: entry.id.clone(),
                });
                self.launch(entry, events)?;
            }
        }
        Ok(())
    }

    fn job_dir(&self, sandbox: &str) -> PathBuf {
        self.root.dir().join(JOBS_DIR).join(sandbox)
    }

    /// Launches the job of `entry` (or adopts its sandbox if this state root has one); a
    /// job that cannot run is rejected: a result saying why is published and the entry
    /// acked.
    fn launch(&mut self, entry: StreamId, events: &mut dyn FnMut(&Event)) -> Result<()> {
        self.launch_once(entry, events, true)
    }

    /// [`Worker::launch`]; `retry`: a sandbox of an earlier life that never started may be
    /// replaced (once).
    fn launch_once(
        &mut self,
        entry: StreamId,
        events: &mut dyn FnMut(&Event),
        retry: bool,
    ) -> Result<()> {
        let delivery = entry.id.clone();
        let name = format!("{}{delivery}", self.prefix);
        let doc: Option<Vec<u8>> = entry
            .map
            .get("job")
            .and_then(|v| redis::from_redis_value(v).ok());
        let Some(doc) = doc else {
            let r = Rejection::new(RejectKind::Invalid, "the entry has no `job` field");
            return self.reject(&delivery, "", &r, events);
        };
        let job = match job::parse(&doc, &self.maxima) {
            Ok(job) => job,
            Err(r) => return self.reject(&delivery, &job::id_of(&doc), &r, events),
        };
        if let Some(key) = self.result_key(&job.id) {
            let exists: bool = self
                .con()?
                .exists(&key)
                .map_err(|e| redis_err("EXISTS", e))?;
            if exists {
                let r = Rejection::new(
                    RejectKind::DuplicateJobId,
                    format!("duplicate job id: {key} holds the result of an earlier job"),
                );
                return self.reject(&delivery, &job.id, &r, events);
            }
        }
        let dir = self.job_dir(&name);
        // Kept for a restarted worker, which adopts the sandbox with it: a job whose
        // document cannot be kept (a full disk) is not launched.
        if let Err(e) =
            fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join("job.json"), &doc))
        {
            remove_dir_logged(&dir);
            let r = Rejection::new(
                RejectKind::LaunchFailed,
                format!("write the job's document in {}: {e}", dir.display()),
            );
            return self.reject(&delivery, &job.id, &r, events);
        }
        let cmd = match job::command(&job, &name, &dir, &self.maxima) {
            Ok(cmd) => cmd,
            Err(reason) => {
                remove_dir_logged(&dir);
                let r = Rejection::new(RejectKind::LaunchFailed, reason);
                return self.reject(&delivery, &job.id, &r, events);
            }
        };
        match self.root.spawn(&cmd) {
            Ok(sandbox) => {
                // The files copied in are in the sandbox now.
                remove_dir_logged(&dir.join("in"));
                events(&Event::Launched {
                    job: job.id.clone(),
                    delivery: delivery.clone(),
                    sandbox: name,
                });
                self.inflight.insert(
                    delivery,
                    InFlight {
                        job,
                        sandbox,
                        result: None,
                        lost_publishes: 0,
                        retry_at: None,
                    },
                );
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                match self.adopt(&delivery, &name, events) {
                    Adoption::Adopted | Adoption::Waiting => Ok(()),
                    // An earlier life's launch that never started: launch it now.
                    Adoption::Relaunch if retry => {
                        self.launch_once(entry_again(&delivery, &doc), events, false)
                    }
                    Adoption::Relaunch => {
                        let r =
                            Rejection::new(RejectKind::LaunchFailed, "its sandbox name is taken");
                        self.reject(&delivery, &job.id, &r, events)
                    }
                }
            }
            Err(e) => {
                remove_dir_logged(&dir);
                let r = Rejection::new(RejectKind::LaunchFailed, e.chain());
                self.reject(&delivery, &job.id, &r, events)
            }
        }
    }

    /// Takes over the sandbox `name` of `delivery`, launched by an earlier life (see
    /// [`Adoption`]): `Relaunch` if that launch never started (the earlier life died before
    /// any monitor took the sandbox; the sandbox is removed), `Waiting` if that cannot be
    /// told yet (the sandbox is kept in [`Worker::starting`]).
    fn adopt(&mut self, delivery: &str, name: &str, events: &mut dyn FnMut(&Event)) -> Adoption {
        let dir = self.job_dir(name);
        let doc = fs::read(dir.join("job.json")).ok();
        let job = doc
            .as_deref()
            .and_then(|doc| job::parse(doc, &self.maxima).ok());
        let (Some(doc), Some(job), Ok(sandbox)) = (doc, job, self.root.sandbox(name)) else {
            // Not one this worker can finish (its job file is gone): remove it; the entry
            // stays pending and is launched again by the next reconcile.
            self.starting.remove(delivery);
            self.remove_orphan(delivery, name.to_string(), events);
            return Adoption::Relaunch;
        };
        match start_of(&sandbox) {
            Start::Started => {}
            Start::Undecided => {
                self.starting.insert(
                    delivery.to_string(),
                    Starting {
                        name: name.to_string(),
                        doc,
                    },
                );
                return Adoption::Waiting;
            }
            Start::Never => {
                self.starting.remove(delivery);
                if let Err(e) = sandbox.delete(true) {
                    // The launch below finds the name taken and rejects the job: it never
                    // runs twice.
                    tracing::warn!("worker: remove the never-started sandbox {name}: {e}");
                }
                return Adoption::Relaunch;
            }
        }
        self.starting.remove(delivery);
        events(&Event::Adopted {
            job: job.id.clone(),
            delivery: delivery.to_string(),
            sandbox: name.to_string(),
        });
        self.inflight.insert(
            delivery.to_string(),
            InFlight {
                job,
                sandbox,
                result: None,
                lost_publishes: 0,
                retry_at: None,
            },
        );
        Adoption::Adopted
    }

    /// Kills and removes a sandbox whose entry is not this worker's (anymore).
    fn remove_orphan(&mut self, delivery: &str, name: String, events: &mut dyn FnMut(&Event)) {
        if let Ok(s) = self.root.sandbox(&name) {
            // One that cannot be removed now is listed again by the next reconcile.
            if let Err(e) = s.delete(true) {
                tracing::warn!("worker: remove the orphaned sandbox {name}: {}", e.chain());
            }
        }
        remove_dir_logged(&self.job_dir(&name));
        events(&Event::OrphanRemoved {
            delivery: delivery.to_string(),
            sandbox: name,
        });
    }

    /// Collects the results of sandboxes that have finished (no Redis needed).
    fn finish_sandboxes(&mut self) {
        let dirs: Vec<(String, PathBuf)> = self
            .inflight
            .iter()
            .map(|(d, f)| (d.clone(), self.job_dir(f.sandbox.id())))
            .collect();
        for (delivery, dir) in dirs {
            let Some(f) = self.inflight.get_mut(&delivery) else {
                continue;
            };
            if f.result.is_some() {
                continue;
            }
            match f.sandbox.try_wait() {
                Ok(Some(verdict)) => {
                    f.result = Some(job::result(&f.job, &dir, &verdict, &self.maxima));
                }
                Ok(None) => {}
                Err(e) => {
                    f.result = Some(job::rejection(&Rejection::new(
                        RejectKind::SandboxFailed,
                        format!("the sandbox failed: {}", e.chain()),
                    )));
                }
            }
        }
    }

    /// Publishes and acks every finished sandbox's result, then removes the sandbox. A
    /// result Redis refuses is replaced by a small one saying why, once; one it refuses
    /// too waits for the next refresh (never a loop, never a reconnection for it).
    fn publish_finished(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let now = Instant::now();
        let done: Vec<String> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.result.is_some() && f.retry_at.is_none_or(|t| t <= now))
            .map(|(d, _)| d.clone())
            .collect();
        for delivery in done {
            let Some(f) = self.inflight.get(&delivery) else {
                continue;
            };
            let mut result = f.result.clone().unwrap_or_default();
            let job_id = f.job.id.clone();
            let mut outcome = self.publish(&delivery, &job_id, &result);
            if let Err(PublishError::Refused(reason)) = &outcome {
                events(&Event::ResultRefused {
                    job: job_id.clone(),
                    delivery: delivery.clone(),
                    reason: reason.clone(),
                });
                result = job::rejection(&Rejection::new(RejectKind::ResultRefused, reason.clone()));
                if let Some(f) = self.inflight.get_mut(&delivery) {
                    f.result = Some(result.clone());
                }
                outcome = self.publish(&delivery, &job_id, &result);
            }
            let outcome = match outcome {
                Ok(n) => n,
                Err(PublishError::Refused(_)) => {
                    // Redis refuses even a small result (out of memory, say): it stays
                    // pending here and is tried again at the next refresh.
                    let retry = Instant::now() + self.opts.lease / 3;
                    if let Some(f) = self.inflight.get_mut(&delivery) {
                        f.retry_at = Some(retry);
                    }
                    continue;
                }
                Err(PublishError::Busy(e)) => return Err(e),
                Err(PublishError::Lost(e)) => {
                    if let Some(f) = self.inflight.get_mut(&delivery) {
                        f.lost_publishes += 1;
                        if f.lost_publishes >= MAX_LOST_PUBLISHES {
                            let size = result.to_string().len();
                            let reason = format!(
                                "Redis dropped the connection on each of {MAX_LOST_PUBLISHES} \
                                 attempts to publish this result of {size} bytes"
                            );
                            events(&Event::ResultRefused {
                                job: job_id.clone(),
                                delivery: delivery.clone(),
                                reason: reason.clone(),
                            });
                            f.result = Some(job::rejection(&Rejection::new(
                                RejectKind::ResultRefused,
                                reason,
                            )));
                        }
                    }
                    return Err(e);
                }
            };
            let Some(f) = self.inflight.remove(&delivery) else {
                continue;
            };
            let name = f.sandbox.id().to_string();
            match outcome {
                1 => events(&Event::Published {
                    job: job_id,
                    delivery: delivery.clone(),
                    status: result["status"].as_str().unwrap_or("").to_string(),
                }),
                0 => events(&Event::Duplicate {
                    job: job_id,
                    delivery: delivery.clone(),
                }),
                _ => {
                    self.remove_orphan(&delivery, name, events);
                    continue;
                }
            }
            // What cannot be removed now is removed by the next reconcile (the entry is
            // acked: the sandbox is an orphan then).
            if let Err(e) = f.sandbox.delete(true) {
                tracing::warn!("worker: remove the finished sandbox {name}: {}", e.chain());
            }
            remove_dir_logged(&self.job_dir(&name));
        }
        Ok(())
    }

    /// The result key of job `job_id`, if results are kept under keys.
    fn result_key(&self, job_id: &str) -> Option<String> {
        match &self.opts.result_keys {
            Some(p) if !job_id.is_empty() => Some(format!("{p}{job_id}")),
            _ => None,
        }
    }

    /// The publish script (see [`PUBLISH`]): 1 published, 0 done already, -1 not ours. A
    /// result larger than the server takes as one argument is refused here, unsent.
    fn publish(
        &mut self,
        delivery: &str,
        job_id: &str,
        result: &serde_json::Value,
    ) -> std::result::Result<i64, PublishError> {
        let key = self.result_key(job_id).unwrap_or_default();
        let (stream, results, me, group) = (
            self.opts.stream.clone(),
            self.opts.results.clone(),
            self.opts.consumer.clone(),
            self.opts.group.clone(),
        );
        let text = result.to_string();
        let limit = self.bulk_limit.min(self.maxima.result_bytes());
        if text.len() as u64 > limit {
            return Err(PublishError::Refused(format!(
                "the result takes {} bytes, more than Redis takes as one argument \
                 (proto-max-bulk-len {}) or this worker allows ({} bytes)",
                text.len(),
                self.bulk_limit,
                self.maxima.result_bytes()
            )));
        }
        let con = self.con().map_err(PublishError::Lost)?;
        redis::Script::new(PUBLISH)
            .key(&stream)
            .key(&results)
            .arg(delivery)
            .arg(&me)
            .arg(&group)
            .arg(job_id)
            .arg(&text)
            .arg(&key)
            .invoke(con)
            .map_err(|e| {
                if connection_failed(&e) {
                    PublishError::Lost(redis_err("publish", e))
                } else if server_busy(&e) {
                    PublishError::Busy(redis_err("publish", e))
                } else {
                    PublishError::Refused(format!("Redis answered: {e}"))
                }
            })
    }

    /// Publishes a rejection for `delivery` of job `job_id` (empty if unknown) and acks it.
    /// Redis refusing even that leaves the entry pending: it is read again by the next
    /// reconciliation (on a reconnection) and rejected again then.
    fn reject(
        &mut self,
        delivery: &str,
        job_id: &str,
        r: &Rejection,
        events: &mut dyn FnMut(&Event),
    ) -> Result<()> {
        let result = job::rejection(r);
        match self.publish(delivery, job_id, &result) {
            Ok(1) => events(&Event::Rejected {
                delivery: delivery.to_string(),
                reason: r.reason.clone(),
            }),
            Ok(_) => {}
            Err(PublishError::Lost(e) | PublishError::Busy(e)) => return Err(e),
            Err(PublishError::Refused(reason)) => events(&Event::ResultRefused {
                job: job_id.to_string(),
                delivery: delivery.to_string(),
                reason,
            }),
        }
        Ok(())
    }
}
