//! The job record as the API returns it, and its status.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lease::JobLease;
use crate::progress::Progress;

/// Where a job is in its life: `queued → running → completed / failed / cancelled`.
///
/// Which moves between these are allowed is decided in one place, the job store
/// (`skill-fleet-jobs`); this type only names the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for the executor or an external worker.
    Queued,
    /// Started; progress may arrive.
    Running,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error, or interrupted (terminal).
    Failed,
    /// Stopped on request or by a budget / time limit (terminal).
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The lowercase name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// True once the job can no longer change on its own (completed, failed, cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}` (expected queued, running, completed, failed or cancelled)")]
pub struct ParseStatusError(pub String);

impl FromStr for JobStatus {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

/// One job as `GET /api/v1/jobs/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Client-supplied or generated id, `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// What kind of job this is (`optimization`, `evaluation`, …).
    #[serde(rename = "type")]
    pub job_type: String,
    /// Where the job is in its life.
    pub status: JobStatus,
    /// The latest progress reported.
    pub progress: Progress,
    /// Opaque JSON the runner reported last; handed back on resume.
    pub checkpoint: Option<Value>,
    /// How many times the job has been started.
    pub attempt: u32,
    /// Who owns the job while it runs and until when; `None` unless `running`.
    pub lease: Option<JobLease>,
    /// The job's JSON result, once completed.
    pub result: Option<Value>,
    /// Where the runner wrote its result, if it said.
    pub result_path: Option<String>,
    /// Why the job failed or was stopped.
    pub error: Option<String>,
    /// Who created the job: `api`, `cli`, `memory_migration`, …
    pub source: String,
    /// The JSON object supplied at creation.
    pub metadata: Map<String, Value>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the current run started. Kept when a running job is requeued by crash
    /// recovery or a graceful shutdown (so time limits count server downtime); cleared by
    /// `resume`, so a resumed job's next start sets it anew.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
    /// When anything about the job last changed.
    pub updated_at: DateTime<Utc>,
    /// The job's change number: increases on every persisted change (taken from a
    /// store-wide counter, so it also orders changes across jobs); drives ETags, and is the
    /// high part of the SSE event id ([`StreamEvent::seq`](crate::StreamEvent::seq) is
    /// `version << 20` for a state committed at this version). Not a history row's
    /// [`seq`](crate::ProgressRecord::seq).
    pub version: u64,
}

/// One page of `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobList {
    /// The jobs on this page, newest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_name() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn only_finished_states_are_terminal() {
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled
            ]
        );
    }
}
