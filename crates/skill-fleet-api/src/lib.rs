#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod auth;
pub mod cache;
mod error;
mod extract;
pub mod openapi;
pub mod routes;
mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use auth::{AuthToken, constant_time_eq};
pub use error::ApiError;
pub use state::{ApiConfig, AppState, DEFAULT_MAX_SSE_CONNECTIONS, StreamSlot};

/// The whole HTTP API: `/api/v1/…`, `/healthz`, `/readyz`, `/metrics`.
///
/// Every route is listed in [`openapi::ROUTES`] and described in the OpenAPI document served at
/// `/api/v1/openapi.json`; `tests/openapi.rs` fails when a route here is missing from either.
pub fn router(state: AppState) -> Router {
    use routes::{health, jobs, stream};
    let max_body = state.config().max_body_bytes;
    let mut root = Router::new();
    if state.config().bench_routes {
        root = root.route("/_bench/noop", get(health::noop).post(health::noop));
    }
    // Full paths rather than `nest("/api/v1", …)`: a nested router rewrites every request's
    // URI (axum's `StripPrefix`), which was a measurable share of a cached `304`.
    root.route("/api/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/api/v1/jobs/claim", post(jobs::claim))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/progress", get(jobs::history))
        .route("/api/v1/jobs/{id}/result", get(jobs::result))
        .route("/api/v1/jobs/{id}/events", post(jobs::events))
        .route("/api/v1/jobs/{id}/complete", post(jobs::complete))
        .route("/api/v1/jobs/{id}/fail", post(jobs::fail))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/api/v1/jobs/{id}/stream", get(stream::stream))
        .route("/api/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/api/v1/optimization", post(jobs::create_optimization))
        .route("/api/v1/optimization/{id}/stream", get(stream::stream))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("`{}` does not take {method}", uri.path()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for `{}`", uri.path()))
}
