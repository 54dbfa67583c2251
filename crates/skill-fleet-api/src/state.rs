//! Shared state of the router: the service, the configuration, readiness and the slots of
//! open SSE streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::Tokens;
use crate::auth::AuthToken;
use skill_fleet_core::{Audience, JobService};

use crate::cache::{Generations, ResponseCache};

/// Default of [`ApiConfig::max_sse_connections`]: about 180 MiB of server memory when full.
pub const DEFAULT_MAX_SSE_CONNECTIONS: usize = 10_000;

/// Settings of the HTTP layer. The server binary fills these from its configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every route but `/healthz` requires `Authorization: Bearer <token>`: this
    /// one, an admin token named `admin`, or one of [`ApiConfig::tokens`].
    pub auth_token: Option<AuthToken>,
    /// The tokens with roles (a tokens file), shared with whoever reloads them. When set it
    /// must already hold `auth_token` ([`Tokens::new`]); when `None`, `auth_token` alone.
    pub tokens: Option<Arc<Tokens>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How often an idle SSE stream sends a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// The `retry:` hint sent to SSE clients.
    pub sse_retry: Duration,
    /// Most SSE streams open at once; past it a new stream is refused with 503 and
    /// `Retry-After`. Each open stream costs about 18 KiB of server memory.
    pub max_sse_connections: usize,
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
            tokens: None,
            max_body_bytes: 1024 * 1024,
            sse_keep_alive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            max_sse_connections: DEFAULT_MAX_SSE_CONNECTIONS,
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
    /// Change counters of cached responses; bumped by the change feed after every commit.
    generations: Arc<Generations>,
    cache: ResponseCache,
    config: ApiConfig,
    tokens: Arc<Tokens>,
    ready: AtomicBool,
    /// One permit per SSE stream that may be open; a stream holds its permit until it ends.
    streams: Arc<Semaphore>,
    /// The number of permits `streams` started with.
    max_streams: usize,
    /// Streams refused because all slots were taken, since start.
    streams_refused: AtomicU64,
}

/// The slot of one open SSE stream: held by the stream's body, released when it is dropped
/// (client gone, terminal state sent, shutdown).
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
impl StreamSlot {
    /// A slot of its own, for tests of a stream's body.
    pub(crate) fn alone() -> StreamSlot {
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned();
        StreamSlot {
            _permit: permit.unwrap_or_else(|_| unreachable!("a new semaphore has a permit")),
        }
    }
}

impl AppState {
    /// Wraps the service and configuration. The state starts *not ready* (`/readyz` answers
    /// 503) until [`AppState::set_ready`] is called after start-up recovery.
    pub fn new(service: JobService, config: ApiConfig) -> AppState {
        let max_streams = config.max_sse_connections.min(Semaphore::MAX_PERMITS);
        let generations = Arc::new(Generations::default());
        let tokens = config
            .tokens
            .clone()
            .unwrap_or_else(|| Arc::new(Tokens::from_auth_token(config.auth_token.as_ref())));
        service
            .feed()
            .subscribe(Audience::Caches, Arc::clone(&generations) as _);
        AppState {
            inner: Arc::new(Inner {
                service,
                generations,
                cache: ResponseCache::new(
                    config.cache_ttl,
                    config.cache_max_bytes,
                    tokens.enabled(),
                ),
                config,
                tokens,
                ready: AtomicBool::new(false),
                streams: Arc::new(Semaphore::new(max_streams)),
                max_streams,
                streams_refused: AtomicU64::new(0),
            }),
        }
    }

    /// The job service.
    pub fn service(&self) -> &JobService {
        &self.inner.service
    }

    /// Change counters of cached responses, bumped after every commit.
    pub fn generations(&self) -> &Generations {
        &self.inner.generations
    }

    /// The response cache of GETs.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.cache
    }

    /// The HTTP configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The tokens accepted now, and their counters.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// Marks start-up (migrations, recovery, seeding) as done.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether start-up is done.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Takes the slot of a new SSE stream, or `None` (counted in
    /// [`AppState::streams_refused`]) when [`ApiConfig::max_sse_connections`] streams are
    /// open. Never waits.
    pub fn try_open_stream(&self) -> Option<StreamSlot> {
        match Arc::clone(&self.inner.streams).try_acquire_owned() {
            Ok(permit) => Some(StreamSlot { _permit: permit }),
            Err(_) => {
                let refused = self.inner.streams_refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th… refusal: a flood of reconnects at the
                // limit cannot flood the log.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        max_sse_connections = self.inner.max_streams,
                        refused,
                        "too many open streams: new streams are refused with 503"
                    );
                }
                None
            }
        }
    }

    /// Streams refused because [`ApiConfig::max_sse_connections`] were open, since start.
    pub fn streams_refused(&self) -> u64 {
        self.inner.streams_refused.load(Ordering::Relaxed)
    }

    /// SSE streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner
            .max_streams
            .saturating_sub(self.inner.streams.available_permits())
    }

    /// Most SSE streams open at once (the configured limit).
    pub fn max_streams(&self) -> usize {
        self.inner.max_streams
    }
}
