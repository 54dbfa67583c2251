//! Test helpers: an app on its own temp database, driven with `oneshot` or over a socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use skill_fleet_api::{ApiConfig, AppState};
use skill_fleet_core::JobService;
use skill_fleet_jobs::JobStore;
use skill_fleet_stream::{Hub, HubConfig};
use tower::ServiceExt;

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn new() -> TestApp {
        TestApp::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let store = JobStore::open(path.to_str().unwrap()).unwrap();
        let hub = Hub::new(HubConfig {
            emit_interval: Duration::from_millis(20),
            ..HubConfig::default()
        });
        let state = AppState::new(JobService::new(store, hub, 0), config);
        state.set_ready(true);
        let router = skill_fleet_api::router(state.clone());
        TestApp {
            state,
            router,
            _dir: dir,
        }
    }

    /// An app over `state`, whose database lives in `dir`.
    pub fn from_state(state: AppState, dir: tempfile::TempDir) -> TestApp {
        let router = skill_fleet_api::router(state.clone());
        TestApp {
            state,
            router,
            _dir: dir,
        }
    }

    pub fn store(&self) -> &JobStore {
        self.state.service().store()
    }

    pub async fn request(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.request(
            Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn post_raw(&self, uri: &str, content_type: Option<&str>, body: &str) -> Reply {
        let mut builder = Request::builder().method(Method::POST).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        self.request(builder.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    /// Creates a job of `job_type` with id `id` and asserts it was created.
    pub async fn create(&self, id: &str, job_type: &str) -> Value {
        let reply = self
            .post(
                "/api/v1/jobs",
                serde_json::json!({"id": id, "type": job_type}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body
    }

    /// Serves the router on 127.0.0.1:0 and returns the address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router.clone();
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        addr
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One SSE event as read off the wire.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Value,
}

/// Reads an SSE stream on a thread (ureq is blocking); events arrive on the channel, and the
/// channel closes when the stream ends.
pub struct SseReader {
    pub status: u16,
    pub events: std::sync::mpsc::Receiver<SseEvent>,
}

pub fn open_sse(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> SseReader {
    use std::io::BufRead;
    let url = format!("http://{addr}{path}");
    let mut request = skill_fleet_testkit::http::streaming_agent()
        .get(&url)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.call().unwrap();
    let status = response.status().as_u16();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        let mut id = None;
        let mut data = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                    if tx
                        .send(SseEvent {
                            id: id.take(),
                            data: value,
                        })
                        .is_err()
                    {
                        return;
                    }
                    data.clear();
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("data:") {
                data.push_str(rest.trim_start());
            } else if let Some(rest) = line.strip_prefix("id:") {
                id = Some(rest.trim().to_owned());
            }
        }
    });
    SseReader { status, events: rx }
}

impl SseReader {
    pub fn next(&self) -> Option<SseEvent> {
        self.events.recv_timeout(Duration::from_secs(20)).ok()
    }
}

/// Two or more apps ("servers") on one PostgreSQL database, each running the cluster feed.
pub struct TestCluster {
    pub servers: Vec<TestApp>,
    pub database: skill_fleet_testkit::PostgresDatabase,
}

impl TestCluster {
    /// `n` servers on a fresh database, or `None` (the reason printed) without PostgreSQL.
    pub async fn new(n: usize) -> Option<TestCluster> {
        let postgres = skill_fleet_testkit::TestPostgres::get()?;
        let database = postgres.database();
        let mut servers = Vec::new();
        for run in 1..=n as u64 {
            let store = JobStore::open(&database.url).unwrap();
            let since = store.change_counter().unwrap();
            let hub = Hub::new(HubConfig {
                emit_interval: Duration::from_millis(20),
                ..HubConfig::default()
            });
            let state = AppState::new(JobService::new(store, hub, run), ApiConfig::default());
            state.set_ready(true);
            let feed = state.clone();
            tokio::spawn(async move {
                let settings = skill_fleet_core::ClusterSettings {
                    run,
                    tick: Duration::from_millis(20),
                    since,
                };
                skill_fleet_core::run_cluster_feed(
                    feed.service(),
                    settings,
                    std::future::pending::<()>(),
                )
                .await;
            });
            let router = skill_fleet_api::router(state.clone());
            servers.push(TestApp {
                state,
                router,
                _dir: tempfile::tempdir().unwrap(),
            });
        }
        Some(TestCluster { servers, database })
    }
}
