//! The job executor: runs queued jobs of configured types as child processes.
//!
//! Only the server's configuration maps a job type to a command; nothing in a request can
//! choose or alter it. A dispatcher claims queued jobs of those types, oldest first, within
//! each type's `max_concurrent` and the global limit, and runs each in `child`. Progress
//! lines go through the same [`JobService`](skill_fleet_core::JobService) path as events from
//! external workers, so they are persisted and streamed alike.

mod artifacts;
mod child;
mod protocol;
mod tail;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skill_fleet_api::AppState;
use skill_fleet_core::{ChangeKind, ChangeListener, Claimant, Committed, CoreError, Runner};
use skill_fleet_jobs::{Claimed, StoreError, Writer};
use skill_fleet_types::{Backoff, Fence, Job, JobLogs, JobStatus};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

pub use protocol::{JobResult, Line, parse_line};

use child::{Outcome, Report, Tails, lock};

/// How one job type is run.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    /// The job type.
    pub job_type: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Working directory; the job's work directory when `None`.
    pub working_dir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Longest a run may take; past it the job fails with `timeout`.
    pub timeout: Option<Duration>,
    /// Whether an interrupted run goes back to the queue (with its checkpoint).
    pub resumable: bool,
    /// How many jobs of this type run at once.
    pub max_concurrent: usize,
}

/// Why a running child is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job reached this terminal status from outside (cancel, fail, budget).
    Finished(JobStatus),
    /// The server is shutting down.
    Shutdown,
    /// The executor's time limit for the run passed.
    Timeout,
    /// The run no longer owns the job (its lease was lost: heartbeats went unanswered for
    /// too long, or the job was rescued): it stops and writes nothing more.
    LeaseLost,
}

/// Executor settings besides the per-type specs.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Where work directories live (`<data dir>/jobs/<id>/`).
    pub data_dir: PathBuf,
    /// Most jobs running at once, over all types.
    pub max_concurrent_jobs: usize,
    /// Time between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

struct RunningJob {
    stop: watch::Sender<Option<StopReason>>,
    tails: Arc<Mutex<Tails>>,
}

struct Inner {
    state: AppState,
    specs: HashMap<String, Arc<ExecutorSpec>>,
    settings: ExecutorSettings,
    wake: Notify,
    running: Mutex<HashMap<String, RunningJob>>,
    per_type: Mutex<HashMap<String, usize>>,
    /// Tails of runs that ended, for the logs route (bounded; older runs are read from the
    /// work directory).
    finished_logs: Mutex<BTreeMap<String, JobLogs>>,
    idle: Notify,
    stopping: AtomicBool,
}

/// The executor. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

/// First and longest wait between retries of a write the database refused for a storage
/// fault (disk full, read-only, locked).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Logs kept in memory for runs that ended; older ones are served from disk.
const FINISHED_LOGS_KEPT: usize = 256;

impl Executor {
    /// Builds the executor and registers it with the service as its runner.
    pub fn new(state: AppState, specs: Vec<ExecutorSpec>, settings: ExecutorSettings) -> Executor {
        let executor = Executor {
            inner: Arc::new(Inner {
                state,
                specs: specs
                    .into_iter()
                    .map(|spec| (spec.job_type.clone(), Arc::new(spec)))
                    .collect(),
                settings,
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                per_type: Mutex::new(HashMap::new()),
                finished_logs: Mutex::new(BTreeMap::new()),
                idle: Notify::new(),
                stopping: AtomicBool::new(false),
            }),
        };
        let runner: Arc<dyn Runner> = Arc::new(executor.clone());
        executor.inner.state.service().set_runner(runner);
        executor
    }

