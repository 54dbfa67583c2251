//! The artifact routes: upload (fenced, bounded, whole or absent), list, download (strong
//! ETag, 304, Range, If-Range), and a completion whose result names an artifact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skill_fleet_api::{ApiConfig, AppState};
use skill_fleet_core::JobService;
use skill_fleet_jobs::{ArtifactLimits, JobStore};
use skill_fleet_stream::{Hub, HubConfig};
use tower::ServiceExt;

use crate::support::TestApp;

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A claimed job: its attempt and lease token.
async fn claimed(app: &TestApp, id: &str) -> (u64, String) {
    app.create(id, "eval").await;
    let reply = app
        .post(
            "/api/v1/jobs/claim",
            json!({"types": ["eval"], "worker": "w1"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    (
        reply.body["attempt"].as_u64().unwrap(),
        reply.body["lease_token"].as_str().unwrap().to_owned(),
    )
}

fn put(
    uri: &str,
    fence: Option<(u64, &str)>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Request<Body> {
    let mut builder = Request::builder().method(Method::PUT).uri(uri);
    if let Some((attempt, token)) = fence {
        builder = builder
            .header("skill-fleet-attempt", attempt.to_string())
            .header("skill-fleet-lease-token", token);
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(Body::from(body)).unwrap()
}

/// Sends `request` and returns the status, headers and raw body.
async fn raw(
    app: &TestApp,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn app_with_limits(limits: ArtifactLimits) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(dir.path().join("test.db").to_str().unwrap()).unwrap();
    let hub = Hub::new(HubConfig::default());
    let service = JobService::new(store, hub, 0).with_artifact_limits(limits);
    let state = AppState::new(service, ApiConfig::default());
    state.set_ready(true);
    TestApp::from_state(state, dir)
}

#[tokio::test]
async fn two_artifacts_are_stored_listed_and_downloaded_intact() {
    let app = TestApp::new().await;
    let (attempt, token) = claimed(&app, "job-a").await;
    // Larger than the request body limit (1 MiB) and than one chunk: uploads stream.
    let big = pattern(2 * 1024 * 1024 + 100);
    let program = br#"{"predict": {"instructions": "be brief"}}"#.to_vec();

    let reply = app
        .request(put(
            "/api/v1/jobs/job-a/artifacts/program.json",
            Some((attempt, &token)),
            None,
            program.clone(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["sha256"], sha256_hex(&program));
    assert_eq!(reply.body["content_type"], "application/json");
    assert_eq!(reply.body["attempt"], attempt);
    assert_eq!(
        reply.headers["location"],
        "/api/v1/jobs/job-a/artifacts/program.json"
    );
    let reply = app
        .request(put(
            "/api/v1/jobs/job-a/artifacts/weights.bin",
            Some((attempt, &token)),
            Some("application/x-weights"),
            big.clone(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["size"], big.len());

    let list = app.get("/api/v1/jobs/job-a/artifacts").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["job_id"], "job-a");
    assert_eq!(list.body["total_bytes"], big.len() + program.len());
    let names: Vec<&str> = list.body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["program.json", "weights.bin"]);
    assert_eq!(
        list.body["artifacts"][1]["content_type"],
        "application/x-weights"
    );

    let (status, headers, bytes) =
        raw(&app, get("/api/v1/jobs/job-a/artifacts/weights.bin", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&bytes), sha256_hex(&big));
    assert_eq!(headers["etag"], format!("\"{}\"", sha256_hex(&big)));
    assert_eq!(headers["content-length"], big.len().to_string());
    assert_eq!(headers["content-type"], "application/x-weights");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"weights.bin\""
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (_, _, bytes) = raw(&app, get("/api/v1/jobs/job-a/artifacts/program.json", &[])).await;
    assert_eq!(bytes, program);

    // The list revalidates, and changes with the next artifact.
    let etag = list.headers["etag"].to_str().unwrap().to_owned();
    let (status, _, _) = raw(
        &app,
        get("/api/v1/jobs/job-a/artifacts", &[("if-none-match", &etag)]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    app.request(put(
        "/api/v1/jobs/job-a/artifacts/more.txt",
        Some((attempt, &token)),
        None,
        b"more".to_vec(),
    ))
    .await;
    let (status, _, _) = raw(
        &app,
        get("/api/v1/jobs/job-a/artifacts", &[("if-none-match", &etag)]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a stored artifact changes the list's etag"
    );
}

#[tokio::test]
async fn downloads_revalidate_and_resume_by_range() {
    let app = TestApp::new().await;
    let (attempt, token) = claimed(&app, "job-r").await;
    let bytes = pattern(3 * 1024 * 1024 + 17);
    app.request(put(
        "/api/v1/jobs/job-r/artifacts/data.bin",
        Some((attempt, &token)),
        None,
        bytes.clone(),
    ))
    .await;
    let uri = "/api/v1/jobs/job-r/artifacts/data.bin";
    let tag = format!("\"{}\"", sha256_hex(&bytes));

    let (status, headers, body) = raw(&app, get(uri, &[("if-none-match", &tag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], tag.as_str());

    // A download cut after 1.5 MiB resumes from there, across a chunk boundary.
    let cut = 1024 * 1024 + 512 * 1024;
    let range = format!("bytes={cut}-");
    let (status, headers, rest) =
        raw(&app, get(uri, &[("range", &range), ("if-range", &tag)])).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers["content-range"],
        format!("bytes {cut}-{}/{}", bytes.len() - 1, bytes.len())
    );
    let mut whole = bytes[..cut].to_vec();
    whole.extend(rest);
    assert_eq!(sha256_hex(&whole), sha256_hex(&bytes));

    // A middle range, a suffix, an unsatisfiable one, a stale If-Range.
    let (status, _, middle) = raw(&app, get(uri, &[("range", "bytes=1048570-1048580")])).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(middle, bytes[1_048_570..=1_048_580]);
    let (_, _, tail) = raw(&app, get(uri, &[("range", "bytes=-10")])).await;
    assert_eq!(tail, bytes[bytes.len() - 10..]);
    let (status, headers, _) = raw(&app, get(uri, &[("range", "bytes=99999999-")])).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], format!("bytes */{}", bytes.len()));
    let error: Value = serde_json::from_slice(&body_of_416(&app, uri).await).unwrap();
    assert_eq!(error["error"]["code"], "range_not_satisfiable");
    let (status, _, body) = raw(
        &app,
        get(uri, &[("range", "bytes=10-"), ("if-range", "\"stale\"")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), bytes.len());
}

async fn body_of_416(app: &TestApp, uri: &str) -> Vec<u8> {
    raw(app, get(uri, &[("range", "bytes=99999999-")])).await.2
}

#[tokio::test]
async fn bad_names_and_fences_are_refused_and_store_nothing() {
    let app = TestApp::new().await;
    let (attempt, token) = claimed(&app, "job-b").await;
    for bad in ["..", ".hidden", "a%2Fb", "a%20b", "%2E%2E"] {
        let reply = app
            .request(put(
                &format!("/api/v1/jobs/job-b/artifacts/{bad}"),
                Some((attempt, &token)),
                None,
                b"x".to_vec(),
            ))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "bad_request");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("artifact name"),
            "{bad}: {:?}",
            reply.body
        );
    }
    // A wrong token, no token on a claimed job, half a fence, a malformed content type.
    let reply = app
        .request(put(
            "/api/v1/jobs/job-b/artifacts/x.json",
            Some((attempt, "wrong")),
            None,
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["code"], "lease_lost");
    let reply = app
        .request(put(
            "/api/v1/jobs/job-b/artifacts/x.json",
            None,
            None,
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(reply.body["error"]["code"], "lease_lost");
    let reply = app
        .request(
            Request::put("/api/v1/jobs/job-b/artifacts/x.json")
                .header("skill-fleet-attempt", "1")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    let reply = app
        .request(put(
            "/api/v1/jobs/job-b/artifacts/x.json",
            Some((attempt, &token)),
            Some("not a type"),
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    // Unknown job, unknown artifact.
    let reply = app
        .request(put(
            "/api/v1/jobs/ghost/artifacts/x.json",
            None,
            None,
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = app.get("/api/v1/jobs/job-b/artifacts/x.json").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("job `job-b` has no artifact `x.json`")
    );
    let list = app.get("/api/v1/jobs/job-b/artifacts").await;
    assert_eq!(list.body["artifacts"], json!([]));

    // After the job ends, its worker can no longer upload.
    app.post(
        "/api/v1/jobs/job-b/complete",
        json!({"attempt": attempt, "lease_token": token}),
    )
    .await;
    let reply = app
        .request(put(
            "/api/v1/jobs/job-b/artifacts/late.json",
            Some((attempt, &token)),
            None,
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["code"], "invalid_transition");
}

#[tokio::test]
async fn oversize_uploads_get_413_and_store_nothing() {
    let app = app_with_limits(ArtifactLimits {
        max_bytes: 2 * 1024 * 1024,
        max_job_bytes: 3 * 1024 * 1024,
    })
    .await;
    let (attempt, token) = claimed(&app, "job-l").await;
    let fence = Some((attempt, token.as_str()));
    let too_big = pattern(2 * 1024 * 1024 + 1);
    // Announced by Content-Length: refused before the body is read.
    let reply = app
        .request(put(
            "/api/v1/jobs/job-l/artifacts/big.bin",
            fence,
            None,
            too_big.clone(),
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], "payload_too_large");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 2097152 bytes per artifact")
    );
    // Streamed without a length: refused once the bytes pass the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = too_big
        .chunks(64 * 1024)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let request = Request::put("/api/v1/jobs/job-l/artifacts/big.bin")
        .header("skill-fleet-attempt", attempt.to_string())
        .header("skill-fleet-lease-token", &token)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = app.request(request).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{:?}",
        reply.body
    );
    // The job's limit counts what it holds.
    let two_mib = pattern(2 * 1024 * 1024);
    let reply = app
        .request(put(
            "/api/v1/jobs/job-l/artifacts/a.bin",
            fence,
            None,
            two_mib.clone(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = app
        .request(put(
            "/api/v1/jobs/job-l/artifacts/b.bin",
            fence,
            None,
            two_mib,
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("job `job-l` would hold")
    );
    let list = app.get("/api/v1/jobs/job-l/artifacts").await;
    assert_eq!(list.body["artifacts"].as_array().unwrap().len(), 1);
    // Nothing of the refused uploads is left in the database (discarded at once, or by the
    // background discard of a dropped upload: waited for with a deadline).
    let store = app.store().clone();
    crate::support::wait_until(
        "refused uploads discarded",
        std::time::Duration::from_secs(10),
        || store.uploads_in_flight().unwrap() == 0,
    )
    .await;
}

#[tokio::test]
async fn a_result_may_name_a_stored_artifact() {
    let app = TestApp::new().await;
    let (attempt, token) = claimed(&app, "job-c").await;
    let reply = app
        .post(
            "/api/v1/jobs/job-c/complete",
            json!({"attempt": attempt, "lease_token": token, "result_path": "artifact:program.json"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("names no stored artifact of job `job-c`")
    );
    app.request(put(
        "/api/v1/jobs/job-c/artifacts/program.json",
        Some((attempt, &token)),
        None,
        b"{}".to_vec(),
    ))
    .await;
    let reply = app
        .post(
            "/api/v1/jobs/job-c/complete",
            json!({"attempt": attempt, "lease_token": token, "result_path": "artifact:program.json", "result": {"score": 0.9}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let result = app.get("/api/v1/jobs/job-c/result").await;
    assert_eq!(
        result.body["result_url"],
        Value::from("/api/v1/jobs/job-c/artifacts/program.json")
    );
    // The artifacts outlive the job's end.
    let (status, _, bytes) = raw(&app, get("/api/v1/jobs/job-c/artifacts/program.json", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"{}");
}
