//! `Client`: one typed method per route of the skill-fleet HTTP API, over one ureq agent.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use skill_fleet_types::{
    CancelRequest, ClaimRequest, ClaimedJob, CompleteRequest, CreateJob, ErrorBody, EventAck,
    FailRequest, Fence, HeartbeatAck, HeartbeatRequest, Job, JobList, JobLogs, JobStatus,
    ProgressPage, ProgressUpdate, ResultBody, validate_job_id, validate_job_type,
    validate_metadata, validate_worker_name,
};

use crate::cache::{Cache, CacheEntry};
use crate::error::{ClientError, snippet, unreachable_reason};
use crate::watch::{Watch, WatchOptions};

/// The server URL used when none is given (the server's default bind address).
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8000";

/// The header that tells the server who created a job (`cli`); anything else counts as `api`.
pub const SOURCE_HEADER: &str = "x-skill-fleet-source";

/// Connect timeout of ordinary requests.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an ordinary request waits for the response headers, and again for its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A value fetched with a cached GET, and whether it came from the local cache after the
/// server answered `304 Not Modified`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched<T> {
    /// The decoded response body.
    pub value: T,
    /// True when the server said `304` and the body came from the local cache.
    pub from_cache: bool,
}

impl<T> Fetched<T> {
    /// The value, whichever way it came.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// Filters of `GET /api/v1/jobs`; `None` leaves a filter out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Page size (the server's default is 50, its maximum 500).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` while the server answers.
    pub status: String,
}

/// Body of `POST /api/v1/optimization`.
#[derive(Debug, Serialize)]
struct CreateOptimization<'a> {
    metadata: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// A response read in full.
pub(crate) struct Reply {
    pub(crate) status: u16,
    etag: Option<String>,
    last_modified: Option<String>,
    pub(crate) body: String,
}

