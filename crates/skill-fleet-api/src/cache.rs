//! HTTP caching of GET responses (RFC 9110 §8.8 and §13, RFC 9111): strong `ETag`s,
//! `Last-Modified`, conditional requests answered with `304`, `Cache-Control` by status, and a
//! bounded in-memory response cache.
//!
//! [`is_not_modified`] is the server's one conditional-request matcher: the response cache and
//! the dashboard's assets both answer `304` through it.
//!
//! Invalidation is O(1) and never serves a stale body: every cached response remembers the
//! *generation* of what it was built from (a job's stripe, or the store-wide list counter),
//! read **before** the database was. Every write bumps those generations **after** it commits
//! ([`Generations::bump`]), so an entry built from older data can never match again. A
//! revalidation that the cache can answer (`304`, or a cached `200`) touches no database.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

/// How many generation stripes jobs are spread over. A write to one job also invalidates the
/// cached responses of the other jobs in its stripe (a harmless miss); memory stays fixed
/// however many jobs there are.
const STRIPES: usize = 4096;

/// Longest time an entry is kept in memory. moka panics on a time-to-live of 1000 years or
/// more, and a configured TTL can be anything up to `u64::MAX` seconds; no entry needs to
/// outlive a century (`max-age` still says the configured TTL).
const MAX_ENTRY_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Change counters that cached responses are checked against.
pub struct Generations {
    stripes: Box<[AtomicU64]>,
    lists: AtomicU64,
    hasher: std::hash::BuildHasherDefault<std::hash::DefaultHasher>,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            lists: AtomicU64::new(0),
            hasher: Default::default(),
        }
    }
}

/// The cache's side of the change feed: every committed change to a job bumps its stripe
/// and the list generation, after the commit and before the write answers.
impl skill_fleet_core::ChangeListener for Generations {
    fn committed(&self, change: &skill_fleet_core::Committed) {
        self.bump(&change.job_id);
    }

    fn resynced(&self) {
        self.bump_all();
    }
}

/// What a cached response was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One job's responses (`/jobs/{id}`, its progress, its result).
    Job {
        /// Which stripe the job hashes to.
        stripe: usize,
        /// The stripe's generation when the response was built.
        generation: u64,
    },
    /// Job listings.
    List {
        /// The list generation when the response was built.
        generation: u64,
    },
}

impl Generations {
    fn stripe_of(&self, job_id: &str) -> usize {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(job_id.as_bytes());
        // Truncation is intended: the low bits pick the stripe.
        (hasher.finish() as usize) % STRIPES
    }

    /// The current scope of a job's responses.
    pub fn job(&self, job_id: &str) -> Scope {
        let stripe = self.stripe_of(job_id);
        Scope::Job {
            stripe,
            generation: self.stripes[stripe].load(Ordering::Acquire),
        }
    }

    /// The current scope of job listings.
    pub fn lists(&self) -> Scope {
        Scope::List {
            generation: self.lists.load(Ordering::Acquire),
        }
    }

    /// Whether a response built in `scope` is still current.
    pub fn is_current(&self, scope: Scope) -> bool {
        match scope {
            Scope::Job { stripe, generation } => {
                self.stripes[stripe].load(Ordering::Acquire) == generation
            }
            Scope::List { generation } => self.lists.load(Ordering::Acquire) == generation,
        }
    }

