//! HTTP caching: ETag / Last-Modified validators, 304s, Cache-Control, X-Cache, invalidation
//! on every kind of change, and a bounded response cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use skill_fleet_api::ApiConfig;
use support::{Reply, TestApp};

async fn conditional(app: &TestApp, uri: &str, header: &str, value: &str) -> Reply {
    app.request(
        Request::get(uri)
            .header(header, value)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn etag(reply: &Reply) -> String {
    reply.headers["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn second_get_is_a_hit_with_the_same_etag() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let first = app.get("/api/v1/jobs/j").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-cache"], "MISS");
    let second = app.get("/api/v1/jobs/j").await;
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(etag(&first), etag(&second));
    assert_eq!(first.body, second.body);
    assert!(etag(&first).starts_with('"') && etag(&first).ends_with('"'));
    assert!(
        first.headers["last-modified"]
            .to_str()
            .unwrap()
            .ends_with(" GMT")
    );
}

#[tokio::test]
async fn progress_changes_the_etag_and_the_next_get_misses() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let before = app.get("/api/v1/jobs/j").await;
    app.get("/api/v1/jobs/j").await;

    // A durable event (it starts the job).
    app.post(
        "/api/v1/jobs/j/events",
        json!({"step": "a", "progress": 0.1}),
    )
    .await;
    let after_durable = app.get("/api/v1/jobs/j").await;
    assert_eq!(after_durable.headers["x-cache"], "MISS");
    assert_ne!(etag(&before), etag(&after_durable));
    assert_eq!(after_durable.body["progress"]["step"], "a");

    // A coalesced event: visible (and a new ETag) once flushed.
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.5}))
        .await;
    app.state.service().flush_pending().await.unwrap();
    let after_flush = app.get("/api/v1/jobs/j").await;
    assert_eq!(after_flush.headers["x-cache"], "MISS");
    assert_ne!(etag(&after_durable), etag(&after_flush));
    assert_eq!(after_flush.body["progress"]["progress"], 0.5);

    // Lifecycle changes too.
    app.post("/api/v1/jobs/j/cancel", json!({})).await;
    let cancelled = app.get("/api/v1/jobs/j").await;
    assert_eq!(cancelled.headers["x-cache"], "MISS");
    assert_eq!(cancelled.body["status"], "cancelled");
}

#[tokio::test]
async fn if_none_match_gives_304_for_current_and_200_for_stale() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let first = app.get("/api/v1/jobs/j").await;
    let tag = etag(&first);

    let fresh = conditional(&app, "/api/v1/jobs/j", "if-none-match", &tag).await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&fresh), tag);
    assert_eq!(fresh.body, serde_json::Value::Null);
    assert!(fresh.headers.contains_key("cache-control"));

    let listed = conditional(
        &app,
        "/api/v1/jobs/j",
        "if-none-match",
        &format!("\"x\", W/{tag}"),
    )
    .await;
    assert_eq!(listed.status, StatusCode::NOT_MODIFIED);
    let star = conditional(&app, "/api/v1/jobs/j", "if-none-match", "*").await;
    assert_eq!(star.status, StatusCode::NOT_MODIFIED);

    app.post("/api/v1/jobs/j/events", json!({"step": "b"}))
        .await;
    let stale = conditional(&app, "/api/v1/jobs/j", "if-none-match", &tag).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body["progress"]["step"], "b");
}

#[tokio::test]
async fn a_304_from_the_cache_touches_no_database() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let tag = etag(&app.get("/api/v1/jobs/j").await);
    let calls = app.state.service().store_calls();
    for _ in 0..50 {
        let reply = conditional(&app, "/api/v1/jobs/j", "if-none-match", &tag).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        assert_eq!(reply.headers["x-cache"], "HIT");
    }
    assert_eq!(app.state.service().store_calls(), calls);
}

#[tokio::test]
async fn if_modified_since_is_honoured_without_if_none_match() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let first = app.get("/api/v1/jobs/j").await;
    let modified = first.headers["last-modified"].to_str().unwrap().to_owned();
    let same = conditional(&app, "/api/v1/jobs/j", "if-modified-since", &modified).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    let old = conditional(
        &app,
        "/api/v1/jobs/j",
        "if-modified-since",
        "Sun, 06 Nov 1994 08:49:37 GMT",
    )
    .await;
    assert_eq!(old.status, StatusCode::OK);
    let garbage = conditional(&app, "/api/v1/jobs/j", "if-modified-since", "not a date").await;
    assert_eq!(garbage.status, StatusCode::OK);
}

