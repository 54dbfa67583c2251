//! The web dashboard: one HTML page, a script and a stylesheet, embedded in the binary and
//! served at `/`, `/assets/app.js` and `/assets/app.css`.
//!
//! The page is plain HTML/CSS/JS (no framework, no build step, no network beyond this
//! server). It talks only to the public `/api/v1` routes, like any other client, so these
//! routes carry no state and need no token: the page itself holds nothing secret and asks
//! for the token when the API answers 401.
//!
//! Every response has a strong `ETag` computed from the embedded bytes and
//! `Cache-Control: no-cache`, so a browser revalidates (a `304`) and picks up a new build at
//! once, without fingerprinted file names.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use skill_fleet_api::cache::is_not_modified;
use skill_fleet_types::{ErrorBody, ErrorCode};

/// The page's content security policy: everything from this origin, nothing inline. Images
/// may also be `blob:`: the previews of image artifacts are object URLs of bytes the page
/// fetched itself (with the token, which an `<img src>` cannot send).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/app.css"),
    },
];

/// The strong ETag of each asset, in the order of [`ASSETS`].
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(asset.body.as_bytes())))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// 64-bit FNV-1a: a stable content hash (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Total size in bytes of the embedded page, script and stylesheet.
pub fn total_size() -> usize {
    ASSETS.iter().map(|asset| asset.body.len()).sum()
}

/// The dashboard's routes: `/` and `/assets/{name}`. No fallback, so it merges into the API
/// router (which has one).
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    respond(0, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS
        .iter()
        .position(|asset| asset.name != "index.html" && asset.name == name)
    {
        Some(index) => respond(index, &headers),
        None => {
            let body = ErrorBody::new(ErrorCode::NotFound, format!("no asset `{name}`"));
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}

fn respond(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    // The API's conditional-request matcher; the assets have no `Last-Modified`.
    let fresh = etag
        .to_str()
        .is_ok_and(|etag| is_not_modified(request, etag, None));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.name == "index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Serves `router()` on 127.0.0.1:0 on a thread of its own; returns the base URL.
    fn serve() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, router()).await.expect("serve");
            });
        });
        base
    }

    fn get(url: &str, etag: Option<&str>) -> ureq::http::Response<ureq::Body> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent.get(url);
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        request.call().expect("request")
    }

    fn header<'a>(response: &'a ureq::http::Response<ureq::Body>, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn the_page_is_html_and_names_its_assets() {
        let base = serve();
        let mut response = get(&format!("{base}/"), None);
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&response, "cache-control"), "no-cache");
        assert!(header(&response, "content-security-policy").contains("script-src 'self'"));
        assert!(header(&response, "etag").starts_with('"'));
        let body = response.body_mut().read_to_string().expect("body");
        assert!(body.starts_with("<!doctype html>"));
        assert!(body.contains(r#"src="/assets/app.js""#));
        assert!(body.contains(r#"href="/assets/app.css""#));
    }

    #[test]
    fn assets_have_their_content_types() {
        let base = serve();
        for (path, content_type, needle) in [
            (
                "/assets/app.js",
                "text/javascript; charset=utf-8",
                "EventSource",
            ),
            ("/assets/app.css", "text/css; charset=utf-8", ".badge"),
        ] {
            let mut response = get(&format!("{base}{path}"), None);
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(header(&response, "content-type"), content_type, "{path}");
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            let body = response.body_mut().read_to_string().expect("body");
            assert!(body.contains(needle), "{path}");
        }
    }

    #[test]
    fn a_matching_etag_gets_304_and_another_gets_the_body() {
        let base = serve();
        for path in ["/", "/assets/app.js", "/assets/app.css"] {
            let url = format!("{base}{path}");
            let first = get(&url, None);
            let etag = header(&first, "etag").to_owned();
            let again = get(&url, Some(&etag));
            assert_eq!(again.status(), 304, "{path}");
            assert_eq!(header(&again, "etag"), etag);
            assert_eq!(get(&url, Some(&format!("\"x\", W/{etag}"))).status(), 304);
            assert_eq!(get(&url, Some("\"stale\"")).status(), 200, "{path}");
        }
    }

    #[test]
    fn an_unknown_asset_is_a_json_404() {
        let base = serve();
        for path in [
            "/assets/nope.js",
            "/assets/index.html",
            "/assets/..%2Fsrc%2Flib.rs",
        ] {
            let mut response = get(&format!("{base}{path}"), None);
            assert_eq!(response.status(), 404, "{path}");
            let body = response.body_mut().read_to_string().expect("body");
            let json: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(json["error"]["code"], "not_found", "{path}");
        }
    }

    #[test]
    fn the_job_view_lists_artifacts_and_shows_image_previews_from_blobs() {
        let page = ASSETS[0].body;
        let script = ASSETS[1].body;
        assert!(page.contains(r#"id="artifacts-card""#));
        assert!(script.contains("/artifacts`"), "the list route");
        assert!(script.contains("Range"), "JSON previews read only the head");
        assert!(
            script.contains("URL.revokeObjectURL"),
            "object URLs are revoked"
        );
        let img_src = CSP
            .split(';')
            .map(str::trim)
            .find(|directive| directive.starts_with("img-src"))
            .expect("an img-src directive");
        assert!(
            img_src.split_whitespace().any(|source| source == "blob:"),
            "{img_src}"
        );
    }

    #[test]
    fn the_script_never_writes_html() {
        // Job ids, messages, artifact names and JSON go in as text: no HTML sink at all.
        let script = ASSETS[1].body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn the_page_stays_small() {
        assert!(total_size() < 100 * 1024, "{} bytes", total_size());
    }

    #[test]
    fn etags_follow_the_content() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_ne!(ETAGS[1], ETAGS[2]);
        let if_none_match = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(is_not_modified(&if_none_match("*"), "\"1\"", None));
        assert!(!is_not_modified(&if_none_match("\"2\""), "\"1\"", None));
    }
}
