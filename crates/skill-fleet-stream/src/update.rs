//! [`Update`]: a partial change to a job's live state, and how it merges.

use skill_fleet_types::{
    JobStatus, Progress, ProgressPatch, ProgressUpdate, StreamEvent, ValidationError,
};

/// A partial change to a job's live state: fields left `None` keep their current values.
///
/// Build one with the constructors and `with_*` helpers:
///
/// ```
/// use skill_fleet_stream::{JobStatus, Update};
///
/// let update = Update::progress(0.5).with_step("proposing_instructions").with_cost(1.2);
/// assert_eq!(update.progress, Some(0.5));
/// assert_eq!(update.status, None);
/// let done = Update::status(JobStatus::Completed).with_progress(1.0);
/// assert_eq!(done.status, Some(JobStatus::Completed));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// The job's new status. A terminal status is sent to subscribers at once and freezes
    /// the job (see [`Hub::publish`](crate::Hub::publish)).
    pub status: Option<JobStatus>,
    /// The phase the job moved to. A change of step is sent to subscribers at once.
    pub step: Option<String>,
    /// Fraction done, `0.0..=1.0`.
    pub progress: Option<f64>,
    /// Cumulative cost in US dollars, as the runner reports it (not an increment).
    pub cost_usd: Option<f64>,
    /// The job's current score; any finite number.
    pub metric: Option<f64>,
    /// A human-readable line about what is happening.
    pub message: Option<String>,
    /// The job's committed `version` this state is at, when it was read from or written to
    /// the store (`None` for live patches not written yet): the job's next emitted state
    /// gets at least this version's event id (see [`Hub::publish`](crate::Hub::publish)).
    /// A state at a version newer than the hub knew is sent at once: the server that wrote
    /// it coalesced it already.
    pub version: Option<u64>,
}

impl Update {
    /// An update that sets only the status.
    pub fn status(status: JobStatus) -> Update {
        Update::default().with_status(status)
    }

    /// An update that sets only the progress fraction.
    pub fn progress(progress: f64) -> Update {
        Update::default().with_progress(progress)
    }

    /// An update that sets only the step.
    pub fn step(step: impl Into<String>) -> Update {
        Update::default().with_step(step)
    }

    /// An update that sets only the message.
    pub fn message(message: impl Into<String>) -> Update {
        Update::default().with_message(message)
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: JobStatus) -> Update {
        self.status = Some(status);
        self
    }

    /// Sets the step.
    #[must_use]
    pub fn with_step(mut self, step: impl Into<String>) -> Update {
        self.step = Some(step.into());
        self
    }

    /// Sets the progress fraction.
    #[must_use]
    pub fn with_progress(mut self, progress: f64) -> Update {
        self.progress = Some(progress);
        self
    }

    /// Sets the cumulative cost in US dollars.
    #[must_use]
    pub fn with_cost(mut self, cost_usd: f64) -> Update {
        self.cost_usd = Some(cost_usd);
        self
    }

    /// Sets the metric.
    #[must_use]
    pub fn with_metric(mut self, metric: f64) -> Update {
        self.metric = Some(metric);
        self
    }

    /// Sets the message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Update {
        self.message = Some(message.into());
        self
    }

    /// Sets the committed version the state is at.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Update {
        self.version = Some(version);
        self
    }

    /// True when the update carries nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Update::default()
    }

    /// Checks the numbers: progress finite in `0..=1`, cost finite and `>= 0`, metric finite.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.patch().validate()
    }

    /// The progress fields of this update, as a patch.
    pub fn patch(&self) -> ProgressPatch<'_> {
        ProgressPatch {
            step: self.step.as_deref(),
            progress: self.progress,
            cost_usd: self.cost_usd,
            metric: self.metric,
            message: self.message.as_deref(),
        }
    }
}

/// A runner's progress report as a hub update (the checkpoint is not part of the live state
/// and is dropped).
impl From<ProgressUpdate> for Update {
    fn from(update: ProgressUpdate) -> Update {
        Update {
            status: None,
            step: update.step,
            progress: update.progress,
            cost_usd: update.cost_usd,
            metric: update.metric,
            message: update.message,
            version: None,
        }
    }
}

