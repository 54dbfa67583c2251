//! `GET /healthz` (the process answers) and `GET /readyz` (start-up is done).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// Liveness: answers as long as the process serves requests.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 once migrations, recovery and seeding are done; 503 before.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        let stats = state.service().hub().stats();
        Json(json!({
            "status": "ready",
            "live_jobs": stats.jobs,
            "subscribers": stats.subscribers,
        }))
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response()
    }
}

/// Counters as JSON: response cache hits/misses/304s, store calls, hub size.
pub async fn metrics(State(state): State<AppState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &state.cache().counters;
    let hub = state.service().hub().stats();
    Json(json!({
        "cache": {
            "hits": counters.hits.load(Relaxed),
            "misses": counters.misses.load(Relaxed),
            "not_modified": counters.not_modified.load(Relaxed),
            "entries": state.cache().entry_count(),
        },
        "store_calls": state.service().store_calls(),
        "stream": {"jobs": hub.jobs, "subscribers": hub.subscribers},
    }))
}
