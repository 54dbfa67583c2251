#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod access;
mod auth;
pub mod cache;
mod error;
mod extract;
pub mod openapi;
pub mod routes;
mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use auth::{AuthToken, constant_time_eq};
pub use error::ApiError;
pub use state::{ApiConfig, AppState, DEFAULT_MAX_SSE_CONNECTIONS, StreamSlot};

/// The whole HTTP API: `/api/v1/…`, `/healthz`, `/readyz`, `/metrics`.
///
/// The routes are [`routes::api`], the list the OpenAPI document served at
/// `/api/v1/openapi.json` is built from, so every route served is documented. Only the
/// config-gated benchmark routes `/_bench/noop` and `/_bench/artifact/{id}/{name}` (an
/// artifact served from memory) are added here, outside the document.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let mut root: Router<AppState> = routes::api().into();
    if state.config().bench_routes {
        root = root.route(
            "/_bench/noop",
            get(routes::health::noop).post(routes::health::noop),
        );
        root = root.route(
            "/_bench/artifact/{id}/{name}",
            get(routes::artifacts::bench_from_memory),
        );
    }
    root.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
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