    /// Marks a job (and every listing) as changed. Call after the write committed.
    pub fn bump(&self, job_id: &str) {
        self.stripes[self.stripe_of(job_id)].fetch_add(1, Ordering::AcqRel);
        self.lists.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks every job and every listing as changed (another server changed more than it
    /// could list).
    pub fn bump_all(&self) {
        for stripe in self.stripes.iter() {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
        self.lists.fetch_add(1, Ordering::AcqRel);
    }
}

/// A response body with its validators, as built on a miss and kept in the cache.
#[derive(Debug, Clone)]
pub struct Representation {
    /// Strong entity tag, quoted (`"job-1.v7"`).
    pub etag: String,
    /// When the resource last changed.
    pub last_modified: DateTime<Utc>,
    /// Whether the resource can still change (decides `Cache-Control`).
    pub settled: bool,
    /// The JSON body.
    pub body: Bytes,
}

/// A representation with its response headers built once, when it is made, so answering
/// from the cache (the hot path of every revalidation) formats nothing.
#[derive(Debug)]
pub struct Prepared {
    representation: Representation,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    cache_control: Option<HeaderValue>,
}

struct Entry {
    scope: Scope,
    prepared: Arc<Prepared>,
}

/// Hit/miss counters, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Answered from the cache (200 or 304).
    pub hits: AtomicU64,
    /// Built from the database.
    pub misses: AtomicU64,
    /// Answered with `304 Not Modified`.
    pub not_modified: AtomicU64,
}

/// The bounded in-memory response cache, keyed by path and query.
pub struct ResponseCache {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    ttl: Duration,
    vary_authorization: bool,
    /// Hit/miss counters.
    pub counters: CacheCounters,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of bodies, each for at most `ttl`.
    /// `vary_authorization` adds `Vary: Authorization` (set when a token is required).
    pub fn new(ttl: Duration, max_bytes: u64, vary_authorization: bool) -> ResponseCache {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Arc<Entry>| {
                let size = key.len() + entry.prepared.representation.body.len() + 256;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl.clamp(Duration::from_millis(1), MAX_ENTRY_TTL))
            .build();
        ResponseCache {
            entries,
            ttl,
            vary_authorization,
            counters: CacheCounters::default(),
        }
    }

    /// A current cached representation for `key`, if any.
    pub fn lookup(&self, key: &str, generations: &Generations) -> Option<Arc<Prepared>> {
        let entry = self.entries.get(key)?;
        if generations.is_current(entry.scope) {
            Some(Arc::clone(&entry.prepared))
        } else {
            self.entries.invalidate(key);
            None
        }
    }

    /// Builds a representation's response headers once.
    pub fn prepare(&self, representation: Representation) -> Arc<Prepared> {
        let cache_control = if representation.settled {
            format!("max-age={}", self.ttl.as_secs())
        } else {
            "no-cache".to_owned()
        };
        Arc::new(Prepared {
            etag: HeaderValue::from_str(&representation.etag).ok(),
            last_modified: HeaderValue::from_str(&http_date(representation.last_modified)).ok(),
            cache_control: HeaderValue::from_str(&cache_control).ok(),
            representation,
        })
    }

    /// Keeps a representation built in `scope`.
    pub fn insert(&self, key: String, scope: Scope, prepared: Arc<Prepared>) {
        self.entries
            .insert(key, Arc::new(Entry { scope, prepared }));
    }

    /// How many entries the cache holds (after pending evictions ran).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Builds the response for a request with these headers: `304` when a validator matches,
    /// else `200` with the body. `hit` says whether the representation came from the cache.
    pub fn respond(&self, request: &HeaderMap, prepared: &Prepared, hit: bool) -> Response {
        let counter = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let representation = &prepared.representation;
        let mut response = if is_not_modified(
            request,
            &representation.etag,
            Some(representation.last_modified),
        ) {
            self.counters.not_modified.fetch_add(1, Ordering::Relaxed);
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                representation.body.clone(),
            )
                .into_response()
        };
        let headers = response.headers_mut();
        for (name, value) in [
            (header::ETAG, &prepared.etag),
            (header::LAST_MODIFIED, &prepared.last_modified),
            (header::CACHE_CONTROL, &prepared.cache_control),
        ] {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        if self.vary_authorization {
            headers.insert(header::VARY, HeaderValue::from_static("authorization"));
        }
        headers.insert(
            "x-cache",
            HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
        );
        response
    }
}

/// Whether a GET with these request headers is answered `304 Not Modified` by a
/// representation with entity tag `etag` (quoted, as sent in `ETag`) and, when it has one,
/// `last_modified`.
///
/// RFC 9110 §13.2.2: `If-None-Match` decides when present (every line of it, weak comparison,
/// `*` matches); `If-Modified-Since` counts only without it, to the second, and only as an
/// IMF-fixdate (see [`parse_http_date`]).
pub fn is_not_modified(
    request: &HeaderMap,
    etag: &str,
    last_modified: Option<DateTime<Utc>>,
) -> bool {
    let mut if_none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        return if_none_match
            .any(|value| value.to_str().is_ok_and(|list| none_match_hits(list, etag)));
    }
    let Some(last_modified) = last_modified else {
        return false;
    };
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_http_date)
        .is_some_and(|since| last_modified.timestamp() <= since.timestamp())
}

/// Weak comparison (RFC 9110 §8.8.3.2) of each tag in an `If-None-Match` list; `*` matches.
fn none_match_hits(list: &str, etag: &str) -> bool {
    let ours = opaque_tag(etag);
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || (!candidate.is_empty() && opaque_tag(candidate) == ours)
    })
}

