//! Publishing results: the Lua script that adds a result and acks its entry at once, for
//! its owner only; results Redis refuses replaced by small ones; rejections. Runs in the
//! worker's process.

use std::time::Instant;

use crate::error::{Error, Result};

use super::job::{self, RejectKind, Rejection};
use super::{redis_err, remove_dir_logged, Event, Worker};

/// The publish step: checks that `ARGV[1]` (the entry) is pending for `ARGV[2]` (this
/// consumer), then adds the result to `KEYS[2]`, sets the result key if one is given, and
/// acks. The result key is set only if it does not exist (`SET NX`): it holds the first
/// result published for a job id. Returns 1 if published, 0 if the entry is no longer
/// pending (done already), -1 if another consumer owns it.
pub(super) const PUBLISH: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[4], 'delivery', ARGV[1], 'verdict', ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', ARGV[6], ARGV[5], 'NX') end
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
return 1
"#;

/// Times in a row a result's publish may lose the connection (with Redis reachable again
/// each time) before the result is taken for one Redis will not take, and a small result
/// saying so stands in for it.
pub(super) const MAX_LOST_PUBLISHES: u32 = 3;

/// Why a publish did not happen.
pub(super) enum PublishError {
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
pub(super) fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// True if `e` is an answer saying Redis cannot serve anyone now (loading its data after a
/// restart, a script running, a failover under way), not a refusal of this command.
pub(super) fn server_busy(e: &redis::RedisError) -> bool {
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
    /// Publishes and acks every finished sandbox's result, then removes the sandbox. A
    /// result Redis refuses is replaced by a small one saying why, once; one it refuses
    /// too waits for the next refresh (never a loop, never a reconnection for it).
    pub(super) fn publish_finished(&mut self, events: &mut dyn FnMut(&Event)) -> Result<()> {
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
    pub(super) fn result_key(&self, job_id: &str) -> Option<String> {
        match &self.opts.result_keys {
            Some(p) if !job_id.is_empty() => Some(format!("{p}{job_id}")),
            _ => None,
        }
    }

    /// The publish script (see [`PUBLISH`]): 1 published, 0 done already, -1 not ours. A
    /// result larger than the server takes as one argument is refused here, unsent.
    pub(super) fn publish(
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
    pub(super) fn reject(
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
