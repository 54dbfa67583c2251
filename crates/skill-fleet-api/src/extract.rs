//! Extractors whose rejections use our JSON error body instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use skill_fleet_types::validate_job_id;

use crate::error::ApiError;

/// `Json<T>` with [`ApiError`] rejections (400 syntax, 413 size, 415 content type, 422 shape).
/// The body must be a JSON object: serde would also read a struct from an array of its
/// fields (`["optimization", null]`), which the document does not allow.
pub struct ApiJson<T>(pub T);

/// `T` read from a body that must be a JSON object (422 otherwise).
fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        let kind = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(ApiError::Unprocessable(format!(
            "invalid request body: expected a json object, got {kind}"
        )));
    }
    serde_json::from_value(value)
        .map_err(|err| ApiError::Unprocessable(format!("invalid request body: {err}")))
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => from_object(value).map(ApiJson),
            Err(rejection) => Err(ApiError::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()` (for optional bodies such as
/// `POST /jobs/{id}/cancel`).
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|rejection| {
                ApiError::from_rejection(rejection.status(), rejection.body_text())
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::BadRequest(format!("invalid json body: {err}")))?;
        from_object(value).map(OptionalJson)
    }
}

/// `Query<T>` with [`ApiError`] rejections (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid query: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The `{id}` path segment, validated as a job id (`[A-Za-z0-9_-]{1,64}`) before any handler
/// or the store sees it.
pub struct JobId(pub String);

impl<S> FromRequestParts<S> for JobId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
                })?;
        validate_job_id(&id).map_err(|err| ApiError::BadRequest(err.to_string()))?;
        Ok(JobId(id))
    }
}

/// The `{id}/artifacts/{name}` path segments, validated as a job id and an artifact name
/// (`[A-Za-z0-9._-]{1,128}`, not starting with `.`) before any handler sees them.
pub struct ArtifactPath {
    /// The job id.
    pub id: String,
    /// The artifact's name.
    pub name: String,
}

impl<S> FromRequestParts<S> for ArtifactPath
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((id, name)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
                })?;
        validate_job_id(&id).map_err(|err| ApiError::BadRequest(err.to_string()))?;
        skill_fleet_types::validate_artifact_name(&name)
            .map_err(|err| ApiError::BadRequest(err.to_string()))?;
        Ok(ArtifactPath { id, name })
    }
}
