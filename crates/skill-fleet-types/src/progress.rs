//! Progress: the latest state of a job, partial updates to it, its history and stream events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::job::JobStatus;
use crate::lease::Fence;
use crate::validate::{ValidationError, validate_cost, validate_metric, validate_progress};

/// The latest progress of a job, as stored and returned with the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Fraction done, `0.0..=1.0`.
    pub progress: f64,
    /// The phase the job is in (`collecting_traces`, `proposing_instructions`, …).
    pub step: Option<String>,
    /// A human-readable line about what is happening.
    pub message: Option<String>,
    /// Cumulative cost in US dollars, as the runner reports it.
    pub cost_usd: f64,
    /// The job's current score (whatever the optimizer maximises).
    pub metric: Option<f64>,
    /// Estimated seconds until done; `None` until it can be estimated.
    pub eta_seconds: Option<f64>,
}

/// A partial progress report from a runner: fields left out keep their previous values.
///
/// This is the body of `POST /api/v1/jobs/{id}/events` and the shape of a progress line in
/// the executor protocol. `step` may be given as a string or a whole number (`"3"` and `3`
/// are the same step).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProgressUpdate {
    /// The phase the job has moved to.
    #[serde(default, deserialize_with = "step_from_string_or_number")]
    #[cfg_attr(feature = "openapi", schema(schema_with = step_schema))]
    pub step: Option<String>,
    /// Fraction done, `0.0..=1.0`.
    pub progress: Option<f64>,
    /// Cumulative cost in US dollars (not an increment).
    pub cost_usd: Option<f64>,
    /// The job's current score.
    pub metric: Option<f64>,
    /// A human-readable line about what is happening.
    pub message: Option<String>,
    /// Opaque state to hand back if the job is resumed.
    pub checkpoint: Option<Value>,
    /// Over HTTP: the attempt of the claim this event comes from (with `lease_token`).
    /// Ignored in the executor protocol (the server fences its own children).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::optional_u32"
    )]
    pub attempt: Option<u32>,
    /// Over HTTP: the claim's lease token (with `attempt`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::present_string"
    )]
    pub lease_token: Option<String>,
}

impl ProgressUpdate {
    /// Checks the numbers: progress in `0..=1`, cost finite and not negative, metric finite.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.patch().validate()
    }

    /// The progress fields of this report, as a patch (the checkpoint is not among them).
    pub fn patch(&self) -> ProgressPatch<'_> {
        ProgressPatch {
            step: self.step.as_deref(),
            progress: self.progress,
            cost_usd: self.cost_usd,
            metric: self.metric,
            message: self.message.as_deref(),
        }
    }

    /// Takes the fence fields out of the update: the fence they make, if any.
    pub fn take_fence(&mut self) -> Result<Option<Fence>, ValidationError> {
        Fence::from_fields(self.attempt.take(), self.lease_token.take())
    }

    /// True when the update carries nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == ProgressUpdate::default()
    }
}

/// The schema of [`ProgressUpdate::step`]: a string, a whole number or null.
/// A partial change to a job's progress fields, borrowed from whatever carries it (a
/// runner's [`ProgressUpdate`], the hub's update): fields left `None` keep their values.
/// Progress fields are validated and merged here and nowhere else.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProgressPatch<'a> {
    /// The phase the job moved to.
    pub step: Option<&'a str>,
    /// Fraction done, `0.0..=1.0`.
    pub progress: Option<f64>,
    /// Cumulative cost in US dollars.
    pub cost_usd: Option<f64>,
    /// The job's current score.
    pub metric: Option<f64>,
    /// A human-readable line about what is happening.
    pub message: Option<&'a str>,
}

impl ProgressPatch<'_> {
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

/// What merging a patch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Any field changed.
    pub changed: bool,
    /// The step changed.
    pub step_changed: bool,
}

impl Progress {
    /// Merges a patch into this state (fields it leaves out keep their values) and says what
    /// changed. The one merge of progress: the live set, the store and the hub all use it.
    pub fn apply(&mut self, patch: ProgressPatch<'_>) -> Applied {
        let mut applied = Applied::default();
        if let Some(step) = patch.step
            && self.step.as_deref() != Some(step)
        {
            self.step = Some(step.to_owned());
            applied.changed = true;
            applied.step_changed = true;
        }
        if let Some(value) = patch.progress
            && value != self.progress
        {
            self.progress = value;
            applied.changed = true;
        }
        if let Some(cost) = patch.cost_usd
            && cost != self.cost_usd
        {
            self.cost_usd = cost;
            applied.changed = true;
        }
        if let Some(metric) = patch.metric
            && self.metric != Some(metric)
        {
            self.metric = Some(metric);
            applied.changed = true;
        }
        if let Some(message) = patch.message
            && self.message.as_deref() != Some(message)
        {
            self.message = Some(message.to_owned());
            applied.changed = true;
        }
        applied
    }

    /// Whether merging `patch` would change any field.
    pub fn would_change(&self, patch: ProgressPatch<'_>) -> bool {
        self.clone().apply(patch).changed
    }
}

