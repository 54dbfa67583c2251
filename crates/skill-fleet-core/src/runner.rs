//! `Runner`: what the core needs from whatever runs jobs inside the server (the executor).
//!
//! The core does not start processes. The server's executor implements this trait and
//! registers itself with [`JobService::set_runner`](crate::JobService::set_runner); it then
//! hears every committed change on the feed (as a [`ChangeListener`]), which is how it is
//! woken when a job of its types is queued and told to stop a job that ended from outside
//! (a user's cancel, a budget, a time limit).

use skill_fleet_types::JobLogs;

use crate::feed::ChangeListener;

/// The in-process job runner. Implementations must be cheap and must not block: they are
/// called from request handlers and from the feed.
pub trait Runner: ChangeListener {
    /// Whether this runner runs jobs of this type. Such jobs are never handed to external
    /// workers by a claim.
    fn runs_type(&self, job_type: &str) -> bool;

    /// Every job type this runner runs.
    fn job_types(&self) -> Vec<String>;

    /// The bounded output tails of a job this runner ran, if it has them.
    fn logs(&self, job_id: &str) -> Option<JobLogs>;
}
