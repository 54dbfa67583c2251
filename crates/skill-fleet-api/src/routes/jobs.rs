//! The job routes: create, list, get, history, result, claim, events and lifecycle.

use std::hash::{Hash, Hasher};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use skill_fleet_jobs::{Created, ListFilter};
use skill_fleet_types::{
    CancelRequest, ClaimRequest, CompleteRequest, CreateJob, FailRequest, JobLogs, JobStatus,
    ProgressUpdate, ResultBody,
};

use crate::cache::{Representation, Scope, etag};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, JobId, OptionalJson};
use crate::state::AppState;

/// The header a client sets to say who created a job (`cli`); anything else counts as `api`.
pub const SOURCE_HEADER: &str = "x-skill-fleet-source";

fn source_of(headers: &HeaderMap) -> &'static str {
    match headers.get(SOURCE_HEADER).and_then(|v| v.to_str().ok()) {
        Some("cli") => "cli",
        _ => "api",
    }
}

fn created_response(job: skill_fleet_types::Job, created: Created) -> Response {
    let status = match created {
        Created::New => StatusCode::CREATED,
        Created::Existing => StatusCode::OK,
    };
    let location = format!("/api/v1/jobs/{}", job.id);
    let mut response = (status, Json(job)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `POST /api/v1/jobs`: 201 + Location; the same id and body again → 200; another body → 409.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateJob>,
) -> Result<Response, ApiError> {
    let (job, created) = state.service().create(request, source_of(&headers)).await?;
    Ok(created_response(job, created))
}

/// Body of `POST /api/v1/optimization`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOptimization {
    /// Optimizer settings (`optimizer`, `model`, `trainset`, `budget_usd`, …).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// A client-chosen id.
    #[serde(default)]
    pub id: Option<String>,
}

/// `POST /api/v1/optimization`: creates a job of type `optimization`.
pub async fn create_optimization(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJson(request): OptionalJson<CreateOptimization>,
) -> Result<Response, ApiError> {
    let request = CreateJob {
        job_type: "optimization".to_owned(),
        metadata: request.metadata,
        id: request.id,
    };
    let (job, created) = state.service().create(request, source_of(&headers)).await?;
    Ok(created_response(job, created))
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this status.
    pub status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// Validates and turns the query into a store filter.
    pub fn into_filter(self) -> Result<ListFilter, ApiError> {
        let status = self
            .status
            .map(|s| s.parse::<JobStatus>())
            .transpose()
            .map_err(|err| ApiError::BadRequest(err.to_string()))?;
        if let Some(job_type) = &self.job_type {
            skill_fleet_types::validate_job_type(job_type)
                .map_err(|err| ApiError::BadRequest(err.to_string()))?;
        }
        let limit = match self.limit {
            Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".to_owned())),
            Some(limit) => limit.min(500),
            None => 50,
        };
        Ok(ListFilter {
            status,
            job_type: self.job_type,
            limit,
            cursor: self.cursor,
        })
    }
}

/// `GET /api/v1/jobs`: ETag from the store-wide change counter and the query; `no-cache`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = query.into_filter()?;
    let scope = state.service().generations().lists();
    cached(&state, &headers, &uri, scope, || async {
        let (counter, list) = state.service().list(filter).await?;
        let last_modified = list
            .jobs
            .iter()
            .map(|job| job.updated_at)
            .max()
            .unwrap_or_default();
        Ok(Representation {
            etag: etag(format_args!("jobs.c{counter}.q{:x}", query_hash(&uri))),
            last_modified,
            settled: false,
            body: to_body(&list)?,
        })
    })
    .await
}

/// `GET /api/v1/jobs/{id}`: ETag from id and version; `max-age` once terminal, else `no-cache`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let scope = state.service().generations().job(&id);
    cached(&state, &headers, &uri, scope, || async {
        let job = state.service().get(&id).await?;
        Ok(Representation {
            etag: etag(format_args!("{}.v{}", job.id, job.version)),
            last_modified: job.updated_at,
            settled: job.status.is_terminal(),
            body: to_body(&job)?,
        })
    })
    .await
}

/// Query of `GET /api/v1/jobs/{id}/progress`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only rows with a larger `seq`.
    pub after: Option<i64>,
    /// Page size (default 500, at most 5000).
    pub limit: Option<u32>,
}

