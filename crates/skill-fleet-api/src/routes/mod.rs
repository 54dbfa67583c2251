//! Route handlers, one module per resource, and [`api`]: the one list of the API's routes.

pub mod artifacts;
pub mod health;
pub mod jobs;
pub mod stream;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{self, ApiDoc};
use crate::state::AppState;

/// Every route of the API, each with its OpenAPI operation: a `routes!` entry serves a handler
/// at the method and path of its `#[utoipa::path]` and adds that operation to the document,
/// so no route is served undocumented and none documented but not served.
/// [`crate::router`] serves these; [`openapi::document`] is their document.
///
/// Full paths rather than `nest("/api/v1", …)`: a nested router rewrites every request's URI
/// (axum's `StripPrefix`), which was a measurable share of a cached `304`. Handlers sharing
/// one `routes!` must share its path.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(jobs::claim))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::history))
        .routes(routes!(jobs::result))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::heartbeat))
        .routes(routes!(jobs::complete))
        .routes(routes!(jobs::fail))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::resume))
        .routes(routes!(stream::stream))
        .routes(routes!(jobs::logs))
        .routes(routes!(artifacts::list))
        .routes(routes!(artifacts::upload, artifacts::download))
        .routes(routes!(jobs::create_optimization))
        // The job stream's handler again, under the optimization prefix.
        .routes(openapi::optimization_stream(routes!(stream::stream)))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}
