//! Streams of a job's state: where a stream starts, the stored state as a stream event, and
//! the hub's status updates, which follow the change feed.

use skill_fleet_jobs::ListFilter;
use skill_fleet_stream::{Hub, Subscription, Update, version_event_id};
use skill_fleet_types::{Job, JobStatus, StreamEvent};

use crate::error::{CoreError, Result};
use crate::feed::{ChangeKind, ChangeListener, Committed};
use crate::service::JobService;

/// How a stream starts: a live subscription, or a finished job's final state.
pub enum StreamStart {
    /// The job can still change: follow it.
    Live(Subscription),
    /// The job is terminal: send this and end.
    Finished(StreamEvent),
}

/// The stream state of a job as stored. Its event id is the id of its `version`
/// (`version << VERSION_SHIFT`, see [`version_event_id`]): the same on every server, and
/// never below one a hub sent for an older state of the job.
pub fn event_from_job(job: &Job) -> StreamEvent {
    StreamEvent {
        job_id: job.id.clone(),
        seq: version_event_id(job.version),
        status: job.status,
        step: job.progress.step.clone(),
        progress: job.progress.progress,
        cost_usd: job.progress.cost_usd,
        metric: job.progress.metric,
        eta_seconds: job.progress.eta_seconds,
        message: stored_message(job, None),
        at: job.updated_at,
    }
}

/// What a stored job says to watchers: `given` (a change's own message) first, then a
/// failed or cancelled job's error, then its progress message.
fn stored_message(job: &Job, given: Option<String>) -> Option<String> {
    given
        .or_else(|| match job.status {
            JobStatus::Failed | JobStatus::Cancelled => job.error.clone(),
            _ => None,
        })
        .or_else(|| job.progress.message.clone())
}

impl JobService {
    /// Starts following a job: not found when unknown, its final state when terminal.
    pub async fn stream(&self, id: &str) -> Result<StreamStart> {
        if let Some(subscription) = self.hub().subscribe(id) {
            return Ok(StreamStart::Live(subscription));
        }
        let job = self.get(id).await?;
        let event = event_from_job(&job);
        if job.status.is_terminal() {
            return Ok(StreamStart::Finished(event));
        }
        self.hub().seed(id, event);
        self.hub()
            .subscribe(id)
            .map(StreamStart::Live)
            .ok_or_else(|| CoreError::Unavailable("the stream hub is closed".to_owned()))
    }

    /// Seeds the hub with the stored state of every running job (server start-up).
    pub async fn seed_running(&self) -> Result<usize> {
        let mut filter = ListFilter {
            status: Some(JobStatus::Running),
            limit: 500,
            ..ListFilter::default()
        };
        let mut seeded = 0;
        loop {
            let (_, page) = self.list(filter.clone()).await?;
            for job in &page.jobs {
                self.hub().seed(&job.id, event_from_job(job));
                seeded += 1;
            }
            match page.next_cursor {
                Some(cursor) => filter.cursor = Some(cursor),
                None => break,
            }
        }
        Ok(seeded)
    }
}

/// The hub's side of the change feed.
///
/// Every change that says its `version` teaches the hub that version
/// ([`Hub::observe_version`]), so the job's next event id is at least its id. Then:
/// - a change committed here: a job that starts, ends or is requeued has its new status
///   streamed; a resumed job's stream starts over from its stored state (everything else
///   this server streams itself, from its live set);
/// - a change another server committed (`remote`, with the row as committed there): the
///   stored progress and status are streamed at the row's version, whatever the change, unless
///   the hub already knows that version or a newer one (a stale or repeated notification);
///   a job the hub holds as finished starts over from the row, as a resumed one does.
pub(crate) struct HubStatus {
    hub: Hub,
}

impl HubStatus {
    pub(crate) fn new(hub: Hub) -> HubStatus {
        HubStatus { hub }
    }

