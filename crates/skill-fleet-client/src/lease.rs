//! [`Lease`]: a claimed job's lease, kept alive by a background heartbeat thread, and the
//! worker writes that go through it (fenced, and refused locally once the lease is gone).
//!
//! The thread heartbeats every `heartbeat_interval_seconds` of the claim. It stops on the
//! server's `stop: true` (the job was cancelled: [`LeaseState::Stopped`]) and on a 409
//! `lease_lost` ([`LeaseState::Lost`]); it retries transient failures (the server cannot be
//! reached, a 5xx) with [`Backoff`]. It also fences itself: when no heartbeat has been
//! acknowledged for `lease_ttl_seconds - heartbeat_interval_seconds`, the server may be about
//! to rescue the job, so the lease counts as lost at once, without waiting for the server to
//! say so. That deadline is checked by every reader too ([`Lease::state`]), so a heartbeat
//! stuck in a slow request cannot keep a lost lease looking held.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skill_fleet_types::{
    Artifact, Backoff, ClaimedJob, CompleteRequest, ErrorCode, EventAck, Fence, HeartbeatAck, Job,
    JobStatus, ProgressUpdate,
};

use crate::client::Client;
use crate::error::ClientError;

/// The heartbeat interval used when a claim's answer gives none that can be used (the
/// server's default).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// The lease ttl used when a claim's answer gives none that can be used (the server's
/// default).
const DEFAULT_TTL: Duration = Duration::from_secs(90);

/// How long dropping a [`Lease`] waits for a heartbeat in flight before leaving the thread
/// to end on its own (it sends nothing more either way).
pub const LEASE_DROP_WAIT: Duration = Duration::from_secs(2);

/// What a [`Lease`] knows about its hold on the job. Once it is not [`LeaseState::Held`],
/// it never is again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is held: the last heartbeat was acknowledged in time.
    Held,
    /// The job ended from outside (a user's cancel, a budget, a time limit): stop the run
    /// and report nothing more, not even complete or fail.
    Stopped {
        /// The job's status and, when it says, why: `cancelled: not needed`.
        reason: String,
    },
    /// This attempt no longer owns the job: the server said `lease_lost` (the job was
    /// rescued, or another attempt holds it), or no heartbeat was acknowledged for
    /// `ttl - interval`. Stop the run; the server hands the job to another worker.
    Lost {
        /// Why: the server's message, or `no heartbeat acknowledged for N s`.
        reason: String,
    },
    /// This lease's own complete or fail ended the job.
    Released {
        /// The job's status after it: `completed` or `failed`.
        status: JobStatus,
    },
}

impl LeaseState {
    /// True while the lease is held.
    pub fn is_held(&self) -> bool {
        matches!(self, LeaseState::Held)
    }
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseState::Held => f.write_str("held"),
            LeaseState::Stopped { reason } => write!(f, "stopped ({reason})"),
            LeaseState::Lost { reason } => write!(f, "lost ({reason})"),
            LeaseState::Released { status } => write!(f, "released (the job is {status})"),
        }
    }
}

/// The lease of a claimed job, renewed by a background thread for as long as the `Lease`
/// lives and the server lets it.
///
/// Make it right after the claim: its self-fence counts from that moment. Send every write
/// about the job through it ([`Lease::post_event`], [`Lease::upload_artifact`],
/// [`Lease::complete`], [`Lease::fail`]): each carries the claim's fence, and once the
/// lease is not held each is refused locally with [`ClientError::LeaseNotHeld`]. Check [`Lease::is_held`] between units of work and
/// stop when it turns false. Dropping the lease stops the heartbeats; a job neither
/// completed nor failed then goes back to the queue when its lease runs out.
///
/// `Lease` is `Send` and `Sync`: the work may run on other threads that share it.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    job: Job,
    fence: Fence,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How often to heartbeat and when to give up.