    /// Starts the dispatcher; it runs until [`Executor::shutdown`].
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let executor = self.clone();
        tokio::spawn(async move { executor.dispatch().await })
    }

    async fn dispatch(&self) {
        if self.inner.specs.is_empty() {
            return;
        }
        while !self.inner.stopping.load(Ordering::Acquire) {
            self.start_ready_jobs().await;
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Claims and starts queued jobs while there is room.
    async fn start_ready_jobs(&self) {
        loop {
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            let types = self.types_with_room();
            if types.is_empty() {
                return;
            }
            match self
                .inner
                .state
                .service()
                .claim(Claimant::Runner, types, None)
                .await
            {
                Ok(Some(claimed)) => self.launch(claimed),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "executor could not claim a job; retrying");
                    return;
                }
            }
        }
    }

    fn types_with_room(&self) -> Vec<String> {
        let running = lock(&self.inner.running).len();
        if running >= self.inner.settings.max_concurrent_jobs {
            return Vec::new();
        }
        let per_type = lock(&self.inner.per_type);
        self.inner
            .specs
            .values()
            .filter(|spec| per_type.get(&spec.job_type).copied().unwrap_or(0) < spec.max_concurrent)
            .map(|spec| spec.job_type.clone())
            .collect()
    }

    fn launch(&self, claimed: Claimed) {
        let Claimed { job, lease } = claimed;
        let Some(spec) = self.inner.specs.get(&job.job_type).cloned() else {
            return;
        };
        let fence = lease.fence();
        let (stop_tx, stop_rx) = watch::channel(None);
        let tails = Arc::new(Mutex::new(Tails::default()));
        lock(&self.inner.running).insert(
            job.id.clone(),
            RunningJob {
                stop: stop_tx,
                tails: Arc::clone(&tails),
            },
        );
        *lock(&self.inner.per_type)
            .entry(job.job_type.clone())
            .or_insert(0) += 1;
        let executor = self.clone();
        let span = tracing::info_span!("job", job.id = %job.id, job.type = %job.job_type);
        tokio::spawn(
            async move { executor.run(job, fence, spec, tails, stop_rx).await }.instrument(span),
        );
    }

    /// Stops a running child, if this executor runs `job_id`.
    fn stop(&self, job_id: &str, reason: StopReason) {
        if let Some(running) = lock(&self.inner.running).get(job_id) {
            let _ = running.stop.send(Some(reason));
        }
    }

    /// The server is one more worker: it renews the lease of each child it runs every
    /// heartbeat interval. A heartbeat refused with `lease_lost` stops the child. On a
    /// database other servers share, so does having had no heartbeat acknowledged for
    /// `ttl - interval`, before the lease can expire and another server take the job. On a
    /// database this process owns alone (SQLite) nobody else can take it, and the outage
    /// guard keeps this server's own sweep away until its heartbeats are saved again: the
    /// child keeps its work through an outage.
    async fn heartbeat(&self, job_id: String, fence: Fence) {
        let service = self.inner.state.service();
        let interval = service.heartbeat_interval();
        let fence_after = service.lease_ttl().saturating_sub(interval);
        let shared = service.store().is_shared();
        let mut last_ack = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval_at(last_ack + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match service.heartbeat(&job_id, fence.clone()).await {
                Ok(beat) if !beat.stop => last_ack = tokio::time::Instant::now(),
                // Ended from outside: the feed stops the child.
                Ok(_) => return,
                Err(err) if err.lease_lost() => {
                    tracing::warn!(job.id = %job_id, error = %err, "lease lost; stopping the run");
                    self.stop(&job_id, StopReason::LeaseLost);
                    return;
                }
                Err(err) => {
                    if shared && last_ack.elapsed() >= fence_after {
                        tracing::error!(job.id = %job_id, error = %err, waited_ms = last_ack.elapsed().as_millis() as u64,
                            "no heartbeat acknowledged for nearly a lease; stopping the run before its lease expires");
                        self.stop(&job_id, StopReason::LeaseLost);
                        return;
                    }
                    tracing::warn!(job.id = %job_id, error = %err, "heartbeat not saved; retrying");
                }
            }
        }
    }

    async fn run(
        &self,
        job: Job,
        fence: Fence,
        spec: Arc<ExecutorSpec>,
        tails: Arc<Mutex<Tails>>,
        stop: watch::Receiver<Option<StopReason>>,
    ) {
        let dir = child::work_dir(&self.inner.settings.data_dir, &job.id);
        tracing::info!(job.id = %job.id, attempt = job.attempt, "starting job");
        let service = self.inner.state.service();
        let job_id = job.id.clone();
        let stopped = stop.clone();
        let owner = Writer::Owner(fence.clone());
        let heartbeat = {
            let executor = self.clone();
            let job_id = job.id.clone();
            let fence = fence.clone();
            tokio::spawn(
                async move { executor.heartbeat(job_id, fence).await }
                    .instrument(tracing::Span::current()),
            )
        };
        let outcome = child::run(
            &spec,
            &job,
            &dir,
            Arc::clone(&tails),
            stop,
            self.inner.settings.stop_grace,
            |report| {
                let job_id = job_id.clone();
                let mut stopped = stopped.clone();
                let owner = owner.clone();
                let (dir, tails) = (dir.clone(), Arc::clone(&tails));
                async move {
                    let update = match report {
                        Report::Progress(update) => update,
                        Report::Artifact(line) => {
                            return self
                                .store_reported_artifact(&job_id, &dir, line, owner, &mut stopped, &tails)
                                .await;
                        }
                    };
                    // A step change or checkpoint the database could not take (disk full,
                    // read-only, locked) is retried until it is saved: the child is not read
                    // meanwhile, so it waits (its stdout pipe fills). A stop ends the wait.
                    let durable = update.step.is_some() || update.checkpoint.is_some();
                    let result = if durable {
                        self.until_saved(&job_id, Some(&mut stopped), || {
                            service.ingest(&job_id, update.clone(), owner.clone())
                        })
                        .await
                    } else {
                        service.ingest(&job_id, update, owner.clone()).await
                    };
                    match result {
                        Ok(_) => true,
                        // The job ended from outside (cancel, budget): stop reading; the stop
                        // signal follows.
                        Err(err) if err.job_has_ended() => false,
                        Err(err) if err.lease_lost() => {
                            tracing::warn!(job.id = %job_id, error = %err, "lease lost; stopping the run");
                            self.stop(&job_id, StopReason::LeaseLost);
                            false
                        }
                        Err(err) => {
                            tracing::warn!(job.id = %job_id, error = %err, "progress line not applied");
                            true
                        }
                    }
                }
            },
        )
        .await;
        // A child that exited leaves its `artifacts/` files: stored before its end is written
        // (the heartbeat still renews the lease meanwhile).
        if matches!(outcome, Outcome::Exited { .. }) {
            self.collect_artifacts(&job.id, &dir, &owner, &tails).await;
        }
        heartbeat.abort();

        // Unregister first: the terminal transition below calls back into `job_finished`.
        lock(&self.inner.running).remove(&job.id);
        if let Some(count) = lock(&self.inner.per_type).get_mut(&job.job_type) {
            *count = count.saturating_sub(1);
        }
        let logs = lock(&tails).to_logs(&job.id);
        self.keep_logs(&dir, logs.clone());
        let stderr_tail = lock(&tails).stderr.last(5);
        self.settle(&job, &fence, &spec, outcome, &stderr_tail)
            .await;
        self.inner.idle.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// Stores the file a child's `{"artifact": PATH}` line names (retried through storage
    /// faults); false when the run must stop reading (its job ended or its lease was lost).
    /// Any other refusal (a bad path, too large) goes to the job's stderr tail.
    async fn store_reported_artifact(
        &self,
        job_id: &str,
        dir: &std::path::Path,
        line: protocol::ArtifactLine,
        owner: Writer,
        stopped: &mut watch::Receiver<Option<StopReason>>,
        tails: &Arc<Mutex<Tails>>,
    ) -> bool {
        let service = self.inner.state.service();
        // The outer error is the service's (retried through storage faults); the inner one
        // is the file's own (a bad path, unreadable), reported and skipped.
        let stored = self
            .until_saved(job_id, Some(stopped), || async {
                match artifacts::store_file(
                    service,
                    job_id,
                    dir,
                    &line.path,
                    line.name.as_deref(),
                    line.content_type.as_deref(),
                    owner.clone(),
                )
                .await
                {
                    Ok(_) => Ok(Ok(())),
                    Err(artifacts::FileRefused::Core(err)) => Err(err),
                    Err(refused) => Ok(Err(refused)),
                }
            })
            .await;
        match stored {
            Ok(Ok(())) => true,
            Ok(Err(refused)) => {
                self.artifact_skipped(job_id, &refused.to_string(), tails);
                true
            }
            Err(err) => self.artifact_outcome(job_id, err, tails),
        }
    }

    /// Stores what the child left in `artifacts/`.
    async fn collect_artifacts(
        &self,
        job_id: &str,
        dir: &std::path::Path,
        owner: &Writer,
        tails: &Arc<Mutex<Tails>>,
    ) {
        let service = self.inner.state.service();
        let skipped = |reason: String| self.artifact_skipped(job_id, &reason, tails);
        let collected = self
            .until_saved(job_id, None, || async {
                match artifacts::collect(service, job_id, dir, owner, &skipped).await {
                    Ok(stored) => Ok(Ok(stored)),
                    Err(artifacts::FileRefused::Core(err)) => Err(err),
                    Err(refused) => Ok(Err(refused)),
                }
            })
            .await;
        match collected {
            Ok(Ok(0)) => {}
            Ok(Ok(stored)) => {
                tracing::info!(job.id = %job_id, stored, "stored the artifacts the job left");
            }
            Ok(Err(refused)) => self.artifact_skipped(job_id, &refused.to_string(), tails),
            Err(err) => {
                self.artifact_outcome(job_id, err, tails);
            }
        }
    }

    /// A file that could not be stored: logged, and said in the job's stderr tail.
    fn artifact_skipped(&self, job_id: &str, reason: &str, tails: &Arc<Mutex<Tails>>) {
        tracing::warn!(job.id = %job_id, %reason, "artifact not stored");
        lock(tails)
            .stderr
            .push(&format!("[skill-fleet] artifact not stored: {reason}"));
    }

    /// What the service's refusal of an artifact means for the run: stop reading (false)
    /// when the job ended or its lease was lost; otherwise (too large, a bad name) keep
    /// going, the refusal said in the job's stderr tail.
    fn artifact_outcome(&self, job_id: &str, err: CoreError, tails: &Arc<Mutex<Tails>>) -> bool {
        if err.job_has_ended() {
            return false;
        }
        if err.lease_lost() {
            tracing::warn!(job.id = %job_id, error = %err, "lease lost; stopping the run");
            self.stop(job_id, StopReason::LeaseLost);
            return false;
        }
        self.artifact_skipped(job_id, &err.to_string(), tails);
        true
    }

    /// Runs `write` until it is not refused for a storage fault (disk full, read-only,
    /// locked), waiting up to 0.1 s, then up to twice as long each time (jittered, at most 2 s). Gives up, returning the
    /// last error, when the server stops or (given `stopped`) the job is stopped.
    async fn until_saved<T, Write>(
        &self,
        job_id: &str,
        mut stopped: Option<&mut watch::Receiver<Option<StopReason>>>,
        mut write: impl FnMut() -> Write,
    ) -> Result<T, CoreError>
    where
        Write: Future<Output = Result<T, CoreError>>,
    {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            match write().await {
                Err(err) if err.storage_fault().is_some() => {
                    let delay = backoff.next_delay();
                    if !self.pause(delay, stopped.as_deref_mut()).await {
                        return Err(err);
                    }
                    tracing::warn!(job.id = %job_id, error = %err, retry_ms = delay.as_millis() as u64, "not saved; retrying");
                }
                other => return other,
            }
        }
    }

    /// Waits `delay`, or less when the server stops or (given `stopped`) the job is stopped;
    /// false then.
    async fn pause(
        &self,
        delay: Duration,
        stopped: Option<&mut watch::Receiver<Option<StopReason>>>,
    ) -> bool {
        let stopping = || self.inner.stopping.load(Ordering::Acquire);
        let Some(stopped) = stopped else {
            if stopping() {
                return false;
            }
            tokio::time::sleep(delay).await;
            return !stopping();
        };
        if stopping() || stopped.borrow().is_some() {
            return false;
        }
        let gone = tokio::select! {
            () = tokio::time::sleep(delay) => false,
            changed = stopped.changed() => changed.is_err(),
        };
        !gone && !stopping() && stopped.borrow().is_none()
    }

    /// Records how the run ended. A storage fault (disk full, read-only, locked) is retried
    /// until the end is saved, so a run that ended during an outage is not left `running`;
    /// when the server stops first, start-up recovery settles the job instead.
    async fn settle(
        &self,
        job: &Job,
        fence: &Fence,
        spec: &ExecutorSpec,
        outcome: Outcome,
        stderr_tail: &str,
    ) {
        let outcome = &outcome;
        let result = self
            .until_saved(&job.id, None, || {
                self.settle_once(job, fence, spec, outcome, stderr_tail)
            })
            .await;
        match result {
            Ok(()) => {}
            Err(err) if err.job_has_ended() => {}
            Err(err) if err.lease_lost() => {
                tracing::warn!(job.id = %job.id, error = %err, "the run's end was not recorded: it no longer owns the job");
            }
            Err(err) => {
                tracing::error!(job.id = %job.id, error = %err, "could not record the end of a job")
            }
        }
    }

    async fn settle_once(
        &self,
        job: &Job,
        fence: &Fence,
        spec: &ExecutorSpec,
        outcome: &Outcome,
        stderr_tail: &str,
    ) -> Result<(), CoreError> {
        let service = self.inner.state.service();
        let owner = || Writer::Owner(fence.clone());
        let with_tail = |message: String| {
            if stderr_tail.is_empty() {
                message
            } else {
                format!("{message}: {stderr_tail}")
            }
        };
        let result = match outcome {
            Outcome::Exited { status, result } if status.success() => {
                let result = result.clone().unwrap_or_default();
                tracing::info!(job.id = %job.id, "job completed");
                match service
                    .complete(&job.id, result.result, result.result_path, owner())
                    .await
                {
                    // A result the store refuses (a `result_path` naming an artifact that was
                    // not stored) fails the job, saying why, rather than leave it running.
                    Err(CoreError::Store(StoreError::InvalidInput(reason))) => {
                        service
                            .fail(&job.id, format!("result refused: {reason}"), owner())
                            .await
                    }
                    other => other,
                }
            }
            Outcome::Exited { status, .. } => {
                let reason = exit_reason(*status);
                tracing::info!(job.id = %job.id, %reason, "job failed");
                service.fail(&job.id, with_tail(reason), owner()).await
            }
            Outcome::SpawnFailed(reason) => {
                tracing::warn!(job.id = %job.id, %reason, "job could not start");
                service.fail(&job.id, reason.clone(), owner()).await
            }
            Outcome::Stopped(StopReason::Finished(status)) => {
                tracing::info!(job.id = %job.id, %status, "job stopped");
                return Ok(());
            }
            Outcome::Stopped(StopReason::LeaseLost) => {
                tracing::info!(job.id = %job.id, "job stopped: its lease was lost");
                return Ok(());
            }
            Outcome::Stopped(StopReason::Timeout) => {
                let seconds = spec.timeout.map_or(0, |t| t.as_secs());
                service
                    .fail(
                        &job.id,
                        format!("timeout: ran longer than {seconds}s"),
                        owner(),
                    )
                    .await
            }
            Outcome::Stopped(StopReason::Shutdown) => {
                if spec.resumable {
                    service.requeue(&job.id, owner()).await
                } else {
                    service
                        .fail(
                            &job.id,
                            skill_fleet_jobs::INTERRUPTED_ERROR.to_owned(),
                            owner(),
                        )
                        .await
                }
            }
        };
        result.map(|_| ())
    }

    fn keep_logs(&self, dir: &std::path::Path, logs: JobLogs) {
        if let Ok(bytes) = serde_json::to_vec(&logs)
            && let Err(err) = std::fs::write(dir.join("logs.json"), bytes)
        {
            tracing::debug!(error = %err, "could not write logs.json");
        }
        let mut kept = lock(&self.inner.finished_logs);
        kept.insert(logs.job_id.clone(), logs);
        while kept.len() > FINISHED_LOGS_KEPT {
            kept.pop_first();
        }
    }

    /// Stops every child (SIGTERM, SIGKILL after the grace period); resumable jobs go back
    /// to the queue with their checkpoint, others fail as interrupted. Returns when all
    /// runs have been settled, or after a deadline.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        for running in lock(&self.inner.running).values() {
            let _ = running.stop.send(Some(StopReason::Shutdown));
        }
        // Saturating and bounded: a huge grace must not overflow the clock (and panic).
        let wait = self
            .inner
            .settings
            .stop_grace
            .saturating_add(Duration::from_secs(10))
            .min(Duration::from_secs(24 * 60 * 60));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let idle = self.inner.idle.notified();
            if lock(&self.inner.running).is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!("some jobs did not stop in time");
                return;
            }
        }
    }
}

