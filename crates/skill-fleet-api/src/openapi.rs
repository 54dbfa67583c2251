//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! It is generated from the code: every handler carries a `#[utoipa::path]` attribute, every
//! wire type derives `utoipa::ToSchema` (the `openapi` feature of `skill-fleet-types`), and
//! the paths come from the same list the router serves ([`crate::routes::api`]), so the two
//! cannot disagree. What several routes share is added here, in one place each: the bearer
//! security scheme, the caching contract of the cached GETs ([`CACHED_GETS`]), the
//! storage-fault `503` and the second path of the stream handler ([`optimization_stream`]).

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use skill_fleet_types::{
    Artifact, ArtifactList, CancelRequest, ClaimRequest, CompleteRequest, CreateJob, ErrorBody,
    ErrorCode, ErrorDetail, EventAck, FailRequest, Job, JobList, JobLogs, JobStatus, Progress,
    ProgressPage, ProgressRecord, ProgressUpdate, ResultBody, StreamEvent,
};
use utoipa::openapi::path::{
    HttpMethod, Operation, Parameter, ParameterBuilder, ParameterIn, Paths,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Header, Object, ObjectBuilder, Required, ResponseBuilder, Type};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::UtoipaMethodRouter;

mod contract;

use crate::error::ApiError;
use crate::routes::jobs::CreateOptimization;
use crate::state::AppState;

/// The GET routes answered through the response cache: strong `ETag`, `Last-Modified`,
/// `Cache-Control`, `X-Cache`, and `304` on a matching `If-None-Match` / `If-Modified-Since`.
pub const CACHED_GETS: &[&str] = &[
    "/api/v1/jobs",
    "/api/v1/jobs/{id}",
    "/api/v1/jobs/{id}/progress",
    "/api/v1/jobs/{id}/result",
    "/api/v1/jobs/{id}/artifacts",
];

/// The path of the optimization stream, served by the job stream's handler.
const OPTIMIZATION_STREAM: &str = "/api/v1/optimization/{id}/stream";

/// What the document says besides its paths: info, shared schemas, security, tags. The paths
/// are added by [`crate::routes::api`]; [`document`] is the whole document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "skill-fleet",
        description = "A durable job server: create jobs, follow their progress live over \
            Server-Sent Events, read their history and results. Human-readable guide: \
            `docs/API.md`. A bearer token is required only when the server has one \
            (`--auth-token`); a server without a token needs none. Every error is `{\"error\": {\"code\", \"message\"}}` \
            (`ErrorBody`); clients match on `code`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        Job,
        JobStatus,
        JobList,
        Progress,
        ProgressUpdate,
        ProgressRecord,
        ProgressPage,
        StreamEvent,
        CreateJob,
        CreateOptimization,
        ClaimRequest,
        CompleteRequest,
        FailRequest,
        CancelRequest,
        ResultBody,
        EventAck,
        JobLogs,
        Artifact,
        ArtifactList,
        Health,
        Readiness,
        Metrics,
    )),
    modifiers(&Security),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Create, list and read jobs; lifecycle transitions"),
        (name = "workers", description = "What an external worker calls: claim, report progress, finish"),
        (name = "stream", description = "Live progress as Server-Sent Events"),
        (name = "optimization", description = "Shortcuts for jobs of type `optimization`"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
)]
pub(crate) struct ApiDoc;

/// The whole document: the info, tags and schemas of `ApiDoc` with the paths of every route
/// the router serves, and what the cached GETs and the store's routes share.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = crate::routes::api().into_openapi();
    // After the paths are in: these modify the operations of the routes.
    Caching.modify(&mut document);
    StorageFaults.modify(&mut document);
    Roles.modify(&mut document);
    document
}