/// Like the owned conversion, for a report the caller keeps.
impl From<&ProgressUpdate> for Update {
    fn from(update: &ProgressUpdate) -> Update {
        Update {
            status: None,
            step: update.step.clone(),
            progress: update.progress,
            cost_usd: update.cost_usd,
            metric: update.metric,
            message: update.message.clone(),
            version: None,
        }
    }
}

/// A job's whole progress state as an update that sets every field (no status).
impl From<&Progress> for Update {
    fn from(progress: &Progress) -> Update {
        Update::from(ProgressUpdate::from(progress))
    }
}

/// The merged live state of a job: everything in a [`StreamEvent`] except what emission adds
/// (`job_id`, `seq`, `eta_seconds`, `at`). Progress fields merge through
/// [`Progress::apply`], the one merge of progress.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fields {
    pub(crate) status: JobStatus,
    /// `eta_seconds` is unused here: the estimator adds it at emission.
    pub(crate) progress: Progress,
}

/// What a merge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Merged {
    /// Any field changed.
    pub(crate) changed: bool,
    /// The step or the status changed: worth sending at once.
    pub(crate) urgent: bool,
}

impl Fields {
    /// The state of a job first seen through `publish`: running, nothing done yet.
    pub(crate) fn fresh() -> Fields {
        Fields {
            status: JobStatus::Running,
            progress: Progress::default(),
        }
    }

    /// The fields of an emitted (or seeded) state.
    pub(crate) fn of(event: &StreamEvent) -> Fields {
        Fields {
            status: event.status,
            progress: Progress {
                progress: event.progress,
                step: event.step.clone(),
                message: event.message.clone(),
                cost_usd: event.cost_usd,
                metric: event.metric,
                eta_seconds: None,
            },
        }
    }

    /// True when applying `update` would change at least one field.
    pub(crate) fn would_change(&self, update: &Update) -> bool {
        update.status.is_some_and(|s| s != self.status)
            || self.progress.would_change(update.patch())
    }

    /// Applies an (already validated) update.
    pub(crate) fn merge(&mut self, update: Update) -> Merged {
        let mut merged = Merged::default();
        if let Some(status) = update.status
            && status != self.status
        {
            self.status = status;
            merged.changed = true;
            merged.urgent = true;
        }
        let applied = self.progress.apply(update.patch());
        merged.changed |= applied.changed;
        merged.urgent |= applied.step_changed;
        merged
    }

    /// True when these fields are exactly what `event` carries.
    pub(crate) fn matches(&self, event: &StreamEvent) -> bool {
        let progress = &self.progress;
        self.status == event.status
            && progress.step == event.step
            && progress.progress == event.progress
            && progress.cost_usd == event.cost_usd
            && progress.metric == event.metric
            && progress.message == event.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_fields_not_given() {
        let mut fields = Fields::fresh();
        let merged = fields.merge(Update::progress(0.4).with_cost(1.5).with_step("a"));
        assert_eq!(
            merged,
            Merged {
                changed: true,
                urgent: true
            }
        );
        let merged = fields.merge(Update::message("hi"));
        assert_eq!(
            merged,
            Merged {
                changed: true,
                urgent: false
            }
        );
        assert_eq!(fields.progress.progress, 0.4);
        assert_eq!(fields.progress.cost_usd, 1.5);
        assert_eq!(fields.progress.step.as_deref(), Some("a"));
        assert_eq!(fields.progress.message.as_deref(), Some("hi"));
        assert_eq!(fields.merge(Update::step("a")), Merged::default());
        assert!(!fields.would_change(&Update::progress(0.4).with_step("a")));
        assert!(fields.would_change(&Update::status(JobStatus::Failed)));
    }

    #[test]
    fn progress_update_converts_without_checkpoint() {
        let update = Update::from(ProgressUpdate {
            step: Some("3".into()),
            progress: Some(0.3),
            checkpoint: Some(serde_json::json!({"k": 1})),
            ..Default::default()
        });
        assert_eq!(update, Update::step("3").with_progress(0.3));
        assert!(Update::default().is_empty());
    }
}
