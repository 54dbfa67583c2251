//! Throws a few thousand seeded random requests at the real router (hostile paths, queries,
//! headers and bodies, against real jobs) and checks that none gets a 5xx, that every 4xx
//! carries our JSON error body, and that everything accepted can still be written.
//!
//! The seed is fixed so a failure is repeatable; `SKILL_FLEET_FUZZ_SEED` and
//! `SKILL_FLEET_FUZZ_REQUESTS` run another seed or more requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skill_fleet_api::ApiConfig;
use skill_fleet_testkit::Rng;
use support::TestApp;
use tower::ServiceExt;

const DEFAULT_SEED: u64 = 0x5eed_f1ee_7000_0001;
const DEFAULT_REQUESTS: usize = 3000;
const TOKEN: &str = "s3cret-token";
/// Body limit of the app that requires a token (the other keeps the 1 MiB default).
const SMALL_BODY_LIMIT: usize = 16 * 1024;
/// Types of the pool's jobs: job `fz-{n}` has type `TYPES[n % 3]`.
const TYPES: [&str; 3] = ["optimization", "evaluation", "x-1"];
/// Jobs `fz-0` to `fz-{POOL - 1}` exist before the run; random creates make `fz-{POOL}` to
/// `fz-{2 * POOL - 1}`, and paths name all of them.
const POOL: usize = 8;

/// The fuzzer's values on top of the test kit's seeded [`Rng`] (xorshift64*, so a seed
/// replays the same cases).
trait FuzzValues {
    fn next(&mut self) -> u64;
    fn f64(&mut self) -> f64;
    fn string(&mut self, max: usize) -> String;
}

impl FuzzValues for Rng {
    fn next(&mut self) -> u64 {
        self.next_u64()
    }

    fn f64(&mut self) -> f64 {
        match self.below(8) {
            0 => f64::from_bits(self.next()),
            1 => *self.pick(&[0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 5e-324, 0.5]),
            2 => self.next() as f64,
            _ => (self.next() % 2_000_001) as f64 / 1e6 - 0.5,
        }
    }

    fn string(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| match self.below(6) {
                0 => char::from_u32(self.next() as u32 % 0x11_0000).unwrap_or('\u{fffd}'),
                1 => *self.pick(&['"', '\\', '\n', '\0', '/', '.', '%', '{', '}', ' ']),
                _ => char::from(b'a' + self.below(26) as u8),
            })
            .collect()
    }
}

