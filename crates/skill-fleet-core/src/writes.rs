//! The job lifecycle writes: create, claim, progress, end (complete, fail, cancel), requeue,
//! resume and prune. Each goes through [`JobService::commit`] (or, for jobs that are not
//! live, straight to the store and then the feed), so what follows a write is said once.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use skill_fleet_jobs::{
    Action, ClaimFilter, Claimed, Created, HeldLease, JobStore, NewJob, ProgressWrite,
    RescuePolicy, RescueReport, RescueScope, StoreError, Writer, admits,
};
use skill_fleet_stream::Update;
use skill_fleet_types::{
    CreateJob, DEFAULT_WORKER_NAME, EventAck, Fence, HeartbeatAck, Job, JobLimits, JobStatus,
    ProgressUpdate, RESULT_ARTIFACT_PREFIX, result_artifact, validate_worker_name,
};

use crate::error::{CoreError, Result};
use crate::feed::{ChangeKind, Committed};
use crate::limits::{Budget, check_budget};
use crate::live::LiveEntry;
use crate::service::{JobService, PendingProgress};

/// How long after a storage fault heartbeats are written before their answer (then again
/// from memory, renewed with the next flush).
pub const DURABLE_HEARTBEATS_AFTER_FAULT: Duration = Duration::from_secs(2);

/// Who takes a queued job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// An external worker (`POST /jobs/claim`): never handed a type the server runs itself.
    Worker,
    /// The server's own runner (the executor), for the types it runs.
    Runner,
}

impl JobService {
    /// Creates a job (idempotent on the same id and body).
    pub async fn create(&self, request: CreateJob, source: &str) -> Result<(Job, Created)> {
        if let Some(metadata) = &request.metadata {
            JobLimits::from_metadata(metadata)?;
        }
        let new = NewJob::from_request(request, source);
        let (job, created) = self.blocking(move |store| store.create(&new)).await?;
        if created == Created::New {
            self.emit(Committed::of(ChangeKind::Created, job.clone(), None));
        }
        Ok((job, created))
    }

