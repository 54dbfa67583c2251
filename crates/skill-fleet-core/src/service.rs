//! `JobService`: the store, the hub, the live set and the change feed, and the one
//! choreography every write to a job follows.
//!
//! Progress is written in two ways:
//! - **durable before the answer**: the first event of a queued job (it starts it), a step
//!   change, a checkpoint and every lifecycle transition are written in their own transaction
//!   before the call returns;
//! - **coalesced**: other progress events only update the live set's pending state, which
//!   [`JobService::flush_pending`] writes for all jobs in one batch transaction every tick.
//!
//! Diesel is blocking, so every store call runs on tokio's blocking pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use skill_fleet_jobs::{
    ArtifactLimits, JobStore, ListFilter, ProgressWrite, SERVER_OWNER_PREFIX, StorageFault,
    StoreError,
};
use skill_fleet_stream::Hub;
use skill_fleet_types::{Job, JobList, ProgressPage};
use tracing::Instrument;

use crate::cluster::ClusterStats;
use crate::error::{CoreError, Result};
use crate::feed::{Audience, ChangeFeed, ChangeKind, Committed};
use crate::live::{LiveJob, LiveSet};
use crate::runner::Runner;
use crate::stream::HubStatus;

/// The store and the hub, and the rules that keep them in step.
pub struct JobService {
    store: JobStore,
    hub: Hub,
    pub(crate) live: LiveSet,
    feed: ChangeFeed,
    store_calls: AtomicU64,
    runner: OnceLock<Arc<dyn Runner>>,
    /// The lease owner of the jobs this server run's runner claims: `server:<boot epoch>`.
    server_owner: String,
    /// When the service started: the rescue sweep's outage guard counts from it until a
    /// store call fails.
    started_at: Instant,
    /// When a store call last failed because the database could not be used, if ever.
    faulted_at: Mutex<Option<Instant>>,
    /// The storage fault that refused the last failed write, until a write commits again
    /// (`/readyz` shows it).
    write_fault: Mutex<Option<StorageFault>>,
    /// How often workers are told to send heartbeats.
    heartbeat_interval: Duration,
    /// What the cluster feed did (PostgreSQL), for `/metrics`.
    pub(crate) cluster: ClusterStats,
    /// Woken after every flush of pending progress: the cluster feed rings its doorbell
    /// right after the tick's batch committed.
    pub(crate) flushed: tokio::sync::Notify,
    /// How large artifacts may be.
    pub(crate) artifact_limits: ArtifactLimits,
}

/// Default of [`JobService::heartbeat_interval`]: six heartbeats per default lease.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// What a write does with the job's pending (coalesced) progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PendingProgress {
    /// The write carries the whole merged state, so it replaces what waits; if the write
    /// fails, what waited is put back for the flusher.
    Supersede,
    /// The pending progress is written first (its own transaction), then the write: a job
    /// that ends keeps its last progress.
    WriteFirst,
}

impl JobService {
    /// Builds the service. `boot_epoch` names this server run as a lease owner
    /// (`server:<boot epoch>`, see [`JobService::server_owner`]).
    pub fn new(store: JobStore, hub: Hub, boot_epoch: u64) -> JobService {
        let feed = ChangeFeed::default();
        feed.subscribe(Audience::Watchers, Arc::new(HubStatus::new(hub.clone())));
        JobService {
            store,
            hub,
            live: LiveSet::default(),
            feed,
            store_calls: AtomicU64::new(0),
            runner: OnceLock::new(),
            server_owner: format!("{SERVER_OWNER_PREFIX}{boot_epoch}"),
            started_at: Instant::now(),
            faulted_at: Mutex::new(None),
            write_fault: Mutex::new(None),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            cluster: ClusterStats::default(),
            flushed: tokio::sync::Notify::new(),
            artifact_limits: ArtifactLimits::default(),
        }
    }

    /// Sets how often workers are told to send heartbeats (a claim's answer says it).
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> JobService {
        self.heartbeat_interval = interval;
        self
    }

