//! `ApiError`: every way a request can fail, and the one place that maps them to HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skill_fleet_core::CoreError;
use skill_fleet_jobs::StoreError;
use skill_fleet_stream::StreamError;
use skill_fleet_types::{ErrorBody, ErrorCode, ValidationError};

/// Why a request failed. Converted to `{"error": {"code", "message"}}` with the right status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The core refused or failed: a job rule, the store, the hub. A storage fault (disk
    /// full, read-only, locked, i/o) says so and that nothing was saved (503); other store
    /// failures are bugs (500).
    #[error("{}", core_message(.0))]
    Core(#[from] CoreError),
    /// A value in the request is out of range or malformed (422).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request itself is malformed: bad JSON syntax, query or header (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body parsed but a field has the wrong type or is missing (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The body is larger than the limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not declared as JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No such job, or a job has no result yet (404).
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A bearer token is required and was missing or wrong (401).
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The token is valid but may not do this (403); the message names the token and its
    /// role, never its secret.
    #[error("{0}")]
    Forbidden(String),
    /// The server is starting or stopping (503).
    #[error("{0}")]
    Unavailable(String),
    /// A configured limit is reached (503 with `Retry-After`). Expected under load, so not
    /// logged here: the place that enforces the limit counts and logs it.
    #[error("{message}")]
    AtLimit {
        /// What is full, e.g. `too many open streams: 10000 of 10000; retry later`.
        message: String,
        /// Seconds the client should wait before trying again.
        retry_after_seconds: u64,
    },
    /// A bug or an environment failure; never caused by bad input (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// A `Range` outside the file (416 with `Content-Range: bytes */SIZE`).
    #[error("{message}")]
    RangeNotSatisfiable {
        /// What was asked and of what.
        message: String,
        /// The file's size.
        size: u64,
    },
}

impl ApiError {
    /// The HTTP status and machine-readable code for this error.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Core(err) => match err {
                CoreError::Store(err) => match err {
                    StoreError::NotFound { .. } | StoreError::ArtifactNotFound { .. } => {
                        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
                    }
                    StoreError::TooLarge(_) => {
                        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
                    }
                    StoreError::InvalidTransition { .. } => {
                        (StatusCode::CONFLICT, ErrorCode::InvalidTransition)
                    }
                    StoreError::Conflict { .. } => (StatusCode::CONFLICT, ErrorCode::Conflict),
                    StoreError::LeaseLost { .. } => (StatusCode::CONFLICT, ErrorCode::LeaseLost),
                    StoreError::InvalidInput(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
                    }
                    err if err.storage_fault().is_some() => {
                        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
                },
                CoreError::Stream(err) => match err {
                    StreamError::InvalidUpdate { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
                    }
                    StreamError::Terminal { .. } => {
                        (StatusCode::CONFLICT, ErrorCode::InvalidTransition)
                    }
                    _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
                },
                CoreError::Invalid(_) | CoreError::ClaimsServerType { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
                }
                CoreError::Ended { .. } => (StatusCode::CONFLICT, ErrorCode::InvalidTransition),
                CoreError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                }
                CoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            },
            ApiError::Invalid(_) | ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::Unavailable(_) | ApiError::AtLimit { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest)
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            ApiError::RangeNotSatisfiable { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeNotSatisfiable,
            ),
        }
    }

    /// Whether the storage (disk, file system, another process) refused: not a bug, and
    /// nothing was saved.
    fn is_storage_fault(&self) -> bool {
        matches!(self, ApiError::Core(err) if err.storage_fault().is_some())
    }

    /// Seconds a client should wait before retrying, for the errors that mean "not now".
    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            ApiError::AtLimit {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            err if err.is_storage_fault() => Some(STORAGE_RETRY_AFTER_SECONDS),
            _ => None,
        }
    }

    /// Maps an axum extractor rejection (its status tells which kind) to our error.
    pub(crate) fn from_rejection(status: StatusCode, text: String) -> ApiError {
        let message = lowercase_first(&text);
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(message),
            _ => ApiError::BadRequest(message),
        }
    }
}

/// A core error's message; a storage fault names the condition and says the change was not
/// saved, so a client knows a 503 acknowledged nothing:
/// `database is full (database or disk is full): the change was not saved; retry later`.
fn core_message(err: &CoreError) -> String {
    match (err, err.storage_fault()) {
        (CoreError::Store(store), Some(fault)) => {
            let cause = match store {
                StoreError::Database(cause) => cause.to_string(),
                other => other.to_string(),
            };
            format!(
                "{} ({}): the change was not saved; retry later",
                fault.describe(),
                lowercase_first(&cause)
            )
        }
        _ => err.to_string(),
    }
}

/// Seconds a client should wait before retrying after a storage fault.
const STORAGE_RETRY_AFTER_SECONDS: u64 = 1;

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if matches!(self, ApiError::AtLimit { .. }) {
            // Counted and logged sparingly where the limit is enforced.
        } else if self.is_storage_fault() {
            // Not a bug: the disk, the file system or another process (said once per request).
            tracing::warn!(error = %self, status = status.as_u16(), "request refused");
        } else if status.is_server_error() {
            // Logged once, here, where the error is turned into a response.
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        }
        let retry_after = self.retry_after_seconds();
        let mut body = ErrorBody::new(code, self.to_string());
        if let ApiError::Core(CoreError::Store(StoreError::LeaseLost {
            attempt, status, ..
        })) = &self
        {
            body.error.attempt = Some(*attempt);
            body.error.status = Some(*status);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        if let ApiError::RangeNotSatisfiable { size, .. } = &self
            && let Ok(value) = axum::http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Which SQLite messages are which fault is the store's business (tested there); here:
    // a storage fault becomes a 503 that says nothing was saved, anything else stays a 500.
    #[test]
    fn a_storage_fault_is_503_and_says_nothing_was_saved() {
        let err = ApiError::Core(CoreError::Store(StoreError::Busy {
            waited: std::time::Duration::from_millis(5000),
        }));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        );
        assert_eq!(
            err.to_string(),
            "database is busy (database is locked: waited 5000 ms for this server's earlier writes): the change was not saved; retry later"
        );
        let response = err.into_response();
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn other_store_failures_stay_500() {
        let err = ApiError::Core(CoreError::Store(StoreError::Migration(
            "no such table: jobs".to_owned(),
        )));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        );
        assert_eq!(err.to_string(), "migration failed: no such table: jobs");
        assert!(err.into_response().headers().get("retry-after").is_none());
    }
}