/// A blocking client of one skill-fleet server.
///
/// Cheap to clone (the ureq agent and its connection pool are shared). Ordinary requests
/// time out after [`CONNECT_TIMEOUT`] to connect and [`READ_TIMEOUT`] to answer; streams
/// ([`Client::watch`]) have no overall timeout.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    pub(crate) agent: ureq::Agent,
    pub(crate) token: Option<String>,
    source: Option<String>,
    cache: Option<Cache>,
    watch_options: WatchOptions,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix). No disk cache: a worker reporting progress has no use for one; the CLI adds
    /// it with [`Client::with_cache`] and [`Cache::from_env`].
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let base = normalize_base(base_url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_recv_body(Some(READ_TIMEOUT))
            .user_agent(concat!("skill-fleet-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            base,
            agent,
            token: None,
            source: None,
            cache: None,
            watch_options: WatchOptions::default(),
        })
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into()).filter(|t: &String| !t.is_empty());
        self
    }

    /// Says who creates jobs through this client (`cli`), in the `x-skill-fleet-source`
    /// header of create requests.
    pub fn with_source(mut self, source: impl Into<String>) -> Client {
        self.source = Some(source.into());
        self
    }

    /// Keeps GET responses in `cache` and revalidates them with `If-None-Match`.
    pub fn with_cache(mut self, cache: Cache) -> Client {
        self.cache = Some(cache);
        self
    }

    /// Sends every GET unconditionally and stores nothing.
    pub fn without_cache(mut self) -> Client {
        self.cache = None;
        self
    }

    /// How [`Client::watch`] reconnects.
    pub fn with_watch_options(mut self, options: WatchOptions) -> Client {
        self.watch_options = options;
        self
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The cache in use, if any.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Health, ClientError> {
        let url = format!("{}/healthz", self.base);
        self.get_json(&url)
    }

    /// `POST /api/v1/jobs`: creates a job (or returns the existing one for the same id and
    /// body).
    pub fn create_job(&self, request: &CreateJob) -> Result<Job, ClientError> {
        validate_job_type(&request.job_type)?;
        if let Some(id) = &request.id {
            validate_job_id(id)?;
        }
        if let Some(metadata) = &request.metadata {
            validate_metadata(metadata)?;
        }
        let url = self.api("/jobs");
        self.post_json(&url, Some(request), true, &[200, 201])
    }

    /// `POST /api/v1/optimization`: creates a job of type `optimization` with `metadata`
    /// (`optimizer`, `model`, `budget_usd`, …).
    pub fn create_optimization(
        &self,
        metadata: Map<String, Value>,
        id: Option<String>,
    ) -> Result<Job, ClientError> {
        if let Some(id) = &id {
            validate_job_id(id)?;
        }
        validate_metadata(&metadata)?;
        let url = self.api("/optimization");
        let body = CreateOptimization {
            metadata: &metadata,
            id: id.as_deref(),
        };
        self.post_json(&url, Some(&body), true, &[200, 201])
    }

    /// `GET /api/v1/jobs/{id}`, revalidated against the local cache.
    pub fn job(&self, id: &str) -> Result<Fetched<Job>, ClientError> {
        let url = self.job_url(id, "")?;
        self.get_cached(&url)
    }

    /// `GET /api/v1/jobs?status=&type=&limit=&cursor=`, revalidated against the local cache.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Fetched<JobList>, ClientError> {
        if let Some(job_type) = &filter.job_type {
            validate_job_type(job_type)?;
        }
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(job_type) = &filter.job_type {
            query.push(("type", job_type.clone()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &filter.cursor {
            query.push(("cursor", cursor.clone()));
        }
        let url = with_query(self.api("/jobs"), &query);
        self.get_cached(&url)
    }

    /// `GET /api/v1/jobs/{id}/progress?after=&limit=`: the job's progress history.
    pub fn progress(
        &self,
        id: &str,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<ProgressPage, ClientError> {
        let mut query = Vec::new();
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let url = with_query(self.job_url(id, "/progress")?, &query);
        self.get_json(&url)
    }

    /// `GET /api/v1/jobs/{id}/result`, revalidated against the local cache; a `not_found`
    /// API error until the job has completed with a result.
    pub fn result(&self, id: &str) -> Result<Fetched<ResultBody>, ClientError> {
        let url = self.job_url(id, "/result")?;
        self.get_cached(&url)
    }

    /// `GET /api/v1/jobs/{id}/logs`: the job's output lines. Servers without an executor
    /// answer `not_found`.
    pub fn logs(&self, id: &str) -> Result<JobLogs, ClientError> {
        let url = self.job_url(id, "/logs")?;
        self.get_json(&url)
    }

    /// `POST /api/v1/jobs/claim`: takes the oldest queued job of `types` (any type without
    /// an executor when empty) as `worker` (the lease owner the server shows; `worker` when
    /// `None`); `None` when nothing is queued. Every write about the job carries the answer's
    /// fence ([`ClaimedJob::fence`]).
    pub fn claim(
        &self,
        types: &[String],
        worker: Option<&str>,
    ) -> Result<Option<ClaimedJob>, ClientError> {
        for job_type in types {
            validate_job_type(job_type)?;
        }
        if let Some(worker) = worker {
            validate_worker_name(worker)?;
        }
        let url = self.api("/jobs/claim");
        let request = ClaimRequest {
            types: types.to_vec(),
            worker: worker.map(str::to_owned),
        };
        let reply = self.post_raw(&url, Some(&request), false)?;
        match reply.status {
            200 => decode(&url, &reply.body).map(Some),
            204 => Ok(None),
            status => Err(api_error(&url, status, &reply.body)),
        }
    }

    /// `POST /api/v1/jobs/{id}/events`: reports progress, fenced by the claim's `fence` when
    /// the job was claimed (a token-less first event of a queued job starts it).
    pub fn post_event(
        &self,
        id: &str,
        update: &ProgressUpdate,
        fence: Option<&Fence>,
    ) -> Result<EventAck, ClientError> {
        update.validate()?;
        let url = self.job_url(id, "/events")?;
        match fence {
            Some(fence) => {
                let fenced = ProgressUpdate {
                    attempt: Some(fence.attempt),
                    lease_token: Some(fence.lease_token.clone()),
                    ..update.clone()
                };
                self.post_json(&url, Some(&fenced), false, &[200, 202])
            }
            None => self.post_json(&url, Some(update), false, &[200, 202]),
        }
    }

    /// `POST /api/v1/jobs/{id}/complete`, fenced by the claim's `fence` when the job was
    /// claimed. Retrying with the same fence after a lost answer is safe: the server answers
    /// with the job as completed.
    pub fn complete(
        &self,
        id: &str,
        request: &CompleteRequest,
        fence: Option<&Fence>,
    ) -> Result<Job, ClientError> {
        let url = self.job_url(id, "/complete")?;
        let request = CompleteRequest {
            attempt: fence.map(|f| f.attempt).or(request.attempt),
            lease_token: fence
                .map(|f| f.lease_token.clone())
                .or_else(|| request.lease_token.clone()),
            ..request.clone()
        };
        self.post_json(&url, Some(&request), false, &[200])
    }

    /// `POST /api/v1/jobs/{id}/fail`, fenced by the claim's `fence` when the job was
    /// claimed.
    pub fn fail(&self, id: &str, error: &str, fence: Option<&Fence>) -> Result<Job, ClientError> {
        let url = self.job_url(id, "/fail")?;
        let request = FailRequest {
            error: error.to_owned(),
            attempt: fence.map(|f| f.attempt),
            lease_token: fence.map(|f| f.lease_token.clone()),
        };
        self.post_json(&url, Some(&request), false, &[200])
    }

    /// `POST /api/v1/jobs/{id}/heartbeat`: renews the lease `fence` names. A refusal because
    /// the attempt no longer owns the job is [`ClientError::Api`] with code `lease_lost`.
    pub fn heartbeat(&self, id: &str, fence: &Fence) -> Result<HeartbeatAck, ClientError> {
        let url = self.job_url(id, "/heartbeat")?;
        self.post_json(&url, Some(&HeartbeatRequest::from(fence)), false, &[200])
    }

    /// `POST /api/v1/jobs/{id}/cancel`, with an optional reason (stored as the job's error).
    pub fn cancel(&self, id: &str, reason: Option<&str>) -> Result<Job, ClientError> {
        let url = self.job_url(id, "/cancel")?;
        let request = CancelRequest {
            reason: reason.map(str::to_owned),
        };
        self.post_json(&url, Some(&request), false, &[200])
    }

    /// `POST /api/v1/jobs/{id}/resume`: queues a failed, cancelled or interrupted job again.
    pub fn resume(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.job_url(id, "/resume")?;
        self.post_json::<(), _>(&url, None, false, &[200])
    }

    /// `GET /api/v1/jobs/{id}/stream`: the job's live progress as a blocking iterator that
    /// reconnects on its own (see [`Watch`]). Connects before returning, so an unknown job
    /// or an unreachable server is an error here.
    pub fn watch(&self, id: &str) -> Result<Watch, ClientError> {
        let url = self.job_url(id, "/stream")?;
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        Watch::connect(
            id.to_owned(),
            url,
            self.base.clone(),
            headers,
            self.watch_options.clone(),
        )
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// The URL of a job route; the id is checked first, so it can never change the path.
    pub(crate) fn job_url(&self, id: &str, tail: &str) -> Result<String, ClientError> {
        validate_job_id(id)?;
        Ok(self.api(&format!("/jobs/{id}{tail}")))
    }

    fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ClientError> {
        let reply = self.get_raw(url, None)?;
        match reply.status {
            200 => decode(url, &reply.body),
            status => Err(api_error(url, status, &reply.body)),
        }
    }

    /// A GET revalidated against the cache: a `304` serves the cached body, a `200` replaces
    /// the entry. A cached body that no longer decodes is dropped and fetched again.
    pub(crate) fn get_cached<T: DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Fetched<T>, ClientError> {
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(url))
            .filter(CacheEntry::has_validator);
        let reply = self.get_raw(url, cached.as_ref())?;
        match (reply.status, cached) {
            (304, Some(entry)) => match serde_json::from_str(&entry.body) {
                Ok(value) => {
                    if let Some(cache) = &self.cache {
                        // Best effort: a cache that cannot be written is only slower.
                        let _ = cache.touch(url);
                    }
                    Ok(Fetched {
                        value,
                        from_cache: true,
                    })
                }
                Err(_) => {
                    if let Some(cache) = &self.cache {
                        let _ = cache.remove(url);
                    }
                    let reply = self.get_raw(url, None)?;
                    self.store_fresh(url, reply)
                }
            },
            (_, _) => self.store_fresh(url, reply),
        }
    }

    fn store_fresh<T: DeserializeOwned>(
        &self,
        url: &str,
        reply: Reply,
    ) -> Result<Fetched<T>, ClientError> {
        if reply.status != 200 {
            return Err(api_error(url, reply.status, &reply.body));
        }
        let value = decode(url, &reply.body)?;
        if let Some(cache) = &self.cache {
            let entry = CacheEntry::new(url, reply.etag, reply.last_modified, reply.body);
            // Best effort, as above; an entry without validators is useless, so drop it.
            let _ = if entry.has_validator() {
                cache.put(&entry)
            } else {
                cache.remove(url)
            };
        }
        Ok(Fetched {
            value,
            from_cache: false,
        })
    }

    fn get_raw(&self, url: &str, cached: Option<&CacheEntry>) -> Result<Reply, ClientError> {
        let mut request = self.agent.get(url).header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(entry) = cached {
            if let Some(etag) = &entry.etag {
                request = request.header("if-none-match", etag);
            } else if let Some(last_modified) = &entry.last_modified {
                request = request.header("if-modified-since", last_modified);
            }
        }
        self.finish(url, request.call())
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: Option<&B>,
        with_source: bool,
        ok: &[u16],
    ) -> Result<T, ClientError> {
        let reply = self.post_raw(url, body, with_source)?;
        if ok.contains(&reply.status) {
            decode(url, &reply.body)
        } else {
            Err(api_error(url, reply.status, &reply.body))
        }
    }

    fn post_raw<B: Serialize>(
        &self,
        url: &str,
        body: Option<&B>,
        with_source: bool,
    ) -> Result<Reply, ClientError> {
        let mut request = self.agent.post(url).header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if with_source && let Some(source) = &self.source {
            request = request.header(SOURCE_HEADER, source);
        }
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        };
        self.finish(url, response)
    }

    pub(crate) fn finish(
        &self,
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ClientError> {
        let mut response = response.map_err(|err| self.transport_error(url, err))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let last_modified = header("last-modified");
        let status = response.status().as_u16();
        let body = if status == 204 || status == 304 {
            String::new()
        } else {
            response
                .body_mut()
                .read_to_string()
                .map_err(|err| self.transport_error(url, err))?
        };
        Ok(Reply {
            status,
            etag,
            last_modified,
            body,
        })
    }

    pub(crate) fn transport_error(&self, url: &str, err: ureq::Error) -> ClientError {
        match unreachable_reason(&err) {
            Some(reason) => ClientError::Unreachable {
                url: self.base.clone(),
                reason,
            },
            None => ClientError::Http {
                url: url.to_owned(),
                source: Box::new(err),
            },
        }
    }
}

/// Checks and trims a base URL: `http(s)://host[:port][/prefix]`, no query or fragment.
fn normalize_base(base_url: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = base_url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| invalid("expected http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if trimmed.contains(['?', '#']) || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("no query, fragment or spaces allowed"));
    }
    Ok(trimmed.to_owned())
}

/// `url?k=v&…` with every value percent-encoded.
fn with_query(mut url: String, query: &[(&str, String)]) -> String {
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(key);
        url.push('=');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                url.push(char::from(byte));
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    url
}

fn decode<T: DeserializeOwned>(url: &str, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|source| ClientError::Decode {
        url: url.to_owned(),
        source,
    })
}

/// Our JSON error body as [`ClientError::Api`], anything else as
/// [`ClientError::UnexpectedStatus`].
pub(crate) fn api_error(url: &str, status: u16, body: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(error) => ClientError::Api {
            status,
            code: error.error.code,
            message: error.error.message,
            url: url.to_owned(),
        },
        Err(_) => ClientError::UnexpectedStatus {
            status,
            url: url.to_owned(),
            body: snippet(body.trim(), 200),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skill_fleet_types::ErrorCode;

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        assert_eq!(
            normalize_base("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            normalize_base("https://fleet.example/prefix").unwrap(),
            "https://fleet.example/prefix"
        );
        for bad in [
            "127.0.0.1:8000",
            "ftp://x",
            "http://",
            "http://h/?q=1",
            "http://h /",
        ] {
            assert!(normalize_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_values_are_encoded() {
        let url = with_query(
            "http://h/api/v1/jobs".to_owned(),
            &[("status", "queued".into()), ("cursor", "a b/&=?".into())],
        );
        assert_eq!(
            url,
            "http://h/api/v1/jobs?status=queued&cursor=a%20b%2F%26%3D%3F"
        );
    }

    #[test]
    fn ids_are_validated_before_any_url_is_built() {
        let client = Client::new("http://127.0.0.1:9").unwrap().without_cache();
        for bad in ["../etc", "a/b", "", "a?b", "%2e%2e"] {
            let err = client.job(bad).unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let err = api_error(
            "http://h/api/v1/jobs/x",
            404,
            r#"{"error":{"code":"not_found","message":"job `x` not found"}}"#,
        );
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
        assert_eq!(err.status(), Some(404));
        assert_eq!(
            err.to_string(),
            "job `x` not found (HTTP 404 from http://h/api/v1/jobs/x)"
        );
        let err = api_error("http://h/x", 502, "<html>bad gateway</html>");
        assert!(
            matches!(err, ClientError::UnexpectedStatus { status: 502, .. }),
            "{err}"
        );
    }
}