    /// How often workers send heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long a lease lasts after each renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.store.lease_policy().ttl
    }

    /// The lease owner of the jobs this server run's runner executes (`server:<run>`).
    pub fn server_owner(&self) -> &str {
        &self.server_owner
    }

    /// How long the database has been usable without a break: since the last store call
    /// that failed for a storage fault or a lost connection, or since the service started.
    pub fn healthy_for(&self) -> Duration {
        self.last_fault().unwrap_or(self.started_at).elapsed()
    }

    fn last_fault(&self) -> Option<Instant> {
        *self
            .faulted_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a store call failed because the database could not be used within `window`.
    pub(crate) fn faulted_within(&self, window: Duration) -> bool {
        self.last_fault().is_some_and(|at| at.elapsed() < window)
    }

    /// The storage fault behind the last refused write, while writes are failing: set when a
    /// store call fails for a storage fault (disk full, read-only, busy, i/o, unavailable),
    /// cleared when a write commits again.
    pub fn write_fault(&self) -> Option<StorageFault> {
        *self
            .write_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_write_fault(&self, fault: Option<StorageFault>) {
        *self
            .write_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Notes a store call's failure: an outage for the rescue sweep's guard, a storage fault
    /// for `/readyz`.
    fn note_failure(&self, err: &CoreError) {
        if err.outage() {
            self.note_outage();
        }
        if let Some(fault) = err.storage_fault() {
            self.set_write_fault(Some(fault));
        }
    }

    fn note_outage(&self) {
        *self
            .faulted_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// The job store.
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// The streaming hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The feed of committed changes; subscribe to follow every write.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// Registers the in-process job runner, which also starts hearing the change feed (once;
    /// later calls are ignored and return false).
    pub fn set_runner(&self, runner: Arc<dyn Runner>) -> bool {
        if self.runner.set(Arc::clone(&runner)).is_err() {
            return false;
        }
        self.feed.subscribe(Audience::Runners, runner);
        true
    }

    /// The in-process job runner, if one is registered.
    pub fn runner(&self) -> Option<&Arc<dyn Runner>> {
        self.runner.get()
    }

    /// What the cluster feed did so far (all zero on SQLite).
    pub fn cluster_stats(&self) -> &ClusterStats {
        &self.cluster
    }

    /// How many store calls this service made (each one a blocking-pool task).
    pub fn store_calls(&self) -> u64 {
        self.store_calls.load(Ordering::Relaxed)
    }

    /// Runs a store call on the blocking pool, keeping the caller's tracing span.
    pub async fn blocking<T, F>(&self, call: F) -> Result<T>
    where
        F: FnOnce(&JobStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store_calls.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| call(&store)))
            .instrument(tracing::Span::current())
            .await
            .map_err(|err| CoreError::Internal(format!("store task failed: {err}")))?
            .map_err(CoreError::from);
        if let Err(err) = &result {
            self.note_failure(err);
        }
        result
    }

    /// One job as stored. Coalesced progress reaches the database within one flush
    /// interval, so this lags the live stream by at most that; in exchange its `version`
    /// (and so its ETag) always describes exactly this body.
    pub async fn get(&self, id: &str) -> Result<Job> {
        let id = id.to_owned();
        self.blocking(move |store| store.get(&id)).await
    }

    /// A page of jobs, and the store-wide change counter read just before it (so the
    /// counter is never newer than the page).
    pub async fn list(&self, filter: ListFilter) -> Result<(u64, JobList)> {
        self.blocking(move |store| {
            let counter = store.change_counter()?;
            Ok((counter, store.list(&filter)?))
        })
        .await
    }

    /// A page of a job's progress history.
    pub async fn history(&self, id: &str, after: Option<i64>, limit: u32) -> Result<ProgressPage> {
        let id = id.to_owned();
        self.blocking(move |store| store.progress_history(&id, after, limit))
            .await
    }

    /// A write that ran inside a successful store call but was refused for a storage fault
    /// (the call's own result did not carry it): `/readyz` shows it.
    fn note_write_refused(&self, err: &CoreError) {
        if let Some(fault) = err.storage_fault() {
            self.set_write_fault(Some(fault));
        }
    }

    /// Tells every listener of the feed.
    pub(crate) fn emit(&self, change: Committed) {
        if change.kind != ChangeKind::Uncertain {
            // Something committed: the database takes writes again.
            self.set_write_fault(None);
        }
        self.feed.emit(&change);
    }

    /// The one choreography of a write to a job that may be live: with the job's live entry
    /// locked by the caller (`live`), take its pending progress, run `write` on the blocking
    /// pool, then
    /// - on success: fix the live entry's status, emit `kind` on the feed, return the job;
    /// - on failure: put the pending progress back (unless it was written), emit what did
    ///   commit, return the error.
    ///
    /// Whatever follows a commit (caches, the hub's status, the runner) hears it from the
    /// feed; no write path calls them itself.
    pub(crate) async fn commit<F>(
        &self,
        id: &str,
        live: Option<&mut LiveJob>,
        pending: PendingProgress,
        kind: ChangeKind,
        message: Option<String>,
        write: F,
    ) -> Result<Job>
    where
        F: FnOnce(&JobStore, &str) -> Result<Job, StoreError> + Send + 'static,
    {
        let waiting = self.live.take_pending(id);
        let first = match pending {
            PendingProgress::WriteFirst => waiting.clone(),
            PendingProgress::Supersede => None,
        };
        let job_id = id.to_owned();
        // The outer result is the pending write's (nothing committed when it fails); the
        // inner one is the write's.
        let result = self
            .blocking(move |store| {
                let wrote_pending = match first {
                    Some(write) => {
                        store.write_progress_batch(std::slice::from_ref(&write))?;
                        true
                    }
                    None => false,
                };
                Ok((wrote_pending, write(store, &job_id)))
            })
            .await;
        match result {
            Ok((_, Ok(job))) => {
                if let Some(live) = live {
                    live.status = job.status;
                    live.started_at = job.started_at;
                }
                self.emit(Committed::of(kind, job.clone(), message));
                Ok(job)
            }
            Ok((true, Err(err))) => {
                self.emit(Committed::bare(ChangeKind::Progress, id));
                let err = CoreError::from(err);
                self.note_write_refused(&err);
                Err(err)
            }
            Ok((false, Err(err))) => {
                self.live.restore_pending(waiting);
                let err = CoreError::from(err);
                self.note_write_refused(&err);
                Err(err)
            }
            Err(err) => {
                if pending == PendingProgress::WriteFirst {
                    // An error at commit may have left part of it written: caches forget.
                    self.emit(Committed::bare(ChangeKind::Uncertain, id));
                }
                self.live.restore_pending(waiting);
                Err(err)
            }
        }
    }

    /// Writes every job's pending progress in one transaction. Called every tick and on
    /// shutdown. On a database error the writes are kept (unless newer ones arrived) and
    /// retried on the next tick.
    pub async fn flush_pending(&self) -> Result<usize> {
        let flushed = self.flush_pending_inner().await;
        // Only a ring already waiting hears it (no permit is kept): a change noted after
        // this flush goes with the next one.
        self.flushed.notify_waiters();
        flushed
    }

    async fn flush_pending_inner(&self) -> Result<usize> {
        // Renewals first (their own transaction; a failure does not hold progress back).
        let renewed = self.flush_renewals().await;
        let mut writes: Vec<ProgressWrite> = self.live.take_all_pending();
        if writes.is_empty() {
            return renewed;
        }
        for write in &mut writes {
            write.progress.eta_seconds = self
                .hub
                .current(&write.job_id)
                .and_then(|state| state.eta_seconds);
        }
        let count = writes.len();
        let retry = writes.clone();
        let result = self
            .blocking(move |store| store.write_progress_batch(&writes))
            .await;
        match &result {
            Ok(report) => {
                for (id, version) in &report.versions {
                    let mut change = Committed::bare(ChangeKind::Progress, id);
                    change.version = Some(*version);
                    self.emit(change);
                }
            }
            // A partly failed batch must not leave stale cache entries.
            Err(_) => {
                for write in &retry {
                    self.emit(Committed::bare(ChangeKind::Uncertain, &write.job_id));
                }
            }
        }
        match result {
            Ok(report) => {
                if !report.skipped.is_empty() {
                    tracing::debug!(skipped = ?report.skipped, "progress for finished jobs not written");
                }
                renewed.map(|renewed| count + renewed)
            }
            Err(err) => {
                self.live.restore_pending(retry);
                Err(err)
            }
        }
    }

    /// Writes the lease renewals of heartbeats answered since the last tick, in one
    /// transaction (each fenced in its own `UPDATE`). On a database error they are kept
    /// (unless newer ones arrived) and retried on the next tick.
    async fn flush_renewals(&self) -> Result<usize> {
        let renewals = self.live.take_all_renewals();
        if renewals.is_empty() {
            return Ok(0);
        }
        let retry = renewals.clone();
        match self
            .blocking(move |store| store.renew_leases(&renewals))
            .await
        {
            Ok(renewed) => {
                for (id, version) in &renewed {
                    let mut change = Committed::bare(ChangeKind::Renewed, id);
                    change.version = Some(*version);
                    self.emit(change);
                }
                Ok(renewed.len())
            }
            Err(err) => {
                for (id, _) in &retry {
                    self.emit(Committed::bare(ChangeKind::Uncertain, id));
                }
                self.live.restore_renewals(retry);
                Err(err)
            }
        }
    }

    /// Flushes the hub and the pending writes, then ends every stream.
    pub async fn shutdown(&self) {
        self.hub.flush();
        if let Err(err) = self.flush_pending().await {
            tracing::error!(error = %err, "could not write pending progress on shutdown");
        }
        self.hub.close();
    }
}
