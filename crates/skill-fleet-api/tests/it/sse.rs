//! SSE over a real socket on 127.0.0.1:0: first event, coalescing, Last-Event-ID, terminal
//! end, 404, client disconnect, and the limit of open streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use serde_json::json;
use skill_fleet_api::ApiConfig;
use skill_fleet_core::Committed;
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
    assert_eq!(app.state.open_streams(), 1);
    app.state.service().shutdown().await;
    assert!(
        next(&reader).await.is_none(),
        "stream still open after shutdown"
    );
    wait_until(
        "the stream's slot released",
        Duration::from_secs(10),
        || app.state.open_streams() == 0,
    )
    .await;
}

/// A stream opened over a plain socket, so that the test decides when it closes.
struct RawStream {
    status: u16,
    head: String,
    reader: std::io::BufReader<std::net::TcpStream>,
}

/// Sends `GET path` and reads the response head (status line and headers).
fn open_raw(addr: std::net::SocketAddr, path: &str) -> RawStream {
    use std::io::{BufRead, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(socket);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no response head");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    RawStream {
        status,
        head,
        reader,
    }
}

impl RawStream {
    /// The value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// Everything after the head until the server closes the connection.
    fn rest(mut self) -> String {
        use std::io::Read;
        let mut body = String::new();
        self.reader.read_to_string(&mut body).unwrap();
        body
    }

    /// Reads until the first `data:` line and returns its JSON.
    fn first_event(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "stream ended"
            );
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
    }
}

async fn raw(addr: std::net::SocketAddr, path: &str) -> RawStream {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || open_raw(addr, &path))
        .await
        .unwrap()
}

/// An app that allows two open streams and sends keep-alives often, so that a closed socket
/// is noticed quickly.
async fn capped_app() -> TestApp {
    TestApp::with_config(ApiConfig {
        max_sse_connections: 2,
        sse_keep_alive: Duration::from_millis(50),
        ..ApiConfig::default()
    })
    .await
}

/// Opens a stream past the limit and checks the refusal: 503, our error body, Retry-After.
async fn assert_refused(addr: std::net::SocketAddr, path: &str) {
    let refused = raw(addr, path).await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    assert!(
        refused
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{}",
        refused.head
    );
    let body = tokio::task::spawn_blocking(move || refused.rest())
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "code": "unavailable",
            "message": "too many open streams: 2 of 2; retry later",
        }})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_until_one_closes() {
    let app = capped_app().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.1}))
        .await;

    let mut first = raw(addr, "/api/v1/jobs/j/stream").await;
    assert_eq!(first.status, 200, "{}", first.head);
    let second = sse(addr, "/api/v1/optimization/j/stream", None).await;
    assert_eq!(second.status, 200);
    next(&second).await.expect("a first event");
    assert_eq!(app.state.open_streams(), 2);

    // Both routes share the limit; the refusal comes before the job is looked up.
    assert_refused(addr, "/api/v1/jobs/j/stream").await;
    assert_refused(addr, "/api/v1/optimization/missing/stream").await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.body["stream"]["sse_connections"], 2);
    assert_eq!(metrics.body["stream"]["max_sse_connections"], 2);
    assert_eq!(metrics.body["stream"]["sse_refused"], 2);

    // The client goes away: the server notices on its next write (a keep-alive) and the
    // slot comes back.
    assert_eq!(first.first_event()["job_id"], "j");
    drop(first);
    wait_until("the closed stream's slot", Duration::from_secs(10), || {
        app.state.open_streams() == 1
    })
    .await;
    let mut again = raw(addr, "/api/v1/jobs/j/stream").await;
    assert_eq!(again.status, 200, "{}", again.head);
    assert_eq!(again.first_event()["job_id"], "j");
    assert_eq!(app.state.open_streams(), 2);
    assert_refused(addr, "/api/v1/jobs/j/stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_end_release_their_slot() {
    let app = capped_app().await;
    let addr = app.serve().await;
    app.create("live", "optimization").await;
    app.post("/api/v1/jobs/live/events", json!({"progress": 0.1}))
        .await;
    app.create("done", "optimization").await;
    app.post("/api/v1/jobs/done/events", json!({"progress": 0.5}))
        .await;
    app.post("/api/v1/jobs/done/complete", json!({})).await;

    // A live stream ends with the job's terminal state; the client keeps its socket open.
    let live = sse(addr, "/api/v1/jobs/live/stream", None).await;
    next(&live).await.expect("a first event");
    assert_eq!(app.state.open_streams(), 1);
    app.post("/api/v1/jobs/live/fail", json!({"error": "boom"}))
        .await;
    let mut last = None;
    while let Some(event) = next(&live).await {
        last = Some(event);
    }
    assert_eq!(last.expect("the final state").data["status"], "failed");
    wait_until("the ended stream's slot", Duration::from_secs(10), || {
        app.state.open_streams() == 0
    })
    .await;

    // Streams of a finished job send one event and end: more of them than the limit, one
    // after the other, all get through.
    for _ in 0..5 {
        let finished = raw(addr, "/api/v1/jobs/done/stream").await;
        assert_eq!(finished.status, 200, "{}", finished.head);
        let body = tokio::task::spawn_blocking(move || finished.rest())
            .await
            .unwrap();
        assert!(body.contains("\"completed\""), "{body}");
        wait_until(
            "the finished stream's slot",
            Duration::from_secs(10),
            || app.state.open_streams() == 0,
        )
        .await;
    }
    // Nothing leaked: two new streams fit, the third is refused.
    app.create("next", "optimization").await;
    app.post("/api/v1/jobs/next/events", json!({"progress": 0.1}))
        .await;
    let a = raw(addr, "/api/v1/jobs/next/stream").await;
    let b = raw(addr, "/api/v1/jobs/next/stream").await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_refused(addr, "/api/v1/jobs/next/stream").await;
}