#[tokio::test]
async fn cache_control_depends_on_status() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let queued = app.get("/api/v1/jobs/j").await;
    assert_eq!(queued.headers["cache-control"], "no-cache");
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.5}))
        .await;
    let running = app.get("/api/v1/jobs/j").await;
    assert_eq!(running.headers["cache-control"], "no-cache");
    app.post("/api/v1/jobs/j/complete", json!({"result": {"ok": true}}))
        .await;
    let done = app.get("/api/v1/jobs/j").await;
    assert_eq!(done.headers["cache-control"], "max-age=300");
    let result = app.get("/api/v1/jobs/j/result").await;
    assert_eq!(result.headers["cache-control"], "max-age=300");
    assert!(result.headers.contains_key("etag"));
    let list = app.get("/api/v1/jobs").await;
    assert_eq!(list.headers["cache-control"], "no-cache");
}

#[tokio::test]
async fn list_etag_changes_when_any_job_changes() {
    let app = TestApp::new().await;
    app.create("a", "optimization").await;
    app.create("b", "optimization").await;
    let first = app.get("/api/v1/jobs").await;
    let second = app.get("/api/v1/jobs").await;
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(etag(&first), etag(&second));
    let filtered = app.get("/api/v1/jobs?type=optimization").await;
    assert_ne!(
        etag(&first),
        etag(&filtered),
        "the query is part of the tag"
    );

    app.post("/api/v1/jobs/b/events", json!({"step": "x"}))
        .await;
    let changed = app.get("/api/v1/jobs").await;
    assert_eq!(changed.headers["x-cache"], "MISS");
    assert_ne!(etag(&first), etag(&changed));
    let not_modified = conditional(&app, "/api/v1/jobs", "if-none-match", &etag(&changed)).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn progress_history_and_result_are_cached_and_invalidated() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"step": "a"}))
        .await;
    let first = app.get("/api/v1/jobs/j/progress").await;
    assert_eq!(
        app.get("/api/v1/jobs/j/progress").await.headers["x-cache"],
        "HIT"
    );
    app.post("/api/v1/jobs/j/events", json!({"step": "b"}))
        .await;
    let second = app.get("/api/v1/jobs/j/progress").await;
    assert_eq!(second.headers["x-cache"], "MISS");
    assert_ne!(etag(&first), etag(&second));
    assert_eq!(second.body["records"].as_array().unwrap().len(), 2);

    assert_eq!(
        app.get("/api/v1/jobs/j/result").await.status,
        StatusCode::NOT_FOUND
    );
    app.post("/api/v1/jobs/j/complete", json!({"result": {"score": 1}}))
        .await;
    let result = app.get("/api/v1/jobs/j/result").await;
    assert_eq!(
        result.status,
        StatusCode::OK,
        "a cached 404 must not survive completion"
    );
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let app = TestApp::with_config(ApiConfig {
        cache_max_bytes: 8 * 1024,
        ..ApiConfig::default()
    })
    .await;
    for i in 0..100 {
        app.create(&format!("job-{i}"), "optimization").await;
    }
    for i in 0..100 {
        assert_eq!(
            app.get(&format!("/api/v1/jobs/job-{i}")).await.status,
            StatusCode::OK
        );
    }
    let entries = app.state.cache().entry_count();
    assert!(entries < 100, "{entries} entries kept for an 8 KiB bound");
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let app = TestApp::with_config(ApiConfig {
        cache_ttl: Duration::from_millis(50),
        ..ApiConfig::default()
    })
    .await;
    app.create("j", "optimization").await;
    app.get("/api/v1/jobs/j").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = app.get("/api/v1/jobs/j").await;
        if reply.headers["x-cache"] == "MISS" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn vary_authorization_when_a_token_is_required() {
    let app = TestApp::with_config(ApiConfig {
        auth_token: Some(skill_fleet_api::AuthToken::new("t")),
        ..ApiConfig::default()
    })
    .await;
    let reply = app
        .request(
            Request::get("/api/v1/jobs")
                .header("authorization", "Bearer t")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["vary"], "authorization");
}
