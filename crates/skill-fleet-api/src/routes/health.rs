//! `GET /healthz` (the process answers) and `GET /readyz` (start-up is done).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// Liveness: answers as long as the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness",
    security(()),
    responses((status = 200, description = "The process serves requests (never needs a token)", body = crate::openapi::Health))
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The benchmark baseline: reads the body (if any) and answers `{}`.
pub async fn noop(_body: axum::body::Bytes) -> Json<serde_json::Value> {
    Json(json!({}))
}

/// Readiness: 200 once migrations, recovery and seeding are done; 503 before.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "Start-up is done: `{\"status\": \"ready\", \"live_jobs\", \"subscribers\", \"writes_failing\"}`, and `write_fault` while a storage fault refuses writes (still 200: reads and streams keep working)", body = crate::openapi::Readiness),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = skill_fleet_types::ErrorBody),
        (status = 503, description = "Still starting (migrations, recovery, seeding): `{\"status\": \"starting\"}`, not an error body", body = crate::openapi::Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        let stats = state.service().hub().stats();
        let mut body = json!({
            "status": "ready",
            "live_jobs": stats.jobs,
            "subscribers": stats.subscribers,
            "writes_failing": false,
            "write_fault": null,
        });
        // Readiness stays 200 during a storage fault: reads and streams keep working, and a
        // restart would not free the disk; the body says writes are refused, and why.
        if let Some(fault) = state.service().write_fault() {
            body["writes_failing"] = json!(true);
            body["write_fault"] = json!(fault.describe());
        }
        Json(body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response()
    }
}

/// Counters as JSON: response cache hits/misses/304s, store calls, hub size, open SSE streams.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Counters",
    responses(
        (status = 200, description = "Response cache, store and stream counters", body = crate::openapi::Metrics),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = skill_fleet_types::ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &state.cache().counters;
    let hub = state.service().hub().stats();
    let cluster = state.service().cluster_stats();
    // Names and roles only: a token's secret is never kept, only its hash.
    let tokens: Vec<serde_json::Value> = state
        .tokens()
        .usage()
        .into_iter()
        .map(|(name, role, usage)| {
            json!({
                "name": name,
                "role": role.as_str(),
                "requests": usage.requests,
                "forbidden": usage.forbidden,
            })
        })
        .collect();
    Json(json!({
        "auth": {
            "unauthorized": state.tokens().unauthorized(),
            "tokens": tokens,
        },
        "cache": {
            "hits": counters.hits.load(Relaxed),
            "misses": counters.misses.load(Relaxed),
            "not_modified": counters.not_modified.load(Relaxed),
            "entries": state.cache().entry_count(),
        },
        "store_calls": state.service().store_calls(),
        "cluster": {
            "shared_database": state.service().store().is_shared(),
            "listening": cluster.listening.load(Relaxed),
            "listener_lost": cluster.listener_lost.load(Relaxed),
            "doorbells_rung": cluster.doorbells_rung.load(Relaxed),
            "doorbells_failed": cluster.doorbells_failed.load(Relaxed),
            "doorbells_heard": cluster.doorbells_heard.load(Relaxed),
            "polls": cluster.polls.load(Relaxed),
            "remote_changes": cluster.remote_changes.load(Relaxed),
        },
        "stream": {
            "jobs": hub.jobs,
            "subscribers": hub.subscribers,
            "sse_connections": state.open_streams(),
            "max_sse_connections": state.max_streams(),
            "sse_refused": state.streams_refused(),
        },
    }))
}