/// `GET /api/v1/jobs/{id}/progress`: ETag from id, version and the page asked for.
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    JobId(id): JobId,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(500).clamp(1, 5000);
    let scope = state.service().generations().job(&id);
    cached(&state, &headers, &uri, scope, || async {
        let job = state.service().get(&id).await?;
        let page = state.service().history(&id, query.after, limit).await?;
        Ok(Representation {
            etag: etag(format_args!(
                "{}.v{}.p{}.{limit}",
                job.id,
                job.version,
                query
                    .after
                    .map_or_else(String::new, |after| after.to_string())
            )),
            last_modified: job.updated_at,
            settled: job.status.is_terminal(),
            body: to_body(&page)?,
        })
    })
    .await
}

/// `GET /api/v1/jobs/{id}/result`: the result, 404 until the job has one.
pub async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let scope = state.service().generations().job(&id);
    cached(&state, &headers, &uri, scope, || async {
        let job = state.service().get(&id).await?;
        if job.status != JobStatus::Completed || (job.result.is_none() && job.result_path.is_none())
        {
            return Err(ApiError::NotFound(format!(
                "job `{}` has no result yet (status {})",
                job.id, job.status
            )));
        }
        Ok(Representation {
            etag: etag(format_args!("{}.v{}.result", job.id, job.version)),
            last_modified: job.updated_at,
            settled: true,
            body: to_body(&ResultBody {
                job_id: job.id,
                result: job.result,
                result_path: job.result_path,
            })?,
        })
    })
    .await
}

/// Answers a GET from the response cache when it holds a current representation, else
/// builds one with `build` (which reads the database), keeps it and answers with it.
/// `scope` must be read before `build` runs, so a write in between makes the entry stale.
async fn cached<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    scope: Scope,
    build: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Representation, ApiError>>,
{
    let key = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let cache = state.cache();
    if let Some(representation) = cache.lookup(&key, state.service().generations()) {
        return Ok(cache.respond(headers, representation, true));
    }
    let representation = build().await?;
    cache.insert(key, scope, representation.clone());
    Ok(cache.respond(headers, representation, false))
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|err| ApiError::Internal(format!("cannot encode response: {err}")))
}

fn query_hash(uri: &Uri) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    uri.query().unwrap_or("").hash(&mut hasher);
    hasher.finish()
}

/// `POST /api/v1/jobs/claim`: 200 with the job (now running), or 204 when none is queued.
pub async fn claim(
    State(state): State<AppState>,
    OptionalJson(request): OptionalJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    for job_type in &request.types {
        skill_fleet_types::validate_job_type(job_type)?;
    }
    match state.service().claim(request.types).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `POST /api/v1/jobs/{id}/events`: progress from an external worker.
pub async fn events(
    State(state): State<AppState>,
    JobId(id): JobId,
    ApiJson(update): ApiJson<ProgressUpdate>,
) -> Result<Response, ApiError> {
    let ack = state.service().ingest(&id, update).await?;
    Ok((StatusCode::ACCEPTED, Json(ack)).into_response())
}

/// `POST /api/v1/jobs/{id}/complete`.
pub async fn complete(
    State(state): State<AppState>,
    JobId(id): JobId,
    OptionalJson(request): OptionalJson<CompleteRequest>,
) -> Result<Response, ApiError> {
    let job = state
        .service()
        .complete(&id, request.result, request.result_path)
        .await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/fail`.
pub async fn fail(
    State(state): State<AppState>,
    JobId(id): JobId,
    ApiJson(request): ApiJson<FailRequest>,
) -> Result<Response, ApiError> {
    let job = state.service().fail(&id, request.error).await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    JobId(id): JobId,
    OptionalJson(request): OptionalJson<CancelRequest>,
) -> Result<Response, ApiError> {
    let job = state.service().cancel(&id, request.reason).await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/resume`.
pub async fn resume(State(state): State<AppState>, JobId(id): JobId) -> Result<Response, ApiError> {
    let job = state.service().resume(&id).await?;
    Ok(Json(job).into_response())
}

/// `GET /api/v1/jobs/{id}/logs`: the bounded stdout/stderr tails of the job's process (empty
/// for jobs run by external workers).
pub async fn logs(State(state): State<AppState>, JobId(id): JobId) -> Result<Response, ApiError> {
    let logs = state.service().runner().and_then(|runner| runner.logs(&id));
    let logs = match logs {
        Some(logs) => logs,
        None => {
            // 404 for an unknown job; an empty tail for one that ran elsewhere.
            let job = state.service().get(&id).await?;
            JobLogs {
                job_id: job.id,
                ..JobLogs::default()
            }
        }
    };
    Ok(Json(logs).into_response())
}