    /// Streams a committed job's status and progress, at its version.
    fn publish(&self, job: &Job, message: Option<String>) {
        let update = Update {
            status: Some(job.status),
            message: stored_message(job, message),
            version: Some(job.version),
            ..Update::from(&job.progress)
        };
        if let Err(err) = self.hub.publish(&job.id, update) {
            tracing::debug!(job.id = %job.id, error = %err, "hub did not take a status change");
        }
    }

    /// Replaces the hub's state of a job that went from terminal back to queued; its event
    /// ids keep growing.
    fn reseed(&self, job: &Job) {
        let previous = self.hub.current(&job.id).map(|state| state.seq);
        self.hub.remove(&job.id);
        let mut event = event_from_job(job);
        if let Some(previous) = previous {
            event.seq = event.seq.max(previous.saturating_add(1));
        }
        self.hub.seed(&job.id, event);
    }

    fn local(&self, change: &Committed, job: &Job) {
        match change.kind {
            ChangeKind::Started | ChangeKind::Requeued | ChangeKind::Ended => {
                self.publish(job, change.message.clone());
            }
            ChangeKind::Resumed => self.reseed(job),
            ChangeKind::Created
            | ChangeKind::Progress
            | ChangeKind::Deleted
            | ChangeKind::Renewed
            | ChangeKind::Artifact
            | ChangeKind::Uncertain => {}
        }
    }

    fn remote(&self, change: &Committed, job: &Job) {
        match change.kind {
            ChangeKind::Started
            | ChangeKind::Progress
            | ChangeKind::Ended
            | ChangeKind::Requeued
            | ChangeKind::Resumed => {}
            // Nothing a watcher sees changed (a renewal), or nobody watches it yet (a new
            // job): the version is enough.
            ChangeKind::Created
            | ChangeKind::Renewed
            | ChangeKind::Deleted
            | ChangeKind::Artifact
            | ChangeKind::Uncertain => return,
        }
        if self
            .hub
            .version(&job.id)
            .is_some_and(|known| job.version <= known)
        {
            return;
        }
        let finished = self
            .hub
            .current(&job.id)
            .is_some_and(|state| state.status.is_terminal());
        if change.kind == ChangeKind::Resumed || finished {
            self.reseed(job);
        } else {
            self.publish(job, change.message.clone());
        }
    }
}