/// One generated request and what it is for the failure message.
struct Case {
    app: usize,
    /// The route template (`/api/v1/jobs/{id}/events`) or odd path it was made from.
    template: &'static str,
    method: Method,
    uri: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

impl Case {
    fn describe(&self) -> String {
        let mut text = format!("[app {}] {} {}", self.app, self.method, cut(&self.uri, 300));
        for (name, value) in &self.headers {
            let _ = write!(
                text,
                "\n  {name}: {}",
                cut(&String::from_utf8_lossy(value), 200)
            );
        }
        let _ = write!(
            text,
            "\n  body ({} bytes): {}",
            self.body.len(),
            cut(&String::from_utf8_lossy(&self.body), 400)
        );
        text
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The id of a seeded job, or of one a random create may have made.
fn real_id(rng: &mut Rng) -> String {
    format!("fz-{}", rng.below(2 * POOL))
}

/// A path segment where a job id goes.
fn id_segment(rng: &mut Rng) -> String {
    match rng.below(40) {
        0..=27 => real_id(rng),
        28 => format!("fz-{}", 2 * POOL + rng.below(POOL)),
        29 => format!("unknown-{}", rng.below(1000)),
        30 => rng
            .pick(&["..", "%2e%2e", ".", "%2E%2e%2F..", "%00", "a%00b"])
            .to_string(),
        31 => rng
            .pick(&["%2F", "a%2Fb", "..%2F..%2Fetc%2Fpasswd", "%5C..%5C"])
            .to_string(),
        32 => rng
            .pick(&["%C3%A9", "%E2%80%AE", "%F0%9F%92%A9", "%FF", "%C3", "%"])
            .to_string(),
        33 => "a".repeat(64),
        34 => "b".repeat(65),
        35 => "x".repeat(10 * 1024),
        36 => String::new(),
        37 => percent_encode(&rng.string(12)),
        38 => rng
            .pick(&["a%20b", "a+b", "job;1", "job,1", "*", "$", "~"])
            .to_string(),
        _ => format!("fz-{}%00", rng.below(POOL)),
    }
}

/// The body a route takes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    None,
    Create,
    Optimization,
    Claim,
    Progress,
    Complete,
    Fail,
    Cancel,
    Heartbeat,
}

/// Route templates with the method and body they take; the fuzzer mostly sends those, and
/// sometimes anything else.
const ROUTES: &[(&str, Method, Kind)] = &[
    ("/api/v1/jobs", Method::POST, Kind::Create),
    ("/api/v1/jobs", Method::GET, Kind::None),
    ("/api/v1/jobs/claim", Method::POST, Kind::Claim),
    ("/api/v1/jobs/{id}", Method::GET, Kind::None),
    ("/api/v1/jobs/{id}/progress", Method::GET, Kind::None),
    ("/api/v1/jobs/{id}/result", Method::GET, Kind::None),
    ("/api/v1/jobs/{id}/events", Method::POST, Kind::Progress),
    ("/api/v1/jobs/{id}/events", Method::POST, Kind::Progress),
    ("/api/v1/jobs/{id}/complete", Method::POST, Kind::Complete),
    ("/api/v1/jobs/{id}/fail", Method::POST, Kind::Fail),
    ("/api/v1/jobs/{id}/heartbeat", Method::POST, Kind::Heartbeat),
    ("/api/v1/jobs/{id}/cancel", Method::POST, Kind::Cancel),
    ("/api/v1/jobs/{id}/resume", Method::POST, Kind::None),
    ("/api/v1/jobs/{id}/stream", Method::GET, Kind::None),
    ("/api/v1/jobs/{id}/logs", Method::GET, Kind::None),
    ("/api/v1/optimization", Method::POST, Kind::Optimization),
    ("/api/v1/optimization/{id}/stream", Method::GET, Kind::None),
    ("/api/v1/openapi.json", Method::GET, Kind::None),
    ("/healthz", Method::GET, Kind::None),
    ("/readyz", Method::GET, Kind::None),
    ("/metrics", Method::GET, Kind::None),
];

/// Paths that are not routes, or routes spelled oddly.
const ODD_PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/v1/",
    "/api/v1/jobs/",
    "//api/v1/jobs",
    "/api/v1/jobs/{id}/{id}",
    "/api/v1/jobs/{id}/stream/",
    "/api/v1/jobs/{id}/nothing",
    "/API/V1/JOBS",
    "/api/v1/../v1/jobs",
    "/api/v1/%6Aobs",
    "/api/v1/jobs/{id}/events?",
];

fn fill(template: &str, rng: &mut Rng) -> String {
    let mut path = String::new();
    for (i, part) in template.split("{id}").enumerate() {
        if i > 0 {
            path.push_str(&id_segment(rng));
        }
        path.push_str(part);
    }
    path
}

fn cursor(rng: &mut Rng) -> String {
    let plain = match rng.below(4) {
        0 => format!("{}:{}", rng.next() as i64, real_id(rng)),
        1 => format!("{}:../x", rng.next() as i64),
        2 => rng.string(20),
        _ => format!("{}:a", *rng.pick(&[i64::MIN, i64::MAX, -1, 0])),
    };
    let hex: String = plain.bytes().map(|b| format!("{b:02x}")).collect();
    match rng.below(4) {
        0 => percent_encode(&plain),
        1 => format!("{hex}z"),
        _ => hex,
    }
}

fn query(rng: &mut Rng) -> String {
    if rng.chance(45) {
        return String::new();
    }
    let mut pairs = Vec::new();
    for _ in 0..=rng.below(4) {
        let value = match rng.below(10) {
            0 => rng
                .pick(&[
                    "queued",
                    "running",
                    "completed",
                    "failed",
                    "cancelled",
                    "done",
                ])
                .to_string(),
            1 => rng
                .pick(&["optimization", "evaluation", "Bad", "a.b", ""])
                .to_string(),
            2 => rng.next().to_string(),
            3 => format!("-{}", rng.next()),
            4 => rng
                .pick(&[
                    "0",
                    "1",
                    "500",
                    "501",
                    "4294967296",
                    "99999999999999999999999",
                    "1e3",
                    "0x10",
                ])
                .to_string(),
            5 => cursor(rng),
            6 => percent_encode(&rng.string(16)),
            7 => rng
                .pick(&["%FF", "%", "%zz", "a&&b", "==", "+%2B+", "%00"])
                .to_string(),
            8 => TOKEN.to_owned(),
            _ => String::new(),
        };
        let key = *rng.pick(&[
            "status",
            "type",
            "limit",
            "cursor",
            "after",
            "lastEventId",
            "token",
            "bogus",
            "",
            "limit",
            "%73tatus",
        ]);
        pairs.push(match rng.below(8) {
            0 => key.to_owned(),
            _ => format!("{key}={value}"),
        });
    }
    format!("?{}", pairs.join("&"))
}

fn etag_list(rng: &mut Rng, seen: &[String]) -> Vec<u8> {
    let mut tags = Vec::new();
    for _ in 0..=rng.below(3) {
        let tag = match rng.below(6) {
            0 | 1 if !seen.is_empty() => rng.pick(seen).clone(),
            2 => "*".to_owned(),
            3 => format!("\"fz-{}.v{}\"", rng.below(POOL), rng.below(50)),
            4 => rng.string(12),
            _ => format!("\"{}\"", rng.next()),
        };
        let weak = if rng.chance(30) { "W/" } else { "" };
        tags.push(format!(
            "{}{weak}{tag}{}",
            " ".repeat(rng.below(3)),
            "\t".repeat(rng.below(2))
        ));
    }
    tags.join(",").into_bytes()
}

fn junk_header(rng: &mut Rng) -> Vec<u8> {
    // Visible ASCII, tabs and obs-text: what a header value may hold on the wire.
    (0..rng.below(40))
        .map(|_| match rng.below(4) {
            0 => 0x80 + rng.below(0x80) as u8,
            1 => b'\t',
            _ => 0x20 + rng.below(0x5f) as u8,
        })
        .collect()
}

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/json",
    b"application/json",
    b"application/json",
    b"application/json",
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"application/problem+json",
    b"application/json-seq",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"",
    b"application/json\xff",
    b";;;",
];