/// The document as served, built once: [`document`] with the exact contract
/// ([`contract::apply`]: patterns, ranges and optional security from the validators'
/// constants).
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    let mut value = serde_json::to_value(document())
        .map_err(|err| format!("cannot encode the openapi document: {err}"))?;
    contract::apply(&mut value);
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|err| format!("cannot encode the openapi document: {err}"))
});

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This OpenAPI document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object, content_type = "application/json"),
        (status = 401, description = "A token is configured and the request did not carry it", body = ErrorBody),
    )
)]
pub async fn openapi_json() -> Result<Response, ApiError> {
    let body = DOCUMENT
        .as_ref()
        .map_err(|err| ApiError::Internal(err.clone()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response())
}

/// Body of `GET /healthz` (documentation only; the handler builds it with `json!`).
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// Body of `GET /readyz`: `{"status": "ready", …}` (200) or `{"status": "starting"}` (503)
/// (documentation only; the handler builds it with `json!`).
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `starting`.
    #[schema(example = "ready")]
    pub status: String,
    /// Jobs the streaming hub follows (only when ready).
    pub live_jobs: Option<u64>,
    /// Open stream subscriptions (only when ready).
    pub subscribers: Option<u64>,
    /// Whether writes are failing (only when ready): the last write was refused for a storage
    /// fault and none has committed since. Readiness stays 200 (reads and streams work).
    pub writes_failing: Option<bool>,
    /// While writes are failing, why (`null` otherwise): `database is full`, `database is read-only`,
    /// `database is busy`, `database i/o error` or `database is unavailable`.
    #[schema(example = "database is full")]
    pub write_fault: Option<String>,
}

/// Body of `GET /metrics` (documentation only; the handler builds it with `json!`).
#[derive(Serialize, ToSchema)]
pub struct Metrics {
    /// Requests by token (names and roles, never secrets), and those refused with 401.
    pub auth: AuthMetrics,
    /// The response cache of GETs.
    pub cache: CacheMetrics,
    /// Store calls made since start (each one a blocking-pool task).
    pub store_calls: u64,
    /// The cross-server change feed (PostgreSQL; zeros on SQLite).
    pub cluster: ClusterMetrics,
    /// The streaming hub.
    pub stream: StreamMetrics,
}

/// The `cluster` part of [`Metrics`]: what this server told the others sharing its
/// PostgreSQL database, and heard from them, since start.
#[derive(Serialize, ToSchema)]
pub struct ClusterMetrics {
    /// Whether the database is shared (PostgreSQL).
    pub shared_database: bool,
    /// Whether the listener connection listens now (false: changes are polled every tick).
    pub listening: bool,
    /// Times the listener connection was lost.
    pub listener_lost: u64,
    /// Doorbells (`NOTIFY`) this server sent.
    pub doorbells_rung: u64,
    /// Doorbells that failed (their changes go with the next).
    pub doorbells_failed: u64,
    /// Other servers' doorbells heard.
    pub doorbells_heard: u64,
    /// Reads of changes made because the listener was down.
    pub polls: u64,
    /// Other servers' changes fed to this server's caches, streams and executor.
    pub remote_changes: u64,
}

/// The `auth` part of [`Metrics`], since start.
#[derive(Serialize, ToSchema)]
pub struct AuthMetrics {
    /// Requests refused with 401 (no token, or one no configured token has).
    pub unauthorized: u64,
    /// One entry per token name and role that made a request.
    pub tokens: Vec<TokenMetrics>,
}

/// One token's requests in [`AuthMetrics`].
#[derive(Serialize, ToSchema)]
pub struct TokenMetrics {
    /// The token's name.
    pub name: String,
    /// Its role: `read`, `worker` or `admin`.
    pub role: String,
    /// Requests that carried it.
    pub requests: u64,
    /// Of those, refused with 403.
    pub forbidden: u64,
}

/// The `cache` part of [`Metrics`].
#[derive(Serialize, ToSchema)]
pub struct CacheMetrics {
    /// GETs answered from the cache (200 or 304).
    pub hits: u64,
    /// GETs built from the database.
    pub misses: u64,
    /// GETs answered with `304 Not Modified`.
    pub not_modified: u64,
    /// Entries in the cache.
    pub entries: u64,
}

/// The `stream` part of [`Metrics`].
#[derive(Serialize, ToSchema)]
pub struct StreamMetrics {
    /// Jobs the hub follows.
    pub jobs: u64,
    /// Open subscriptions.
    pub subscribers: u64,
    /// SSE streams open now (of live and of finished jobs).
    pub sse_connections: u64,
    /// Most SSE streams open at once; past it new streams get 503.
    pub max_sse_connections: u64,
    /// New SSE streams refused with 503 because `max_sse_connections` were open, since
    /// start.
    pub sse_refused: u64,
}

