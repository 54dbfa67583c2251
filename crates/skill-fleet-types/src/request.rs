//! Request and response bodies of the lifecycle routes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Body of `POST /api/v1/jobs`: create a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Job types the worker can run; empty means any type without an executor.
    #[serde(default)]
    pub types: Vec<String>,
}

/// Body of `POST /api/v1/jobs/{id}/complete`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The job's JSON result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Where the result was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
}

/// Body of `POST /api/v1/jobs/{id}/fail` (and, optionally, `/cancel`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// Why the job failed or was stopped.
    pub error: String,
}

/// Body of `GET /api/v1/jobs/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBody {
    /// The job the result belongs to.
    pub job_id: String,
    /// The JSON result, if the runner gave one.
    pub result: Option<Value>,
    /// Where the result was written, if the runner said.
    pub result_path: Option<String>,
}
