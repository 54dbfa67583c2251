//! `Runner`: what the API needs from whatever runs jobs inside the server (the executor).
//!
//! The API crate does not start processes; the server's executor implements this trait and
//! registers itself with [`JobService::set_runner`](crate::JobService::set_runner), so the
//! API can wake it when a job is queued, stop a job's process when the job is cancelled, and
//! serve the process's output.

use skill_fleet_types::{JobLogs, JobStatus};

/// Hooks from the API into the in-process job runner. Implementations must be cheap and
/// must not block: they are called from request handlers.
pub trait Runner: Send + Sync {
    /// Whether this runner runs jobs of this type. Such jobs are never handed to external
    /// workers by `POST /jobs/claim`.
    fn runs_type(&self, job_type: &str) -> bool;

    /// Every job type this runner runs.
    fn job_types(&self) -> Vec<String>;

    /// A job was queued (created or resumed): start it if it is ours and there is room.
    fn job_queued(&self, job_id: &str, job_type: &str);

    /// A job reached a terminal state from outside the runner (cancel, fail, a budget):
    /// stop its process if one runs.
    fn job_finished(&self, job_id: &str, status: JobStatus);

    /// The bounded output tails of a job this runner ran, if it has them.
    fn logs(&self, job_id: &str) -> Option<JobLogs>;
}
