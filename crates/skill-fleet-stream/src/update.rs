//! [`Update`]: a partial change to a job's live state, and how it merges.

use skill_fleet_types::{
    JobStatus, ProgressUpdate, StreamEvent, ValidationError, validate_cost, validate_metric,
    validate_progress,
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

    /// True when the update carries nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Update::default()
    }

    /// Checks the numbers: progress finite in `0..=1`, cost finite and `>= 0`, metric finite.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(progress) = self.progress {
            validate_progress(progress)?;
        }
        if let Some(cost) = self.cost_usd {
            validate_cost(cost)?;
        }
        if let Some(metric) = self.metric {
            validate_metric(metric)?;
        }
        Ok(())
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
        }
    }
}

/// The merged live state of a job: everything in a [`StreamEvent`] except what emission adds
/// (`job_id`, `seq`, `eta_seconds`, `at`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fields {
    pub(crate) status: JobStatus,
    pub(crate) step: Option<String>,
    pub(crate) progress: f64,
    pub(crate) cost_usd: f64,
    pub(crate) metric: Option<f64>,
    pub(crate) message: Option<String>,
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
            step: None,
            progress: 0.0,
            cost_usd: 0.0,
            metric: None,
            message: None,
        }
    }

    /// The fields of an emitted (or seeded) state.
    pub(crate) fn of(event: &StreamEvent) -> Fields {
        Fields {
            status: event.status,
            step: event.step.clone(),
            progress: event.progress,
            cost_usd: event.cost_usd,
            metric: event.metric,
            message: event.message.clone(),
        }
    }

    /// True when applying `update` would change at least one field.
    pub(crate) fn would_change(&self, update: &Update) -> bool {
        update.status.is_some_and(|s| s != self.status)
            || update
                .step
                .as_ref()
                .is_some_and(|s| self.step.as_ref() != Some(s))
            || update.progress.is_some_and(|p| p != self.progress)
            || update.cost_usd.is_some_and(|c| c != self.cost_usd)
            || update.metric.is_some_and(|m| self.metric != Some(m))
            || update
                .message
                .as_ref()
                .is_some_and(|m| self.message.as_ref() != Some(m))
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
        if let Some(step) = update.step
            && self.step.as_ref() != Some(&step)
        {
            self.step = Some(step);
            merged.changed = true;
            merged.urgent = true;
        }
        if let Some(progress) = update.progress
            && progress != self.progress
        {
            self.progress = progress;
            merged.changed = true;
        }
        if let Some(cost) = update.cost_usd
            && cost != self.cost_usd
        {
            self.cost_usd = cost;
            merged.changed = true;
        }
        if let Some(metric) = update.metric
            && self.metric != Some(metric)
        {
            self.metric = Some(metric);
            merged.changed = true;
        }
        if let Some(message) = update.message
            && self.message.as_ref() != Some(&message)
        {
            self.message = Some(message);
            merged.changed = true;
        }
        merged
    }

    /// True when these fields are exactly what `event` carries.
    pub(crate) fn matches(&self, event: &StreamEvent) -> bool {
        self.status == event.status
            && self.step == event.step
            && self.progress == event.progress
            && self.cost_usd == event.cost_usd
            && self.metric == event.metric
            && self.message == event.message
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
        assert_eq!(fields.progress, 0.4);
        assert_eq!(fields.cost_usd, 1.5);
        assert_eq!(fields.step.as_deref(), Some("a"));
        assert_eq!(fields.message.as_deref(), Some("hi"));
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
