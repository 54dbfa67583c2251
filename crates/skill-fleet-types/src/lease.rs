//! Ownership of a running job on the wire: the lease a claim hands out, the fence every
//! worker write carries, and the heartbeat that renews it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobStatus};
use crate::validate::ValidationError;

/// Longest worker name a claim may give.
pub const MAX_WORKER_NAME_LEN: usize = 128;

/// What [`validate_worker_name`] accepts, as a regular expression (the OpenAPI document's
/// `pattern`).
pub const WORKER_NAME_PATTERN: &str = "^[A-Za-z0-9_.:@/-]{1,128}$";

/// Longest lease token a fenced write may carry, in characters.
pub const MAX_LEASE_TOKEN_LEN: usize = 128;

/// The name a claim records when it gives none.
pub const DEFAULT_WORKER_NAME: &str = "worker";

/// What a worker write carries to show that it comes from the attempt that owns the job:
/// the claim's `attempt` and `lease_token`. A write whose fence does not match the job's
/// current lease writes nothing (HTTP 409 `lease_lost`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The attempt the claim started.
    pub attempt: u32,
    /// The claim's secret token.
    pub lease_token: String,
}

impl std::fmt::Debug for Fence {
    // The token is a secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("attempt", &self.attempt)
            .field("lease_token", &"…")
            .finish()
    }
}

impl Fence {
    /// The fence of a body's `attempt` and `lease_token` fields: both or neither.
    pub fn from_fields(
        attempt: Option<u32>,
        lease_token: Option<String>,
    ) -> Result<Option<Fence>, ValidationError> {
        match (attempt, lease_token) {
            (None, None) => Ok(None),
            (Some(attempt), Some(lease_token)) => {
                // Characters, as the document's `maxLength` counts them.
                let length = lease_token.chars().count();
                if length == 0 || length > MAX_LEASE_TOKEN_LEN {
                    return Err(ValidationError::Fence(
                        "lease_token must be 1 to 128 characters",
                    ));
                }
                Ok(Some(Fence {
                    attempt,
                    lease_token,
                }))
            }
            (Some(_), None) => Err(ValidationError::Fence(
                "attempt was given without lease_token; a fenced write carries both",
            )),
            (None, Some(_)) => Err(ValidationError::Fence(
                "lease_token was given without attempt; a fenced write carries both",
            )),
        }
    }
}

/// Checks a worker name: 1 to [`MAX_WORKER_NAME_LEN`] characters of `A-Z a-z 0-9 _ . : @ / -`.
pub fn validate_worker_name(name: &str) -> Result<(), ValidationError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_WORKER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ValidationError::WorkerName(
            name.chars().take(160).collect(),
        ))
    }
}

/// The lease of a running job, as every reader sees it (never the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobLease {
    /// Who runs the job: the worker name a claim gave, `server:<run>` for the server's own
    /// children, `anonymous` for a job started by an event that carried no token.
    pub owner: String,
    /// When the lease runs out unless renewed; past it, the rescue sweep takes the job back.
    pub expires_at: DateTime<Utc>,
    /// The last heartbeat or write that renewed it.
    pub renewed_at: DateTime<Utc>,
}

/// What `POST /api/v1/jobs/claim` answers (HTTP 200): the job, now `running`, and the lease
/// only the claimer learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedJob {
    /// The job, as `GET /api/v1/jobs/{id}` shows it; its `attempt` and `checkpoint` (the
    /// previous attempt's) are what the worker starts from.
    #[serde(flatten)]
    pub job: Job,
    /// The secret every write of this attempt carries, with `attempt`.
    pub lease_token: String,
    /// How long the lease lasts after each renewal.
    pub lease_ttl_seconds: f64,
    /// How often the worker should send a heartbeat.
    pub heartbeat_interval_seconds: f64,
}

impl ClaimedJob {
    /// The fence this claim's writes carry.
    pub fn fence(&self) -> Fence {
        Fence {
            attempt: self.job.attempt,
            lease_token: self.lease_token.clone(),
        }
    }
}

/// Body of `POST /api/v1/jobs/{id}/heartbeat`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The attempt the claim started.
    #[serde(deserialize_with = "crate::whole::required_u32")]
    pub attempt: u32,
    /// The claim's token.
    pub lease_token: String,
}

impl std::fmt::Debug for HeartbeatRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatRequest")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl From<&Fence> for HeartbeatRequest {
    fn from(fence: &Fence) -> HeartbeatRequest {
        HeartbeatRequest {
            attempt: fence.attempt,
            lease_token: fence.lease_token.clone(),
        }
    }
}

/// What a heartbeat answers (HTTP 200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAck {
    /// The job.
    pub job_id: String,
    /// The attempt that owns it (the caller's).
    pub attempt: u32,
    /// The job's status: `running`, or the terminal status it was moved to from outside.
    pub status: JobStatus,
    /// True when the job ended from outside (a user's cancel, a budget, a time limit): the
    /// worker stops its program and reports nothing more, not even complete or fail.
    pub stop: bool,
    /// Why it was stopped (the job's error), when `stop`.
    pub reason: Option<String>,
    /// The renewed expiry; `None` when `stop`.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_needs_both_fields() {
        assert_eq!(Fence::from_fields(None, None), Ok(None));
        assert!(Fence::from_fields(Some(1), None).is_err());
        assert!(Fence::from_fields(None, Some("t".into())).is_err());
        assert!(Fence::from_fields(Some(1), Some(String::new())).is_err());
        let fence = Fence::from_fields(Some(2), Some("abc".into()))
            .unwrap()
            .unwrap();
        assert_eq!(fence.attempt, 2);
        assert!(
            !format!("{fence:?}").contains("abc"),
            "the token never reaches a log"
        );
    }

    #[test]
    fn worker_names_are_checked() {
        for good in ["gpu-box-3", "host.example:8000", "me@box/1", "w_1"] {
            assert!(validate_worker_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "x\n", &"w".repeat(129), "é"] {
            assert!(validate_worker_name(bad).is_err(), "{bad:?}");
        }
    }
}
