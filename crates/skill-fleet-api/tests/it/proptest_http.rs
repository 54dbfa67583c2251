//! Property tests of the HTTP-level parsers: `If-None-Match` / `If-Modified-Since` matching,
//! HTTP dates and the list/history query strings. Arbitrary input never panics; a list that
//! holds the current tag always matches, one that does not never does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use skill_fleet_api::cache::{Representation, ResponseCache, http_date, parse_http_date};
use skill_fleet_api::routes::jobs::{HistoryQuery, ListQuery};
use skill_fleet_api::routes::stream::StreamQuery;

/// Seed of the generated cases.
const SEED: u64 = 0x5eed0002;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        // The same cases every run (`PROPTEST_RNG_SEED` explores others).
        rng_seed: match Config::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..Config::default()
    }
}

/// The entity tag of the representation every property answers with.
const TAG: &str = "\"job-1.v7\"";

fn last_modified() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 1, 9, 0, 0).unwrap()
}

fn status_for(headers: &HeaderMap) -> StatusCode {
    let cache = ResponseCache::new(Duration::from_secs(60), 1 << 20, false);
    let prepared = cache.prepare(Representation {
        etag: TAG.to_owned(),
        last_modified: last_modified(),
        settled: false,
        body: Bytes::from_static(b"{}"),
    });
    let response = cache.respond(headers, &prepared, false);
    // Whatever the request said, the validators go out with the answer.
    assert_eq!(response.headers()[header::ETAG], TAG);
    response.status()
}

/// Optional whitespace as a sender may put it around list items.
fn ows() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

/// A valid entity tag other than ours: `"` etagc* `"` (etagc is `!`, `#`-`~`: commas too).
fn other_tag() -> impl Strategy<Value = String> {
    (any::<bool>(), "[!#-~]{0,16}")
        .prop_filter("not our tag", |(_, opaque)| format!("\"{opaque}\"") != TAG)
        .prop_map(|(weak, opaque)| format!("{}\"{opaque}\"", if weak { "W/" } else { "" }))
}

