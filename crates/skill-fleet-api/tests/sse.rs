//! SSE over a real socket on 127.0.0.1:0: first event, coalescing, Last-Event-ID, terminal
//! end, 404 and client disconnect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestApp, open_sse, wait_until};

async fn sse(
    addr: std::net::SocketAddr,
    path: &str,
    last_event_id: Option<String>,
) -> support::SseReader {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || open_sse(addr, &path, last_event_id.as_deref()))
        .await
        .unwrap()
}

async fn next(reader: &support::SseReader) -> Option<support::SseEvent> {
    tokio::task::block_in_place(|| reader.next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_event_is_the_current_state_at_once() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post(
        "/api/v1/jobs/j/events",
        json!({"step": "collecting_traces", "progress": 0.25, "cost_usd": 0.5}),
    )
    .await;

    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    assert_eq!(reader.status, 200);
    let first = next(&reader).await.expect("a first event");
    assert_eq!(first.data["job_id"], "j");
    assert_eq!(first.data["status"], "running");
    assert_eq!(first.data["step"], "collecting_traces");
    assert_eq!(first.data["cost_usd"], 0.5);
    assert_eq!(
        first.id.as_deref(),
        Some(first.data["seq"].to_string().as_str())
    );

    // The same stream under the path the original plan named.
    let other = sse(addr, "/api/v1/optimization/j/stream", None).await;
    let first = next(&other).await.expect("a first event");
    assert_eq!(first.data["job_id"], "j");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_coalesced_and_the_final_state_arrives() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post(
        "/api/v1/jobs/j/events",
        json!({"step": "search", "progress": 0.0}),
    )
    .await;
    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    next(&reader).await.expect("first event");

    let events = 300;
    for i in 1..=events {
        let progress = f64::from(i) / f64::from(events);
        let reply = app
            .post("/api/v1/jobs/j/events", json!({"progress": progress}))
            .await;
        assert_eq!(reply.status, axum::http::StatusCode::ACCEPTED);
    }
    let mut received = 0;
    loop {
        let event = next(&reader)
            .await
            .expect("stream ended before the final state");
        received += 1;
        if event.data["progress"] == 1.0 {
            break;
        }
    }
    assert!(
        received < events / 2,
        "{received} events for {events} updates: not coalesced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_skips_what_the_client_has() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.1}))
        .await;
    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    let first = next(&reader).await.unwrap();
    let seen = first.id.clone().unwrap();
    drop(reader);

    let again = sse(addr, "/api/v1/jobs/j/stream", Some(seen.clone())).await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.2}))
        .await;
    let newer = next(&again).await.unwrap();
    assert!(newer.id.unwrap().parse::<u64>().unwrap() > seen.parse::<u64>().unwrap());
    assert_eq!(newer.data["progress"], 0.2);

    // A browser passes it as a query parameter instead.
    let seen = newer.data["seq"].to_string();
    let query = sse(
        addr,
        &format!("/api/v1/jobs/j/stream?lastEventId={seen}"),
        None,
    )
    .await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.3}))
        .await;
    let newer = next(&query).await.unwrap();
    assert_eq!(newer.data["progress"], 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_state_ends_the_stream() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.5}))
        .await;
    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    next(&reader).await.unwrap();
    app.post("/api/v1/jobs/j/fail", json!({"error": "out of budget"}))
        .await;
    let mut last = None;
    while let Some(event) = next(&reader).await {
        last = Some(event);
    }
    let last = last.expect("a final event");
    assert_eq!(last.data["status"], "failed");
    assert_eq!(last.data["message"], "out of budget");

    // A finished job: the final state at once, then the end.
    let finished = sse(addr, "/api/v1/jobs/j/stream", None).await;
    let only = next(&finished).await.unwrap();
    assert_eq!(only.data["status"], "failed");
    assert!(next(&finished).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_is_404_before_any_stream() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    let reader = sse(addr, "/api/v1/jobs/missing/stream", None).await;
    assert_eq!(reader.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_are_cleaned_up() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.1}))
        .await;
    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    next(&reader).await.unwrap();
    let hub = app.state.service().hub().clone();
    assert_eq!(hub.stats().subscribers, 1);
    drop(reader);
    // The server notices the closed socket on its next write; keep the job emitting.
    let mut progress = 0.1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hub.stats().subscribers > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriber never cleaned up"
        );
        progress = (progress + 0.001_f64).min(1.0);
        app.post("/api/v1/jobs/j/events", json!({"progress": progress}))
            .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_until("no subscribers", Duration::from_secs(5), || {
        hub.stats().subscribers == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.1}))
        .await;
    let reader = sse(addr, "/api/v1/jobs/j/stream", None).await;
    next(&reader).await.unwrap();
    app.state.service().shutdown().await;
    assert!(
        next(&reader).await.is_none(),
        "stream still open after shutdown"
    );
}
