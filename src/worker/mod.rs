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

mod events;
pub(crate) mod job;
mod options;
mod publish;
mod reconcile;

pub use events::Event;
pub use options::WorkerOptions;

use options::pids_ceiling;
use publish::{connection_failed, server_busy};
use reconcile::{entry_again, Adoption, Starting};

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamClaimOptions, StreamId, StreamReadOptions,
    StreamReadReply,
};
use redis::Commands;

use crate::error::{Error, ErrorKind, Result};
use crate::{Root, Sandbox};

pub use job::JOB_SCHEMA_VERSION;
use job::{RejectKind, Rejection};

/// The state root's directory of jobs' files (files copied in, files collected), one
/// directory per sandbox, removed once its result is published.
const JOBS_DIR: &str = ".jobs";

/// What Redis accepts as one argument unless configured otherwise (`proto-max-bulk-len`).
const REDIS_DEFAULT_BULK: u64 = 512 << 20;

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

/// Removes the directory `dir` (a job's, or a part of one) if it exists; a failure is logged:
/// what is left is removed by the next reconcile (see [`Worker::remove_stray_job_dirs`]).
fn remove_dir_logged(dir: &std::path::Path) {
    crate::host::cleanup::remove_tree(dir, "the worker's job directory");
}

fn redis_err(what: &str, e: redis::RedisError) -> Error {
    Error::with_source(ErrorKind::Io, format!("redis: {what}"), e)
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
}