/// The whole state as an update that sets every field (no checkpoint; the estimate is the
/// server's own and is not part of an update).
impl From<&Progress> for ProgressUpdate {
    fn from(progress: &Progress) -> ProgressUpdate {
        ProgressUpdate {
            step: progress.step.clone(),
            progress: Some(progress.progress),
            cost_usd: Some(progress.cost_usd),
            metric: progress.metric,
            message: progress.message.clone(),
            ..ProgressUpdate::default()
        }
    }
}

#[cfg(feature = "openapi")]
fn step_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "The phase the job has moved to; a whole number is the same step as its digits \
             (`3` and `\"3\"`).",
            ))
            .build(),
    )
}

fn step_from_string_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Step {
        Text(String),
        Whole(i64),
        // `3.0` is the whole number 3 (JSON Schema's reading); `3.5` is refused.
        Float(f64),
    }
    Option::<Step>::deserialize(deserializer)?
        .map(|step| match step {
            Step::Text(text) => Ok(text),
            Step::Whole(n) => Ok(n.to_string()),
            Step::Float(f) => crate::whole::whole_i64(f)
                .map(|n| n.to_string())
                .ok_or_else(|| serde::de::Error::custom(format!("step {f} is not a whole number"))),
        })
        .transpose()
}

/// One row of a job's progress history (`GET /api/v1/jobs/{id}/progress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressRecord {
    /// The history row's position: increases per job; page with `after`. Not the job's
    /// `version` nor the SSE event id.
    pub seq: i64,
    /// The phase at that moment.
    pub step: Option<String>,
    /// Fraction done at that moment.
    pub progress: f64,
    /// The message at that moment.
    pub message: Option<String>,
    /// Cumulative cost at that moment.
    pub cost_usd: f64,
    /// The metric at that moment.
    pub metric: Option<f64>,
    /// The attempt that wrote the row (`None` for rows older than leases).
    pub attempt: Option<u32>,
    /// What the row records when it is not a progress report: `lease_expired` (the job's
    /// worker was lost and the rescue sweep took the job back; `message` says what became
    /// of it), `resumed` (a token's holder, named in `actor`, put the failed or cancelled job back in
    /// the queue).
    pub event: Option<String>,
    /// Who asked for a cancel or a resume: the name of the token the request carried (never
    /// its secret). Absent on other rows, and when the server needs no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
}

/// One page of progress history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressPage {
    /// Rows in `seq` order.
    pub records: Vec<ProgressRecord>,
    /// Pass as `after` for the next page; `None` when there is nothing more yet.
    pub next_after: Option<i64>,
}

/// One live state of a job, as sent in an SSE `data:` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamEvent {
    /// The job this state belongs to.
    pub job_id: String,
    /// The SSE event id: increases per job, on every server that shares the job's store and
    /// across restarts. Its high part is the job's committed [`version`](crate::Job::version):
    /// a state committed at version `v` has the id `v << 20` (`VERSION_SHIFT` in
    /// `skill-fleet-stream`); live states a server streams before their progress is written
    /// count up by one from the last commit's id, and the first state after a newer commit
    /// jumps to that commit's id. Ids fit in a JavaScript number (below `2^53`) while versions
    /// are below `2^33`. Not a history row's `seq`.
    pub seq: u64,
    /// The job's status.
    pub status: JobStatus,
    /// The phase the job is in.
    pub step: Option<String>,
    /// Fraction done, `0.0..=1.0`.
    pub progress: f64,
    /// Cumulative cost in US dollars.
    pub cost_usd: f64,
    /// The job's current score.
    pub metric: Option<f64>,
    /// Estimated seconds until done.
    pub eta_seconds: Option<f64>,
    /// A human-readable line about what is happening (for a failed job: the error).
    pub message: Option<String>,
    /// When this state was emitted.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_accepts_text_and_whole_numbers() {
        let update: ProgressUpdate = serde_json::from_str(r#"{"step": 3}"#).unwrap();
        assert_eq!(update.step.as_deref(), Some("3"));
        let update: ProgressUpdate =
            serde_json::from_str(r#"{"step": "proposing_instructions"}"#).unwrap();
        assert_eq!(update.step.as_deref(), Some("proposing_instructions"));
        let update: ProgressUpdate = serde_json::from_str(r#"{"progress": 0.5}"#).unwrap();
        assert_eq!(update.step, None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<ProgressUpdate>(r#"{"progres": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("progres"), "{err}");
    }

    #[test]
    fn out_of_range_numbers_do_not_validate() {
        let bad = [
            ProgressUpdate {
                progress: Some(7.0),
                ..Default::default()
            },
            ProgressUpdate {
                progress: Some(f64::NAN),
                ..Default::default()
            },
            ProgressUpdate {
                cost_usd: Some(-0.01),
                ..Default::default()
            },
            ProgressUpdate {
                metric: Some(f64::INFINITY),
                ..Default::default()
            },
        ];
        for update in bad {
            assert!(update.validate().is_err(), "{update:?}");
        }
        let good = ProgressUpdate {
            progress: Some(1.0),
            cost_usd: Some(0.0),
            metric: Some(-3.5),
            ..Default::default()
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
