//! `ApiError`: every way a request can fail, and the one place that maps them to HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skill_fleet_jobs::StoreError;
use skill_fleet_stream::StreamError;
use skill_fleet_types::{ErrorBody, ErrorCode, ValidationError};

/// Why a request failed. Converted to `{"error": {"code", "message"}}` with the right status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The job store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The streaming hub refused the update.
    #[error(transparent)]
    Stream(#[from] StreamError),
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
    /// The job's state refuses the request; the message says why and what to do (409).
    #[error("{0}")]
    Refused(String),
    /// No such job, or a job has no result yet (404).
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A bearer token is required and was missing or wrong (401).
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The server is starting, stopping or at a limit (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an environment failure; never caused by bad input (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and machine-readable code for this error.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Store(err) => match err {
                StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
                StoreError::InvalidTransition { .. } => {
                    (StatusCode::CONFLICT, ErrorCode::InvalidTransition)
                }
                StoreError::Conflict { .. } => (StatusCode::CONFLICT, ErrorCode::Conflict),
                StoreError::InvalidInput(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            },
            ApiError::Stream(err) => match err {
                StreamError::InvalidUpdate { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
                }
                StreamError::Terminal { .. } => {
                    (StatusCode::CONFLICT, ErrorCode::InvalidTransition)
                }
                _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
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
            ApiError::Refused(_) => (StatusCode::CONFLICT, ErrorCode::InvalidTransition),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest)
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
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
        if status.is_server_error() {
            // Logged once, here, where the error is turned into a response.
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        }
        let mut response = (status, Json(ErrorBody::new(code, self.to_string()))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
