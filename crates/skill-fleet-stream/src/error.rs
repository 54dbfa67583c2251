//! The one error type of the crate.

use skill_fleet_types::ValidationError;

/// Why [`Hub::publish`](crate::Hub::publish) refused an update.
///
/// Every message is lowercase and names the job. A refused update changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// A number in the update is out of range: progress outside `0..=1`, a negative or
    /// non-finite cost, or a non-finite metric.
    #[error("invalid update for job `{job_id}`: {reason}")]
    InvalidUpdate {
        /// The job the update was for.
        job_id: String,
        /// The value at fault (its message is part of this error's message).
        reason: ValidationError,
    },
    /// The job already reached a terminal status and the update would change it.
    #[error("job `{job_id}` has finished and accepts no further updates")]
    Terminal {
        /// The finished job.
        job_id: String,
    },
    /// [`Hub::close`](crate::Hub::close) was called.
    #[error("stream hub is closed: update for job `{job_id}` refused")]
    Closed {
        /// The job the update was for.
        job_id: String,
    },
}
