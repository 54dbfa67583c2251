//! The live set: the latest merged state of every job that is running (or about to be), and
//! the coalesced progress of each that waits to be written.
//!
//! Kept in memory so that a progress event needs no database read. Each job's entry has its
//! own async lock, held while an event or a transition is applied to it, so the writes of one
//! job are applied one at a time and in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use skill_fleet_jobs::{HeldLease, ProgressWrite, StoreError, Writer, admits};
use skill_fleet_types::{Fence, Job, JobLimits, JobStatus, Progress};

/// The in-memory state of one live job.
#[derive(Debug)]
pub(crate) struct LiveJob {
    pub(crate) status: JobStatus,
    pub(crate) progress: Progress,
    pub(crate) limits: JobLimits,
    /// The budget warning went out (once per server run).
    pub(crate) warned: bool,
    pub(crate) started_at: Option<DateTime<Utc>>,
    /// The attempt running, and its lease as the store holds it: a coalesced event is
    /// fenced against these before it is accepted (the batch statement checks again).
    pub(crate) attempt: u32,
    pub(crate) lease: Option<HeldLease>,
}

impl LiveJob {
    pub(crate) fn of(job: &Job, lease: Option<HeldLease>) -> LiveJob {
        LiveJob {
            status: job.status,
            progress: job.progress.clone(),
            limits: crate::limits::limits_of(job),
            warned: false,
            started_at: job.started_at,
            attempt: job.attempt,
            lease,
        }
    }

    /// Whether `writer` may write to this job now ([`skill_fleet_jobs::admits`]).
    pub(crate) fn admits(&self, id: &str, writer: &Writer) -> Result<(), StoreError> {
        admits(id, self.status, self.attempt, self.lease.as_ref(), writer)
    }
}

/// One job's entry; lock it to apply an event or a transition.
pub(crate) type LiveEntry = Arc<tokio::sync::Mutex<LiveJob>>;

/// Live jobs and their pending progress.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    jobs: Mutex<HashMap<String, LiveEntry>>,
    pending: Mutex<HashMap<String, ProgressWrite>>,
    /// Heartbeats answered from memory, whose lease renewals wait for the next flush.
    renewals: Mutex<HashMap<String, Fence>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps half-updated (single inserts
    // and removals), so a poisoned lock is still safe to use.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveSet {
    /// The entry of a job, if it is live here.
    pub(crate) fn get(&self, id: &str) -> Option<LiveEntry> {
        lock(&self.jobs).get(id).cloned()
    }

    /// Makes `job` live with its stored state and lease, replacing any entry it had.
    pub(crate) fn track(&self, job: &Job, lease: Option<HeldLease>) {
        lock(&self.jobs).insert(
            job.id.clone(),
            Arc::new(tokio::sync::Mutex::new(LiveJob::of(job, lease))),
        );
    }

    /// The entry of `job`, made from its stored state and lease if it has none.
    pub(crate) fn get_or_track(&self, job: &Job, lease: Option<HeldLease>) -> LiveEntry {
        lock(&self.jobs)
            .entry(job.id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(LiveJob::of(job, lease))))
            .clone()
    }

    /// Forgets a job: it left the live set, or what the database holds is the truth now.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    /// Every live job's entry.
    pub(crate) fn entries(&self) -> Vec<(String, LiveEntry)> {
        lock(&self.jobs)
            .iter()
            .map(|(id, entry)| (id.clone(), Arc::clone(entry)))
            .collect()
    }

    /// Sets a job's pending progress (the newest merged state replaces what waited).
    pub(crate) fn set_pending(&self, write: ProgressWrite) {
        lock(&self.pending).insert(write.job_id.clone(), write);
    }

    /// Takes a job's pending progress, to write it now.
    pub(crate) fn take_pending(&self, id: &str) -> Option<ProgressWrite> {
        lock(&self.pending).remove(id)
    }

    /// Takes every job's pending progress, to write it in one batch.
    pub(crate) fn take_all_pending(&self) -> Vec<ProgressWrite> {
        lock(&self.pending)
            .drain()
            .map(|(_, write)| write)
            .collect()
    }

    /// Records a renewal for the next flush (the newest fence of the job wins).
    pub(crate) fn set_renewal(&self, id: &str, fence: Fence) {
        lock(&self.renewals).insert(id.to_owned(), fence);
    }

    /// Takes a job's waiting renewal.
    pub(crate) fn take_renewal(&self, id: &str) -> Option<Fence> {
        lock(&self.renewals).remove(id)
    }

    /// Takes every waiting renewal.
    pub(crate) fn take_all_renewals(&self) -> Vec<(String, Fence)> {
        lock(&self.renewals).drain().collect()
    }

    /// Puts back renewals whose write failed, unless newer ones arrived meanwhile.
    pub(crate) fn restore_renewals(&self, renewals: impl IntoIterator<Item = (String, Fence)>) {
        let mut waiting = lock(&self.renewals);
        for (id, fence) in renewals {
            waiting.entry(id).or_insert(fence);
        }
    }

    /// Puts back progress whose write failed, unless newer progress arrived meanwhile: a
    /// failed write never empties `pending`.
    pub(crate) fn restore_pending(&self, writes: impl IntoIterator<Item = ProgressWrite>) {
        let mut pending = lock(&self.pending);
        for write in writes {
            pending.entry(write.job_id.clone()).or_insert(write);
        }
    }
}
