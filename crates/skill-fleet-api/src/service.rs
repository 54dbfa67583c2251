//! `JobService`: the glue between the job store and the streaming hub.
//!
//! Every write goes through here so that what is persisted and what is streamed never
//! disagree. Progress is written in two ways:
//! - **durable before the response**: the first event of a queued job (it starts it), a step
//!   change, a checkpoint and every lifecycle transition are written in their own transaction
//!   before the request returns;
//! - **coalesced**: other progress events only update an in-memory pending state, which
//!   [`JobService::flush_pending`] writes for all jobs in one batch transaction every tick.
//!
//! Diesel is blocking, so every store call runs on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::Value;
use skill_fleet_jobs::{
    Action, ClaimFilter, Created, JobStore, ListFilter, NewJob, ProgressWrite, StoreError,
};
use skill_fleet_stream::{Hub, Subscription, Update};
use skill_fleet_types::{
    CreateJob, EventAck, Job, JobLimits, JobList, JobStatus, Progress, ProgressPage,
    ProgressUpdate, StreamEvent,
};
use tracing::Instrument;

use crate::cache::Generations;
use crate::error::ApiError;
use crate::runner::Runner;

/// How a stream starts: a live subscription, or a finished job's final state.
pub enum StreamStart {
    /// The job can still change: follow it.
    Live(Subscription),
    /// The job is terminal: send this and end.
    Finished(StreamEvent),
}

/// The latest merged state of a job that is running (or about to be), kept in memory so that
/// progress events need no database read.
#[derive(Debug)]
struct LiveJob {
    status: JobStatus,
    progress: Progress,
    limits: JobLimits,
    /// The budget warning went out (once per server run).
    warned: bool,
    started_at: Option<DateTime<Utc>>,
}

impl LiveJob {
    fn of(job: &Job) -> LiveJob {
        LiveJob {
            status: job.status,
            progress: job.progress.clone(),
            limits: limits_of(job),
            warned: false,
            started_at: job.started_at,
        }
    }
}

/// A job's limits; ones that do not parse (a legacy import, a database edited by hand) are
/// reported and ignored rather than blocking the job.
fn limits_of(job: &Job) -> JobLimits {
    JobLimits::from_metadata(&job.metadata).unwrap_or_else(|err| {
        tracing::warn!(job.id = %job.id, error = %err, "ignoring invalid limits");
        JobLimits {
            budget_usd: None,
            budget_warning_fraction: skill_fleet_types::DEFAULT_BUDGET_WARNING_FRACTION,
            time_limit_seconds: None,
        }
    })
}