#[derive(Debug, Clone, Copy)]
struct Timing {
    interval: Duration,
    /// No acknowledged heartbeat for this long: the lease counts as lost.
    fence_after: Duration,
}

impl Timing {
    fn of(claimed: &ClaimedJob) -> Timing {
        let seconds = |value: f64, default: Duration| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .unwrap_or(default)
        };
        let interval = seconds(claimed.heartbeat_interval_seconds, DEFAULT_INTERVAL);
        let ttl = seconds(claimed.lease_ttl_seconds, DEFAULT_TTL);
        let fence_after = ttl
            .checked_sub(interval)
            .filter(|d| !d.is_zero())
            .unwrap_or(ttl / 2);
        Timing {
            interval,
            fence_after,
        }
    }
}

/// What the heartbeat thread and the lease's users share.
#[derive(Debug)]
struct Shared {
    job_id: String,
    timing: Timing,
    inner: Mutex<Inner>,
    /// Notified on every change of `inner` that a waiter may care about.
    changed: Condvar,
}

#[derive(Debug)]
struct Inner {
    state: LeaseState,
    /// When the last acknowledged heartbeat was sent (or the lease was made).
    last_ack: Instant,
    /// Heartbeats the server acknowledged.
    acknowledged: u64,
    /// The last transient failure since the last acknowledged heartbeat.
    last_error: Option<String>,
    /// The lease was dropped: the thread ends.
    stop: bool,
    /// The thread has ended.
    exited: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave `Inner` half-written: every change is one field set.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the self-fence fires unless a heartbeat is acknowledged first.
    fn deadline(&self, inner: &Inner) -> Instant {
        inner.last_ack + self.timing.fence_after
    }

    /// Moves a held lease to `state`; a lease that is not held stays as it is.
    fn settle(&self, inner: &mut Inner, state: LeaseState) {
        if inner.state.is_held() {
            inner.state = state;
            self.changed.notify_all();
        }
    }

    /// The self-fence: a held lease whose deadline has passed is lost.
    fn fence_if_due(&self, inner: &mut Inner) {
        if inner.state.is_held() && Instant::now() >= self.deadline(inner) {
            let mut reason = format!(
                "no heartbeat acknowledged for {} s",
                seconds(self.timing.fence_after)
            );
            if let Some(error) = &inner.last_error {
                reason.push_str(&format!(" (last error: {error})"));
            }
            self.settle(inner, LeaseState::Lost { reason });
        }
    }

    /// The current state, after applying the self-fence.
    fn state(&self) -> LeaseState {
        let mut inner = self.lock();
        self.fence_if_due(&mut inner);
        inner.state.clone()
    }
}

/// Marks the thread as ended when it returns or unwinds.
struct Exited(Arc<Shared>);

impl Drop for Exited {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.exited = true;
        self.0.changed.notify_all();
    }
}

