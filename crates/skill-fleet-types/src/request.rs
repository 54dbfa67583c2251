//! Request and response bodies of the lifecycle routes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::JobStatus;
use crate::lease::Fence;
use crate::validate::ValidationError;

/// Body of `POST /api/v1/jobs`: create a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The job type, `[a-z0-9_-]{1,64}`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Any JSON object (at most [`crate::MAX_METADATA_BYTES`] serialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// A client-chosen id; the server generates a sortable one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Body of `POST /api/v1/jobs/claim`: take the oldest queued job of these types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Job types the worker can run; empty means any type without an executor.
    #[serde(default)]
    pub types: Vec<String>,
    /// Who claims: shown as the running job's lease owner (`[A-Za-z0-9_.:@/-]{1,128}`;
    /// `worker` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// Body of `POST /api/v1/jobs/{id}/complete`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The job's JSON result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Where the result was written; `artifact:NAME` names one of the job's artifacts,
    /// which must be stored already (422 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
    /// The attempt of the claim this write comes from (with `lease_token`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::optional_u32"
    )]
    pub attempt: Option<u32>,
    /// The claim's lease token (with `attempt`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::present_string"
    )]
    pub lease_token: Option<String>,
}

/// Body of `POST /api/v1/jobs/{id}/fail` (and, optionally, `/cancel`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// Why the job failed or was stopped.
    pub error: String,
    /// The attempt of the claim this write comes from (with `lease_token`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::optional_u32"
    )]
    pub attempt: Option<u32>,
    /// The claim's lease token (with `attempt`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::present_string"
    )]
    pub lease_token: Option<String>,
}

/// Optional body of `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; stored as the job's error (default `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of `GET /api/v1/jobs/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultBody {
    /// The job the result belongs to.
    pub job_id: String,
    /// The JSON result, if the runner gave one.
    pub result: Option<Value>,
    /// Where the result was written, if the runner said; `artifact:NAME` names one of the
    /// job's artifacts.
    pub result_path: Option<String>,
    /// The download of the artifact `result_path` names
    /// (`/api/v1/jobs/{id}/artifacts/{name}`), when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
}

/// What `POST /api/v1/jobs/{id}/events` answers (HTTP 202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventAck {
    /// The job the event was for.
    pub job_id: String,
    /// The job's status after the event.
    pub status: JobStatus,
    /// True when the event was written to the database before this response (the first
    /// event of a queued job, a step change, a checkpoint); false when it waits for the next
    /// coalesced flush (at most one flush interval, 100 ms by default).
    pub durable: bool,
}

/// Body of `GET /api/v1/jobs/{id}/logs`: the bounded tails of a job's process output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobLogs {
    /// The job the logs belong to.
    pub job_id: String,
    /// The last lines the process wrote to stdout that were not protocol messages.
    pub stdout: Vec<String>,
    /// The last lines the process wrote to stderr.
    pub stderr: Vec<String>,
    /// True when older lines were dropped to keep the tails bounded.
    pub truncated: bool,
}

impl CompleteRequest {
    /// The fence of this write, if it carries one.
    pub fn fence(&self) -> Result<Option<Fence>, ValidationError> {
        Fence::from_fields(self.attempt, self.lease_token.clone())
    }
}

impl FailRequest {
    /// The fence of this write, if it carries one.
    pub fn fence(&self) -> Result<Option<Fence>, ValidationError> {
        Fence::from_fields(self.attempt, self.lease_token.clone())
    }
}
