//! Router tests: every route and its errors, driven with `oneshot` on a temp database each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use axum::http::StatusCode;
use serde_json::json;
use skill_fleet_api::ApiConfig;
use support::TestApp;

#[tokio::test]
async fn create_is_idempotent_and_conflicts_on_another_body() {
    let app = TestApp::new().await;
    let body = json!({"id": "job-1", "type": "optimization", "metadata": {"model": "m"}});
    let first = app.post("/api/v1/jobs", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.headers["location"], "/api/v1/jobs/job-1");
    assert_eq!(first.body["status"], "queued");
    assert_eq!(first.body["type"], "optimization");
    assert_eq!(first.body["source"], "api");

    let again = app.post("/api/v1/jobs", body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], "job-1");

    let other = app
        .post("/api/v1/jobs", json!({"id": "job-1", "type": "evaluation"}))
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.body["error"]["code"], "conflict");
}

#[tokio::test]
async fn create_generates_an_id_and_records_the_cli_source() {
    let app = TestApp::new().await;
    let reply = app
        .request(
            axum::http::Request::post("/api/v1/optimization")
                .header("content-type", "application/json")
                .header("x-skill-fleet-source", "cli")
                .body(axum::body::Body::from(
                    r#"{"metadata": {"optimizer": "gepa"}}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["type"], "optimization");
    assert_eq!(reply.body["source"], "cli");
    assert_eq!(reply.body["metadata"]["optimizer"], "gepa");
    assert!(!reply.body["id"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_change_nothing() {
    let app = TestApp::new().await;
    let cases = [
        (
            Some("application/json"),
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            None,
            r#"{"type": "optimization"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/json"),
            r#"{"type": 7}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/json"),
            r#"{"typo": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/json"),
            r#"{"type": "Bad Type"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/json"),
            r#"{"type": "optimization", "id": "../etc/passwd"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (content_type, body, expected) in cases {
        let reply = app.post_raw("/api/v1/jobs", content_type, body).await;
        assert_eq!(reply.status, expected, "{body}: {:?}", reply.body);
        assert!(
            reply.body["error"]["code"].is_string(),
            "{body}: {:?}",
            reply.body
        );
        assert!(reply.body["error"]["message"].is_string(), "{body}");
    }
    let list = app.get("/api/v1/jobs").await;
    assert_eq!(list.body["jobs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let app = TestApp::with_config(ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    })
    .await;
    let big = json!({"type": "optimization", "metadata": {"blob": "x".repeat(4096)}});
    let reply = app.post("/api/v1/jobs", big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn unknown_jobs_routes_and_ids_are_404_or_400() {
    let app = TestApp::new().await;
    let missing = app.get("/api/v1/jobs/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"]["code"], "not_found");
    assert!(
        missing.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );

    let bad_id = app.get("/api/v1/jobs/a%20b").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);

    let no_route = app.get("/api/v1/nothing-here").await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    assert_eq!(no_route.body["error"]["code"], "not_found");

    let wrong_method = app.post("/api/v1/jobs/nope", json!({})).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.body["error"]["code"], "bad_request");

    let stream = app.get("/api/v1/jobs/nope/stream").await;
    assert_eq!(stream.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let app = TestApp::new().await;
    for i in 0..5 {
        app.create(&format!("opt-{i}"), "optimization").await;
    }
    app.create("eval-0", "evaluation").await;
    app.post("/api/v1/jobs/opt-0/cancel", json!({})).await;

    let all = app.get("/api/v1/jobs").await;
    assert_eq!(all.body["jobs"].as_array().unwrap().len(), 6);
    let evals = app.get("/api/v1/jobs?type=evaluation").await;
    assert_eq!(evals.body["jobs"].as_array().unwrap().len(), 1);
    let cancelled = app.get("/api/v1/jobs?status=cancelled").await;
    assert_eq!(cancelled.body["jobs"][0]["id"], "opt-0");

    let mut seen = Vec::new();
    let mut uri = "/api/v1/jobs?limit=4".to_owned();
    loop {
        let page = app.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK);
        for job in page.body["jobs"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/jobs?limit=4&cursor={cursor}"),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);

    for bad in [
        "/api/v1/jobs?status=done",
        "/api/v1/jobs?limit=0",
        "/api/v1/jobs?limit=abc",
        "/api/v1/jobs?type=Bad",
        "/api/v1/jobs?bogus=1",
    ] {
        let reply = app.get(bad).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn first_event_starts_a_queued_job_and_progress_merges() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    let first = app
        .post(
            "/api/v1/jobs/j/events",
            json!({"step": "collecting_traces", "progress": 0.1, "cost_usd": 0.05}),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(first.body["status"], "running");
    assert_eq!(first.body["durable"], true);

    let second = app
        .post(
            "/api/v1/jobs/j/events",
            json!({"progress": 0.2, "message": "trial 2"}),
        )
        .await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(second.body["durable"], false);

    // The coalesced write lands on the next flush (the server's flusher ticks every 100 ms).
    app.state.service().flush_pending().await.unwrap();
    let job = app.get("/api/v1/jobs/j").await.body;
    assert_eq!(job["status"], "running");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["progress"]["progress"], 0.2);
    assert_eq!(job["progress"]["step"], "collecting_traces");
    assert_eq!(job["progress"]["cost_usd"], 0.05);
    assert_eq!(job["progress"]["message"], "trial 2");

    let step = app
        .post(
            "/api/v1/jobs/j/events",
            json!({"step": "proposing_instructions"}),
        )
        .await;
    assert_eq!(step.body["durable"], true);
    let stored = app.store().get("j").unwrap();
    assert_eq!(
        stored.progress.step.as_deref(),
        Some("proposing_instructions")
    );
}

#[tokio::test]
async fn invalid_events_are_refused_and_change_nothing() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    app.post("/api/v1/jobs/j/events", json!({"progress": 0.3}))
        .await;
    for bad in [
        json!({"progress": 7}),
        json!({"progress": -0.5}),
        json!({"cost_usd": -1}),
        json!({"progres": 0.4}),
        json!({"progress": "half"}),
    ] {
        let reply = app.post("/api/v1/jobs/j/events", bad.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {:?}",
            reply.body
        );
    }
    app.state.service().flush_pending().await.unwrap();
    let job = app.get("/api/v1/jobs/j").await.body;
    assert_eq!(job["progress"]["progress"], 0.3);
    assert_eq!(job["progress"]["cost_usd"], 0.0);
}

#[tokio::test]
async fn lifecycle_routes_enforce_transitions() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;

    let early = app.post("/api/v1/jobs/j/complete", json!({})).await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{:?}", early.body);
    assert_eq!(early.body["error"]["code"], "invalid_transition");

    app.post("/api/v1/jobs/j/events", json!({"progress": 0.5}))
        .await;
    app.post(
        "/api/v1/jobs/j/events",
        json!({"progress": 0.9, "message": "last trial"}),
    )
    .await;
    let done = app
        .post(
            "/api/v1/jobs/j/complete",
            json!({"result": {"score": 0.84}, "result_path": "out/j.json"}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.body["status"], "completed");
    // Pending progress was written before the transition; completion means 100 %.
    assert_eq!(
        done.body["progress"]["message"], "last trial",
        "{:?}",
        done.body
    );
    assert_eq!(done.body["progress"]["progress"], 1.0);

    let late = app
        .post("/api/v1/jobs/j/events", json!({"progress": 1.0}))
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    let cancel = app.post("/api/v1/jobs/j/cancel", json!({})).await;
    assert_eq!(cancel.status, StatusCode::CONFLICT);
    let resume = app.post("/api/v1/jobs/j/resume", json!({})).await;
    assert_eq!(resume.status, StatusCode::CONFLICT);

    app.create("k", "optimization").await;
    app.post(
        "/api/v1/jobs/k/events",
        json!({"progress": 0.4, "checkpoint": {"trial": 4}}),
    )
    .await;
    let failed = app
        .post(
            "/api/v1/jobs/k/fail",
            json!({"error": "model quota exhausted"}),
        )
        .await;
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(failed.body["error"], "model quota exhausted");
    let resumed = app.post("/api/v1/jobs/k/resume", json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{:?}", resumed.body);
    assert_eq!(resumed.body["status"], "queued");
    assert_eq!(resumed.body["checkpoint"], json!({"trial": 4}));

    let no_reason = app.post_raw("/api/v1/jobs/k/cancel", None, "").await;
    assert_eq!(no_reason.status, StatusCode::OK, "{:?}", no_reason.body);
    assert_eq!(no_reason.body["status"], "cancelled");

    let fail_without_error = app.post("/api/v1/jobs/k/fail", json!({})).await;
    assert_eq!(fail_without_error.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn result_is_404_until_completed() {
    let app = TestApp::new().await;
    app.create("j", "evaluation").await;
    let none = app.get("/api/v1/jobs/j/result").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    app.post("/api/v1/jobs/j/events", json!({"progress": 1.0}))
        .await;
    app.post(
        "/api/v1/jobs/j/complete",
        json!({"result": {"accuracy": 0.9}}),
    )
    .await;
    let result = app.get("/api/v1/jobs/j/result").await;
    assert_eq!(result.status, StatusCode::OK);
    assert_eq!(result.body["result"]["accuracy"], 0.9);
}

#[tokio::test]
async fn claim_takes_the_oldest_queued_job_of_the_types() {
    let app = TestApp::new().await;
    let empty = app
        .post("/api/v1/jobs/claim", json!({"types": ["evaluation"]}))
        .await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    app.create("e1", "evaluation").await;
    app.create("e2", "evaluation").await;
    let claimed = app
        .post("/api/v1/jobs/claim", json!({"types": ["evaluation"]}))
        .await;
    assert_eq!(claimed.status, StatusCode::OK);
    assert_eq!(claimed.body["id"], "e1");
    assert_eq!(claimed.body["status"], "running");
    let bad = app
        .post("/api/v1/jobs/claim", json!({"types": ["Nope!"]}))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn history_pages_by_seq() {
    let app = TestApp::new().await;
    app.create("j", "optimization").await;
    for (i, step) in ["a", "b", "c", "d"].iter().enumerate() {
        app.post(
            "/api/v1/jobs/j/events",
            json!({"step": step, "progress": (i as f64) / 4.0}),
        )
        .await;
    }
    let page = app.get("/api/v1/jobs/j/progress?limit=2").await;
    assert_eq!(page.status, StatusCode::OK);
    let records = page.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["step"], "a");
    let after = page.body["next_after"].as_i64().unwrap();
    let rest = app
        .get(&format!("/api/v1/jobs/j/progress?after={after}"))
        .await;
    let steps: Vec<_> = rest.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps, ["c", "d"]);
    let missing = app.get("/api/v1/jobs/zzz/progress").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::new().await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.state.set_ready(false);
    assert_eq!(
        app.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn token_guards_every_route_but_healthz() {
    let app = TestApp::with_config(ApiConfig {
        auth_token: Some(skill_fleet_api::AuthToken::new("s3cret")),
        ..ApiConfig::default()
    })
    .await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let denied = app.get("/api/v1/jobs").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.body["error"]["code"], "unauthorized");
    let wrong = app
        .request(
            axum::http::Request::get("/api/v1/jobs")
                .header("authorization", "Bearer nope")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let allowed = app
        .request(
            axum::http::Request::get("/api/v1/jobs")
                .header("authorization", "Bearer s3cret")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK);
}

#[tokio::test]
async fn stream_routes_also_take_the_token_as_a_query_parameter() {
    let app = TestApp::with_config(ApiConfig {
        auth_token: Some(skill_fleet_api::AuthToken::new("s3cret")),
        ..ApiConfig::default()
    })
    .await;
    let authed = |uri: &str| {
        axum::http::Request::get(uri)
            .header("authorization", "Bearer s3cret")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let created = app
        .request(
            axum::http::Request::post("/api/v1/jobs")
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"id": "j", "type": "t"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let cancelled = app
        .request(
            axum::http::Request::post("/api/v1/jobs/j/cancel")
                .header("authorization", "Bearer s3cret")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(
        app.request(authed("/api/v1/jobs/j")).await.status,
        StatusCode::OK
    );
    // A finished job's stream is one event and the end, so oneshot can read it.
    let ok = app.get("/api/v1/jobs/j/stream?token=s3cret").await;
    assert_eq!(ok.status, StatusCode::OK);
    let wrong = app.get("/api/v1/jobs/j/stream?token=nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // Only the stream routes: elsewhere a token in the URL is not accepted.
    let elsewhere = app.get("/api/v1/jobs/j?token=s3cret").await;
    assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn limits_in_metadata_are_checked_at_creation() {
    let app = TestApp::new().await;
    for bad in [
        json!({"budget_usd": 0}),
        json!({"budget_usd": "2.00"}),
        json!({"time_limit_seconds": -5}),
    ] {
        let reply = app
            .post(
                "/api/v1/jobs",
                json!({"type": "optimization", "metadata": bad}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {:?}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("metadata `")
        );
    }
    let ok = app
        .post(
            "/api/v1/jobs",
            json!({"type": "optimization", "metadata": {"budget_usd": 2.0, "time_limit_seconds": 3600}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_external_worker_crossing_its_budget_is_stopped() {
    let app = TestApp::new().await;
    let hub = app.state.service().hub().clone();
    app.post(
        "/api/v1/jobs",
        json!({"id": "b", "type": "evaluation", "metadata": {"budget_usd": 2.0}}),
    )
    .await;
    app.post(
        "/api/v1/jobs/b/events",
        json!({"step": "eval", "cost_usd": 1.0}),
    )
    .await;
    // 80 %: one warning on the stream and in the job.
    let warned = app
        .post("/api/v1/jobs/b/events", json!({"cost_usd": 1.62}))
        .await;
    assert_eq!(warned.body["status"], "running");
    hub.flush();
    assert_eq!(
        hub.current("b").unwrap().message.as_deref(),
        Some("budget 80% used: $1.62 of $2.00")
    );
    app.post(
        "/api/v1/jobs/b/events",
        json!({"cost_usd": 1.8, "message": "trial 9"}),
    )
    .await;
    hub.flush();
    assert_eq!(
        hub.current("b").unwrap().message.as_deref(),
        Some("trial 9")
    );

    let crossed = app
        .post("/api/v1/jobs/b/events", json!({"cost_usd": 2.31}))
        .await;
    assert_eq!(crossed.status, StatusCode::ACCEPTED);
    assert_eq!(crossed.body["status"], "cancelled");
    let job = app.store().get("b").unwrap();
    assert_eq!(job.status.as_str(), "cancelled");
    assert_eq!(
        job.error.as_deref(),
        Some("budget exceeded: $2.31 of $2.00")
    );
    assert_eq!(job.progress.cost_usd, 2.31, "the crossing event is kept");
    let last = hub.current("b").unwrap();
    assert_eq!(last.status.as_str(), "cancelled");
    assert_eq!(
        last.message.as_deref(),
        Some("budget exceeded: $2.31 of $2.00")
    );

    let next = app
        .post("/api/v1/jobs/b/events", json!({"cost_usd": 2.4}))
        .await;
    assert_eq!(next.status, StatusCode::CONFLICT);
    let message = next.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("budget exceeded: $2.31 of $2.00"),
        "{message}"
    );
    assert!(message.contains("stop the run"), "{message}");
}

#[tokio::test]
async fn a_job_past_its_time_limit_is_cancelled() {
    let app = TestApp::new().await;
    app.post(
        "/api/v1/jobs",
        json!({"id": "t", "type": "evaluation", "metadata": {"time_limit_seconds": 0.05}}),
    )
    .await;
    app.post("/api/v1/jobs/t/events", json!({"step": "start"}))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        app.state.service().enforce_time_limits().await;
        let job = app.store().get("t").unwrap();
        if job.status.as_str() == "cancelled" {
            let error = job.error.unwrap();
            assert!(error.starts_with("time limit exceeded after "), "{error}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never cancelled");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
