//! What a worker reports of its work ([`Event`]), for its log. Plain data, in the worker's
//! process.

use serde::Serialize;

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
