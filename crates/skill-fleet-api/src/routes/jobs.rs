//! The job routes: create, list, get, history, result, claim, events and lifecycle.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use skill_fleet_core::Claimant;
use skill_fleet_jobs::{Created, ListFilter, Writer};
use skill_fleet_types::{
    CancelRequest, ClaimRequest, ClaimedJob, CompleteRequest, CreateJob, FailRequest, Fence,
    HeartbeatAck, HeartbeatRequest, JobLogs, JobStatus, ProgressUpdate, ResultBody,
};
use skill_fleet_types::{ErrorBody, EventAck, Job, JobList, ProgressPage};

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
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    operation_id = "create_job",
    description = "Creates a `queued` job. With an `id` that exists, the same type and metadata return the existing job (200) so a retried create is harmless; a different body is 409. Without an `id` the server generates a sortable one.",
    tag = "jobs",
    summary = "Create a job",
    params(("X-Skill-Fleet-Source" = Option<String>, Header, nullable = false, description = "`cli` records the job's `source` as `cli`; anything else, or none, as `api`")),
    request_body(content = CreateJob, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, queued", body = Job, headers(("Location" = String, description = "`/api/v1/jobs/{id}`"))),
        (status = 200, description = "A job with this id and the same type and metadata exists; returned unchanged (a retried create is harmless)", body = Job, headers(("Location" = String, description = "`/api/v1/jobs/{id}`"))),
        (status = 400, description = "The body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 409, description = "A job with this id exists with another type or metadata (`conflict`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The request does not declare `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type, or the id, type or metadata is invalid (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateJob>,
) -> Result<Response, ApiError> {
    let (job, created) = state.service().create(request, source_of(&headers)).await?;
    Ok(created_response(job, created))
}

/// Body of `POST /api/v1/optimization`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/api/v1/optimization",
    operation_id = "create_optimization",
    description = "The same as `POST /api/v1/jobs` with `type` fixed to `optimization`, except that the body may be empty and `Content-Type` is not checked.",
    tag = "optimization",
    summary = "Create an optimization job",
    params(("X-Skill-Fleet-Source" = Option<String>, Header, nullable = false, description = "`cli` records the job's `source` as `cli`; anything else, or none, as `api`")),
    request_body(content = Option<CreateOptimization>, content_type = "application/json", description = "Optional: an empty body creates a job with no metadata and a generated id. `Content-Type` is not checked."),
    responses(
        (status = 201, description = "Created, queued, of type `optimization`", body = Job, headers(("Location" = String, description = "`/api/v1/jobs/{id}`"))),
        (status = 200, description = "A job with this id and the same metadata exists; returned unchanged", body = Job, headers(("Location" = String, description = "`/api/v1/jobs/{id}`"))),
        (status = 400, description = "The body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 409, description = "A job with this id exists with another type or metadata (`conflict`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "A field is unknown or of the wrong type, or the id or metadata is invalid (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    pub status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Page size (default 50; larger values are taken as 500).
    #[param(minimum = 1)]
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
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    operation_id = "list_jobs",
    description = "Newest first, filtered by `status` and `type`, paged with `cursor` (the previous page's `next_cursor`). The `ETag` comes from the store-wide change counter and the query, so any write anywhere changes it.",
    tag = "jobs",
    summary = "List jobs, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of jobs", body = JobList),
        (status = 400, description = "An unknown query parameter, a value of the wrong type, an unknown `status`, an invalid `type`, or `limit=0` (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 422, description = "`cursor` is not one this server issued (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn list(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    cached(&state, request, async |parts| {
        let ApiQuery(query) = ApiQuery::<ListQuery>::from_request_parts(parts, &state).await?;
        let filter = query.into_filter()?;
        let scope = state.generations().lists();
        let (counter, list) = state.service().list(filter).await?;
        let last_modified = list
            .jobs
            .iter()
            .map(|job| job.updated_at)
            .max()
            .unwrap_or_default();
        let representation = Representation {
            etag: etag(format_args!(
                "jobs.c{counter}.q{:x}",
                query_hash(&parts.uri)
            )),
            last_modified,
            settled: false,
            body: to_body(&list)?,
        };
        Ok((scope, representation))
    })
    .await
}

/// `GET /api/v1/jobs/{id}`: ETag from id and version; `max-age` once terminal, else `no-cache`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    operation_id = "get_job",
    description = "The stored job. Coalesced progress reaches the database within one flush interval (100 ms by default), so this may lag the stream by that much; in exchange its `version`, and so its `ETag`, always describes exactly this body.",
    tag = "jobs",
    summary = "Get a job",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 400, description = "The id is not a valid job id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn get(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    cached(&state, request, async |parts| {
        let JobId(id) = JobId::from_request_parts(parts, &state).await?;
        let scope = state.generations().job(&id);
        let job = state.service().get(&id).await?;
        let representation = Representation {
            etag: etag(format_args!("{}.v{}", job.id, job.version)),
            last_modified: job.updated_at,
            settled: job.status.is_terminal(),
            body: to_body(&job)?,
        };
        Ok((scope, representation))
    })
    .await
}

/// Query of `GET /api/v1/jobs/{id}/progress`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only rows with a larger `seq`.
    pub after: Option<i64>,
    /// Page size (default 500; taken into `1..=1000`, the store's largest page).
    pub limit: Option<u32>,
}

/// `GET /api/v1/jobs/{id}/progress`: ETag from id, version and the page asked for.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/progress",
    operation_id = "job_progress",
    description = "The job's stored progress rows in `seq` order, paged with `after` (the previous page's `next_after`).",
    tag = "jobs",
    summary = "A job's progress history",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)"), HistoryQuery),
    responses(
        (status = 200, description = "One page of progress records, in `seq` order", body = ProgressPage),
        (status = 400, description = "The id is not a valid job id, or the query cannot be parsed (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    cached(&state, request, async |parts| {
        let JobId(id) = JobId::from_request_parts(parts, &state).await?;
        let ApiQuery(query) = ApiQuery::<HistoryQuery>::from_request_parts(parts, &state).await?;
        let limit = query
            .limit
            .unwrap_or(500)
            .clamp(1, skill_fleet_jobs::MAX_HISTORY_LIMIT);
        let scope = state.generations().job(&id);
        let job = state.service().get(&id).await?;
        let page = state.service().history(&id, query.after, limit).await?;
        let representation = Representation {
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
        };
        Ok((scope, representation))
    })
    .await
}

/// `GET /api/v1/jobs/{id}/result`: the result, 404 until the job has one.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/result",
    operation_id = "job_result",
    description = "200 only once the job is `completed` with a `result` or a `result_path`.",
    tag = "jobs",
    summary = "A completed job's result",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    responses(
        (status = 200, description = "The result (its `Cache-Control` is always `max-age`: a result never changes)", body = ResultBody),
        (status = 400, description = "The id is not a valid job id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id, or the job is not completed, or it completed without `result` and `result_path` (`not_found`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn result(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    cached(&state, request, async |parts| {
        let JobId(id) = JobId::from_request_parts(parts, &state).await?;
        let scope = state.generations().job(&id);
        let job = state.service().get(&id).await?;
        if job.status != JobStatus::Completed || (job.result.is_none() && job.result_path.is_none())
        {
            return Err(ApiError::NotFound(format!(
                "job `{}` has no result yet (status {})",
                job.id, job.status
            )));
        }
        let representation = Representation {
            etag: etag(format_args!("{}.v{}.result", job.id, job.version)),
            last_modified: job.updated_at,
            settled: true,
            body: to_body(&ResultBody {
                result_url: job
                    .result_path
                    .as_deref()
                    .and_then(skill_fleet_types::result_artifact)
                    .map(|name| format!("/api/v1/jobs/{}/artifacts/{name}", job.id)),
                job_id: job.id,
                result: job.result,
                result_path: job.result_path,
            })?,
        };
        Ok((scope, representation))
    })
    .await
}

/// Answers a GET from the response cache when it holds a current representation, keyed by
/// path and query; else `build` extracts what it needs from the request, reads the
/// database, and the result is kept and answered with.
///
/// A hit extracts nothing (no id, no query, no copies of headers): an entry exists only for a
/// key whose request was valid when it was built. `build` must read the [`Scope`] it returns
/// **before** it reads the database, so a write committed in between makes the entry stale.
pub(crate) async fn cached(
    state: &AppState,
    request: Request,
    build: impl AsyncFnOnce(&mut Parts) -> Result<(Scope, Representation), ApiError>,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let cache = state.cache();
    let key = cache_key(&parts.uri);
    if let Some(prepared) = cache.lookup(key, state.generations()) {
        return Ok(cache.respond(&parts.headers, &prepared, true));
    }
    let key = key.to_owned();
    let (scope, representation) = build(&mut parts).await?;
    let prepared = cache.prepare(representation);
    cache.insert(key, scope, Arc::clone(&prepared));
    Ok(cache.respond(&parts.headers, &prepared, false))
}

fn cache_key(uri: &Uri) -> &str {
    uri.path_and_query()
        .map_or_else(|| uri.path(), |pq| pq.as_str())
}

pub(crate) fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, ApiError> {
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
#[utoipa::path(
    post,
    path = "/api/v1/jobs/claim",
    operation_id = "claim_job",
    description = "An external worker takes the oldest queued job of the given types (not one in its rescue back-off) and it becomes `running` under a lease owned by `worker`. The answer is the job plus `lease_token`, `lease_ttl_seconds` and `heartbeat_interval_seconds`: every write of this attempt (events, heartbeat, complete, fail) carries `attempt` and `lease_token`, and a heartbeat every `heartbeat_interval_seconds` keeps the lease; a job whose lease expires goes back to the queue. Types the server runs itself are never handed out, and asking for one is 422.",
    tag = "workers",
    summary = "Take the oldest queued job",
    request_body(content = Option<ClaimRequest>, content_type = "application/json", description = "Optional: an empty body claims any type the server does not run itself. `Content-Type` is not checked."),
    responses(
        (status = 200, description = "The claimed job, now `running`, with its lease", body = ClaimedJob),
        (status = 204, description = "No queued job of these types (or all are in their rescue back-off)"),
        (status = 400, description = "The body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "A field is unknown or of the wrong type, a type or the worker name is invalid, or a type is one the server runs itself (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
        (status = 503, description = "The database cannot be written now (`unavailable`)", body = ErrorBody),
    ),
)]
pub async fn claim(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::access::Caller>>,
    OptionalJson(mut request): OptionalJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    crate::access::check_claim(caller.as_deref(), &mut request.types)?;
    for job_type in &request.types {
        skill_fleet_types::validate_job_type(job_type)?;
    }
    let service = state.service();
    match service
        .claim(Claimant::Worker, request.types, request.worker)
        .await?
    {
        Some(claimed) => Ok(Json(ClaimedJob {
            lease_token: claimed.lease.token.clone(),
            job: claimed.job,
            lease_ttl_seconds: service.lease_ttl().as_secs_f64(),
            heartbeat_interval_seconds: service.heartbeat_interval().as_secs_f64(),
        })
        .into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `POST /api/v1/jobs/{id}/heartbeat`: renews a claimed job's lease.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/heartbeat",
    operation_id = "heartbeat",
    description = "Renews the lease of the attempt that owns the job for another `lease_ttl_seconds` (checked before the answer, written with the next flush; while the database is failing, written before the answer, 503 when it cannot be). When the job was cancelled (by a user, a budget or a time limit) the answer is 200 with `stop: true` and the reason: stop the run and report nothing more. When the attempt no longer owns the job (its lease expired and the job was rescued, or another attempt holds it) the answer is 409 `lease_lost` with the job's current `attempt` and `status`.",
    tag = "workers",
    summary = "Renew a lease",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    request_body(content = HeartbeatRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Renewed (`stop: false`), or the job ended from outside (`stop: true`)", body = HeartbeatAck),
        (status = 400, description = "The id is not a valid job id, or the body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "This attempt does not own the job (`lease_lost`; `attempt` and `status` are the job's current ones): stop the run, write nothing more", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The request does not declare `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
        (status = 503, description = "The database cannot be written now (`unavailable`): retry", body = ErrorBody),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    JobId(id): JobId,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let fence = Fence::from_fields(Some(request.attempt), Some(request.lease_token))?
        .ok_or_else(|| ApiError::Internal("a heartbeat without a fence".to_owned()))?;
    let ack = state.service().heartbeat(&id, fence).await?;
    Ok(Json(ack).into_response())
}

/// `POST /api/v1/jobs/{id}/events`: progress from an external worker.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/events",
    operation_id = "report_progress",
    description = "Progress from an external worker, merged into the job's state and streamed at once. A claimed job's events carry the claim's `attempt` and `lease_token` (a mismatch is 409 `lease_lost` and changes nothing) and renew its lease. An event without them is accepted on a queued job (it starts it, under an open lease that token-less events keep) and on a job so started, never on a claimed job. Written to the database before the answer (`durable: true`) when it is the first event of a queued job (which starts it), changes the step, or carries a checkpoint; otherwise written within one flush interval. A `cost_usd` past the job's `budget_usd` cancels the job (the answer's `status` is then `cancelled`).",
    tag = "workers",
    summary = "Report progress",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    request_body(content = ProgressUpdate, content_type = "application/json", description = "Fields left out keep their values. The first event of a queued job starts it."),
    responses(
        (status = 202, description = "Accepted and streamed; `durable` says whether it was written before the answer", body = EventAck),
        (status = 400, description = "The id is not a valid job id, or the body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is completed, failed or cancelled: stop the run (`invalid_transition`); or this attempt does not own the job: stop, write nothing more (`lease_lost`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The request does not declare `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is unknown or of the wrong type, or `progress` is outside 0..=1, `cost_usd` negative or not finite, `metric` not finite (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
        (status = 503, description = "The server is shutting down (`unavailable`)", body = ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    JobId(id): JobId,
    ApiJson(mut update): ApiJson<ProgressUpdate>,
) -> Result<Response, ApiError> {
    let writer = Writer::of(update.take_fence()?);
    let ack = state.service().ingest(&id, update, writer).await?;
    Ok((StatusCode::ACCEPTED, Json(ack)).into_response())
}

/// `POST /api/v1/jobs/{id}/complete`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/complete",
    operation_id = "complete_job",
    description = "Pending progress is written first; the job's stream sends the final state and ends. A claimed job's complete carries the claim's `attempt` and `lease_token`; retried with the same ones after a lost answer, it answers 200 with the job as it is. A mismatch is 409 `lease_lost` and stores nothing.",
    tag = "workers",
    summary = "Complete a running job",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    request_body(content = Option<CompleteRequest>, content_type = "application/json", description = "Optional. `Content-Type` is not checked."),
    responses(
        (status = 200, description = "The job, now `completed` (progress 1)", body = Job),
        (status = 400, description = "The id is not a valid job id, or the body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not running (`invalid_transition`), or this attempt does not own it (`lease_lost`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn complete(
    State(state): State<AppState>,
    JobId(id): JobId,
    OptionalJson(request): OptionalJson<CompleteRequest>,
) -> Result<Response, ApiError> {
    let writer = Writer::of(request.fence()?);
    let job = state
        .service()
        .complete(&id, request.result, request.result_path, writer)
        .await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/fail`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/fail",
    operation_id = "fail_job",
    description = "Pending progress is written first; the job's stream sends the final state (its `message` is the error) and ends. A claimed job's fail carries the claim's `attempt` and `lease_token` (a mismatch is 409 `lease_lost`); a retry with the same ones answers 200.",
    tag = "workers",
    summary = "Fail a queued or running job",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    request_body(content = FailRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The job, now `failed`", body = Job),
        (status = 400, description = "The id is not a valid job id, or the body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is already completed, failed or cancelled (`invalid_transition`), or this attempt does not own it (`lease_lost`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The request does not declare `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn fail(
    State(state): State<AppState>,
    JobId(id): JobId,
    ApiJson(request): ApiJson<FailRequest>,
) -> Result<Response, ApiError> {
    let writer = Writer::of(request.fence()?);
    let job = state.service().fail(&id, request.error, writer).await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    description = "The job's error becomes `reason` (default `cancelled`). If the server runs the job, its process is stopped. The terminal history row's `actor` names the token that asked (when the server needs one).",
    tag = "jobs",
    summary = "Cancel a queued or running job",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    request_body(content = Option<CancelRequest>, content_type = "application/json", description = "Optional. `Content-Type` is not checked."),
    responses(
        (status = 200, description = "The job, now `cancelled`; a process running it is stopped", body = Job),
        (status = 400, description = "The id is not a valid job id, or the body is not valid JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is already completed, failed or cancelled (`invalid_transition`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::access::Caller>>,
    JobId(id): JobId,
    OptionalJson(request): OptionalJson<CancelRequest>,
) -> Result<Response, ApiError> {
    let actor = caller.map(|caller| caller.name.to_string());
    let job = state
        .service()
        .cancel_by(&id, request.reason, actor)
        .await?;
    Ok(Json(job).into_response())
}

/// `POST /api/v1/jobs/{id}/resume`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/resume",
    operation_id = "resume_job",
    description = "The job goes back to `queued` with its checkpoint; error and `completed_at` are cleared, and the next start increments `attempt`. When the server needs a token, the history gets a `resumed` event row whose `actor` names the token that asked.",
    tag = "jobs",
    summary = "Requeue a failed or cancelled job",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    responses(
        (status = 200, description = "The job, `queued` again with its checkpoint", body = Job),
        (status = 400, description = "The id is not a valid job id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not failed or cancelled (`invalid_transition`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::access::Caller>>,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let actor = caller.map(|caller| caller.name.to_string());
    let job = state.service().resume_by(&id, actor).await?;
    Ok(Json(job).into_response())
}

/// `GET /api/v1/jobs/{id}/logs`: the bounded stdout/stderr tails of the job's process (empty
/// for jobs run by external workers).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/logs",
    operation_id = "job_logs",
    tag = "jobs",
    summary = "The tails of a job's process output",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    responses(
        (status = 200, description = "The stdout and stderr tails (empty for a job run by an external worker or not run yet)", body = JobLogs),
        (status = 400, description = "The id is not a valid job id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
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
