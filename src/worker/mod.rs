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

/// The state root's directory of jobs' files (files copied in, files collected), one
/// directory per sandbox, removed once its result is published.
const JOBS_DIR: &str = ".jobs";

/// The publish step: checks that `ARGV[1]` (the entry) is pending for `ARGV[2]` (this
/// consumer), then adds the result to `KEYS[2]`, sets the result key if one is given, and
/// acks. Returns 1 if published, 0 if the entry is no longer pending (done already), -1 if
/// another consumer owns it.
const PUBLISH: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[4], 'delivery', ARGV[1], 'verdict', ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', ARGV[6], ARGV[5]) end
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
return 1
"#;

/// What a worker is told to do.
#[derive(Debug, Clone)]
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
        }
    }
}

/// Something a worker did, for its log (the CLI prints each as a JSON line).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A job's sandbox was created and started.
    Launched {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// A sandbox launched by an earlier life of this worker was taken over.
    Adopted {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// A result was published and its entry acked.
    Published {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
        /// The verdict's status.
        status: String,
    },
    /// A result was not published: its entry was acked already.
    Duplicate {
        /// The job's id.
        job: String,
        /// Its stream entry id.
        delivery: String,
    },
    /// A job was not run: a rejection result was published and its entry acked.
    Rejected {
        /// Its stream entry id.
        delivery: String,
        /// Why.
        reason: String,
    },
    /// A sandbox whose entry another worker owns now was killed and removed, unpublished.
    OrphanRemoved {
        /// Its stream entry id.
        delivery: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// An entry of a worker silent for longer than the lease was taken over.
    Reclaimed {
        /// Its stream entry id.
        delivery: String,
    },
    /// Redis could not be reached; sandboxes go on.
    RedisDown {
        /// What failed.
        error: String,
    },
    /// Redis is reachable again.
    RedisUp,
}

/// A job whose sandbox runs (or ran) on this worker.
struct InFlight {
    job: job::Job,
    sandbox: Sandbox,
    /// The result, once the sandbox has finished, until it is published.
    result: Option<serde_json::Value>,
}

/// A worker: see the module documentation.
pub struct Worker {
    root: Root,
    opts: WorkerOptions,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// By delivery (stream entry id).
    inflight: BTreeMap<String, InFlight>,
    /// Sandbox names of this stream and group start with this.
    prefix: String,
    down_since: Option<Instant>,
    last_refresh: Instant,
}

/// How long a sandbox whose creator died may go without a monitor before it is taken for a
/// launch that never started (a monitor records itself within milliseconds of taking one).
const START_GRACE: Duration = Duration::from_secs(10);

/// True if `sandbox` was created by a launch whose process died before any monitor took it
/// (no monitor ever recorded itself, for [`START_GRACE`] after its creation): its program
/// never ran, so launching the job again runs it once.
fn never_started(sandbox: &Sandbox) -> bool {
    loop {
        let Ok(info) = sandbox.info() else {
            return false;
        };
        if info.state != crate::SandboxState::Lost || info.monitor_pid.is_some() {
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let grace = u64::try_from(START_GRACE.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(info.created_unix_ms) >= grace {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

fn redis_err(what: &str, e: redis::RedisError) -> Error {
    Error::with_source(ErrorKind::Io, format!("redis: {what}"), e)
}

impl Worker {
    /// A worker on `root` with `opts` (nothing is contacted yet).
    ///
    /// # Errors
    /// `InvalidConfig` for a bad URL, concurrency 0 or an empty lease.
    pub fn new(root: Root, opts: WorkerOptions) -> Result<Worker> {
        let client = redis::Client::open(opts.redis_url.as_str())
            .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "redis URL", e))?;
        if opts.concurrency == 0 || opts.lease < Duration::from_millis(300) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "concurrency must be at least 1 and the lease at least 0.3 s",
            ));
        }
        let key = format!("{}\0{}", opts.stream, opts.group);
        let prefix = format!("rbw-{:016x}-", crate::layout::fnv1a(key.as_bytes()));
        Ok(Worker {
            root,
            opts,
            client,
            con: None,
            inflight: BTreeMap::new(),
            prefix,
            down_since: None,
            last_refresh: Instant::now(),
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
        let _ = self.root.gc();
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

    /// After a (re)connection: adopts this worker's sandboxes whose entries are pending for
    /// it, removes the others, and launches pending entries that have no sandbox.
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
        for listing in self.root.list()? {
            let Some(delivery) = listing.id.strip_prefix(&self.prefix).map(str::to_string) else {
                continue;
            };
            if self.inflight.contains_key(&delivery) {
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
        let missing: Vec<String> = pending
            .iter()
            .filter(|d| !self.inflight.contains_key(*d))
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

    /// One round: finished sandboxes published, entries kept claimed, dead workers' entries
    /// taken over, new entries read.
    fn step(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        self.finish_sandboxes();
        self.publish_finished(events)?;
        if self.last_refresh.elapsed() >= self.opts.lease / 3 {
            self.refresh(events)?;
            self.last_refresh = Instant::now();
        }
        let free = self.opts.concurrency.saturating_sub(self.inflight.len());
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
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
    }

    /// Keeps this worker's in-flight entries claimed (idle time reset), drops sandboxes whose
    /// entries were taken over, and takes over entries of workers silent past the lease.
    fn refresh(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let (stream, group, me) = (
            self.opts.stream.clone(),
            self.opts.group.clone(),
            self.opts.consumer.clone(),
        );
        if !self.inflight.is_empty() {
            let pending = self.pending()?;
            let (mine, lost): (Vec<String>, Vec<String>) = self
                .inflight
                .keys()
                .cloned()
                .partition(|d| pending.contains(d));
            for delivery in lost {
                if let Some(f) = self.inflight.remove(&delivery) {
                    self.remove_orphan(&delivery, f.sandbox.id().to_string(), events);
                }
            }
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
        let free = self.opts.concurrency.saturating_sub(self.inflight.len());
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
                if self.inflight.contains_key(&entry.id) {
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
            return self.reject(&delivery, "", "the entry has no `job` field", events);
        };
        let job = match job::parse(&doc) {
            Ok(job) => job,
            Err(reason) => return self.reject(&delivery, &job::id_of(&doc), &reason, events),
        };
        let dir = self.job_dir(&name);
        let _ = fs::create_dir_all(&dir);
        // Kept for a restarted worker, which adopts the sandbox with it.
        let _ = fs::write(dir.join("job.json"), &doc);
        let cmd = match job::command(&job, &name, &dir) {
            Ok(cmd) => cmd,
            Err(reason) => {
                let _ = fs::remove_dir_all(&dir);
                return self.reject(&delivery, &job.id, &reason, events);
            }
        };
        match self.root.spawn(&cmd) {
            Ok(sandbox) => {
                // The files copied in are in the sandbox now.
                let _ = fs::remove_dir_all(dir.join("in"));
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
                    },
                );
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if !self.adopt(&delivery, &name, events) {
                    if !retry {
                        return self.reject(
                            &delivery,
                            &job.id,
                            "its sandbox name is taken",
                            events,
                        );
                    }
                    // An earlier life's launch that never started: launch it now.
                    return self.launch_once(entry_again(&delivery, &doc), events, false);
                }
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                self.reject(&delivery, &job.id, &e.chain(), events)
            }
        }
    }

    /// Takes over the sandbox `name` of `delivery`, launched by an earlier life. False if
    /// that launch never started (the earlier life died before any monitor took the
    /// sandbox): the sandbox is removed and the job must be launched again.
    fn adopt(&mut self, delivery: &str, name: &str, events: &mut dyn FnMut(&Event)) -> bool {
        let dir = self.job_dir(name);
        let job = fs::read(dir.join("job.json"))
            .ok()
            .and_then(|doc| job::parse(&doc).ok());
        let (Some(job), Ok(sandbox)) = (job, self.root.sandbox(name)) else {
            // Not one this worker can finish (its job file is gone): remove it; the entry
            // stays pending and is launched again by the next reconcile.
            self.remove_orphan(delivery, name.to_string(), events);
            return false;
        };
        if never_started(&sandbox) {
            let _ = sandbox.delete(true);
            return false;
        }
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
            },
        );
        true
    }

    /// Kills and removes a sandbox whose entry is not this worker's (anymore).
    fn remove_orphan(&mut self, delivery: &str, name: String, events: &mut dyn FnMut(&Event)) {
        if let Ok(s) = self.root.sandbox(&name) {
            let _ = s.delete(true);
        }
        let _ = fs::remove_dir_all(self.job_dir(&name));
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
                Ok(Some(verdict)) => f.result = Some(job::result(&f.job, &dir, &verdict)),
                Ok(None) => {}
                Err(e) => {
                    f.result = Some(job::rejection(&format!(
                        "the sandbox failed: {}",
                        e.chain()
                    )))
                }
            }
        }
    }

    /// Publishes and acks every finished sandbox's result, then removes the sandbox.
    fn publish_finished(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
        let done: Vec<String> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.result.is_some())
            .map(|(d, _)| d.clone())
            .collect();
        for delivery in done {
            let Some(f) = self.inflight.get(&delivery) else {
                continue;
            };
            let result = f.result.clone().unwrap_or_default();
            let job_id = f.job.id.clone();
            let outcome = self.publish(&delivery, &job_id, &result)?;
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
            let _ = f.sandbox.delete(true);
            let _ = fs::remove_dir_all(self.job_dir(&name));
        }
        Ok(())
    }

    /// The publish script (see [`PUBLISH`]): 1 published, 0 done already, -1 not ours.
    fn publish(&mut self, delivery: &str, job_id: &str, result: &serde_json::Value) -> Result<i64> {
        let key = match &self.opts.result_keys {
            Some(p) if !job_id.is_empty() => format!("{p}{job_id}"),
            _ => String::new(),
        };
        let (stream, results, me, group) = (
            self.opts.stream.clone(),
            self.opts.results.clone(),
            self.opts.consumer.clone(),
            self.opts.group.clone(),
        );
        let text = result.to_string();
        redis::Script::new(PUBLISH)
            .key(&stream)
            .key(&results)
            .arg(delivery)
            .arg(&me)
            .arg(&group)
            .arg(job_id)
            .arg(&text)
            .arg(&key)
            .invoke(self.con()?)
            .map_err(|e| redis_err("publish", e))
    }

    /// Publishes a rejection for `delivery` of job `job_id` (empty if unknown) and acks it.
    fn reject(
        &mut self,
        delivery: &str,
        job_id: &str,
        reason: &str,
        events: &mut dyn FnMut(&Event),
    ) -> Result<()> {
        let result = job::rejection(reason);
        if self.publish(delivery, job_id, &result)? == 1 {
            events(&Event::Rejected {
                delivery: delivery.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}
