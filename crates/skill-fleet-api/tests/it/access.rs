//! Access by role: for each role (and for no token and a wrong one) every operation of the
//! OpenAPI document, which is the router's route list, answers as the role table of issue 21
//! says; worker tokens limited to job types; the token's name, never its secret, in 403s and
//! `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use skill_fleet_api::access::{ROUTE_ROLES, Requirement, Role, Token, Tokens, sha256};
use skill_fleet_api::{ApiConfig, AuthToken};

use crate::support::{Reply, TestApp};

const READ: &str = "read-secret-7f3a9c";
const WORKER: &str = "worker-secret-b81d22";
const TYPED: &str = "typed-secret-55e0aa";
const ADMIN: &str = "admin-secret-c0ffee";
/// The job every probe names: type `other`, cancelled, so a stream of it is one event.
const JOB: &str = "probe-job";

/// Who a walk calls as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum As {
    Nobody,
    Wrong,
    Read,
    Worker,
    /// A worker token that may take only jobs of type `mine`.
    TypedWorker,
    Admin,
}

impl As {
    fn secret(self) -> Option<&'static str> {
        match self {
            As::Nobody => None,
            As::Wrong => Some("not-a-token"),
            As::Read => Some(READ),
            As::Worker => Some(WORKER),
            As::TypedWorker => Some(TYPED),
            As::Admin => Some(ADMIN),
        }
    }

    fn name(self) -> &'static str {
        match self {
            As::Read => "ci-reader",
            As::Worker => "gpu-worker",
            As::TypedWorker => "eval-worker",
            As::Admin => "ops",
            As::Nobody | As::Wrong => "",
        }
    }
}

/// The role table of issue 21, written out again here (not read from the code): `/healthz`
/// is public, every GET is `read`, the worker calls are `worker`, anything else `admin`.
fn needs(method: &str, path: &str) -> Option<Role> {
    const WORKER_CALLS: &[(&str, &str)] = &[
        ("POST", "/api/v1/jobs/claim"),
        ("POST", "/api/v1/jobs/{id}/heartbeat"),
        ("POST", "/api/v1/jobs/{id}/events"),
        ("POST", "/api/v1/jobs/{id}/complete"),
        ("POST", "/api/v1/jobs/{id}/fail"),
        ("PUT", "/api/v1/jobs/{id}/artifacts/{name}"),
    ];
    if path == "/healthz" {
        None
    } else if method == "GET" {
        Some(Role::Read)
    } else if WORKER_CALLS.contains(&(method, path)) {
        Some(Role::Worker)
    } else {
        Some(Role::Admin)
    }
}

fn role_of(who: As) -> Option<Role> {
    match who {
        As::Read => Some(Role::Read),
        As::Worker | As::TypedWorker => Some(Role::Worker),
        As::Admin => Some(Role::Admin),
        As::Nobody | As::Wrong => None,
    }
}

fn tokens() -> Vec<Token> {
    vec![
        Token::new("ci-reader", Role::Read, sha256(READ.as_bytes()), None),
        Token::new("gpu-worker", Role::Worker, sha256(WORKER.as_bytes()), None),
        Token::new(
            "eval-worker",
            Role::Worker,
            sha256(TYPED.as_bytes()),
            Some(vec!["mine".to_owned()]),
        ),
        Token::new("ops", Role::Admin, sha256(ADMIN.as_bytes()), None),
    ]
}