/// The responses of the two stream routes (documentation only).
#[derive(IntoResponses)]
pub enum StreamResponses {
    /// The job's states as `text/event-stream`. Each event has `id:` (the state's `seq`) and
    /// a `data:` line holding one `StreamEvent` as JSON; the first event also carries
    /// `retry:` (milliseconds). The first event is the current state, sent at once; then
    /// every newer state; a terminal state is sent last and the server ends the stream.
    /// Idle streams get keep-alive comment lines (`:`).
    #[response(status = 200, content_type = "text/event-stream")]
    Events(StreamEvent),
    /// The id is not a valid job id, or the query cannot be parsed.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// A token is configured and neither `Authorization: Bearer` nor `?token=` carried it.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No job with this id (answered before any stream starts).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The database failed.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The server is shutting down (the stream hub is closed), or `max_sse_connections`
    /// streams are open already (`too many open streams: N of N; retry later`, with
    /// `Retry-After`).
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait before opening the stream again (sent when too many streams are open)"))
    )]
    Unavailable(ErrorBody),
}

/// The parameters of the two stream routes (documentation only).
pub struct StreamParams;

impl IntoParams for StreamParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let param = |name: &str, place: ParameterIn, required: bool, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(place)
                .required(if required {
                    Required::True
                } else {
                    Required::False
                })
                .description(Some(description))
                .schema(Some(Object::with_type(Type::String)))
                .build()
        };
        let mut id = param("id", ParameterIn::Path, true, JOB_ID);
        id.schema = Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(skill_fleet_types::JOB_ID_PATTERN))
                .into(),
        );
        vec![
            id,
            param(
                "Last-Event-ID",
                ParameterIn::Header,
                false,
                "The `seq` of the last event the client saw (set by `EventSource` on \
                 reconnect), from this server or another one on the same database (ids come \
                 from the job's committed version, the same everywhere): only states with a \
                 larger `seq` are sent, and a terminal state always. A value that is not a \
                 whole number is ignored.",
            ),
            param(
                "lastEventId",
                ParameterIn::Query,
                false,
                "The same as `Last-Event-ID`, for clients that cannot set headers; the header \
                 wins when both are given.",
            ),
            param(
                "token",
                ParameterIn::Query,
                false,
                "The bearer token, for clients that cannot set headers (a browser's \
                 `EventSource`); accepted on the stream routes only.",
            ),
        ]
    }
}

/// The description of the `{id}` path parameter.
const JOB_ID: &str = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)";

/// Adds the security schemes: a bearer token in `Authorization`, or (stream routes only) in
/// the `token` query parameter.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Optional: required on every route but `/healthz` only when the server \
                         is started with a token (`--auth-token`, `SKILL_FLEET_AUTH_TOKEN` or \
                         `auth_token`) or a tokens file (`--tokens-file`); without either, no \
                         route needs it (so every operation's security also lists `{}`). A \
                         missing or wrong token gets 401 with `WWW-Authenticate: Bearer`; a \
                         token whose role may not call the operation gets 403 `forbidden`. \
                         Roles: `read` (every GET), `worker` (read, and claim, heartbeat, \
                         events, complete, fail, artifact upload, limited to its job types \
                         when it has some), `admin` (everything; `--auth-token` is an admin \
                         token). Each operation says the role it needs in `x-required-role`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same token as a query parameter, accepted on the stream routes only \
                 (browsers' `EventSource` cannot set headers).",
            ))),
        );
    }
}

/// Adds the caching contract to each of [`CACHED_GETS`]: the conditional request headers, the
/// validators and cache headers on `200`, and the `304` answer.
struct Caching;

impl Modify for Caching {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for path in CACHED_GETS {
            let Some(operation) = openapi
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| item.get.as_mut())
            else {
                continue;
            };
            add_caching(operation);
        }
    }
}

