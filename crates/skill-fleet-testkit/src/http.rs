//! The one blocking HTTP client of the test suites and the soak: `ureq` with statuses as
//! answers (a 4xx is something to assert on, not an error) and the body read as JSON.

use std::time::Duration;

use serde_json::Value;

/// A transport result as ureq returns it.
pub type Sent = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

/// Longest any one request may take, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An agent whose 4xx and 5xx answers are responses, with a 30 s limit per request.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// Like [`agent`], but every request opens its own connection (nothing is pooled), with a
/// 5 s connect limit: for load against a server that is killed at any moment.
pub fn unpooled_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .timeout_connect(Some(Duration::from_secs(5)))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
        .into()
}

/// An agent with no overall time limit (5 s to connect), for responses that stay open:
/// Server-Sent Events streams read line by line with `into_body().into_reader()`.
pub fn streaming_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// The status and body of a request that must get an answer: the body as JSON, or as a JSON
/// string when it is not JSON. Panics when the request got no answer.
pub fn call(sent: Sent) -> (u16, Value) {
    let mut response = sent.unwrap_or_else(|err| panic!("request failed: {err}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The status and body of a request that may get no answer (the server was killed): an error
/// when there was no response or its body was cut short; `null` for an empty body.
pub fn try_call(sent: Sent) -> Result<(u16, Value), ureq::Error> {
    let mut response = sent?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

/// `GET url`, answered or not.
pub fn try_get(agent: &ureq::Agent, url: &str) -> Result<(u16, Value), ureq::Error> {
    try_call(agent.get(url).call())
}

/// `POST url` with a JSON body, answered or not.
pub fn try_post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(u16, Value), ureq::Error> {
    try_call(agent.post(url).send_json(body))
}

/// A server's base URL and the calls the suites make against it; the test servers (a child
/// process, or one in-process) deref to it, so both offer the same `get`, `post`, `post_ok`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Endpoint {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`: the status and the JSON body (a JSON string when it is not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        call(agent().get(&self.url(path)).call())
    }

    /// `POST path` with a JSON body: the status and the JSON body.
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        call(agent().post(&self.url(path)).send_json(body))
    }

    /// `POST path`, asserting the status; the body.
    pub fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let (got, body) = self.post(path, body);
        assert_eq!(got, status, "POST {path}: {body}");
        body
    }
}