fn join(tags: &[String], spaces: &[(String, String)]) -> String {
    tags.iter()
        .zip(spaces)
        .map(|(tag, (before, after))| format!("{before}{tag}{after}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// IMF-fixdates from 1970 to 9999, whole seconds.
fn http_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..253_402_300_799).prop_map(|secs| DateTime::from_timestamp(secs, 0).unwrap())
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        ".{0,40}".prop_map(String::into_bytes),
        "(W/)?\"[!#-~]{0,10}\"( ?, ?(W/)?\"[!#-~]{0,10}\"){0,3}".prop_map(String::into_bytes),
        "[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_list_holding_the_current_tag_anywhere_matches(
        others in prop::collection::vec(other_tag(), 0..6),
        at in any::<prop::sample::Index>(),
        weak in any::<bool>(),
        spaces in prop::collection::vec((ows(), ows()), 7),
        split in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut tags = others;
        let ours = if weak { format!("W/{TAG}") } else { TAG.to_owned() };
        tags.insert(at.index(tags.len() + 1), ours);
        let mut headers = HeaderMap::new();
        match split {
            // One header line.
            None => {
                headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&join(&tags, &spaces)).unwrap());
            }
            // Or the list spread over two header lines.
            Some(split) => {
                let (first, second) = tags.split_at(split.index(tags.len() + 1));
                for part in [first, second] {
                    if !part.is_empty() {
                        headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(&join(part, &spaces)).unwrap());
                    }
                }
            }
        }
        // If-Modified-Since is ignored when If-None-Match is present (RFC 9110 §13.1.3).
        headers.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        prop_assert_eq!(status_for(&headers), StatusCode::NOT_MODIFIED, "{:?}", headers);
    }

    #[test]
    fn a_list_without_the_current_tag_never_matches(
        tags in prop::collection::vec(other_tag(), 1..6),
        spaces in prop::collection::vec((ows(), ows()), 6),
        since in http_instant(),
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&join(&tags, &spaces)).unwrap());
        // Even with a date that alone would say "not modified".
        headers.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_str(&http_date(since)).unwrap());
        prop_assert_eq!(status_for(&headers), StatusCode::OK, "{:?}", headers);
    }

    #[test]
    fn a_star_matches_among_anything(
        tags in prop::collection::vec(other_tag(), 0..4),
        at in any::<prop::sample::Index>(),
        spaces in prop::collection::vec((ows(), ows()), 5),
    ) {
        let mut tags = tags;
        tags.insert(at.index(tags.len() + 1), "*".to_owned());
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&join(&tags, &spaces)).unwrap());
        prop_assert_eq!(status_for(&headers), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn if_modified_since_compares_whole_seconds(since in http_instant(), ows in ows()) {
        let mut headers = HeaderMap::new();
        let text = format!("{ows}{}{ows}", http_date(since));
        headers.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_str(&text).unwrap());
        let expected = if last_modified() <= since {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        };
        prop_assert_eq!(status_for(&headers), expected, "{}", text);
    }

    #[test]
    fn arbitrary_validator_headers_never_panic(
        if_none_match in prop::collection::vec(header_value(), 0..3),
        if_modified_since in prop::option::of(header_value()),
    ) {
        let mut headers = HeaderMap::new();
        for value in &if_none_match {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(header::IF_NONE_MATCH, value);
            }
        }
        if let Some(value) = if_modified_since.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
            headers.insert(header::IF_MODIFIED_SINCE, value);
        }
        let status = status_for(&headers);
        prop_assert!(status == StatusCode::OK || status == StatusCode::NOT_MODIFIED);
        // Without If-None-Match and without a parseable date, nothing can say "not modified".
        let parseable = headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            .is_some();
        if !headers.contains_key(header::IF_NONE_MATCH) && !parseable {
            prop_assert_eq!(status, StatusCode::OK);
        }
    }

    #[test]
    fn any_ttl_builds_a_cache(secs in prop_oneof![any::<u64>(), 0..100_000u64], nanos in 0..1_000_000_000u32) {
        // Any configured TTL (up to `u64::MAX` seconds) builds a cache whose answers work.
        let cache = ResponseCache::new(Duration::new(secs, nanos), 1 << 20, true);
        let prepared = cache.prepare(Representation {
            etag: TAG.to_owned(),
            last_modified: last_modified(),
            settled: true,
            body: Bytes::from_static(b"{}"),
        });
        let response = cache.respond(&HeaderMap::new(), &prepared, false);
        prop_assert_eq!(response.status(), StatusCode::OK);
        let max_age = format!("max-age={secs}");
        prop_assert_eq!(response.headers()[header::CACHE_CONTROL].to_str().unwrap(), max_age.as_str());
    }

    #[test]
    fn http_dates_round_trip_and_garbage_is_absent(at in http_instant(), text in ".{0,40}") {
        prop_assert_eq!(parse_http_date(&http_date(at)), Some(at));
        if let Some(parsed) = parse_http_date(&text) {
            // Whatever parsed is a real IMF-fixdate: printing it gives back the trimmed text.
            prop_assert_eq!(http_date(parsed), text.trim());
        }
    }

    #[test]
    fn list_queries_parse_or_are_refused_cleanly(query in prop_oneof![
        "[a-z=&%0-9A-F_+.-]{0,60}",
        "(status=[a-z]{0,10}|type=[a-z0-9_.-]{0,70}|limit=-?[0-9]{0,22}|cursor=[A-Za-z0-9%_.-]{0,40}|[a-z]{1,6}=x)(&(status=[a-z]{0,10}|type=[a-z0-9_-]{0,8}|limit=[0-9]{0,12}|cursor=[A-Za-z0-9%._-]{0,40})){0,3}",
    ]) {
        let Ok(uri) = format!("/api/v1/jobs?{query}").parse::<Uri>() else {
            return Ok(());
        };
        let Ok(Query(parsed)) = Query::<ListQuery>::try_from_uri(&uri) else {
            return Ok(());
        };
        let limit = parsed.limit;
        match parsed.into_filter() {
            Ok(filter) => {
                prop_assert!((1..=500).contains(&filter.limit));
                prop_assert!(limit != Some(0));
            }
            Err(err) => {
                let (status, _) = err.status_and_code();
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", err);
            }
        }
    }

    #[test]
    fn history_queries_parse_or_are_refused_cleanly(query in
        "(after=-?[0-9]{0,22}|limit=-?[0-9]{0,12}|[a-z%0-9]{0,8}=?[a-z0-9%]{0,8})(&(after=-?[0-9]{0,22}|limit=[0-9]{0,12})){0,2}",
    ) {
        if let Ok(uri) = format!("/api/v1/jobs/a/progress?{query}").parse::<Uri>() {
            let _ = Query::<HistoryQuery>::try_from_uri(&uri);
        }
    }

    #[test]
    fn stream_queries_take_any_last_event_id(value in prop_oneof![
        "[0-9]{0,25}",
        "-?[0-9]{1,20}",
        "[ %+0-9a-zA-Z]{0,20}",
        "(%[0-9A-F]{2}){0,6}",
    ], token in prop::option::of("[A-Za-z0-9._-]{0,20}")) {
        let mut uri = format!("/api/v1/jobs/a/stream?lastEventId={value}");
        if let Some(token) = &token {
            uri.push_str(&format!("&token={token}"));
        }
        let Ok(uri) = uri.parse::<Uri>() else {
            return Ok(());
        };
        // Any value is a string to the query (the handler reads it as a number or ignores
        // it); plain digits come through as sent.
        let parsed = Query::<StreamQuery>::try_from_uri(&uri);
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let Query(query) = parsed.unwrap();
            prop_assert_eq!(query.last_event_id.as_deref(), Some(value.as_str()));
            prop_assert_eq!(query.token, token);
        }
    }
}
