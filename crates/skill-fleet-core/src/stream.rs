//! Streams of a job's state: where a stream starts, the stored state as a stream event, and
//! the hub's status updates, which follow the change feed.

use skill_fleet_jobs::ListFilter;
use skill_fleet_stream::{Hub, Subscription, Update};
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

/// The stream state of a job as stored. Its event id is `event_id_base + version`, so a
/// state read from the store never has an id below one the hub sent for an older state.
pub fn event_from_job(job: &Job, event_id_base: u64) -> StreamEvent {
    StreamEvent {
        job_id: job.id.clone(),
        seq: event_id_base + job.version,
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

impl JobService {
    /// The stream state of a job as stored, for jobs the hub does not hold.
    pub fn event_from_job(&self, job: &Job) -> StreamEvent {
        event_from_job(job, self.event_id_base)
    }

    /// Starts following a job: not found when unknown, its final state when terminal.
    pub async fn stream(&self, id: &str) -> Result<StreamStart> {
        if let Some(subscription) = self.hub().subscribe(id) {
            return Ok(StreamStart::Live(subscription));
        }
        let job = self.get(id).await?;
        let event = self.event_from_job(&job);
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
                self.hub().seed(&job.id, self.event_from_job(job));
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

/// The hub's side of the change feed: a job that starts, ends or is requeued has its new
/// status streamed; a resumed job's stream starts over from its stored state.
pub(crate) struct HubStatus {
    hub: Hub,
    event_id_base: u64,
}

impl HubStatus {
    pub(crate) fn new(hub: Hub, event_id_base: u64) -> HubStatus {
        HubStatus { hub, event_id_base }
    }

    fn publish_status(&self, job: &Job, message: Option<String>) {
        let update = Update {
            status: Some(job.status),
            message: message.or_else(|| job.progress.message.clone()),
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
        let mut event = event_from_job(job, self.event_id_base);
        if let Some(previous) = previous {
            event.seq = event.seq.max(previous + 1);
        }
        self.hub.seed(&job.id, event);
    }
}

impl ChangeListener for HubStatus {
    fn committed(&self, change: &Committed) {
        let Some(job) = change.job.as_deref() else {
            return;
        };
        match change.kind {
            ChangeKind::Started | ChangeKind::Requeued => {
                self.publish_status(job, change.message.clone());
            }
            ChangeKind::Ended => {
                let message = change.message.clone().or_else(|| job.error.clone());
                self.publish_status(job, message);
            }
            ChangeKind::Resumed => self.reseed(job),
            ChangeKind::Created
            | ChangeKind::Progress
            | ChangeKind::Deleted
            | ChangeKind::Renewed
            | ChangeKind::Uncertain => {}
        }
    }
}