    /// Takes the oldest queued job of these types (any type when empty) and starts it under
    /// a lease owned by `worker` (a worker's claim; `worker` by default) or by this server
    /// run (the runner's). A worker is never handed a type the in-process runner executes.
    pub async fn claim(
        &self,
        claimant: Claimant,
        types: Vec<String>,
        worker: Option<String>,
    ) -> Result<Option<Claimed>> {
        let owner = match claimant {
            Claimant::Runner => self.server_owner().to_owned(),
            Claimant::Worker => {
                let name = worker.unwrap_or_else(|| DEFAULT_WORKER_NAME.to_owned());
                validate_worker_name(&name)?;
                name
            }
        };
        let excluded = match (claimant, self.runner()) {
            (Claimant::Worker, Some(runner)) => {
                if types.iter().any(|t| runner.runs_type(t)) {
                    return Err(CoreError::ClaimsServerType { types });
                }
                if types.is_empty() {
                    runner.job_types()
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        };
        let claimed = self
            .blocking(move |store| store.claim(&ClaimFilter { types, excluded }, &owner))
            .await?;
        if let Some(claimed) = &claimed {
            self.live.track(&claimed.job, Some(claimed.lease.clone()));
            self.emit(Committed::of(
                ChangeKind::Started,
                claimed.job.clone(),
                None,
            ));
        }
        Ok(claimed)
    }

    /// Progress from a runner: fenced, merged, streamed, and persisted (durably now, or
    /// coalesced). `writer` says who sends it; an event its lease does not admit is
    /// [`StoreError::LeaseLost`] and changes nothing.
    pub async fn ingest(
        &self,
        id: &str,
        update: ProgressUpdate,
        writer: Writer,
    ) -> Result<EventAck> {
        update.validate()?;
        let entry = self.live_entry(id, &writer).await?;
        let mut live = entry.lock().await;
        live.admits(id, &writer)?;
        if live.status.is_terminal() {
            self.live.forget(id);
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                from: live.status,
                action: Action::Progress,
            }
            .into());
        }
        let starts = live.status == JobStatus::Queued;
        let step_changed = update.step.is_some() && update.step != live.progress.step;
        let durable =
            live.status == JobStatus::Queued || step_changed || update.checkpoint.is_some();
        // Kept to undo the merge if the durable write fails: an event waiting on this job's
        // lock must not see a step that was never saved.
        let before = durable.then(|| (live.progress.clone(), live.warned));
        // The version a durable write committed the state at (the hub's event id for it).
        let mut version = None;
        live.progress.apply(update.patch());
        let verdict = check_budget(&mut live);
        let mut message = update.message.clone();
        if let Budget::Warn(warning) = &verdict {
            live.progress.message = Some(warning.clone());
            message = Some(warning.clone());
        }
        if durable {
            let full = ProgressUpdate {
                checkpoint: update.checkpoint.clone(),
                ..ProgressUpdate::from(&live.progress)
            };
            let eta = self.hub().current(id).and_then(|state| state.eta_seconds);
            let durable_writer = writer.clone();
            let written = self
                .commit(
                    id,
                    Some(&mut live),
                    PendingProgress::Supersede,
                    ChangeKind::Progress,
                    None,
                    move |store, id| store.record_progress(id, &full, eta, &durable_writer),
                )
                .await;
            if let Ok(job) = &written {
                version = Some(job.version);
            }
            match written {
                Ok(job) if starts => {
                    // A token-less event started the job: an open lease, which token-less
                    // writes keep (the live set needs no token to admit them).
                    live.attempt = job.attempt;
                    live.lease = job.lease.as_ref().map(|lease| HeldLease {
                        attempt: job.attempt,
                        token: String::new(),
                        owner: lease.owner.clone(),
                        open: true,
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    // Whatever the database says now is the truth; forget the cached state.
                    self.live.forget(id);
                    if let Some((progress, warned)) = before {
                        live.progress = progress;
                        live.warned = warned;
                    }
                    return Err(err);
                }
            }
        } else {
            self.live.set_pending(ProgressWrite {
                job_id: id.to_owned(),
                progress: live.progress.clone(),
                checkpoint: None,
                writer,
            });
        }
        self.hub().publish(
            id,
            Update {
                status: Some(live.status),
                message,
                version,
                ..Update::from(&update)
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

    /// The live entry of a job that can take progress, made from the store when this server
    /// has not seen it yet. A job that has ended is refused, saying why, so its worker stops;
    /// a writer that does not own it hears that first (`lease_lost`), as from a live job.
    async fn live_entry(&self, id: &str, writer: &Writer) -> Result<LiveEntry> {
        if let Some(entry) = self.live.get(id) {
            return Ok(entry);
        }
        let job_id = id.to_owned();
        let (job, lease) = self
            .blocking(move |store| store.get_with_lease(&job_id))
            .await?;
        if job.status.is_terminal() {
            admits(id, job.status, job.attempt, lease.as_ref(), writer)?;
            return Err(CoreError::Ended {
                id: job.id,
                status: job.status,
                error: job.error,
            });
        }
        Ok(self.live.get_or_track(&job, lease))
    }

    /// Completes a running job, if `writer` owns it. The owner's retry of a complete that
    /// landed returns the job as it is.
    pub async fn complete(
        &self,
        id: &str,
        result: Option<Value>,
        result_path: Option<String>,
        writer: Writer,
    ) -> Result<Job> {
        self.leave_live(id, ChangeKind::Ended, None, move |store, id| {
            // A result that names an artifact names one that is stored (artifacts of a
            // running job are only ever added or replaced, so it is still there when the
            // complete commits).
            if let Some(name) = result_path.as_deref().and_then(result_artifact)
                && !store.has_artifact(id, name)?
            {
                return Err(StoreError::InvalidInput(format!(
                    "result_path `{RESULT_ARTIFACT_PREFIX}{name}` names no stored artifact of job `{id}`: upload it first"
                )));
            }
            store.complete(id, result, result_path, &writer)
        })
        .await
    }

    /// Fails a queued or running job, if `writer` may write to it.
    pub async fn fail(&self, id: &str, error: String, writer: Writer) -> Result<Job> {
        let message = Some(error.clone());
        self.leave_live(id, ChangeKind::Ended, message, move |store, id| {
            store.fail(id, &error, &writer)
        })
        .await
    }

    /// A heartbeat of the attempt `fence` names. Checked against the job's live lease and
    /// answered from memory; the renewal is written with the next flush (fenced again in
    /// its `UPDATE`), like coalesced progress: heartbeats cost no transaction each. The
    /// answer says whether the job ended from outside (a cancel, a budget, a time limit),
    /// which is how a remote worker hears that it must stop.
    ///
    /// While the database is failing (a store call failed for an outage within the last
    /// [`DURABLE_HEARTBEATS_AFTER_FAULT`]), heartbeats are written before the answer instead,
    /// so a worker hears the outage (503) rather than a renewal the server cannot save.
    pub async fn heartbeat(&self, id: &str, fence: Fence) -> Result<HeartbeatAck> {
        if self.faulted_within(DURABLE_HEARTBEATS_AFTER_FAULT) {
            return self.heartbeat_now(id, fence).await;
        }
        let writer = Writer::Owner(fence.clone());
        let entry = match self.live.get(id) {
            Some(entry) => entry,
            None => {
                let job_id = id.to_owned();
                let (job, lease) = self
                    .blocking(move |store| store.get_with_lease(&job_id))
                    .await?;
                admits(id, job.status, job.attempt, lease.as_ref(), &writer)?;
                if job.status.is_terminal() {
                    return Ok(stop_answer(job));
                }
                self.live.get_or_track(&job, lease)
            }
        };
        let live = entry.lock().await;
        live.admits(id, &writer)?;
        if live.status != JobStatus::Running {
            drop(live);
            self.live.forget(id);
            let job = self.get(id).await?;
            return Ok(stop_answer(job));
        }
        self.live.set_renewal(id, fence);
        let ttl = chrono::Duration::from_std(self.lease_ttl()).unwrap_or(chrono::Duration::MAX);
        Ok(HeartbeatAck {
            job_id: id.to_owned(),
            attempt: live.attempt,
            status: live.status,
            stop: false,
            reason: None,
            lease_expires_at: Utc::now().checked_add_signed(ttl),
        })
    }

    /// A heartbeat written in its own transaction before the answer.
    async fn heartbeat_now(&self, id: &str, fence: Fence) -> Result<HeartbeatAck> {
        let job_id = id.to_owned();
        let beat = self
            .blocking(move |store| store.heartbeat(&job_id, &fence))
            .await?;
        if !beat.renewed {
            self.live.forget(id);
            return Ok(stop_answer(beat.job));
        }
        self.emit(Committed::of(ChangeKind::Renewed, beat.job.clone(), None));
        Ok(HeartbeatAck {
            job_id: beat.job.id,
            attempt: beat.job.attempt,
            status: beat.job.status,
            stop: false,
            reason: None,
            lease_expires_at: beat.job.lease.map(|lease| lease.expires_at),
        })
    }

    /// Takes back the running jobs `scope` names (expired leases; at start-up, an earlier
    /// run's): each goes back to the queue or fails as `policy` says.
    ///
    /// The sweep first takes hold of each candidate's live entry, so no event or heartbeat
    /// of its owner can be accepted meanwhile, and writes what the owner sent before (its
    /// coalesced progress and renewal, which renew the lease): a write the server
    /// acknowledged is never dropped by a rescue that came after it. The store then re-reads
    /// the expiry inside its own transaction; a rescued job's entry is set to what the
    /// store says (so a write waiting on it is refused) and leaves the live set.
    pub async fn rescue(&self, scope: RescueScope, policy: RescuePolicy) -> Result<RescueReport> {
        let candidates = {
            let scope = scope.clone();
            self.blocking(move |store| store.rescue_candidates(&scope))
                .await?
        };
        if candidates.is_empty() {
            return Ok(RescueReport::default());
        }
        let mut held = Vec::with_capacity(candidates.len());
        // Entries this sweep made only to hold them: made from a read that may be stale by
        // now (on a shared database another server may rescue the job first), so they must
        // not outlive the sweep.
        let mut made = Vec::new();
        for (job, lease) in &candidates {
            if self.live.get(&job.id).is_none() {
                made.push(job.id.clone());
            }
            let entry = self.live.get_or_track(job, lease.clone());
            held.push((job.id.clone(), entry.lock_owned().await));
        }
        let ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
        let pending: Vec<ProgressWrite> = ids
            .iter()
            .filter_map(|id| self.live.take_pending(id))
            .collect();
        let renewals: Vec<(String, Fence)> = ids
            .iter()
            .filter_map(|id| self.live.take_renewal(id).map(|fence| (id.clone(), fence)))
            .collect();
        let forget_made = |live: &crate::live::LiveSet| {
            for id in &made {
                live.forget(id);
            }
        };
        if !pending.is_empty() || !renewals.is_empty() {
            let (writes, beats) = (pending.clone(), renewals.clone());
            let written = self
                .blocking(move |store| {
                    store.write_progress_batch(&writes)?;
                    store.renew_leases(&beats)
                })
                .await;
            for id in pending
                .iter()
                .map(|w| &w.job_id)
                .chain(renewals.iter().map(|(id, _)| id))
            {
                self.emit(Committed::bare(ChangeKind::Progress, id));
            }
            if let Err(err) = written {
                self.live.restore_pending(pending);
                self.live.restore_renewals(renewals);
                forget_made(&self.live);
                return Err(err);
            }
        }
        let report = {
            let ids = ids.clone();
            self.blocking(move |store| store.rescue_these(&scope, &policy, &ids))
                .await
        };
        let report = match report {
            Ok(report) => report,
            Err(err) => {
                forget_made(&self.live);
                return Err(err);
            }
        };
        for (rescued, kind) in report
            .requeued
            .iter()
            .map(|r| (r, ChangeKind::Requeued))
            .chain(report.failed.iter().map(|r| (r, ChangeKind::Ended)))
        {
            let id = &rescued.job.id;
            if let Some((_, live)) = held.iter_mut().find(|(held_id, _)| held_id == id) {
                live.status = rescued.job.status;
                live.attempt = rescued.job.attempt;
                live.lease = None;
            }
            self.live.forget(id);
            self.emit(Committed::of(
                kind,
                rescued.job.clone(),
                Some(rescued.message.clone()),
            ));
        }
        // Candidates that were not rescued (renewed in time, or rescued by another server
        // first) stay live as they were; entries made for the sweep go.
        forget_made(&self.live);
        drop(held);
        Ok(report)
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<Job> {
        self.cancel_by(id, reason, None).await
    }

    /// [`JobService::cancel`], its history row naming `actor` (who asked: a token's name).
    pub async fn cancel_by(
        &self,
        id: &str,
        reason: Option<String>,
        actor: Option<String>,
    ) -> Result<Job> {
        self.leave_live(id, ChangeKind::Ended, reason.clone(), move |store, id| {
            store.cancel_by(id, reason.as_deref(), actor.as_deref())
        })
        .await
    }

    /// Puts a running job back in the queue (graceful shutdown of a resumable job), if
    /// `writer` owns it.
    pub async fn requeue(&self, id: &str, writer: Writer) -> Result<Job> {
        let message = Some("requeued: server stopping".to_owned());
        self.leave_live(id, ChangeKind::Requeued, message, move |store, id| {
            store.requeue(id, &writer)
        })
        .await
    }

    /// Takes a job out of the live set through `transition`: waits for an event being
    /// applied to it, writes its pending progress, then the transition. Shared by the
    /// terminal transitions and the shutdown requeue.
    async fn leave_live<F>(
        &self,
        id: &str,
        kind: ChangeKind,
        message: Option<String>,
        transition: F,
    ) -> Result<Job>
    where
        F: FnOnce(&JobStore, &str) -> Result<Job, StoreError> + Send + 'static,
    {
        let entry = self.live.get(id);
        let mut guard = match &entry {
            Some(entry) => Some(entry.lock().await),
            None => None,
        };
        let job = self
            .commit(
                id,
                guard.as_deref_mut(),
                PendingProgress::WriteFirst,
                kind,
                message,
                transition,
            )
            .await?;
        self.live.forget(id);
        Ok(job)
    }

    /// Puts a failed or cancelled job back in the queue, keeping its checkpoint.
    pub async fn resume(&self, id: &str) -> Result<Job> {
        self.resume_by(id, None).await
    }

    /// [`JobService::resume`], its `resumed` history row naming `actor` (who asked).
    pub async fn resume_by(&self, id: &str, actor: Option<String>) -> Result<Job> {
        let job_id = id.to_owned();
        let job = self
            .blocking(move |store| store.resume_by(&job_id, actor.as_deref()))
            .await?;
        self.emit(Committed::of(ChangeKind::Resumed, job.clone(), None));
        Ok(job)
    }

    /// Deletes finished jobs that ended more than `older_than` ago, with their history.
    /// The caller removes their files.
    pub async fn prune(
        &self,
        older_than: chrono::Duration,
    ) -> Result<skill_fleet_jobs::PruneReport> {
        let report = self.blocking(move |store| store.prune(older_than)).await?;
        for id in &report.ids {
            self.emit(Committed::bare(ChangeKind::Deleted, id));
        }
        Ok(report)
    }
}

/// The heartbeat answer for a job that ended from outside: stop, and why.
fn stop_answer(job: Job) -> HeartbeatAck {
    HeartbeatAck {
        job_id: job.id,
        attempt: job.attempt,
        status: job.status,
        stop: true,
        reason: job.error,
        lease_expires_at: None,
    }
}