const ODD_BODIES: &[&[u8]] = &[
    br#"{"progress": NaN}"#,
    br#"{"progress": Infinity}"#,
    br#"{"progress": 1e400}"#,
    br#"{"cost_usd": -1e400}"#,
    br#"{"step": 123456789012345678901234567890}"#,
    br#"{"progress": 0.5, "progress": 0.6}"#,
    br#"{"type": "optimization"} trailing"#,
    b"[]",
    b"null",
    b"\"string\"",
    b"\xef\xbb\xbf{}",
];

fn headers(rng: &mut Rng, seen: &[String]) -> Vec<(&'static str, Vec<u8>)> {
    let mut headers = Vec::new();
    if rng.chance(25) {
        headers.push(("if-none-match", etag_list(rng, seen)));
    }
    if rng.chance(15) {
        let value = match rng.below(5) {
            0 => "Sun, 06 Nov 1994 08:49:37 GMT".to_owned(),
            1 => "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
            2 => "Sunday, 06-Nov-94 08:49:37 GMT".to_owned(),
            3 => String::from_utf8_lossy(&junk_header(rng)).into_owned(),
            _ => "Thu, 01 Jan 1970 00:00:00 GMT".to_owned(),
        };
        headers.push(("if-modified-since", value.into_bytes()));
    }
    if rng.chance(15) {
        let value = match rng.below(5) {
            0 => rng.next().to_string(),
            1 => u64::MAX.to_string(),
            2 => format!("-{}", rng.below(100)),
            3 => "18446744073709551616".to_owned(),
            _ => String::from_utf8_lossy(&junk_header(rng)).into_owned(),
        };
        headers.push(("last-event-id", value.into_bytes()));
    }
    // Mostly plain JSON, so bodies get past the content-type check.
    match rng.below(20) {
        0..=15 => headers.push(("content-type", b"application/json".to_vec())),
        16 => {}
        _ => headers.push(("content-type", rng.pick(CONTENT_TYPES).to_vec())),
    }
    if rng.chance(30) {
        let value = match rng.below(7) {
            0..=2 => format!("Bearer {TOKEN}"),
            3 => "Bearer wrong".to_owned(),
            4 => format!("bearer {TOKEN}"),
            5 => format!("Basic {}", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            _ => format!("Bearer {}", "t".repeat(rng.below(5000))),
        };
        headers.push(("authorization", value.into_bytes()));
    }
    if rng.chance(10) {
        headers.push(("x-skill-fleet-source", junk_header(rng)));
    }
    if rng.chance(10) {
        headers.push(("accept", b"text/event-stream".to_vec()));
    }
    headers
}

/// A JSON value of some depth, with hostile leaves.
fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => serde_json::Number::from_f64(rng.f64()).map_or(Value::Null, Value::Number),
        3 => json!(rng.next() as i64),
        4 => Value::String(rng.string(20)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (rng.string(6), value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A valid body of one of the real request types (this route's, or another's), with some
/// fields mutated.
fn json_body(rng: &mut Rng, kind: Kind) -> Value {
    let kind = if kind == Kind::None || rng.chance(20) {
        *rng.pick(&[
            Kind::Create,
            Kind::Optimization,
            Kind::Claim,
            Kind::Progress,
            Kind::Complete,
            Kind::Fail,
            Kind::Cancel,
            Kind::Heartbeat,
        ])
    } else {
        kind
    };
    let mut body = match kind {
        Kind::Create => {
            // Mostly the body the job was (or will be) created with, so a repeat is a 200.
            let n = rng.below(2 * POOL);
            let job_type = if rng.chance(80) {
                TYPES[n % 3]
            } else {
                *rng.pick(&TYPES)
            };
            json!({"type": job_type, "id": format!("fz-{n}"), "metadata": seed_metadata(n)})
        }
        Kind::Optimization => json!({
            "id": format!("fz-{}", rng.below(2 * POOL)),
            "metadata": {"optimizer": "gepa"},
        }),
        Kind::Progress if rng.chance(50) => json!({
            "step": rng.pick(&["a", "b", "3"]),
            "progress": rng.f64().abs().min(1.0),
            "cost_usd": rng.below(10),
            "metric": 0.5,
            "message": "working",
        }),
        Kind::Progress => json!({
            "progress": (rng.below(1001) as f64) / 1000.0,
            "checkpoint": {"trial": rng.below(9)},
        }),
        Kind::Complete => json!({"result": {"score": 0.9}, "result_path": "out.json"}),
        Kind::Fail => json!({"error": rng.string(30)}),
        Kind::Cancel => json!({"reason": rng.string(30)}),
        // A fence no claim handed out (the fuzzer never learns a token): refused, 409.
        Kind::Heartbeat => {
            json!({"attempt": rng.below(3), "lease_token": format!("{:032x}", rng.below(1 << 20))})
        }
        Kind::Claim | Kind::None => {
            json!({"types": [rng.pick(&["optimization", "evaluation", "x-1", "Bad"])]})
        }
    };
    let object = body.as_object_mut().unwrap();
    let mutations = if rng.chance(65) { 0 } else { 1 + rng.below(3) };
    for _ in 0..mutations {
        let key = rng
            .pick(&[
                "type",
                "id",
                "metadata",
                "step",
                "progress",
                "cost_usd",
                "metric",
                "message",
                "checkpoint",
                "result",
                "result_path",
                "error",
                "reason",
                "types",
                "extra",
            ])
            .to_string();
        let mutated = match rng.below(8) {
            0 => json!(f64::MAX),
            1 => json!("NaN"),
            2 => json!(-1),
            3 => json!({"budget_usd": rng.pick(&[json!(-1), json!("2"), json!(1e308), json!(0)])}),
            4 => json!(real_id(rng)),
            5 => json!("x".repeat(rng.below(70_000))),
            _ => value(rng, 3),
        };
        object.insert(key, mutated);
    }
    body
}

fn body(rng: &mut Rng, kind: Kind) -> Vec<u8> {
    match rng.below(32) {
        0 => Vec::new(),
        1 => b"  \n\t ".to_vec(),
        2 => {
            let text = json_body(rng, kind).to_string().into_bytes();
            let end = rng.below(text.len().max(1));
            text[..end].to_vec()
        }
        3 => rng.pick(ODD_BODIES).to_vec(),
        4 => {
            let depth = rng.pick(&[64, 127, 128, 129, 5000]);
            let key = *rng.pick(&["metadata", "checkpoint", "result"]);
            format!("{{\"{key}\":{}{}}}", "[".repeat(*depth), "]".repeat(*depth)).into_bytes()
        }
        5 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        6 => {
            let mut text = json_body(rng, kind).to_string().into_bytes();
            let at = rng.below(text.len());
            text[at] = 0xff;
            text
        }
        7 => {
            let size = *rng.pick(&[SMALL_BODY_LIMIT + 1, 1024 * 1024 + 1]);
            let mut text = br#"{"metadata":{"blob":""#.to_vec();
            text.resize(size, b'x');
            text.extend_from_slice(br#""},"type":"optimization"}"#);
            text
        }
        _ => json_body(rng, kind).to_string().into_bytes(),
    }
}

fn case(rng: &mut Rng, seen: &[String]) -> Case {
    let (template, natural, kind) = if rng.chance(90) {
        let (template, method, kind) = rng.pick(ROUTES);
        (*template, method.clone(), *kind)
    } else {
        (*rng.pick(ODD_PATHS), Method::GET, Kind::None)
    };
    let method = if rng.chance(80) {
        natural
    } else {
        rng.pick(&[
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::HEAD,
        ])
        .clone()
    };
    let uri = format!("{}{}", fill(template, rng), query(rng));
    let app = usize::from(rng.chance(25));
    let mut headers = headers(rng, seen);
    // The app with a token mostly gets it, so its routes are reached too.
    if app == 1 && !headers.iter().any(|(name, _)| *name == "authorization") && rng.chance(70) {
        headers.push(("authorization", format!("Bearer {TOKEN}").into_bytes()));
    }
    let body = if method == Method::POST || rng.chance(10) {
        body(rng, kind)
    } else {
        Vec::new()
    };
    Case {
        app,
        template,
        method,
        uri,
        headers,
        body,
    }
}

fn build(case: &Case) -> Option<Request<Body>> {
    let mut builder = Request::builder()
        .method(case.method.clone())
        .uri(&case.uri);
    for (name, value) in &case.headers {
        // A value the wire could not carry is left out, as a client could not send it.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(*name, value);
        }
    }
    builder.body(Body::from(case.body.clone())).ok()
}

fn is_stream(uri: &str) -> bool {
    uri.split('?')
        .next()
        .is_some_and(|path| path.ends_with("/stream"))
}

/// Creates the pool's jobs on `app` and moves some of them along, so lifecycle routes hit
/// real rows in every state.
async fn seed(app: &TestApp) {
    for i in 0..POOL {
        let id = format!("fz-{i}");
        let body = json!({"id": id, "type": TYPES[i % 3], "metadata": seed_metadata(i)});
        let reply = app
            .request(authorized(
                Request::post("/api/v1/jobs")
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let next = match i % 4 {
            0 => None,
            1 => Some(("events", json!({"step": "a", "progress": 0.1}))),
            2 => Some(("cancel", json!({}))),
            _ => Some(("fail", json!({"error": "seeded"}))),
        };
        if let Some((action, body)) = next {
            let reply = app
                .request(authorized(
                    Request::post(format!("/api/v1/jobs/{id}/{action}"))
                        .header("content-type", "application/json")
                        .body(Body::from(body.to_string()))
                        .unwrap(),
                ))
                .await;
            assert!(reply.status.is_success(), "{action}: {:?}", reply.body);
        }
    }
}

/// The metadata of pool job `fz-{n}`: a few have limits the fuzz reaches (a budget that a
/// reported cost passes, a time limit that has passed by the end of the run).
fn seed_metadata(n: usize) -> Value {
    match n % 5 {
        1 => json!({"model": "m", "budget_usd": 3}),
        2 => json!({"model": "m", "time_limit_seconds": 0.001, "budget_warning_fraction": 0.1}),
        _ => json!({"model": "m"}),
    }
}

fn authorized(mut request: Request<Body>) -> Request<Body> {
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
    );
    request
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_get_a_5xx_and_4xx_bodies_are_ours() {
    let seed_value = env_or("SKILL_FLEET_FUZZ_SEED", DEFAULT_SEED);
    let requests = env_or("SKILL_FLEET_FUZZ_REQUESTS", DEFAULT_REQUESTS);
    let apps = [
        TestApp::new().await,
        TestApp::with_config(ApiConfig {
            auth_token: Some(skill_fleet_api::AuthToken::new(TOKEN)),
            max_body_bytes: SMALL_BODY_LIMIT,
            ..ApiConfig::default()
        })
        .await,
    ];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for app in &apps {
        seed(app).await;
        let mut stopped = stopped.clone();
        let state = app.state.clone();
        tokio::spawn(async move {
            skill_fleet_core::run_flusher(state.service(), Duration::from_millis(20), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
        });
    }

    let started = Instant::now();
    let mut rng = Rng::new(seed_value ^ 0x9e37_79b9_7f4a_7c15 | 1);
    let mut seen_etags: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut skipped = 0;
    let mut reached = std::collections::BTreeSet::new();
    for n in 0..requests {
        let case = case(&mut rng, &seen_etags);
        let Some(request) = build(&case) else {
            skipped += 1;
            continue;
        };
        let app = &apps[case.app];
        let response =
            tokio::time::timeout(Duration::from_secs(20), app.router.clone().oneshot(request))
                .await
                .unwrap_or_else(|_| panic!("request {n} hung:\n{}", case.describe()))
                .unwrap();
        let status = response.status();
        *statuses.entry(status.as_u16()).or_default() += 1;
        reached.insert((case.template, case.method.clone(), status.as_u16()));
        if let Some(tag) = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            && seen_etags.len() < 64
            && !seen_etags.iter().any(|seen| seen == tag)
        {
            seen_etags.push(tag.to_owned());
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // An open stream never ends by itself: look at its status and headers only.
        if status == StatusCode::OK && is_stream(&case.uri) && case.method == Method::GET {
            if content_type != "text/event-stream" {
                failures.push(format!(
                    "stream without text/event-stream ({content_type}):\n{}",
                    case.describe()
                ));
            }
            continue;
        }
        let bytes = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("body of request {n} hung:\n{}", case.describe()))
            .unwrap()
            .to_bytes();
        if status.is_server_error() {
            failures.push(format!(
                "{status} {}:\n{}",
                cut(&String::from_utf8_lossy(&bytes), 300),
                case.describe()
            ));
            continue;
        }
        if case.method == Method::HEAD
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::NO_CONTENT
        {
            if !bytes.is_empty() {
                failures.push(format!("{status} with a body:\n{}", case.describe()));
            }
            continue;
        }
        if status.is_client_error() {
            let body: Option<Value> = serde_json::from_slice(&bytes).ok();
            let shaped = body.as_ref().is_some_and(|body| {
                body["error"]["code"].is_string()
                    && body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                    && body.as_object().is_some_and(|o| o.len() == 1)
            });
            if !shaped || !content_type.starts_with("application/json") {
                failures.push(format!(
                    "{status} without our error body ({content_type}): {}\n{}",
                    cut(&String::from_utf8_lossy(&bytes), 300),
                    case.describe()
                ));
            }
        }
    }
    let _ = stop.send(true);
    // Jobs past their time limit are cancelled (the flusher does this once a second; the run
    // may be shorter).
    for app in &apps {
        app.state.service().enforce_time_limits().await;
    }
    // Everything accepted can be written: the coalesced progress flushes cleanly.
    for app in &apps {
        let flushed = app.state.service().flush_pending().await;
        assert!(flushed.is_ok(), "flush failed: {flushed:?}");
        let list = app.store().list(&skill_fleet_jobs::ListFilter::default());
        assert!(list.is_ok(), "list failed: {list:?}");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{requests} requests (seed {seed_value:#x}, {skipped} not buildable) in {elapsed:?}: {statuses:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed (seed {seed_value:#x}); first ones:\n\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // The run reached past the front door: real rows were read and written through every
    // route that writes, and cached reads answered 304.
    for (template, method, status) in [
        ("/api/v1/jobs", Method::POST, 201),
        ("/api/v1/jobs", Method::POST, 200),
        ("/api/v1/jobs", Method::POST, 409),
        ("/api/v1/jobs", Method::GET, 200),
        ("/api/v1/jobs/claim", Method::POST, 200),
        ("/api/v1/jobs/claim", Method::POST, 204),
        ("/api/v1/jobs/{id}", Method::GET, 200),
        ("/api/v1/jobs/{id}", Method::GET, 304),
        ("/api/v1/jobs/{id}", Method::GET, 400),
        ("/api/v1/jobs/{id}", Method::GET, 404),
        ("/api/v1/jobs/{id}/progress", Method::GET, 200),
        ("/api/v1/jobs/{id}/events", Method::POST, 202),
        ("/api/v1/jobs/{id}/events", Method::POST, 409),
        ("/api/v1/jobs/{id}/events", Method::POST, 413),
        ("/api/v1/jobs/{id}/events", Method::POST, 415),
        ("/api/v1/jobs/{id}/events", Method::POST, 422),
        ("/api/v1/jobs/{id}/complete", Method::POST, 200),
        ("/api/v1/jobs/{id}/fail", Method::POST, 200),
        ("/api/v1/jobs/{id}/heartbeat", Method::POST, 409),
        ("/api/v1/jobs/{id}/cancel", Method::POST, 200),
        ("/api/v1/jobs/{id}/resume", Method::POST, 200),
        ("/api/v1/jobs/{id}/stream", Method::GET, 200),
        ("/api/v1/optimization", Method::POST, 201),
    ] {
        assert!(
            reached.contains(&(template, method.clone(), status)),
            "never reached {method} {template} → {status}: {statuses:?}"
        );
    }
}
