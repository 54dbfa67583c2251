//! The JSON error body every failing route returns: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes. Clients match on these, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, bad query, bad header).
    BadRequest,
    /// The request is well-formed but a value is out of range or invalid (HTTP 422).
    InvalidInput,
    /// No such job (HTTP 404).
    NotFound,
    /// The job is in a state that does not allow this (HTTP 409).
    InvalidTransition,
    /// The id exists with a different body, or a similar clash (HTTP 409).
    Conflict,
    /// A worker write's `attempt` and `lease_token` do not own the job (any more): its lease
    /// expired and it was rescued, or another attempt holds it (HTTP 409). The body's
    /// `attempt` and `status` are the job's current ones. Stop; write nothing more.
    LeaseLost,
    /// The body is larger than the server accepts (HTTP 413).
    PayloadTooLarge,
    /// The `Range` asked for is outside the file (HTTP 416).
    RangeNotSatisfiable,
    /// The body is not JSON (HTTP 415).
    UnsupportedMediaType,
    /// A bearer token is required or wrong (HTTP 401).
    Unauthorized,
    /// The token is valid but its role may not do this, or a worker token may not take
    /// this job's type (HTTP 403).
    Forbidden,
    /// The server is at a limit (HTTP 503).
    Unavailable,
    /// Something broke on the server side (HTTP 500); never caused by bad input.
    Internal,
    /// A code this version of the types does not know.
    #[serde(other)]
    Unknown,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Lowercase, human-readable, names the id or value at fault.
    pub message: String,
    /// With `lease_lost`: the job's current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// With `lease_lost`: the job's current status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::JobStatus>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                attempt: None,
                status: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::NotFound, "job `x` not found");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "not_found", "message": "job `x` not found"}})
        );
        let unknown: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "teapot", "message": "m"}}"#).unwrap();
        assert_eq!(unknown.error.code, ErrorCode::Unknown);
    }
}