/// What another server's change feed delivers here: the row as committed there.
fn remote(kind: skill_fleet_core::ChangeKind, job: &skill_fleet_types::Job) -> Committed {
    Committed {
        remote: true,
        ..Committed::of(kind, job.clone(), None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_from_another_server_is_not_sent_older_states() {
    use skill_fleet_core::ChangeKind;
    use skill_fleet_jobs::{ClaimFilter, Writer};
    use skill_fleet_stream::version_event_id;

    let app = TestApp::new().await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    // Another server runs the job; its commits reach this one through the feed, late.
    let store = app.store().clone();
    let filter = ClaimFilter {
        types: Vec::new(),
        excluded: Vec::new(),
    };
    let started = store.claim(&filter, "worker").unwrap().unwrap().job;
    let feed = app.state.service().feed();
    feed.emit(&remote(ChangeKind::Started, &started));
    let mut rows = Vec::new();
    for progress in [0.1, 0.2, 0.3] {
        let update = skill_fleet_types::ProgressUpdate {
            progress: Some(progress),
            ..Default::default()
        };
        rows.push(
            store
                .record_progress("j", &update, None, &Writer::Operator)
                .unwrap(),
        );
    }
    // The client followed the job through the other server up to its second write.
    let seen = version_event_id(rows[1].version);
    let reader = sse(addr, "/api/v1/jobs/j/stream", Some(seen.to_string())).await;
    assert_eq!(reader.status, 200);
    for row in &rows {
        feed.emit(&remote(ChangeKind::Progress, row));
    }
    let first = next(&reader).await.expect("an event");
    assert_eq!(
        first.id,
        Some(version_event_id(rows[2].version).to_string())
    );
    assert_eq!(first.data["progress"], 0.3, "older states are not sent");

    // The end arrives, at its version's id, and ends the stream.
    let done = store.complete("j", None, None, &Writer::Operator).unwrap();
    feed.emit(&remote(ChangeKind::Ended, &done));
    let last = next(&reader).await.expect("the final state");
    assert_eq!(last.id, Some(version_event_id(done.version).to_string()));
    assert_eq!(last.data["status"], "completed");
    assert!(next(&reader).await.is_none());
}

impl RawStream {
    /// The next SSE block (up to and including its blank line), decoding the chunked body.
    fn next_block(&mut self, pending: &mut String) -> String {
        use std::io::{BufRead, Read};
        loop {
            if let Some(end) = pending.find("\n\n") {
                let block = pending[..end + 2].to_owned();
                pending.drain(..end + 2);
                return block;
            }
            let mut size = String::new();
            assert!(
                self.reader.read_line(&mut size).unwrap() > 0,
                "stream ended"
            );
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            assert!(size > 0, "the stream ended: {pending:?}");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[size..], b"\r\n");
            pending.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_format_headers_retry_hint_ids_and_keep_alives() {
    let app = TestApp::with_config(ApiConfig {
        sse_keep_alive: Duration::from_millis(300),
        sse_retry: Duration::from_millis(1500),
        ..ApiConfig::default()
    })
    .await;
    let addr = app.serve().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.1}))
        .await;
    let stream = raw(addr, "/api/v1/jobs/j/stream").await;
    assert_eq!(stream.status, 200, "{}", stream.head);
    assert_eq!(
        stream.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(stream.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(
        stream.header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    let (stream, first, idle) = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        let mut pending = String::new();
        let first = stream.next_block(&mut pending);
        let idle = stream.next_block(&mut pending);
        (stream, first, idle)
    })
    .await
    .unwrap();

    // The first event: its id, the retry hint, one data line of JSON.
    let lines: Vec<&str> = first.trim_end().lines().collect();
    assert_eq!(lines.len(), 3, "{first:?}");
    let id = lines[0].strip_prefix("id: ").expect("an id first");
    assert_eq!(lines[1], "retry: 1500");
    let data: serde_json::Value =
        serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["seq"].to_string(), id);
    assert_eq!(data["progress"], 0.1);
    // An idle stream gets a keep-alive comment.
    assert_eq!(idle, ":\n\n");

    // Later events: id and data only.
    app.post(
        "/api/v1/jobs/j/events",
        json!({"step": "b", "progress": 0.2}),
    )
    .await;
    let second = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        let mut pending = String::new();
        loop {
            let block = stream.next_block(&mut pending);
            if block != ":\n\n" {
                return block;
            }
        }
    })
    .await
    .unwrap();
    let lines: Vec<&str> = second.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{second:?}");
    let next_id: u64 = lines[0].strip_prefix("id: ").unwrap().parse().unwrap();
    assert!(next_id > id.parse().unwrap());
    let data: serde_json::Value =
        serde_json::from_str(lines[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        (data["step"].as_str(), data["seq"].as_u64()),
        (Some("b"), Some(next_id))
    );
}