fn exit_reason(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    format!("ended with {status}")
}

/// The executor hears every committed change: a queued job of its types wakes the
/// dispatcher; a job that ended from outside (a cancel, a budget, a time limit) has its
/// process stopped.
impl ChangeListener for Executor {
    fn committed(&self, change: &Committed) {
        match change.kind {
            ChangeKind::Created | ChangeKind::Resumed | ChangeKind::Requeued => {
                // A job of ours back in the queue while its child runs was rescued: the run
                // lost its lease. (A graceful stop's requeue comes after the run is gone.)
                if change.kind == ChangeKind::Requeued {
                    self.stop(&change.job_id, StopReason::LeaseLost);
                }
                if let Some(job) = &change.job
                    && self.runs_type(&job.job_type)
                {
                    self.inner.wake.notify_one();
                }
            }
            ChangeKind::Ended => {
                if let (Some(status), Some(running)) =
                    (change.status, lock(&self.inner.running).get(&change.job_id))
                {
                    let _ = running.stop.send(Some(StopReason::Finished(status)));
                }
            }
            ChangeKind::Started
            | ChangeKind::Progress
            | ChangeKind::Deleted
            | ChangeKind::Renewed
            | ChangeKind::Artifact
            | ChangeKind::Uncertain => {}
        }
    }
}

impl Runner for Executor {
    fn runs_type(&self, job_type: &str) -> bool {
        self.inner.specs.contains_key(job_type)
    }

    fn job_types(&self) -> Vec<String> {
        self.inner.specs.keys().cloned().collect()
    }

    fn logs(&self, job_id: &str) -> Option<JobLogs> {
        if let Some(running) = lock(&self.inner.running).get(job_id) {
            return Some(lock(&running.tails).to_logs(job_id));
        }
        if let Some(logs) = lock(&self.inner.finished_logs).get(job_id) {
            return Some(logs.clone());
        }
        skill_fleet_types::validate_job_id(job_id).ok()?;
        let path = child::work_dir(&self.inner.settings.data_dir, job_id).join("logs.json");
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