fn opaque_tag(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The last second an HTTP date can name: 9999-12-31 23:59:59 UTC.
const LAST_HTTP_DATE_SECONDS: u64 = 253_402_300_799;

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`, to the second.
/// An HTTP date names a second of the years 1970 to 9999; an instant outside them is written
/// as the nearest one.
pub fn http_date(at: DateTime<Utc>) -> String {
    let seconds = u64::try_from(at.timestamp())
        .unwrap_or(0)
        .min(LAST_HTTP_DATE_SECONDS);
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Parses an IMF-fixdate, ignoring surrounding whitespace. The two obsolete formats RFC 9110
/// §5.6.7 also defines (RFC 850 and asctime dates) are treated as absent, like anything else
/// that is not an IMF-fixdate.
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    // Of the three formats httpdate reads, only IMF-fixdate has a comma after a three-letter
    // day name (`Sun,`); RFC 850 spells the day out (`Sunday,`), asctime has no comma.
    if text.as_bytes().get(3) != Some(&b',') {
        return None;
    }
    httpdate::parse_http_date(text)
        .ok()
        .map(DateTime::<Utc>::from)
}

/// A strong entity tag, quoted, from parts that identify one representation.
pub fn etag(parts: std::fmt::Arguments<'_>) -> String {
    format!("\"{parts}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn representation(etag: &str) -> Representation {
        Representation {
            etag: etag.to_owned(),
            last_modified: parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap(),
            settled: false,
            body: Bytes::from_static(b"{}"),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn is_not_modified(request: &HeaderMap, representation: &Representation) -> bool {
        super::is_not_modified(
            request,
            &representation.etag,
            Some(representation.last_modified),
        )
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let rep = representation("\"j.v3\"");
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"j.v3\"")]),
            &rep
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "W/\"j.v3\"")]),
            &rep
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"a\", \"j.v3\"")]),
            &rep
        ));
        assert!(is_not_modified(&headers(&[("if-none-match", "*")]), &rep));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"x\""), ("if-none-match", "\"j.v3\"")]),
            &rep
        ));
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"j.v2\"")]),
            &rep
        ));
        assert!(!is_not_modified(&headers(&[("if-none-match", "")]), &rep));
    }

    #[test]
    fn if_modified_since_only_counts_without_if_none_match() {
        let rep = representation("\"j.v3\"");
        let later = "Mon, 07 Nov 1994 08:49:37 GMT";
        let earlier = "Sat, 05 Nov 1994 08:49:37 GMT";
        assert!(is_not_modified(
            &headers(&[("if-modified-since", later)]),
            &rep
        ));
        assert!(is_not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &rep
        ));
        assert!(!is_not_modified(
            &headers(&[("if-modified-since", earlier)]),
            &rep
        ));
        assert!(!is_not_modified(
            &headers(&[("if-modified-since", "yesterday")]),
            &rep
        ));
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"other\""), ("if-modified-since", later)]),
            &rep
        ));
    }

    #[test]
    fn http_dates_round_trip() {
        let text = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(http_date(parse_http_date(text).unwrap()), text);
    }

    #[test]
    fn only_imf_fixdates_parse() {
        assert!(parse_http_date(" Sun, 06 Nov 1994 08:49:37 GMT\t").is_some());
        // The obsolete formats of RFC 9110 §5.6.7 are treated as absent.
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), None);
        // A day name that does not fit the date.
        assert_eq!(parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn instants_outside_http_dates_are_written_as_the_nearest() {
        let before = DateTime::from_timestamp(-86_400, 0).unwrap();
        assert_eq!(http_date(before), "Thu, 01 Jan 1970 00:00:00 GMT");
        let after = DateTime::from_timestamp(300_000_000_000, 0).unwrap();
        assert_eq!(http_date(after), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn without_last_modified_only_if_none_match_counts() {
        let since = headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(!super::is_not_modified(&since, "\"a\"", None));
        let tag = headers(&[("if-none-match", "W/\"a\"")]);
        assert!(super::is_not_modified(&tag, "\"a\"", None));
    }

    #[test]
    fn a_bump_invalidates_the_job_and_every_list() {
        let generations = Generations::default();
        let job = generations.job("a");
        let list = generations.lists();
        assert!(generations.is_current(job) && generations.is_current(list));
        generations.bump("a");
        assert!(!generations.is_current(job));
        assert!(!generations.is_current(list));
        assert!(generations.is_current(generations.job("a")));
    }
}
