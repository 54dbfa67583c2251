//! Several servers on one PostgreSQL database, in one process: what one commits reaches the
//! others' response caches, live sets and listings within about a tick, also after the
//! listener's connection is killed; budgets hold on whichever server takes the events. Skips,
//! saying why, without PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::support::{Reply, TestApp, TestCluster};

/// How long a change may take to reach another server in these tests (the tick is 20 ms; a
/// loaded machine gets generous room).
const REACH: Duration = Duration::from_secs(5);

async fn get_if_none_match(app: &TestApp, uri: &str, etag: &str) -> Reply {
    app.request(
        Request::get(uri)
            .header("if-none-match", etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn etag(reply: &Reply) -> String {
    reply.headers["etag"].to_str().unwrap().to_owned()
}

/// Claims the oldest queued job of `job_type` through `app` as `worker`: (attempt, token).
async fn claim(app: &TestApp, job_type: &str, worker: &str) -> (Value, String) {
    let reply = app
        .post(
            "/api/v1/jobs/claim",
            json!({"types": [job_type], "worker": worker}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let token = reply.body["lease_token"].as_str().unwrap().to_owned();
    (reply.body["attempt"].clone(), token)
}

/// Revalidates `uri` on `app` until the answer is no longer a 304 for `etag`; the time it
/// took and the new answer.
async fn until_changed(app: &TestApp, uri: &str, etag: &str) -> (Duration, Reply) {
    let start = Instant::now();
    loop {
        let reply = get_if_none_match(app, uri, etag).await;
        if reply.status != StatusCode::NOT_MODIFIED {
            return (start.elapsed(), reply);
        }
        assert!(
            start.elapsed() < REACH,
            "{uri} still answered 304 for {etag} after {REACH:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_server_reaches_another_servers_cache_within_a_tick() {
    let Some(cluster) = TestCluster::new(2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    a.create("j", "remote").await;
    let job = "/api/v1/jobs/j";
    let list = "/api/v1/jobs?status=running";
    // B caches the queued job and the (empty) running list, and answers 304s from memory.
    let first = b.get(job).await;
    assert_eq!(first.body["status"], "queued");
    let job_tag = etag(&first);
    let list_tag = etag(&b.get(list).await);
    assert_eq!(
        get_if_none_match(b, job, &job_tag).await.status,
        StatusCode::NOT_MODIFIED
    );
    let (attempt, token) = claim(a, "remote", "w").await;
    let (took, changed) = until_changed(b, job, &job_tag).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["status"], "running", "{:?}", changed.body);
    eprintln!("a claim through A reached B's cache after {took:?}");
    let (_, listed) = until_changed(b, list, &list_tag).await;
    assert_eq!(listed.body["jobs"][0]["id"], "j", "{:?}", listed.body);
    // A plain GET on B sees a completion through A too.
    let done = a
        .post(
            "/api/v1/jobs/j/complete",
            json!({"attempt": attempt, "lease_token": token, "result": {"score": 1}}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let start = Instant::now();
    while b.get(job).await.body["status"] != "completed" {
        assert!(start.elapsed() < REACH, "B never showed the completion");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_one_server_stops_the_worker_heartbeating_another() {
    let Some(cluster) = TestCluster::new(2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    a.create("j", "remote").await;
    let (attempt, token) = claim(a, "remote", "w").await;
    let fence = json!({"attempt": attempt, "lease_token": token});
    // The job is live on A: its events and heartbeats are answered from A's memory.
    let event = a
        .post(
            "/api/v1/jobs/j/events",
            json!({"progress": 0.3, "attempt": attempt, "lease_token": token}),
        )
        .await;
    assert!(event.status.is_success(), "{:?}", event.body);
    let beat = a.post("/api/v1/jobs/j/heartbeat", fence.clone()).await;
    assert_eq!(beat.body["stop"], false, "{:?}", beat.body);
    let cancelled = b
        .post("/api/v1/jobs/j/cancel", json!({"reason": "not needed"}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let start = Instant::now();
    loop {
        let beat = a.post("/api/v1/jobs/j/heartbeat", fence.clone()).await;
        if beat.body["stop"] == true {
            assert_eq!(beat.body["status"], "cancelled", "{:?}", beat.body);
            break;
        }
        assert!(
            start.elapsed() < REACH,
            "A kept the cancelled job alive: {:?}",
            beat.body
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // And a late event through A is refused, not merged into a stale live state.
    let late = a
        .post(
            "/api/v1/jobs/j/events",
            json!({"progress": 0.4, "attempt": attempt, "lease_token": token}),
        )
        .await;
    assert!(
        late.status.is_client_error(),
        "a late event was accepted: {:?}",
        late.body
    );
    assert_eq!(a.get("/api/v1/jobs/j").await.body["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_still_arrive_after_the_listener_connection_is_killed() {
    let Some(cluster) = TestCluster::new(2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    a.create("before", "remote").await;
    let start = Instant::now();
    while b.get("/api/v1/jobs/before").await.status != StatusCode::OK {
        assert!(start.elapsed() < REACH);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill every listener connection (both servers'), as a PostgreSQL restart or a pooler
    // would: the servers poll until they listen again, and miss nothing meanwhile.
    let listener = skill_fleet_jobs::LISTENER_APPLICATION_NAME;
    // Both listeners connected first (on a loaded machine one may still be opening: "before"
    // then reached B by its poll).
    let start = Instant::now();
    while a.store().listening_servers().unwrap() != Some(2) {
        assert!(start.elapsed() < REACH, "both servers listen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = cluster.database.terminate(listener);
    assert_eq!(killed, 2, "one listener per server");
    for n in 0..5 {
        let id = format!("after-{n}");
        let tag = etag(&b.get("/api/v1/jobs?limit=100").await);
        a.create(&id, "remote").await;
        let (took, listed) = until_changed(b, "/api/v1/jobs?limit=100", &tag).await;
        let ids: Vec<&str> = listed.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|job| job["id"].as_str())
            .collect();
        assert!(ids.contains(&id.as_str()), "{id} missing from {ids:?}");
        eprintln!("{id} reached B after {took:?}");
    }
    // Both listen again.
    let start = Instant::now();
    loop {
        let listening = cluster.database.connections(listener);
        if listening == 2 {
            break;
        }
        assert!(
            start.elapsed() < REACH * 2,
            "{listening} listeners after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `/metrics` says what happened.
    let start = Instant::now();
    loop {
        let metrics = b.get("/metrics").await.body;
        let cluster = &metrics["cluster"];
        assert_eq!(cluster["shared_database"], true, "{metrics}");
        assert!(
            cluster["remote_changes"].as_u64().unwrap() >= 6,
            "{metrics}"
        );
        if cluster["listening"] == true && cluster["listener_lost"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(start.elapsed() < REACH, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_whichever_server_takes_the_events() {
    let Some(cluster) = TestCluster::new(2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let created = a
        .post(
            "/api/v1/jobs",
            json!({"id": "j", "type": "remote", "metadata": {"budget_usd": 1.0}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let (attempt, token) = claim(a, "remote", "w").await;
    let under = a
        .post(
            "/api/v1/jobs/j/events",
            json!({"cost_usd": 0.5, "step": "trial 1", "attempt": attempt, "lease_token": token}),
        )
        .await;
    assert!(under.status.is_success(), "{:?}", under.body);
    // The worker moves to B (its server changed): B's first event passes the budget.
    let over = b
        .post(
            "/api/v1/jobs/j/events",
            json!({"cost_usd": 1.5, "attempt": attempt, "lease_token": token}),
        )
        .await;
    assert!(over.status.is_success(), "{:?}", over.body);
    assert_eq!(over.body["status"], "cancelled", "{:?}", over.body);
    // A, which held the job live, tells the worker to stop too.
    let fence = json!({"attempt": attempt, "lease_token": token});
    let start = Instant::now();
    loop {
        let beat = a.post("/api/v1/jobs/j/heartbeat", fence.clone()).await;
        if beat.body["stop"] == true {
            let reason = beat.body["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("budget"), "{:?}", beat.body);
            break;
        }
        assert!(
            start.elapsed() < REACH,
            "A kept the job alive: {:?}",
            beat.body
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_uploaded_through_one_server_is_listed_and_downloaded_through_another() {
    use http_body_util::BodyExt;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;
    let Some(cluster) = TestCluster::new(2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    a.create("art", "remote").await;
    let (attempt, token) = claim(a, "remote", "w1").await;
    // B has the empty list cached before the upload.
    let before = b.get("/api/v1/jobs/art/artifacts").await;
    assert_eq!(before.body["artifacts"], json!([]));
    let tag = etag(&before);

    let bytes: Vec<u8> = (0..2_500_000_u32).map(|i| (i % 241) as u8).collect();
    let upload = a
        .request(
            Request::put("/api/v1/jobs/art/artifacts/model.bin")
                .header("skill-fleet-attempt", attempt.to_string())
                .header("skill-fleet-lease-token", &token)
                .body(Body::from(bytes.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{:?}", upload.body);

    // B's cached list stops hiding it within about a tick.
    let (_, listed) = until_changed(b, "/api/v1/jobs/art/artifacts", &tag).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["artifacts"][0]["name"], "model.bin");
    let response = b
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/jobs/art/artifacts/model.bin")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        format!("{:x}", Sha256::digest(&body)),
        format!("{:x}", Sha256::digest(&bytes))
    );
    assert_eq!(
        upload.body["sha256"],
        format!("{:x}", Sha256::digest(&bytes))
    );
}
