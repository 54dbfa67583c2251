//! Shared state of the router: the service, the configuration and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cache::ResponseCache;
use crate::service::JobService;

/// Settings of the HTTP layer. The server binary fills these from its configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every route but `/healthz` requires `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How often an idle SSE stream sends a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// The `retry:` hint sent to SSE clients.
    pub sse_retry: Duration,
    /// How long cached GET responses live, and the `max-age` of settled (terminal) jobs.
    pub cache_ttl: Duration,
    /// Upper bound of the response cache, in bytes of keys and bodies.
    pub cache_max_bytes: u64,
    /// Serve `GET`/`POST /_bench/noop`, a handler that does nothing, as the baseline of
    /// `cargo xtask bench` (same server, same runtime, same middleware).
    pub bench_routes: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            auth_token: None,
            max_body_bytes: 1024 * 1024,
            sse_keep_alive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(300),
            cache_max_bytes: 64 * 1024 * 1024,
            bench_routes: false,
        }
    }
}

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    service: JobService,
    cache: ResponseCache,
    config: ApiConfig,
    ready: AtomicBool,
}

impl AppState {
    /// Wraps the service and configuration. The state starts *not ready* (`/readyz` answers
    /// 503) until [`AppState::set_ready`] is called after start-up recovery.
    pub fn new(service: JobService, config: ApiConfig) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                service,
                cache: ResponseCache::new(
                    config.cache_ttl,
                    config.cache_max_bytes,
                    config.auth_token.is_some(),
                ),
                config,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// The job service.
    pub fn service(&self) -> &JobService {
        &self.inner.service
    }

    /// The response cache of GETs.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.cache
    }

    /// The HTTP configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Marks start-up (migrations, recovery, seeding) as done.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether start-up is done.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}