impl ChangeListener for HubStatus {
    fn committed(&self, change: &Committed) {
        let job = change.job.as_deref();
        // A remote change's version is checked against the hub's before it is learned.
        if let Some(job) = job
            && change.remote
        {
            self.remote(change, job);
        }
        if let Some(version) = change.version.or(job.map(|job| job.version)) {
            self.hub.observe_version(&change.job_id, version);
        }
        if let Some(job) = job
            && !change.remote
        {
            self.local(change, job);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use skill_fleet_jobs::{ClaimFilter, JobStore, Writer};
    use skill_fleet_stream::HubConfig;
    use skill_fleet_types::{CreateJob, ProgressUpdate};

    use super::*;

    fn service() -> (JobService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let store = JobStore::open(path.to_str().unwrap()).unwrap();
        let hub = Hub::new(HubConfig::default());
        (JobService::new(store, hub, 1), dir)
    }

    /// Creates the queued job `j` of type `t`.
    async fn create_j(service: &JobService) {
        let request = CreateJob {
            job_type: "t".into(),
            metadata: None,
            id: Some("j".into()),
        };
        service.create(request, "test").await.unwrap();
    }

    /// What another server's change feed delivers: the row as committed there.
    fn remote(kind: ChangeKind, job: &Job) -> Committed {
        Committed {
            remote: true,
            ..Committed::of(kind, job.clone(), None)
        }
    }

    /// The subscription's next state, failing the test after ten seconds.
    async fn next(subscription: &mut Subscription) -> Arc<skill_fleet_stream::Emitted> {
        tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
            .await
            .expect("a state within ten seconds")
            .expect("the subscription is live")
    }

    fn progress(value: f64) -> ProgressUpdate {
        ProgressUpdate {
            progress: Some(value),
            ..ProgressUpdate::default()
        }
    }

    #[tokio::test]
    async fn a_change_another_server_committed_reaches_subscribers_at_its_version() {
        let (service, _dir) = service();
        create_j(&service).await;
        // Another server claims the job and writes to it; this one hears the feed.
        let store = service.store().clone();
        let filter = ClaimFilter {
            types: Vec::new(),
            excluded: Vec::new(),
        };
        let started = store.claim(&filter, "worker").unwrap().unwrap().job;
        service.feed().emit(&remote(ChangeKind::Started, &started));
        let StreamStart::Live(mut subscription) = service.stream("j").await.unwrap() else {
            panic!("a running job is followed live");
        };
        let first = next(&mut subscription).await;
        assert_eq!(first.seq, version_event_id(started.version));
        assert_eq!(first.status, JobStatus::Running);

        let half = store
            .record_progress("j", &progress(0.5), None, &Writer::Operator)
            .unwrap();
        service.feed().emit(&remote(ChangeKind::Progress, &half));
        let state = next(&mut subscription).await;
        assert_eq!(
            (state.seq, state.progress),
            (version_event_id(half.version), 0.5)
        );

        // A stale notification (an older row) or a repeated one changes nothing.
        let current = service.hub().current("j").unwrap();
        let older = Job {
            progress: skill_fleet_types::Progress {
                progress: 0.1,
                ..half.progress.clone()
            },
            ..started.clone()
        };
        service.feed().emit(&remote(ChangeKind::Progress, &older));
        service.feed().emit(&remote(ChangeKind::Progress, &half));
        service.hub().flush();
        assert!(Arc::ptr_eq(&current, &service.hub().current("j").unwrap()));

        // The end reaches subscribers, at its version.
        let failed = store.fail("j", "boom", &Writer::Operator).unwrap();
        service.feed().emit(&remote(ChangeKind::Ended, &failed));
        let last = next(&mut subscription).await;
        assert_eq!(
            (last.seq, last.status, last.message.as_deref()),
            (
                version_event_id(failed.version),
                JobStatus::Failed,
                Some("boom")
            )
        );

        // Queued again over there: the hub starts the job over from the row, ids growing.
        let queued = store.resume("j").unwrap();
        service.feed().emit(&remote(ChangeKind::Progress, &queued));
        let again = service.hub().current("j").unwrap();
        assert_eq!(
            (again.seq, again.status),
            (version_event_id(queued.version), JobStatus::Queued)
        );
        assert!(again.seq > last.seq);
        assert_eq!(service.hub().version("j"), Some(queued.version));
    }

    #[tokio::test]
    async fn local_commits_teach_the_hub_their_versions() {
        let (service, _dir) = service();
        create_j(&service).await;
        let ack = service
            .ingest("j", progress(0.1), Writer::Unfenced)
            .await
            .unwrap();
        assert!(ack.durable, "the first event starts the job");
        let stored = service.get("j").await.unwrap();
        let first = service.hub().current("j").unwrap();
        assert_eq!(first.seq, version_event_id(stored.version));

        // A coalesced event counts up from there; its batch's version is learned, and the
        // next state jumps to it.
        service
            .ingest("j", progress(0.2), Writer::Unfenced)
            .await
            .unwrap();
        service.hub().flush();
        assert_eq!(service.hub().current("j").unwrap().seq, first.seq + 1);
        service.flush_pending().await.unwrap();
        let written = service.get("j").await.unwrap();
        assert!(written.version > stored.version);
        assert_eq!(service.hub().version("j"), Some(written.version));
        service
            .ingest("j", progress(0.3), Writer::Unfenced)
            .await
            .unwrap();
        service.hub().flush();
        assert_eq!(
            service.hub().current("j").unwrap().seq,
            version_event_id(written.version)
        );

        // The end, at its version.
        let ended = service
            .complete("j", None, None, Writer::Unfenced)
            .await
            .unwrap();
        let last = service.hub().current("j").unwrap();
        assert_eq!(
            (last.seq, last.status),
            (version_event_id(ended.version), JobStatus::Completed)
        );
    }
}
