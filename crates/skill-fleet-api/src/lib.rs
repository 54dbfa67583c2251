#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod auth;
pub mod cache;
mod error;
mod extract;
pub mod openapi;
pub mod routes;
mod runner;
mod service;
mod state;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use auth::{AuthToken, constant_time_eq};
pub use error::ApiError;
pub use runner::Runner;
pub use service::{JobService, StreamStart};
pub use state::{ApiConfig, AppState, DEFAULT_MAX_SSE_CONNECTIONS, StreamSlot};

/// The whole HTTP API: `/api/v1/…`, `/healthz`, `/readyz`, `/metrics`.
///
/// The routes are [`routes::api`], the list the OpenAPI document served at
/// `/api/v1/openapi.json` is built from, so every route served is documented. Only the
/// config-gated benchmark route `/_bench/noop` is added here, outside the document.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let mut root: Router<AppState> = routes::api().into();
    if state.config().bench_routes {
        root = root.route(
            "/_bench/noop",
            get(routes::health::noop).post(routes::health::noop),
        );
    }
    root.fallback(not_found)
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

/// How often running jobs are checked against their time limits.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Writes pending coalesced progress every `interval`, and cancels jobs past their time
/// limits about once a second, until `shutdown` resolves. The caller flushes once more on
/// shutdown ([`JobService::shutdown`]).
pub async fn run_flusher(
    state: AppState,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_limit_check = tokio::time::Instant::now();
    let mut failed_ticks: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {
                // An outage (disk full, read-only) fails every tick: warn once, then say
                // when it ends, instead of ten lines a second.
                match state.service().flush_pending().await {
                    Ok(_) if failed_ticks > 0 => {
                        tracing::info!(failed_ticks, "progress flush recovered; pending progress written");
                        failed_ticks = 0;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if failed_ticks == 0 {
                            tracing::warn!(error = %err, "progress flush failed; retrying every tick");
                        } else {
                            tracing::debug!(error = %err, failed_ticks, "progress flush failed again");
                        }
                        failed_ticks += 1;
                    }
                }
                if last_limit_check.elapsed() >= LIMIT_CHECK_INTERVAL {
                    last_limit_check = tokio::time::Instant::now();
                    state.service().enforce_time_limits().await;
                }
            }
        }
    }
}
