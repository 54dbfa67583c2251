#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod artifact;
mod backoff;
mod error;
mod job;
mod lease;
mod progress;
mod request;
mod validate;
mod whole;

pub use artifact::{
    ARTIFACT_NAME_PATTERN, ATTEMPT_HEADER, Artifact, ArtifactList, DEFAULT_CONTENT_TYPE,
    LEASE_TOKEN_HEADER, MAX_ARTIFACT_NAME_LEN, MAX_CONTENT_TYPE_LEN, RESULT_ARTIFACT_PREFIX,
    content_type_for, fence_from_headers, result_artifact, validate_artifact_name,
    validate_content_type,
};
pub use backoff::Backoff;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use job::{Job, JobList, JobStatus, ParseStatusError};
pub use lease::{
    ClaimedJob, DEFAULT_WORKER_NAME, Fence, HeartbeatAck, HeartbeatRequest, JobLease,
    MAX_LEASE_TOKEN_LEN, MAX_WORKER_NAME_LEN, WORKER_NAME_PATTERN, validate_worker_name,
};
pub use progress::{
    Applied, Progress, ProgressPage, ProgressPatch, ProgressRecord, ProgressUpdate, StreamEvent,
};
pub use request::{
    CancelRequest, ClaimRequest, CompleteRequest, CreateJob, EventAck, FailRequest, JobLogs,
    ResultBody,
};
pub use validate::{
    DEFAULT_BUDGET_WARNING_FRACTION, JOB_ID_PATTERN, JOB_TYPE_PATTERN, JobLimits, MAX_ID_LEN,
    MAX_METADATA_BYTES, ValidationError, validate_cost, validate_job_id, validate_job_type,
    validate_metadata, validate_metric, validate_progress,
};