impl Lease {
    /// Takes over the lease `claimed` hands out and starts heartbeating it through `client`
    /// every `heartbeat_interval_seconds`.
    pub fn new(client: Client, claimed: ClaimedJob) -> Result<Lease, ClientError> {
        let fence = claimed.fence();
        let timing = Timing::of(&claimed);
        let job = claimed.job;
        let shared = Arc::new(Shared {
            job_id: job.id.clone(),
            timing,
            inner: Mutex::new(Inner {
                state: LeaseState::Held,
                last_ack: Instant::now(),
                acknowledged: 0,
                last_error: None,
                stop: false,
                exited: false,
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let client = client.clone();
            let fence = fence.clone();
            std::thread::Builder::new()
                .name(format!("lease-{}", job.id))
                .spawn(move || heartbeat_loop(shared, client, fence))
                .map_err(|source| ClientError::HeartbeatThread {
                    job_id: job.id.clone(),
                    source,
                })?
        };
        Ok(Lease {
            client,
            job,
            fence,
            shared,
            thread: Some(thread),
        })
    }

    /// The job as the claim returned it (`running`, with its `attempt` and the previous
    /// attempt's `checkpoint`).
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.job.id
    }

    /// The claim's fence, which every write of this lease carries.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// What the lease knows now.
    pub fn state(&self) -> LeaseState {
        self.shared.state()
    }

    /// True while the lease is held: keep working.
    pub fn is_held(&self) -> bool {
        self.state().is_held()
    }

    /// How many heartbeats the server has acknowledged.
    pub fn heartbeats(&self) -> u64 {
        self.shared.lock().acknowledged
    }

    /// Blocks until the lease is no longer held or `timeout` has passed, and returns the
    /// state then: a worker whose work runs elsewhere can wait on its lease instead of
    /// polling it.
    pub fn wait_while_held(&self, timeout: Duration) -> LeaseState {
        let until = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            self.shared.fence_if_due(&mut inner);
            let now = Instant::now();
            if !inner.state.is_held() || now >= until {
                return inner.state.clone();
            }
            let wake = until.min(self.shared.deadline(&inner));
            inner = self
                .shared
                .changed
                .wait_timeout(inner, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// `POST /api/v1/jobs/{id}/events`, fenced. Refused locally once the lease is not held.
    pub fn post_event(&self, update: &ProgressUpdate) -> Result<EventAck, ClientError> {
        self.ensure_held()?;
        let result = self
            .client
            .post_event(&self.job.id, update, Some(&self.fence));
        match &result {
            // The event itself ended the job (its cost crossed the budget).
            Ok(ack) if ack.status.is_terminal() => {
                let mut inner = self.shared.lock();
                let reason = ack.status.to_string();
                self.shared
                    .settle(&mut inner, LeaseState::Stopped { reason });
            }
            Ok(_) => {}
            Err(err) => self.observe(err),
        }
        result
    }

    /// `POST /api/v1/jobs/{id}/complete`, fenced; the lease is then released. Refused
    /// locally once the lease is not held. After an error that is not the server's refusal
    /// (a timeout, an unreachable server), calling it again is safe.
    pub fn complete(&self, request: &CompleteRequest) -> Result<Job, ClientError> {
        self.ensure_held()?;
        let result = self
            .client
            .complete(&self.job.id, request, Some(&self.fence));
        self.finish(result)
    }

    /// `POST /api/v1/jobs/{id}/fail`, fenced; the lease is then released. Refused locally
    /// once the lease is not held.
    pub fn fail(&self, error: &str) -> Result<Job, ClientError> {
        self.ensure_held()?;
        let result = self.client.fail(&self.job.id, error, Some(&self.fence));
        self.finish(result)
    }

    /// `PUT /api/v1/jobs/{id}/artifacts/{name}` from `body`, fenced (see
    /// [`Client::upload_artifact`]). Refused locally once the lease is not held; a 409
    /// `lease_lost` loses the lease, as any fenced write does.
    pub fn upload_artifact(
        &self,
        name: &str,
        body: &mut dyn Read,
        content_type: Option<&str>,
    ) -> Result<Artifact, ClientError> {
        self.ensure_held()?;
        let result =
            self.client
                .upload_artifact(&self.job.id, name, body, content_type, Some(&self.fence));
        if let Err(err) = &result {
            self.observe(err);
        }
        result
    }

    /// Like [`Lease::upload_artifact`], from the file at `path` (see
    /// [`Client::upload_artifact_file`]).
    pub fn upload_artifact_file(
        &self,
        name: &str,
        path: &Path,
        content_type: Option<&str>,
    ) -> Result<Artifact, ClientError> {
        self.ensure_held()?;
        let result = self.client.upload_artifact_file(
            &self.job.id,
            name,
            path,
            content_type,
            Some(&self.fence),
        );
        if let Err(err) = &result {
            self.observe(err);
        }
        result
    }

    fn ensure_held(&self) -> Result<(), ClientError> {
        match self.state() {
            LeaseState::Held => Ok(()),
            state => Err(ClientError::LeaseNotHeld {
                job_id: self.job.id.clone(),
                state,
            }),
        }
    }

    /// After a complete or fail: released when the server took it, else as [`Lease::observe`].
    fn finish(&self, result: Result<Job, ClientError>) -> Result<Job, ClientError> {
        match &result {
            Ok(job) => {
                let mut inner = self.shared.lock();
                // The server's word wins over a heartbeat that saw the job end a moment
                // before this answer came back: it ended because of this write.
                if matches!(inner.state, LeaseState::Held | LeaseState::Stopped { .. }) {
                    inner.state = LeaseState::Released { status: job.status };
                }
                inner.stop = true;
                self.shared.changed.notify_all();
            }
            Err(err) => self.observe(err),
        }
        result
    }

    /// What a refused write says about the lease: `lease_lost` loses it; an invalid
    /// transition means the job has ended from outside.
    fn observe(&self, err: &ClientError) {
        let ClientError::Api { code, message, .. } = err else {
            return;
        };
        let state = match code {
            ErrorCode::LeaseLost => LeaseState::Lost {
                reason: message.clone(),
            },
            ErrorCode::InvalidTransition => LeaseState::Stopped {
                reason: message.clone(),
            },
            _ => return,
        };
        let mut inner = self.shared.lock();
        self.shared.settle(&mut inner, state);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.stop = true;
        self.shared.changed.notify_all();
        let until = Instant::now() + LEASE_DROP_WAIT;
        while !inner.exited {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A heartbeat is stuck in a slow request: leave the thread to finish it.
                return;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(inner);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The heartbeat thread: beat every interval until the lease is not held or is dropped.
fn heartbeat_loop(shared: Arc<Shared>, client: Client, fence: Fence) {
    let _exited = Exited(Arc::clone(&shared));
    let interval = shared.timing.interval;
    let mut backoff = Backoff::new((interval / 4).min(Duration::from_millis(250)), interval);
    let mut next = Instant::now() + interval;
    loop {
        {
            let mut inner = shared.lock();
            loop {
                shared.fence_if_due(&mut inner);
                if inner.stop || !inner.state.is_held() {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                let wake = next.min(shared.deadline(&inner));
                inner = shared
                    .changed
                    .wait_timeout(inner, wake.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let sent = Instant::now();
        let result = client.heartbeat(&shared.job_id, &fence);
        let mut inner = shared.lock();
        match beat_outcome(result) {
            Outcome::Renewed => {
                inner.last_ack = inner.last_ack.max(sent);
                inner.acknowledged += 1;
                inner.last_error = None;
                backoff.reset();
                next = sent + interval;
                shared.changed.notify_all();
            }
            Outcome::Retry(error) => {
                inner.last_error = Some(error);
                next = Instant::now() + backoff.next_delay();
            }
            Outcome::Ends(state) => {
                shared.settle(&mut inner, state);
                return;
            }
        }
    }
}

/// What one heartbeat's answer means for the lease.
enum Outcome {
    Renewed,
    /// A transient failure: try again after a back-off.
    Retry(String),
    Ends(LeaseState),
}

fn beat_outcome(result: Result<HeartbeatAck, ClientError>) -> Outcome {
    match result {
        Ok(ack) if ack.stop => {
            let reason = match ack.reason.filter(|reason| !reason.is_empty()) {
                Some(reason) => format!("{}: {reason}", ack.status),
                None => ack.status.to_string(),
            };
            Outcome::Ends(LeaseState::Stopped { reason })
        }
        Ok(_) => Outcome::Renewed,
        Err(ClientError::Api {
            code: ErrorCode::LeaseLost,
            message,
            ..
        }) => Outcome::Ends(LeaseState::Lost { reason: message }),
        Err(err) if err.is_transient() => Outcome::Retry(err.to_string()),
        // Refused for good (no such job, a wrong token): the lease cannot be renewed.
        Err(err) => Outcome::Ends(LeaseState::Lost {
            reason: format!("heartbeat refused: {err}"),
        }),
    }
}

/// Seconds for a message: `75`, `1.25`.
fn seconds(duration: Duration) -> String {
    let text = format!("{:.3}", duration.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    fn claimed(interval: f64, ttl: f64) -> ClaimedJob {
        serde_json::from_value(serde_json::json!({
            "id": "j1", "type": "sweep", "status": "running",
            "progress": {"progress": 0.0, "step": null, "message": null, "cost_usd": 0.0,
                         "metric": null, "eta_seconds": null},
            "checkpoint": null, "attempt": 1, "lease": null, "result": null,
            "result_path": null, "error": null, "source": "api", "metadata": {},
            "created_at": "2025-01-01T00:00:00Z", "started_at": "2025-01-01T00:00:00Z",
            "completed_at": null, "updated_at": "2025-01-01T00:00:00Z", "version": 1,
            "lease_token": "t", "lease_ttl_seconds": ttl,
            "heartbeat_interval_seconds": interval,
        }))
        .unwrap()
    }

    #[test]
    fn a_lease_can_be_shared_with_the_threads_doing_the_work() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Lease>();
    }

    #[test]
    fn the_self_fence_fires_an_interval_before_the_ttl() {
        let timing = Timing::of(&claimed(15.0, 90.0));
        assert_eq!(timing.interval, Duration::from_secs(15));
        assert_eq!(timing.fence_after, Duration::from_secs(75));
        // Nonsense from the wire falls back to the defaults, never to a zero interval.
        let timing = Timing::of(&claimed(0.0, -1.0));
        assert_eq!(timing.interval, DEFAULT_INTERVAL);
        assert_eq!(timing.fence_after, DEFAULT_TTL - DEFAULT_INTERVAL);
        let timing = Timing::of(&claimed(10.0, 10.0));
        assert_eq!(timing.fence_after, Duration::from_secs(5));
        assert_eq!(seconds(Duration::from_millis(1250)), "1.25");
        assert_eq!(seconds(Duration::from_secs(75)), "75");
    }

    #[test]
    fn heartbeat_answers_decide_the_state() {
        let ack = |stop: bool, reason: Option<&str>| HeartbeatAck {
            job_id: "j1".into(),
            attempt: 1,
            status: if stop {
                JobStatus::Cancelled
            } else {
                JobStatus::Running
            },
            stop,
            reason: reason.map(str::to_owned),
            lease_expires_at: None,
        };
        assert!(matches!(
            beat_outcome(Ok(ack(false, None))),
            Outcome::Renewed
        ));
        match beat_outcome(Ok(ack(true, Some("not needed")))) {
            Outcome::Ends(LeaseState::Stopped { reason }) => {
                assert_eq!(reason, "cancelled: not needed");
            }
            _ => panic!("a stop ends the lease"),
        }
        let api = |status: u16, code: ErrorCode| ClientError::Api {
            status,
            code,
            message: "m".into(),
            url: "u".into(),
        };
        assert!(matches!(
            beat_outcome(Err(api(409, ErrorCode::LeaseLost))),
            Outcome::Ends(LeaseState::Lost { .. })
        ));
        assert!(matches!(
            beat_outcome(Err(api(503, ErrorCode::Unavailable))),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            beat_outcome(Err(ClientError::Unreachable {
                url: "u".into(),
                reason: "connection refused".into()
            })),
            Outcome::Retry(_)
        ));
        match beat_outcome(Err(api(404, ErrorCode::NotFound))) {
            Outcome::Ends(LeaseState::Lost { reason }) => {
                assert!(reason.starts_with("heartbeat refused: "), "{reason}");
            }
            _ => panic!("a 404 ends the lease"),
        }
    }
}
