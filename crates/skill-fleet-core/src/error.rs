//! `CoreError`: every way a job operation can fail, in the product's terms (no HTTP).

use skill_fleet_jobs::{StorageFault, StoreError};
use skill_fleet_stream::StreamError;
use skill_fleet_types::{JobStatus, ValidationError};

/// Why a job operation failed. The HTTP crate maps each kind to a status code in one place.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The job store refused or failed: no such job, an invalid transition, a conflicting
    /// create, or a storage fault (disk full, read-only, locked, i/o).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The streaming hub refused the update.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A value is out of range or malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The job has ended (a user's cancel, a budget, a time limit, a failure): it takes no
    /// more progress, and whoever runs it should stop.
    #[error(
        "job `{id}` is {status}{}: progress is no longer accepted, stop the run",
        .error.as_deref().map(|error| format!(" ({error})")).unwrap_or_default()
    )]
    Ended {
        /// The job.
        id: String,
        /// Its terminal status.
        status: JobStatus,
        /// Why it ended, when it says.
        error: Option<String>,
    },
    /// An external worker asked for job types the server runs itself.
    #[error(
        "job types {types:?} include one the server runs itself; only types without an executor can be claimed"
    )]
    ClaimsServerType {
        /// The types asked for.
        types: Vec<String>,
    },
    /// The service is stopping (the hub is closed).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an environment failure; never caused by bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    /// The storage fault behind this error, if the disk, the file system or another process
    /// refused (nothing was saved; retrying later may succeed).
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            CoreError::Store(err) => err.storage_fault(),
            _ => None,
        }
    }

    /// Whether the write came from an attempt that does not own the job (any more): its
    /// runner must stop the run and write nothing more.
    pub fn lease_lost(&self) -> bool {
        matches!(self, CoreError::Store(StoreError::LeaseLost { .. }))
    }

    /// Whether the database could not be reached or used at all (a storage fault, a pool or
    /// connection failure): what the rescue sweep's outage guard watches.
    pub fn outage(&self) -> bool {
        self.storage_fault().is_some()
            || matches!(
                self,
                CoreError::Store(StoreError::Pool(_) | StoreError::Connection(_))
            )
    }

    /// Whether the job has ended, so a runner should stop feeding it progress.
    pub fn job_has_ended(&self) -> bool {
        matches!(
            self,
            CoreError::Ended { .. } | CoreError::Store(StoreError::InvalidTransition { .. })
        )
    }
}

/// Results of the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_job_says_why_and_what_to_do() {
        let err = CoreError::Ended {
            id: "j".to_owned(),
            status: JobStatus::Cancelled,
            error: Some("budget exceeded: $2.31 of $2.00".to_owned()),
        };
        assert_eq!(
            err.to_string(),
            "job `j` is cancelled (budget exceeded: $2.31 of $2.00): progress is no longer accepted, stop the run"
        );
        assert!(err.job_has_ended());
        let err = CoreError::Ended {
            id: "j".to_owned(),
            status: JobStatus::Completed,
            error: None,
        };
        assert_eq!(
            err.to_string(),
            "job `j` is completed: progress is no longer accepted, stop the run"
        );
    }
}
