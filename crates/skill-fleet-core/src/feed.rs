//! The change feed: one [`Committed`] after every write that committed, to every listener.
//!
//! Whatever must follow a change (the HTTP response cache's generations, the hub's status
//! updates, the in-process runner's wake-ups and stops) subscribes here instead of being
//! called one by one from each write. In one process the feed is an in-process broadcast:
//! listeners are called synchronously, in the task that committed, right after the commit
//! and before the write returns, so a client that got a write's answer never reads a stale
//! cached response. Across servers (PostgreSQL) the same seam is fed by the database's
//! notifications.

use std::sync::{Arc, PoisonError, RwLock};

use skill_fleet_types::{Job, JobStatus};

/// What a committed write did to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The job was created (queued).
    Created,
    /// The job was taken from the queue and is running.
    Started,
    /// Progress or a checkpoint was written (a durable event or a coalesced batch).
    Progress,
    /// The job reached a terminal state (completed, failed, cancelled).
    Ended,
    /// A running job went back to the queue (graceful shutdown of a resumable job).
    Requeued,
    /// A finished job went back to the queue (`resume`).
    Resumed,
    /// The job was deleted (retention).
    Deleted,
    /// The job's lease was renewed by a heartbeat (its `lease` and `version` changed, nothing
    /// else).
    Renewed,
    /// An artifact was stored (the job's `version` changed, and its list of artifacts).
    Artifact,
    /// A write failed in a way that may have committed part of it: treat the job as changed
    /// (caches drop what they hold) but expect nothing else of it.
    Uncertain,
}

/// One committed change to one job.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The job.
    pub job_id: String,
    /// What changed.
    pub kind: ChangeKind,
    /// The job's `version` after the change, when known (a deletion and an uncertain write do
    /// not say).
    pub version: Option<u64>,
    /// The job's status after the change, when known.
    pub status: Option<JobStatus>,
    /// The job as committed, for lifecycle changes (created, started, ended, requeued,
    /// resumed).
    pub job: Option<Arc<Job>>,
    /// What the change says to watchers: an end's reason, `requeued: server stopping`.
    pub message: Option<String>,
    /// Whether another server committed it (PostgreSQL): this server read the job back from
    /// the database after that server's notification, so `job` holds the whole row as
    /// committed there, and nothing of it went through this server's live set or hub yet.
    pub remote: bool,
}

impl Committed {
    /// A lifecycle change, with the job as committed.
    pub fn of(kind: ChangeKind, job: Job, message: Option<String>) -> Committed {
        Committed {
            job_id: job.id.clone(),
            kind,
            version: Some(job.version),
            status: Some(job.status),
            job: Some(Arc::new(job)),
            message,
            remote: false,
        }
    }

    /// A change known only by its job id (a batch of progress, a deletion, an uncertain
    /// write).
    pub fn bare(kind: ChangeKind, job_id: &str) -> Committed {
        Committed {
            job_id: job_id.to_owned(),
            kind,
            version: None,
            status: None,
            job: None,
            message: None,
            remote: false,
        }
    }
}

/// Who a listener is; listeners are called in this order, so caches forget a change before
/// any watcher or runner hears of it (a watcher that reacts by reading gets the new state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Audience {
    /// Caches of responses built from the store.
    Caches,
    /// Live streams to watchers.
    Watchers,
    /// What runs jobs (the executor).
    Runners,
}

/// Something that follows committed changes. Called synchronously after each commit: it must
/// be cheap and must not block (hand work to a task or a channel).
pub trait ChangeListener: Send + Sync {
    /// One change committed.
    fn committed(&self, change: &Committed);

    /// Another server committed more changes than it could list (PostgreSQL): anything may
    /// have changed, deletions included. The changes it can read back are still fed one by
    /// one afterwards; caches forget everything here.
    fn resynced(&self) {}
}

/// The listeners of committed changes.
#[derive(Default)]
pub struct ChangeFeed {
    listeners: RwLock<Vec<(Audience, Arc<dyn ChangeListener>)>>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ChangeFeed")
            .field("listeners", &listeners.len())
            .finish()
    }
}

impl ChangeFeed {
    /// Adds a listener; it hears every change committed from now on.
    pub fn subscribe(&self, audience: Audience, listener: Arc<dyn ChangeListener>) {
        let mut listeners = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Stable: listeners of one audience keep the order they subscribed in.
        let at = listeners.partition_point(|(other, _)| *other <= audience);
        listeners.insert(at, (audience, listener));
    }

    /// Tells every listener that anything may have changed ([`ChangeListener::resynced`]).
    pub fn resync(&self) {
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, listener) in listeners.iter() {
            listener.resynced();
        }
    }

    /// Tells every listener, caches first.
    pub fn emit(&self, change: &Committed) {
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, listener) in listeners.iter() {
            listener.committed(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Record(&'static str, Arc<Mutex<Vec<String>>>);

    impl ChangeListener for Record {
        fn committed(&self, change: &Committed) {
            self.1
                .lock()
                .unwrap()
                .push(format!("{} {}", self.0, change.job_id));
        }
    }

    #[test]
    fn caches_hear_first_then_watchers_then_runners() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let feed = ChangeFeed::default();
        feed.subscribe(Audience::Runners, Arc::new(Record("runner", heard.clone())));
        feed.subscribe(Audience::Watchers, Arc::new(Record("hub", heard.clone())));
        feed.subscribe(Audience::Caches, Arc::new(Record("cache", heard.clone())));
        feed.subscribe(Audience::Caches, Arc::new(Record("cache2", heard.clone())));
        feed.emit(&Committed::bare(ChangeKind::Progress, "j"));
        assert_eq!(
            *heard.lock().unwrap(),
            ["cache j", "cache2 j", "hub j", "runner j"]
        );
    }
}