fn add_caching(operation: &mut Operation) {
    let header = |description: &str| {
        let mut header = Header::new(Object::with_type(Type::String));
        header.description = Some(description.to_owned());
        header
    };
    let validators = [
        (
            "ETag",
            header(
                "Strong entity tag of this representation: a job's tags change with its \
                 `version`; a list's with the store-wide change counter and the query.",
            ),
        ),
        (
            "Last-Modified",
            header("When the resource last changed (`updated_at`; for a list, its newest job)."),
        ),
        (
            "Cache-Control",
            header(
                "`max-age=<cache ttl in seconds>` once the job is terminal (a result always); \
                 `no-cache` while it can still change, and for lists.",
            ),
        ),
        (
            "X-Cache",
            header("`HIT` when answered from the server's response cache, else `MISS`."),
        ),
        (
            "Vary",
            header("`authorization`, when the server requires a token."),
        ),
    ];
    if let Some(utoipa::openapi::RefOr::T(ok)) = operation.responses.responses.get_mut("200") {
        for (name, value) in &validators {
            ok.headers.insert((*name).to_owned(), value.clone());
        }
    }
    let mut not_modified = ResponseBuilder::new().description(
        "A validator matched: `If-None-Match` names the current tag (weak comparison, `*` \
         matches), or, without `If-None-Match`, nothing changed since `If-Modified-Since`. \
         No body; the same headers as 200.",
    );
    for (name, value) in validators {
        not_modified = not_modified.header(name, value);
    }
    operation
        .responses
        .responses
        .insert("304".to_owned(), not_modified.build().into());
    let condition = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(Object::with_type(Type::String)))
            .build()
    };
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.push(condition(
        "If-None-Match",
        "One or more entity tags (or `*`); 304 when one matches the current `ETag`.",
    ));
    parameters.push(condition(
        "If-Modified-Since",
        "An HTTP date (IMF-fixdate); 304 when the resource has not changed since. Ignored \
         when `If-None-Match` is present or the date does not parse.",
    ));
}

/// Adds the storage-fault `503` to every route that uses the store (`/api/v1/jobs…`,
/// `/api/v1/optimization…`), so the per-route annotations need not repeat it. A route that
/// documents its own 503 (the streams' connection limit) gets the fault named in it.
struct StorageFaults;

const STORAGE_FAULT: &str = "The database refused the change: disk full, read-only, locked by \
     another process or an i/o error (`unavailable`). The change was not saved; retry after \
     `Retry-After` seconds (1). Reads keep working.";

impl Modify for StorageFaults {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !(path.starts_with("/api/v1/jobs") || path.starts_with("/api/v1/optimization")) {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if let Some(utoipa::openapi::RefOr::T(existing)) = responses.get_mut("503") {
                    existing.description = format!("{} {STORAGE_FAULT}", existing.description);
                    continue;
                }
                let fault = error_response(STORAGE_FAULT)
                    .header("Retry-After", Header::new(Object::with_type(Type::Integer)))
                    .build();
                responses.insert("503".to_owned(), fault.into());
            }
        }
    }
}

/// A response of our error body (`ErrorBody` as JSON) with `description`.
fn error_response(description: impl Into<String>) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        utoipa::openapi::ContentBuilder::new()
            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

/// Adds to every operation that needs a token the role it needs (`x-required-role`, from
/// [`crate::access::ROUTE_ROLES`]) and its `403`, so the per-route annotations need not
/// repeat them.
struct Roles;

impl Modify for Roles {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::access::{Requirement, Role, requirement};
        use axum::http::Method;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else {
                    continue;
                };
                let Requirement::Role(role) = requirement(&method, path) else {
                    continue;
                };
                let mut description = format!(
                    "A token is configured and this token's role may not call this operation \
                     (`forbidden`): it needs the `{role}` role or a higher one."
                );
                if role == Role::Worker && path.contains("{id}") {
                    description.push_str(
                        " A worker token limited to some job types also gets 403 for a job of \
                         another type.",
                    );
                } else if role == Role::Worker {
                    description.push_str(
                        " A worker token limited to some job types also gets 403 when it \
                         names another type.",
                    );
                }
                let forbidden = error_response(description).build();
                operation
                    .responses
                    .responses
                    .insert("403".to_owned(), forbidden.into());
                operation
                    .extensions
                    .get_or_insert_with(Default::default)
                    .insert("x-required-role".to_owned(), role.as_str().into());
            }
        }
    }
}

/// `routes!(stream::stream)` moved to `GET /api/v1/optimization/{id}/stream`: the job
/// stream's handler served there too, documented as its own operation.
pub fn optimization_stream(
    job_stream: UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, method_router) = job_stream;
    let mut moved = Paths::new();
    for mut operation in paths.paths.into_values().filter_map(|item| item.get) {
        operation.operation_id = Some("stream_optimization".to_owned());
        operation.tags = Some(vec!["optimization".to_owned(), "stream".to_owned()]);
        operation.summary = Some("Follow an optimization job's progress (SSE)".to_owned());
        operation.description = Some(
            "The same stream as `GET /api/v1/jobs/{id}/stream`, under the optimization \
             prefix; any job id is accepted."
                .to_owned(),
        );
        moved.add_path_operation(OPTIMIZATION_STREAM, vec![HttpMethod::Get], operation);
    }
    (schemas, moved, method_router)
}