/// The store and the hub, and the rules that keep them in step.
pub struct JobService {
    store: JobStore,
    hub: Hub,
    /// Base of the SSE sequence for this server run (`boot_epoch << 32`), so sequence numbers
    /// never go backwards across restarts.
    seq_base: u64,
    live: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LiveJob>>>>,
    pending: Mutex<HashMap<String, ProgressWrite>>,
    generations: Generations,
    store_calls: AtomicU64,
    runner: OnceLock<Arc<dyn Runner>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps half-updated (single inserts
    // and removals), so a poisoned lock is still safe to use.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JobService {
    /// Builds the service. `seq_base` is the first SSE sequence number of this server run.
    pub fn new(store: JobStore, hub: Hub, seq_base: u64) -> JobService {
        JobService {
            store,
            hub,
            seq_base,
            live: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            generations: Generations::default(),
            store_calls: AtomicU64::new(0),
            runner: OnceLock::new(),
        }
    }

    /// The job store.
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// The streaming hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Registers the in-process job runner (once; later calls are ignored and return false).
    pub fn set_runner(&self, runner: Arc<dyn Runner>) -> bool {
        self.runner.set(runner).is_ok()
    }

    /// The in-process job runner, if one is registered.
    pub fn runner(&self) -> Option<&Arc<dyn Runner>> {
        self.runner.get()
    }

    /// Change counters of cached responses; bumped after every write commits.
    pub fn generations(&self) -> &Generations {
        &self.generations
    }

    /// How many store calls this service made (each one a blocking-pool task).
    pub fn store_calls(&self) -> u64 {
        self.store_calls.load(Ordering::Relaxed)
    }

    /// Runs a store call on the blocking pool, keeping the caller's tracing span.
    pub async fn blocking<T, F>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(&JobStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store_calls.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| call(&store)))
            .instrument(tracing::Span::current())
            .await
            .map_err(|err| ApiError::Internal(format!("store task failed: {err}")))?
            .map_err(ApiError::from)
    }

    /// Creates a job (idempotent on the same id and body).
    pub async fn create(
        &self,
        request: CreateJob,
        source: &str,
    ) -> Result<(Job, Created), ApiError> {
        if let Some(metadata) = &request.metadata {
            JobLimits::from_metadata(metadata)?;
        }
        let new = NewJob {
            id: request.id,
            job_type: request.job_type,
            metadata: request.metadata.unwrap_or_default(),
            source: source.to_owned(),
        };
        let (job, created) = self.blocking(move |store| store.create(&new)).await?;
        if created == Created::New {
            self.generations.bump(&job.id);
            if let Some(runner) = self.runner() {
                runner.job_queued(&job.id, &job.job_type);
            }
        }
        Ok((job, created))
    }

    /// One job as stored. Coalesced progress reaches the database within one flush
    /// interval, so this lags the live stream by at most that; in exchange its `version`
    /// (and so its ETag) always describes exactly this body.
    pub async fn get(&self, id: &str) -> Result<Job, ApiError> {
        let id = id.to_owned();
        self.blocking(move |store| store.get(&id)).await
    }

    /// A page of jobs, and the store-wide change counter read just before it (so the
    /// counter is never newer than the page).
    pub async fn list(&self, filter: ListFilter) -> Result<(u64, JobList), ApiError> {
        self.blocking(move |store| {
            let counter = store.change_counter()?;
            Ok((counter, store.list(&filter)?))
        })
        .await
    }

    /// A page of a job's progress history.
    pub async fn history(
        &self,
        id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<ProgressPage, ApiError> {
        let id = id.to_owned();
        self.blocking(move |store| store.progress_history(&id, after, limit))
            .await
    }

    /// An external worker takes the oldest queued job of these types (any type when empty).
    /// Types the in-process runner executes are never handed out.
    pub async fn claim(&self, types: Vec<String>) -> Result<Option<Job>, ApiError> {
        let excluded = match self.runner() {
            Some(runner) => {
                if types.iter().any(|t| runner.runs_type(t)) {
                    return Err(ApiError::Unprocessable(format!(
                        "job types {types:?} include one the server runs itself; only types without an executor can be claimed"
                    )));
                }
                if types.is_empty() {
                    runner.job_types()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        self.take_queued(types, excluded).await
    }

    /// The executor takes the oldest queued job of these types.
    pub async fn claim_for_runner(&self, types: Vec<String>) -> Result<Option<Job>, ApiError> {
        self.take_queued(types, Vec::new()).await
    }

    async fn take_queued(
        &self,
        types: Vec<String>,
        excluded: Vec<String>,
    ) -> Result<Option<Job>, ApiError> {
        let claimed = self
            .blocking(move |store| store.claim(&ClaimFilter { types, excluded }))
            .await?;
        if let Some(job) = &claimed {
            self.generations.bump(&job.id);
            self.track_live(job);
            self.publish_status(job, None);
        }
        Ok(claimed)
    }

    fn track_live(&self, job: &Job) {
        lock(&self.live).insert(
            job.id.clone(),
            Arc::new(tokio::sync::Mutex::new(LiveJob::of(job))),
        );
    }

    fn publish_status(&self, job: &Job, message: Option<String>) {
        let update = Update {
            status: Some(job.status),
            step: job.progress.step.clone(),
            progress: Some(job.progress.progress),
            cost_usd: Some(job.progress.cost_usd),
            metric: job.progress.metric,
            message: message.or_else(|| job.progress.message.clone()),
        };
        if let Err(err) = self.hub.publish(&job.id, update) {
            tracing::debug!(job.id = %job.id, error = %err, "hub did not take a status change");
        }
    }

    /// Progress from a runner: merged, streamed, and persisted (durably now, or coalesced).
    pub async fn ingest(&self, id: &str, update: ProgressUpdate) -> Result<EventAck, ApiError> {
        update.validate()?;
        let entry = self.live_entry(id).await?;
        let mut live = entry.lock().await;
        if live.status.is_terminal() {
            lock(&self.live).remove(id);
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                from: live.status,
                action: Action::Progress,
            }
            .into());
        }
        let step_changed = update.step.is_some() && update.step != live.progress.step;
        let durable =
            live.status == JobStatus::Queued || step_changed || update.checkpoint.is_some();
        // Kept to undo the merge if the durable write fails: an event waiting on this job's
        // lock must not see a step that was never saved.
        let before = durable.then(|| (live.progress.clone(), live.warned));
        merge(&mut live.progress, &update);
        let verdict = check_budget(&mut live);
        let mut message = update.message;
        if let Budget::Warn(warning) = &verdict {
            live.progress.message = Some(warning.clone());
            message = Some(warning.clone());
        }
        if durable {
            // The durable write carries the whole merged state, so it replaces what waits in
            // `pending`; if it fails, what waited is put back for the flusher to retry.
            let superseded = lock(&self.pending).remove(id);
            let full = ProgressUpdate {
                step: live.progress.step.clone(),
                progress: Some(live.progress.progress),
                cost_usd: Some(live.progress.cost_usd),
                metric: live.progress.metric,
                message: live.progress.message.clone(),
                checkpoint: update.checkpoint.clone(),
            };
            let eta = self.hub.current(id).and_then(|state| state.eta_seconds);
            let job_id = id.to_owned();
            let job = self
                .blocking(move |store| store.record_progress(&job_id, &full, eta))
                .await;
            let job = match job {
                Ok(job) => job,
                Err(err) => {
                    // Whatever the database says now is the truth; forget the cached state.
                    lock(&self.live).remove(id);
                    if let Some((progress, warned)) = before {
                        live.progress = progress;
                        live.warned = warned;
                    }
                    if let Some(write) = superseded {
                        lock(&self.pending).entry(id.to_owned()).or_insert(write);
                    }
                    return Err(err);
                }
            };
            self.generations.bump(id);
            live.status = job.status;
            live.started_at = job.started_at;
        } else {
            lock(&self.pending).insert(
                id.to_owned(),
                ProgressWrite {
                    job_id: id.to_owned(),
                    progress: live.progress.clone(),
                    checkpoint: None,
                },
            );
        }
        self.hub.publish(
            id,
            Update {
                status: Some(live.status),
                step: update.step,
                progress: update.progress,
                cost_usd: update.cost_usd,
                metric: update.metric,
                message,
            },
        )?;
        let status = live.status;
        drop(live);
        if let Budget::Exceeded(reason) = verdict {
            // The event that crossed the budget is kept (written with the cancellation); the
            // job stops now, and its runner is told to stop the process.
            tracing::info!(job.id = %id, %reason, "cancelling job");
            let job = self.cancel(id, Some(reason)).await?;
            return Ok(EventAck {
                job_id: id.to_owned(),
                status: job.status,
                durable: true,
            });
        }
        Ok(EventAck {
            job_id: id.to_owned(),
            status,
            durable,
        })
    }

    /// Cancels every running job past its `time_limit_seconds` (counted from `started_at`,
    /// which survives restarts, so time the server was down counts). Called about once a
    /// second by [`run_flusher`](crate::run_flusher).
    pub async fn enforce_time_limits(&self) {
        let now = Utc::now();
        let entries: Vec<(String, Arc<tokio::sync::Mutex<LiveJob>>)> = lock(&self.live)
            .iter()
            .map(|(id, entry)| (id.clone(), Arc::clone(entry)))
            .collect();
        let mut expired = Vec::new();
        for (id, entry) in entries {
            // A job busy with an event is checked on the next round.
            let Ok(live) = entry.try_lock() else { continue };
            let (Some(limit), Some(started)) = (live.limits.time_limit_seconds, live.started_at)
            else {
                continue;
            };
            if live.status == JobStatus::Running {
                let ran = (now - started).num_milliseconds() as f64 / 1000.0;
                if ran > limit {
                    expired.push((id, ran));
                }
            }
        }
        for (id, ran) in expired {
            let reason = format!("time limit exceeded after {}", format_duration(ran));
            tracing::info!(job.id = %id, %reason, "cancelling job");
            match self.cancel(&id, Some(reason)).await {
                Ok(_) | Err(ApiError::Store(StoreError::InvalidTransition { .. })) => {}
                Err(err) => {
                    tracing::warn!(job.id = %id, error = %err, "could not cancel a job past its time limit")
                }
            }
        }
    }

    /// The in-memory entry of a job that can take progress, loading it from the store when
    /// this server has not seen it yet. Terminal jobs are refused here.
    async fn live_entry(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<LiveJob>>, ApiError> {
        if let Some(entry) = lock(&self.live).get(id).cloned() {
            return Ok(entry);
        }
        let job_id = id.to_owned();
        let job = self.blocking(move |store| store.get(&job_id)).await?;
        if job.status.is_terminal() {
            // Tell the worker why, so it can stop (a budget, a time limit, a user's cancel).
            let why = job
                .error
                .as_deref()
                .map(|error| format!(" ({error})"))
                .unwrap_or_default();
            return Err(ApiError::Refused(format!(
                "job `{}` is {}{why}: progress is no longer accepted, stop the run",
                job.id, job.status
            )));
        }
        let mut live = lock(&self.live);
        let entry = live
            .entry(job.id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(LiveJob::of(&job))));
        Ok(entry.clone())
    }

    /// Completes a running job.
    pub async fn complete(
        &self,
        id: &str,
        result: Option<Value>,
        result_path: Option<String>,
    ) -> Result<Job, ApiError> {
        self.finish(id, None, move |store, id| {
            store.complete(id, result, result_path)
        })
        .await
    }

    /// Fails a queued or running job.
    pub async fn fail(&self, id: &str, error: String) -> Result<Job, ApiError> {
        let message = error.clone();
        self.finish(id, Some(message), move |store, id| store.fail(id, &error))
            .await
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<Job, ApiError> {
        self.finish(id, reason.clone(), move |store, id| {
            store.cancel(id, reason.as_deref())
        })
        .await
    }

    /// Moves a job to a terminal state: first writes its pending progress, then the transition,
    /// then tells the stream.
    async fn finish<F>(
        &self,
        id: &str,
        message: Option<String>,
        transition: F,
    ) -> Result<Job, ApiError>
    where
        F: FnOnce(&JobStore, &str) -> Result<Job, StoreError> + Send + 'static,
    {
        let job = self.leave_live(id, transition).await?;
        let message = message.or_else(|| job.error.clone());
        self.publish_status(&job, message);
        if let Some(runner) = self.runner() {
            runner.job_finished(&job.id, job.status);
        }
        Ok(job)
    }

    /// Takes a job out of the live set through `transition`: waits for an event being
    /// applied to it, writes its pending progress, then the transition, in one blocking
    /// call. Shared by the terminal transitions and the shutdown requeue.
    async fn leave_live<F>(&self, id: &str, transition: F) -> Result<Job, ApiError>
    where
        F: FnOnce(&JobStore, &str) -> Result<Job, StoreError> + Send + 'static,
    {
        let entry = lock(&self.live).get(id).cloned();
        let mut guard = match &entry {
            Some(entry) => Some(entry.lock().await),
            None => None,
        };
        let pending = lock(&self.pending).remove(id);
        let retry = pending.clone();
        let job_id = id.to_owned();
        // Two transactions: the pending progress, then the transition. The outer result is
        // the progress write's; when it fails, the progress goes back to `pending`.
        let result = self
            .blocking(move |store| {
                if let Some(write) = pending {
                    store.write_progress_batch(std::slice::from_ref(&write))?;
                }
                Ok(transition(store, &job_id))
            })
            .await;
        // Bumped even on failure: the pending progress may have been written.
        self.generations.bump(id);
        let job = match result {
            Ok(transitioned) => transitioned?,
            Err(err) => {
                if let Some(write) = retry {
                    lock(&self.pending).entry(id.to_owned()).or_insert(write);
                }
                return Err(err);
            }
        };
        if let Some(live) = guard.as_mut() {
            live.status = job.status;
        }
        lock(&self.live).remove(id);
        Ok(job)
    }

    /// Puts a failed or cancelled job back in the queue, keeping its checkpoint.
    pub async fn resume(&self, id: &str) -> Result<Job, ApiError> {
        let job_id = id.to_owned();
        let job = self.blocking(move |store| store.resume(&job_id)).await?;
        self.generations.bump(id);
        self.reseed(&job);
        if let Some(runner) = self.runner() {
            runner.job_queued(&job.id, &job.job_type);
        }
        Ok(job)
    }

    /// Puts a running job back in the queue (graceful shutdown of a resumable job).
    pub async fn requeue(&self, id: &str) -> Result<Job, ApiError> {
        let job = self.leave_live(id, |store, id| store.requeue(id)).await?;
        self.publish_status(&job, Some("requeued: server stopping".to_owned()));
        Ok(job)
    }

    /// Replaces the hub's state of a job that went from terminal back to queued.
    fn reseed(&self, job: &Job) {
        let previous = self.hub.current(&job.id).map(|state| state.seq);
        self.hub.remove(&job.id);
        let mut event = self.event_from_job(job);
        if let Some(previous) = previous {
            event.seq = event.seq.max(previous + 1);
        }
        self.hub.seed(&job.id, event);
    }

    /// The stream state of a job as stored, for jobs the hub does not hold.
    pub fn event_from_job(&self, job: &Job) -> StreamEvent {
        StreamEvent {
            job_id: job.id.clone(),
            seq: self.seq_base + job.version,
            status: job.status,
            step: job.progress.step.clone(),
            progress: job.progress.progress,
            cost_usd: job.progress.cost_usd,
            metric: job.progress.metric,
            eta_seconds: job.progress.eta_seconds,
            message: match job.status {
                JobStatus::Failed | JobStatus::Cancelled => {
                    job.error.clone().or_else(|| job.progress.message.clone())
                }
                _ => job.progress.message.clone(),
            },
            at: job.updated_at,
        }
    }

    /// Starts following a job: 404 when unknown, its final state when terminal.
    pub async fn stream(&self, id: &str) -> Result<StreamStart, ApiError> {
        if let Some(subscription) = self.hub.subscribe(id) {
            return Ok(StreamStart::Live(subscription));
        }
        let job_id = id.to_owned();
        let job = self.blocking(move |store| store.get(&job_id)).await?;
        let event = self.event_from_job(&job);
        if job.status.is_terminal() {
            return Ok(StreamStart::Finished(event));
        }
        self.hub.seed(id, event);
        self.hub
            .subscribe(id)
            .map(StreamStart::Live)
            .ok_or_else(|| ApiError::Unavailable("the stream hub is closed".to_owned()))
    }

    /// Seeds the hub with the stored state of every running job (server start-up).
    pub async fn seed_running(&self) -> Result<usize, ApiError> {
        let filter = ListFilter {
            status: Some(JobStatus::Running),
            limit: 500,
            ..ListFilter::default()
        };
        let mut seeded = 0;
        let mut filter = filter;
        loop {
            let (_, page) = self.list(filter.clone()).await?;
            for job in &page.jobs {
                self.hub.seed(&job.id, self.event_from_job(job));
                seeded += 1;
            }
            match page.next_cursor {
                Some(cursor) => filter.cursor = Some(cursor),
                None => break,
            }
        }
        Ok(seeded)
    }

    /// Deletes finished jobs that ended more than `older_than` ago, with their history, and
    /// drops their cached responses. The caller removes their files.
    pub async fn prune(
        &self,
        older_than: chrono::Duration,
    ) -> Result<skill_fleet_jobs::PruneReport, ApiError> {
        let report = self.blocking(move |store| store.prune(older_than)).await?;
        for id in &report.ids {
            self.generations.bump(id);
        }
        Ok(report)
    }

    /// Writes every job's pending progress in one transaction. Called every tick and on
    /// shutdown. On a database error the writes are kept (unless newer ones arrived) and
    /// retried on the next tick.
    pub async fn flush_pending(&self) -> Result<usize, ApiError> {
        let writes: Vec<ProgressWrite> = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return Ok(0);
            }
            pending.drain().map(|(_, write)| write).collect()
        };
        let writes: Vec<ProgressWrite> = writes
            .into_iter()
            .map(|mut write| {
                write.progress.eta_seconds = self
                    .hub
                    .current(&write.job_id)
                    .and_then(|state| state.eta_seconds);
                write
            })
            .collect();
        let count = writes.len();
        let retry = writes.clone();
        let result = self
            .blocking(move |store| store.write_progress_batch(&writes))
            .await;
        // Bumped even on failure: a partly failed batch must not leave stale cache entries.
        for write in &retry {
            self.generations.bump(&write.job_id);
        }
        match result {
            Ok(report) => {
                if !report.skipped.is_empty() {
                    tracing::debug!(skipped = ?report.skipped, "progress for finished jobs not written");
                }
                Ok(count)
            }
            Err(err) => {
                let mut pending = lock(&self.pending);
                for write in retry {
                    pending.entry(write.job_id.clone()).or_insert(write);
                }
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

/// Merges a partial update into a full progress state (absent fields keep their values).
fn merge(progress: &mut Progress, update: &ProgressUpdate) {
    if let Some(step) = &update.step {
        progress.step = Some(step.clone());
    }
    if let Some(value) = update.progress {
        progress.progress = value;
    }
    if let Some(cost) = update.cost_usd {
        progress.cost_usd = cost;
    }
    if let Some(metric) = update.metric {
        progress.metric = Some(metric);
    }
    if let Some(message) = &update.message {
        progress.message = Some(message.clone());
    }
}

/// What the budget says after an update.
enum Budget {
    Fine,
    Warn(String),
    Exceeded(String),
}

fn check_budget(live: &mut LiveJob) -> Budget {
    let Some(budget) = live.limits.budget_usd else {
        return Budget::Fine;
    };
    let cost = live.progress.cost_usd;
    if cost > budget {
        return Budget::Exceeded(format!("budget exceeded: ${cost:.2} of ${budget:.2}"));
    }
    let fraction = live.limits.budget_warning_fraction;
    if !live.warned && fraction < 1.0 && cost >= budget * fraction {
        live.warned = true;
        let percent = (fraction * 100.0).round();
        return Budget::Warn(format!(
            "budget {percent}% used: ${cost:.2} of ${budget:.2}"
        ));
    }
    Budget::Fine
}

/// `1h00m`, `5m03s`, `42s`.
fn format_duration(seconds: f64) -> String {
    let total = seconds.max(0.0).floor() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(3600.4), "1h00m");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(303.0), "5m03s");
        assert_eq!(format_duration(2.9), "2s");
    }

    fn live(budget: f64, cost: f64) -> LiveJob {
        LiveJob {
            status: JobStatus::Running,
            progress: Progress {
                cost_usd: cost,
                ..Progress::default()
            },
            limits: JobLimits {
                budget_usd: Some(budget),
                budget_warning_fraction: 0.8,
                time_limit_seconds: None,
            },
            warned: false,
            started_at: None,
        }
    }

    #[test]
    fn the_budget_warns_once_then_stops_the_job() {
        let mut job = live(2.0, 1.5);
        assert!(matches!(check_budget(&mut job), Budget::Fine));
        job.progress.cost_usd = 1.62;
        let Budget::Warn(warning) = check_budget(&mut job) else {
            panic!("no warning")
        };
        assert_eq!(warning, "budget 80% used: $1.62 of $2.00");
        job.progress.cost_usd = 1.9;
        assert!(matches!(check_budget(&mut job), Budget::Fine));
        job.progress.cost_usd = 2.31;
        let Budget::Exceeded(reason) = check_budget(&mut job) else {
            panic!("not stopped")
        };
        assert_eq!(reason, "budget exceeded: $2.31 of $2.00");
    }
}
