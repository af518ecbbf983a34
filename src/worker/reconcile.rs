//! Reconciling a worker with Redis and its state root: adopting the sandboxes of an earlier
//! life (or launching again the jobs of launches that never started, decided over later
//! rounds, never by waiting), removing orphans and stray job directories. Runs in the
//! worker's process.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use redis::streams::{StreamId, StreamPendingCountReply, StreamRangeReply};
use redis::Commands;

use crate::error::Result;
use crate::Sandbox;

use super::{job, redis_err, remove_dir_logged, Event, InFlight, Worker, JOBS_DIR};

/// How long a sandbox whose creator died may go without a monitor before it is taken for a
/// launch that never started (a monitor records itself within milliseconds of taking one).
pub(super) const START_GRACE: Duration = Duration::from_secs(10);

/// Whether the sandbox of an earlier life's launch was taken by a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
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
pub(super) fn start_of(sandbox: &Sandbox) -> Start {
    let Ok(info) = sandbox.info() else {
        return Start::Started;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    decide(info.state, info.monitor_pid, info.created_unix_ms, now)
}

/// [`start_of`] for a sandbox in `state`, with `monitor` recorded or not, created at
/// `created_ms`, at `now_ms` (milliseconds since the epoch).
fn decide(state: crate::SandboxState, monitor: Option<i32>, created_ms: u64, now_ms: u64) -> Start {
    if state != crate::SandboxState::Lost || monitor.is_some() {
        return Start::Started;
    }
    let grace = u64::try_from(START_GRACE.as_millis()).unwrap_or(u64::MAX);
    if now_ms.saturating_sub(created_ms) >= grace {
        Start::Never
    } else {
        Start::Undecided
    }
}

/// A sandbox of an earlier life whose launch is [`Start::Undecided`]: its entry stays
/// claimed by this worker and takes a slot until it is adopted or launched again.
#[derive(Debug, Clone)]
pub(super) struct Starting {
    /// The sandbox's name.
    name: String,
    /// The job document (to launch it again).
    doc: Vec<u8>,
}

/// What [`Worker::adopt`] made of a sandbox of an earlier life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Adoption {
    /// It runs (or ran) under this worker now.
    Adopted,
    /// It is gone (it never started, or had no usable job file): launch the job again.
    Relaunch,
    /// Undecided yet: kept in [`Worker::starting`], looked at again on later rounds.
    Waiting,
}

/// A stream entry rebuilt from its id and job document (to launch it again).
pub(super) fn entry_again(delivery: &str, doc: &[u8]) -> StreamId {
    let mut map = std::collections::HashMap::new();
    map.insert("job".to_string(), redis::Value::BulkString(doc.to_vec()));
    StreamId {
        id: delivery.to_string(),
        map,
    }
}

impl Worker {
    /// The entries pending for this consumer.
    pub(super) fn pending(&mut self) -> Result<BTreeSet<String>> {
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
    pub(super) fn reconcile(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
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
    pub(super) fn tracked(&self, delivery: &str) -> bool {
        self.inflight.contains_key(delivery) || self.starting.contains_key(delivery)
    }

    /// Free slots: the concurrency less the sandboxes this worker runs or waits on.
    pub(super) fn free(&self) -> usize {
        self.opts
            .concurrency
            .saturating_sub(self.inflight.len() + self.starting.len())
    }

    /// Removes the job directories of this worker's sandboxes that no longer exist and are
    /// not tracked: a kill between a sandbox's removal and its job directory's (or during
    /// that one) leaves one, which no later pass would otherwise look at.
    pub(super) fn remove_stray_job_dirs(&mut self) {
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
    pub(super) fn check_starting(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
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
}

impl Worker {
    /// Takes over the sandbox `name` of `delivery`, launched by an earlier life (see
    /// [`Adoption`]): `Relaunch` if that launch never started (the earlier life died before
    /// any monitor took the sandbox; the sandbox is removed), `Waiting` if that cannot be
    /// told yet (the sandbox is kept in [`Worker::starting`]).
    pub(super) fn adopt(
        &mut self,
        delivery: &str,
        name: &str,
        events: &mut dyn FnMut(&Event),
    ) -> Adoption {
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
    pub(super) fn remove_orphan(
        &mut self,
        delivery: &str,
        name: String,
        events: &mut dyn FnMut(&Event),
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SandboxState;

    /// A sandbox whose creator died with no monitor is undecided during the grace, never
    /// started after it; one a monitor took (or in any other state) has started. The
    /// decision never waits: the worker looks again on its next rounds.
    #[test]
    fn a_launch_that_never_started_is_decided_after_the_grace_without_waiting() {
        let grace = u64::try_from(START_GRACE.as_millis()).unwrap();
        let t0 = 1_000_000;
        let lost = SandboxState::Lost;
        assert_eq!(decide(lost, None, t0, t0), Start::Undecided);
        assert_eq!(decide(lost, None, t0, t0 + grace - 1), Start::Undecided);
        assert_eq!(decide(lost, None, t0, t0 + grace), Start::Never);
        // A clock that went back: undecided, never a relaunch of a job that may run.
        assert_eq!(decide(lost, None, t0, t0 - 5), Start::Undecided);
        assert_eq!(decide(lost, Some(7), t0, t0 + grace), Start::Started);
        for s in [
            SandboxState::Creating,
            SandboxState::Created,
            SandboxState::Running,
            SandboxState::Stopped,
        ] {
            assert_eq!(decide(s, None, t0, t0 + grace), Start::Started, "{s:?}");
        }
    }
}
