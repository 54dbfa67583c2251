//! The OpenAPI document: it describes exactly the routes the router serves (both are built from
//! `routes::api()`; checked with a request per documented path and method, and against the
//! sources that could add a route beside that list), every failure uses the shared error body,
//! and the documented headers and hand-written bodies match what the handlers send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use skill_fleet_api::openapi::CACHED_GETS;
use support::TestApp;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Routes `router()` declares beside `routes::api()`, not part of the API (served only when
/// configured).
const UNDOCUMENTED: &[&str] = &["/_bench/artifact/{id}/{name}", "/_bench/noop"];

async fn document(app: &TestApp) -> Value {
    let reply = app.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(
        reply.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        reply.body["openapi"]
    );
    reply.body
}

/// Every `(METHOD, path, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    out
}

/// A request for `method path`, with `{id}` filled in and, for a POST, a JSON body.
fn probe(method: &Method, path: &str) -> Request<Body> {
    let uri = path.replace("{id}", "probe-job");
    let mut request = Request::builder().method(method.clone()).uri(&uri);
    let body = if *method == Method::POST {
        request = request.header("content-type", "application/json");
        Body::from("{}")
    } else {
        Body::empty()
    };
    request.body(body).unwrap()
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_the_router_answers() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    assert!(documented.len() > 10, "too few operations: {documented:?}");
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operation ids repeat: {ids:?}");
    // On every documented path, the documented methods are served and no other is.
    for path in doc["paths"].as_object().unwrap().keys() {
        for method in METHODS {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let reply = app.request(probe(&method, path)).await;
            let message = reply.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.starts_with("no route for"),
                "{method} {path} is documented but the router does not serve it: {message}"
            );
            if documented.contains(&(method.to_string(), path.clone())) {
                assert_ne!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but the router has no such method there"
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
}

/// The string literal of every `.route("…"` in `source`.
fn route_calls(source: &str) -> BTreeSet<String> {
    source
        .match_indices(".route(")
        .map(|(offset, _)| {
            let rest = source[offset + ".route(".len()..].trim_start();
            let path = rest
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("`.route(` without a literal path: {rest:.60}"));
            path[..path.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The router and the document are both built from `routes::api()`; the only way to serve a
/// route undocumented is to add it beside that list. axum cannot list a router's routes, so
/// this reads the two functions that build the router, like a tidy check.
#[test]
fn no_route_is_added_beside_the_documented_list() {
    let read = |file: &str| {
        std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|err| panic!("read {file}: {err}"))
    };
    let lib = read("src/lib.rs");
    let start = lib
        .find("pub fn router(")
        .expect("`pub fn router(` in lib.rs");
    let router = &lib[start..];
    let router = &router[..router.find("\n}\n").expect("end of router()")];
    let routes = read("src/routes/mod.rs");
    for (name, source) in [("router()", router), ("routes/mod.rs", routes.as_str())] {
        for call in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
            assert!(
                !source.contains(call),
                "{name} calls `{call}`: routes beside `routes!` are served undocumented"
            );
        }
    }
    assert!(
        router.contains("routes::api()"),
        "router() no longer serves routes::api()"
    );
    let beside: BTreeSet<String> = route_calls(router)
        .into_iter()
        .chain(route_calls(&routes))
        .collect();
    let undocumented: BTreeSet<String> = UNDOCUMENTED.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(
        beside, undocumented,
        "a route added with `.route(` is served but not documented: register its handler \
         with `routes!` in routes::api(), or add it to UNDOCUMENTED here if it is not part \
         of the API"
    );
}

fn is_error_body(response: &Value) -> bool {
    response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
}

#[tokio::test]
async fn every_failure_is_documented_with_the_error_body() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    for (method, path, operation) in operations(&doc) {
        let route = format!("{method} {path}");
        let responses = operation["responses"].as_object().unwrap();
        let has_error = |status: &str| responses.get(status).is_some_and(is_error_body);
        for (status, response) in responses {
            let code: u16 = status.parse().unwrap();
            if code < 400 || (path == "/readyz" && code == 503) {
                continue;
            }
            assert!(
                is_error_body(response),
                "{route} {status} does not use ErrorBody: {response}"
            );
        }
        let public = operation["security"] == serde_json::json!([{}]);
        assert_eq!(
            public,
            path == "/healthz",
            "{route}: only /healthz needs no token"
        );
        if !public {
            assert!(has_error("401"), "{route} lacks 401");
            assert!(has_error("403"), "{route} lacks 403 (a role that may not)");
            let role = operation["x-required-role"].as_str().unwrap_or_default();
            assert!(
                ["read", "worker", "admin"].contains(&role),
                "{route} does not say the role it needs: {role:?}"
            );
        }
        if path.contains("{id}") {
            assert!(has_error("400"), "{route} lacks 400 for a bad id");
            assert!(has_error("404"), "{route} lacks 404 for an unknown job");
        }
        if operation.get("requestBody").is_some() {
            for status in ["400", "413", "422"] {
                assert!(has_error(status), "{route} takes a body but lacks {status}");
            }
        }
        if path.starts_with("/api/v1/jobs") || path.starts_with("/api/v1/optimization") {
            assert!(has_error("500"), "{route} reads the store but lacks 500");
            assert!(
                has_error("503"),
                "{route} reads the store but lacks 503 (storage fault)"
            );
        }
    }
    // The error body is one shared component.
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &doc["components"]["schemas"]["ErrorDetail"];
    assert!(
        detail["properties"]["code"].is_object() && detail["properties"]["message"].is_object()
    );
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_reference_resolves_and_security_is_declared() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for target in refs {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {target}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "$ref {target} does not resolve"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["token"]["in"], "query");
    // A token is needed only when the server has one: no requirement (`{}`) or the bearer.
    assert_eq!(doc["security"], serde_json::json!([{}, {"bearer": []}]));
}

#[tokio::test]
async fn streams_are_documented_as_event_streams() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    for path in [
        "/api/v1/jobs/{id}/stream",
        "/api/v1/optimization/{id}/stream",
    ] {
        let operation = &doc["paths"][path]["get"];
        // Each event as `text/event-stream` carries it (what Schemathesis validates): `data`
        // holds one `StreamEvent` as JSON.
        assert_eq!(
            operation["responses"]["200"]["content"]["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/StreamFrame",
            "{path}"
        );
        let frame = &doc["components"]["schemas"]["StreamFrame"];
        assert_eq!(frame["required"], serde_json::json!(["data"]));
        assert_eq!(
            frame["properties"]["data"]["contentSchema"]["$ref"],
            "#/components/schemas/StreamEvent"
        );
        assert_eq!(
            frame["properties"]["data"]["contentMediaType"],
            "application/json"
        );
        let params: BTreeSet<(&str, &str)> = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
            .collect();
        for expected in [
            ("id", "path"),
            ("Last-Event-ID", "header"),
            ("lastEventId", "query"),
            ("token", "query"),
        ] {
            assert!(params.contains(&expected), "{path} lacks {expected:?}");
        }
        assert_eq!(
            operation["security"],
            serde_json::json!([{}, {"bearer": []}, {"token": []}])
        );
    }
}

fn header_names(response: &Value) -> BTreeSet<String> {
    response["headers"]
        .as_object()
        .map(|headers| headers.keys().map(|name| name.to_lowercase()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn cached_gets_send_the_documented_headers_and_304() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    app.create("c", "optimization").await;
    app.post(
        "/api/v1/jobs/c/events",
        serde_json::json!({"progress": 0.5}),
    )
    .await;
    app.post(
        "/api/v1/jobs/c/complete",
        serde_json::json!({"result": {"score": 1}}),
    )
    .await;
    let cache_headers = ["etag", "last-modified", "cache-control", "x-cache"];
    let operations = operations(&doc);
    for path in CACHED_GETS {
        assert!(
            operations.iter().any(|(m, p, _)| m == "GET" && p == path),
            "CACHED_GETS names {path}, which the document has no GET for"
        );
    }
    for (method, path, operation) in &operations {
        let responses = &operation["responses"];
        let cached = method == "GET" && CACHED_GETS.contains(&path.as_str());
        // An artifact's download answers conditional requests from its hash, uncached (its
        // headers are checked in the artifact tests).
        let conditional = method == "GET" && path == "/api/v1/jobs/{id}/artifacts/{name}";
        assert_eq!(
            responses.get("304").is_some(),
            cached || conditional,
            "{method} {path}: 304 documented iff cached or a download"
        );
        if method != "GET" || path.ends_with("/stream") || conditional {
            continue;
        }
        let uri = path.replace("{id}", "c");
        let reply = app.get(&uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {:?}", reply.body);
        let documented = header_names(&responses["200"]);
        for name in cache_headers {
            assert_eq!(
                reply.headers.contains_key(name),
                cached,
                "{uri}: `{name}` sent iff the route is cached"
            );
            assert_eq!(
                documented.contains(name),
                cached,
                "{path}: `{name}` documented iff cached"
            );
        }
        if cached {
            let etag = reply.headers["etag"].to_str().unwrap().to_owned();
            let again = app
                .request(
                    Request::get(&uri)
                        .header("if-none-match", &etag)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{uri}");
            for name in cache_headers {
                assert!(
                    again.headers.contains_key(name),
                    "{uri}: 304 lacks `{name}`"
                );
                assert!(header_names(&responses["304"]).contains(name));
            }
        }
    }
}

#[tokio::test]
async fn creates_document_location() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    for path in ["/api/v1/jobs", "/api/v1/optimization"] {
        for status in ["200", "201"] {
            let response = &doc["paths"][path]["post"]["responses"][status];
            assert!(
                header_names(response).contains("location"),
                "{path} {status}"
            );
        }
    }
}

/// Resolves a schema that may be a `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(target) => {
            let name = target.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Checks that `body` has exactly the documented properties, recursively into objects.
fn assert_matches_schema(doc: &Value, schema: &Value, body: &Value, at: &str) {
    let schema = resolve(doc, schema);
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let body = body
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"));
    let documented: BTreeSet<&String> = properties.keys().collect();
    let sent: BTreeSet<&String> = body.keys().collect();
    assert_eq!(sent, documented, "{at}: the body and its schema disagree");
    for (key, value) in body {
        assert_matches_schema(doc, &properties[key], value, &format!("{at}.{key}"));
    }
}

#[tokio::test]
async fn operations_bodies_match_their_hand_written_schemas() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, StatusCode::OK);
        let schema =
            &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert_matches_schema(&doc, schema, &reply.body, path);
    }
    app.state.set_ready(false);
    let starting = app.get("/readyz").await;
    assert_eq!(starting.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(starting.body, serde_json::json!({"status": "starting"}));
    assert!(doc["paths"]["/readyz"]["get"]["responses"]["503"].is_object());
}

/// The document states the validators' rules from their constants: the patterns of ids,
/// types, worker and artifact names and cursors, the ranges of progress and cost, the fence,
/// and optional bodies that are absent rather than `null`.
#[tokio::test]
async fn the_document_states_the_rules_the_server_enforces() {
    use skill_fleet_types::{
        ARTIFACT_NAME_PATTERN, JOB_ID_PATTERN, JOB_TYPE_PATTERN, MAX_LEASE_TOKEN_LEN,
        WORKER_NAME_PATTERN,
    };
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CreateJob"]["properties"]["type"]["pattern"],
        JOB_TYPE_PATTERN
    );
    assert_eq!(
        schemas["CreateJob"]["properties"]["id"]["pattern"],
        JOB_ID_PATTERN
    );
    assert_eq!(
        schemas["ClaimRequest"]["properties"]["worker"]["pattern"],
        WORKER_NAME_PATTERN
    );
    let update = &schemas["ProgressUpdate"];
    assert_eq!(update["properties"]["progress"]["minimum"], 0);
    assert_eq!(update["properties"]["progress"]["maximum"], 1);
    assert_eq!(update["properties"]["cost_usd"]["minimum"], 0);
    assert_eq!(
        update["properties"]["lease_token"]["maxLength"],
        MAX_LEASE_TOKEN_LEN
    );
    assert_eq!(
        update["dependentRequired"],
        serde_json::json!({"attempt": ["lease_token"], "lease_token": ["attempt"]}),
        "the fence: both or neither"
    );
    assert_eq!(
        update["properties"]["attempt"]["type"], "integer",
        "never null"
    );
    for (method, path) in operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
    {
        let operation = &doc["paths"][&path][method.to_lowercase()];
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let expected = match (parameter["name"].as_str(), parameter["in"].as_str()) {
                (Some("id"), Some("path")) => JOB_ID_PATTERN,
                (Some("name"), Some("path")) => ARTIFACT_NAME_PATTERN,
                (Some("type"), Some("query")) => JOB_TYPE_PATTERN,
                (Some("cursor"), Some("query")) => skill_fleet_jobs::CURSOR_PATTERN,
                _ => continue,
            };
            assert_eq!(parameter["schema"]["pattern"], expected, "{method} {path}");
        }
        if let Some(schema) = operation.pointer("/requestBody/content/application~1json/schema") {
            assert!(
                schema.get("oneOf").is_none(),
                "{method} {path}: an optional body is absent, not null: {schema}"
            );
        }
    }
    // What the document calls valid, the server takes: a whole float is an integer.
    app.create("w", "contract").await;
    let reply = app
        .post(
            "/api/v1/jobs/w/events",
            serde_json::json!({"step": 3.0, "progress": 1}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    // Bodies are objects: serde would read a struct from an array of its fields.
    for (path, body) in [
        ("/api/v1/optimization", serde_json::json!([null, null])),
        ("/api/v1/jobs", serde_json::json!(["contract", null, null])),
    ] {
        let reply = app.post(path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {:?}",
            reply.body
        );
    }
}