async fn app() -> TestApp {
    let tokens = Tokens::new(None, Some(tokens())).unwrap();
    let app = TestApp::with_config(ApiConfig {
        tokens: Some(Arc::new(tokens)),
        ..ApiConfig::default()
    })
    .await;
    let created = send(
        &app,
        As::Admin,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({"id": JOB, "type": "other"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let cancelled = send(
        &app,
        As::Admin,
        Method::POST,
        &format!("/api/v1/jobs/{JOB}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    app
}

async fn send(app: &TestApp, who: As, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(secret) = who.secret() {
        request = request.header("authorization", format!("Bearer {secret}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    app.request(request.body(body).unwrap()).await
}

/// Every `(METHOD, path)` of the document the router is built from.
fn operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(skill_fleet_api::openapi::document()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(out.len() > 15, "too few operations: {out:?}");
    out
}

/// Calls every operation as `who` and checks each answer against [`needs`].
async fn walk(who: As) {
    let app = app().await;
    for (method, path) in operations() {
        // Streams name a job that does not exist (404 at once): an allowed `resume` may have
        // queued the probe job again, and its stream would not end.
        let id = if path.ends_with("/stream") {
            "no-such-job"
        } else {
            JOB
        };
        let uri = path.replace("{id}", id).replace("{name}", "a.txt");
        let body = (method == "POST").then(|| json!({}));
        let reply = send(
            &app,
            who,
            Method::from_bytes(method.as_bytes()).unwrap(),
            &uri,
            body,
        )
        .await;
        let route = format!("{method} {path} as {who:?}");
        let expected = match (needs(&method, &path), role_of(who)) {
            (None, _) => None,
            (Some(_), None) => Some(StatusCode::UNAUTHORIZED),
            (Some(needed), Some(role)) if role < needed => Some(StatusCode::FORBIDDEN),
            // A typed worker writing to a job of another type.
            (Some(Role::Worker), Some(Role::Worker))
                if who == As::TypedWorker && path.contains("{id}") =>
            {
                Some(StatusCode::FORBIDDEN)
            }
            (Some(_), Some(_)) => None,
        };
        match expected {
            Some(status) => {
                assert_eq!(reply.status, status, "{route}: {:?}", reply.body);
                if status == StatusCode::FORBIDDEN {
                    assert_eq!(reply.body["error"]["code"], "forbidden", "{route}");
                    let message = reply.body["error"]["message"].as_str().unwrap();
                    assert!(
                        message.contains(&format!("`{}`", who.name())),
                        "{route}: {message}"
                    );
                    assert!(
                        message.contains(role_of(who).unwrap().as_str()),
                        "{route}: {message}"
                    );
                    assert!(
                        !message.contains(who.secret().unwrap()),
                        "{route}: {message}"
                    );
                } else {
                    assert_eq!(reply.headers["www-authenticate"], "Bearer", "{route}");
                }
            }
            None => assert!(
                reply.status != StatusCode::UNAUTHORIZED && reply.status != StatusCode::FORBIDDEN,
                "{route} is allowed but answered {}: {:?}",
                reply.status,
                reply.body
            ),
        }
    }
}

#[tokio::test]
async fn without_a_token_every_route_but_healthz_is_401() {
    walk(As::Nobody).await;
}

#[tokio::test]
async fn with_a_wrong_token_every_route_but_healthz_is_401() {
    walk(As::Wrong).await;
}

#[tokio::test]
async fn a_read_token_may_call_every_get_and_nothing_else() {
    walk(As::Read).await;
}

#[tokio::test]
async fn a_worker_token_may_read_and_call_the_worker_routes() {
    walk(As::Worker).await;
}

#[tokio::test]
async fn a_worker_token_with_types_writes_only_to_jobs_of_its_types() {
    walk(As::TypedWorker).await;
}

#[tokio::test]
async fn an_admin_token_may_call_everything() {
    walk(As::Admin).await;
}

/// The table in the code names exactly the routes the router serves: a new route cannot be
/// forgotten (it would need `admin` silently; this fails first).
#[test]
fn the_role_table_names_every_route_and_nothing_else() {
    let mut table: Vec<(String, String)> = ROUTE_ROLES
        .iter()
        .map(|(method, path, _)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    let mut routes = operations();
    table.sort();
    routes.sort();
    assert_eq!(table, routes);
    for (method, path, requirement) in ROUTE_ROLES {
        let expected = needs(method, path).map_or(Requirement::Public, Requirement::Role);
        assert_eq!(*requirement, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn a_typed_worker_claims_only_its_types() {
    let app = app().await;
    let theirs = send(
        &app,
        As::TypedWorker,
        Method::POST,
        "/api/v1/jobs/claim",
        Some(json!({"types": ["other"]})),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN, "{:?}", theirs.body);
    let message = theirs.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`eval-worker`") && message.contains("`other`"),
        "{message}"
    );
    // Queued jobs of both types: an empty claim takes only the token's type.
    for (id, job_type) in [("o-1", "other"), ("m-1", "mine")] {
        let created = send(
            &app,
            As::Admin,
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"id": id, "type": job_type})),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let claimed = send(
        &app,
        As::TypedWorker,
        Method::POST,
        "/api/v1/jobs/claim",
        Some(json!({})),
    )
    .await;
    assert_eq!(claimed.status, StatusCode::OK, "{:?}", claimed.body);
    assert_eq!(claimed.body["id"], "m-1");
    let none = send(
        &app,
        As::TypedWorker,
        Method::POST,
        "/api/v1/jobs/claim",
        Some(json!({})),
    )
    .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT, "o-1 is not its type");
    // Its own job it may write to.
    let event = send(
        &app,
        As::TypedWorker,
        Method::POST,
        "/api/v1/jobs/m-1/events",
        Some(json!({
            "progress": 0.5,
            "attempt": claimed.body["attempt"],
            "lease_token": claimed.body["lease_token"],
        })),
    )
    .await;
    assert_eq!(event.status, StatusCode::ACCEPTED, "{:?}", event.body);
}

#[tokio::test]
async fn metrics_count_requests_by_token_name_and_never_show_a_secret() {
    let tokens = Tokens::new(Some(&AuthToken::new(ADMIN)), Some(tokens()[..1].to_vec())).unwrap();
    let app = TestApp::with_config(ApiConfig {
        tokens: Some(Arc::new(tokens)),
        ..ApiConfig::default()
    })
    .await;
    // `--auth-token` is the admin token named `admin`.
    let created = send(
        &app,
        As::Admin,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({"id": "j", "type": "t"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let refused = send(&app, As::Read, Method::POST, "/api/v1/jobs/j/cancel", None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body["error"]["message"],
        "token `ci-reader` (role read) may not call POST /api/v1/jobs/{id}/cancel: it needs the admin role"
    );
    assert_eq!(
        send(&app, As::Wrong, Method::GET, "/api/v1/jobs", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let metrics = send(&app, As::Read, Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let auth = &metrics.body["auth"];
    assert_eq!(auth["unauthorized"], 1);
    assert_eq!(
        auth["tokens"],
        json!([
            {"name": "admin", "role": "admin", "requests": 1, "forbidden": 0},
            {"name": "ci-reader", "role": "read", "requests": 2, "forbidden": 1},
        ])
    );
    let text = metrics.body.to_string();
    for secret in [READ, ADMIN] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn the_history_of_a_cancel_and_a_resume_names_the_token() {
    let app = app().await;
    // `app()` cancelled the probe job as `ops`; resume it, cancel it again.
    let resumed = send(
        &app,
        As::Admin,
        Method::POST,
        &format!("/api/v1/jobs/{JOB}/resume"),
        None,
    )
    .await;
    assert_eq!(resumed.status, StatusCode::OK, "{:?}", resumed.body);
    let history = send(
        &app,
        As::Read,
        Method::GET,
        &format!("/api/v1/jobs/{JOB}/progress"),
        None,
    )
    .await;
    assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
    let rows: Vec<(Value, Value)> = history.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["event"].clone(), row["actor"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (Value::Null, json!("ops")),
            (json!("resumed"), json!("ops"))
        ],
        "{:?}",
        history.body
    );
    let text = history.body.to_string();
    assert!(!text.contains(ADMIN), "{text}");
}

#[tokio::test]
async fn without_tokens_the_history_names_nobody() {
    let app = TestApp::new().await;
    app.create("j", "t").await;
    assert_eq!(
        app.post("/api/v1/jobs/j/cancel", json!({})).await.status,
        StatusCode::OK
    );
    let history = app.get("/api/v1/jobs/j/progress").await;
    let rows = history.body["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{:?}", history.body);
    assert!(rows[0].get("actor").is_none(), "{:?}", history.body);
}
