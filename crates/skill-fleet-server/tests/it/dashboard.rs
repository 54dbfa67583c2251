//! The web dashboard end to end: the real server binary, headless Chromium over WebDriver:
//! the jobs table, the live job view, cancel and resume, the token form, and who runs a job
//! (its lease's owner and last heartbeat; `lease_expired` rows of its history), and a job's
//! artifacts (listed, previewed, downloaded; with and without a token).
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`). Without
//! them the tests say so and pass, except under CI (`CI` set), where they fail.
//! `SKILL_FLEET_UPDATE_SCREENSHOT=1` rewrites `docs/dashboard.png`.

use crate::support;
use crate::webdriver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skill_fleet_testkit::call;
use support::{Server, server_command, temp_db};
use webdriver::{Browser, WAIT, find_chromedriver};

/// A browser, or `None` (after saying why) when chromedriver is not installed.
fn browser() -> Option<Browser> {
    browser_with(Browser::start)
}

/// A browser that saves downloads into `dir`, or `None` as [`browser`].
fn browser_with_downloads(dir: &Path) -> Option<Browser> {
    browser_with(|driver| Browser::start_with_downloads(driver, dir))
}

fn browser_with(start: impl FnOnce(&Path) -> Browser) -> Option<Browser> {
    match find_chromedriver() {
        Some(driver) => Some(start(&driver)),
        None if std::env::var_os("CI").is_some() => panic!(
            "chromedriver not found on PATH but CI is set: \
             apt-get install chromium chromium-driver"
        ),
        None => {
            println!("skipped: chromedriver not found (apt-get install chromium chromium-driver)");
            None
        }
    }
}

fn post_ok(server: &Server, path: &str, body: Value) -> Value {
    let (status, reply) = server.post(path, body);
    assert!(
        (200..300).contains(&status),
        "POST {path} → {status}: {reply}"
    );
    reply
}

/// Polls the API until the job has `status`.
fn wait_for_status(server: &Server, id: &str, status: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, job) = server.get(&format!("/api/v1/jobs/{id}"));
        if job["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {status}: {job}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Jobs in every state, as a user would see them mid-way through a day of runs. Their types
/// have no executor (the server runs `optimization` itself), so only the test moves them.
fn seed_jobs(server: &Server) {
    let jobs = [
        ("bootstrap-baseline", "bootstrap_fewshot"),
        ("sweep-temperature", "sweep"),
        ("eval-holdout", "eval"),
        ("gepa-support-bot", "gepa"),
        ("eval-nightly", "eval"),
        ("live-run", "miprov2"),
    ];
    for (id, job_type) in jobs {
        post_ok(server, "/api/v1/jobs", json!({"id": id, "type": job_type}));
    }
    let events = [
        (
            "bootstrap-baseline",
            json!({"step": "bootstrapping", "progress": 0.3, "cost_usd": 0.42, "metric": 0.58}),
        ),
        (
            "sweep-temperature",
            json!({"step": "grid", "progress": 0.55, "cost_usd": 3.1, "metric": 0.66}),
        ),
        (
            "eval-holdout",
            json!({"step": "scoring", "progress": 1.0, "cost_usd": 0.87, "metric": 0.912}),
        ),
        (
            "gepa-support-bot",
            json!({"step": "collecting_traces", "progress": 0.2, "cost_usd": 0.6, "metric": 0.61}),
        ),
        (
            "gepa-support-bot",
            json!({"step": "proposing_instructions", "progress": 0.62, "cost_usd": 1.84, "metric": 0.713, "message": "trial 18 of 30"}),
        ),
        (
            "live-run",
            json!({"step": "collecting_traces", "progress": 0.0, "message": "starting"}),
        ),
    ];
    for (id, event) in events {
        post_ok(server, &format!("/api/v1/jobs/{id}/events"), event);
    }
    post_ok(
        server,
        "/api/v1/jobs/eval-holdout/complete",
        json!({"result": {"accuracy": 0.912}}),
    );
    post_ok(
        server,
        "/api/v1/jobs/sweep-temperature/fail",
        json!({"error": "worker lost: exit status 137"}),
    );
    post_ok(
        server,
        "/api/v1/jobs/bootstrap-baseline/cancel",
        json!({"reason": "superseded by gepa-support-bot"}),
    );
}

/// The cells of a job's row in the jobs table, by column label.
fn row_cells(browser: &Browser, id: &str) -> Value {
    browser.eval(&format!(
        r#"return Object.fromEntries([...document.querySelectorAll('tr[data-job-id="{id}"] td')]
             .map(td => [td.dataset.label, td.textContent]));"#
    ))
}

/// A JS expression: `aria-valuenow` of a job's progress bar in the jobs table.
fn row_progress(id: &str) -> String {
    format!(
        r#"document.querySelector('tr[data-job-id="{id}"] [role=progressbar]')?.getAttribute('aria-valuenow')"#
    )
}

#[test]
fn dashboard_lists_jobs_follows_live_progress_and_cancels() {
    let Some(browser) = browser() else { return };
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    seed_jobs(&server);

    browser.goto(&server.url("/"));
    let statuses = browser.wait_for(
        "the six jobs in the table",
        "const rows = [...document.querySelectorAll('#jobs-body tr')];
         return rows.length === 6 && Object.fromEntries(rows.map(r => [r.dataset.jobId, r.dataset.status]));",
    );
    assert_eq!(
        statuses,
        json!({
            "bootstrap-baseline": "cancelled", "sweep-temperature": "failed",
            "eval-holdout": "completed", "gepa-support-bot": "running",
            "eval-nightly": "queued", "live-run": "running",
        })
    );
    let cells = row_cells(&browser, "gepa-support-bot");
    assert_eq!(cells["Step"], "proposing_instructions", "{cells}");
    assert_eq!(cells["Cost"], "$1.84", "{cells}");
    assert_eq!(cells["Metric"], "0.713", "{cells}");
    // Started by a token-less event: its lease is open, owned by `anonymous`.
    assert_eq!(
        browser.eval(
            r#"return document.querySelector('tr[data-job-id="gepa-support-bot"] .owner').textContent;"#
        ),
        "anonymous"
    );

    // The table follows a running job as its worker reports progress.
    for (progress, shown) in [(0.1, "10"), (0.45, "45")] {
        post_ok(
            &server,
            "/api/v1/jobs/live-run/events",
            json!({"progress": progress, "cost_usd": progress * 2.0, "metric": 0.4 + progress / 2.0}),
        );
        browser.wait_for(
            &format!("live-run's bar at {shown}%"),
            &format!("return {} === '{shown}';", row_progress("live-run")),
        );
    }

    if std::env::var_os("SKILL_FLEET_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        browser.set_window(1280, 560);
        browser.wait_for(
            "the progress bars to settle",
            "return document.readyState === 'complete' && document.getAnimations().length === 0;",
        );
        let png = browser.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::write(&path, png).expect("write docs/dashboard.png");
        println!("wrote {}", path.display());
    }

    // The job view: live over SSE, with a chart and the log tail.
    browser.click(r##"a[href="#/jobs/live-run"]"##);
    browser.wait_for(
        "the job view connected to the stream",
        "return document.getElementById('job-title').textContent === 'live-run'
             && document.getElementById('d-live').textContent === 'live';",
    );
    post_ok(
        &server,
        "/api/v1/jobs/live-run/events",
        json!({"step": "searching_parameters", "progress": 0.7, "cost_usd": 1.25, "metric": 0.74, "message": "trial 7"}),
    );
    browser.wait_for(
        "the job view at 70%",
        "return document.getElementById('d-bar').getAttribute('aria-valuenow') === '70'
             && document.getElementById('d-step').textContent === 'searching_parameters'
             && document.getElementById('d-message').textContent === 'trial 7';",
    );
    browser.wait_for(
        "a chart of metric and cost",
        "const chart = document.querySelector('#chart svg');
         return !!chart && !!chart.querySelector('path.metric') && !!chart.querySelector('path.cost')
             && chart.getAttribute('aria-label').endsWith('latest metric 0.74, cost $1.25');",
    );
    browser.wait_for(
        "the log tail (or `no logs`)",
        "return document.getElementById('log-out').textContent;",
    );
    browser.wait_for(
        "the job view to say it has no artifacts yet",
        "return document.getElementById('a-empty').textContent === 'No artifacts yet.'
             && document.getElementById('a-wrap').hidden;",
    );

    // Cancel asks first, then stops the job.
    browser.click("#cancel");
    browser.click("#cancel-yes");
    wait_for_status(&server, "live-run", "cancelled");
    browser.wait_for(
        "the job view to show it cancelled, with no artifacts",
        "return document.getElementById('d-status').textContent === 'cancelled'
             && document.getElementById('d-live').textContent === 'finished'
             && document.getElementById('cancel').disabled
             && document.getElementById('a-empty').textContent === 'This job stored no artifacts.';",
    );

    // And resume puts it back in the queue.
    browser.click("#resume");
    wait_for_status(&server, "live-run", "queued");

    // Back to the table, filtered by status.
    browser.click(r##"a[href="#/"]"##);
    browser.click(r#"button[data-status="cancelled"]"#);
    let shown = browser.wait_for(
        "only cancelled jobs",
        "const rows = [...document.querySelectorAll('#jobs-body tr')];
         return rows.length === 1 && rows[0].dataset.status === 'cancelled' && rows[0].dataset.jobId;",
    );
    assert_eq!(shown, "bootstrap-baseline");
    assert_eq!(
        browser.eval("return document.querySelector('button[data-status=\"cancelled\"]').getAttribute('aria-pressed');"),
        "true"
    );
}

#[test]
fn dashboard_asks_for_the_token_once_and_keeps_it() {
    let Some(browser) = browser() else { return };
    let (_dir, db) = temp_db();
    let mut command = server_command(&db);
    command.arg("--auth-token").arg("s3cret-token");
    let server = Server::start_with(command);
    let status = support::agent()
        .post(&server.url("/api/v1/jobs"))
        .header("Authorization", "Bearer s3cret-token")
        .send_json(json!({"id": "guarded", "type": "eval"}))
        .expect("create")
        .status();
    assert_eq!(status, 201);

    // The page and its assets load without a token; the API asks for one.
    browser.goto(&server.url("/"));
    browser.wait_visible("#token-input");
    browser.type_into("#token-input", "s3cret-token");
    browser.click("#token-form button[type=submit]");
    browser.wait_for(
        "the job listed once the token is given",
        r#"return !!document.querySelector('tr[data-job-id="guarded"]');"#,
    );
    assert_eq!(
        browser.eval("return localStorage.getItem('skill-fleet-token');"),
        "s3cret-token"
    );

    // A reload uses the kept token: no form.
    browser.goto(&server.url("/"));
    browser.wait_for(
        "the job listed after a reload",
        r#"return !!document.querySelector('tr[data-job-id="guarded"]');"#,
    );
    assert_eq!(
        browser.eval("return document.getElementById('token-form').hidden;"),
        true
    );
}

#[test]
fn dashboard_shows_who_runs_a_job_and_leases_that_expired() {
    let Some(browser) = browser() else { return };
    let (_dir, db) = temp_db();
    let mut command = server_command(&db);
    command.args([
        "--lease-ttl-seconds",
        "1.5",
        "--heartbeat-interval-seconds",
        "0.25",
        "--rescue-interval-seconds",
        "0.2",
    ]);
    let server = Server::start_with(command);
    // `held` keeps its lease (the test heartbeats it); `lost` is claimed and forgotten, so
    // the sweep takes it back (`evaluation` is resumable: back in the queue).
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "held", "type": "sweep"}),
    );
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "lost", "type": "evaluation"}),
    );
    let held = post_ok(
        &server,
        "/api/v1/jobs/claim",
        json!({"types": ["sweep"], "worker": "gpu-box-3"}),
    );
    post_ok(
        &server,
        "/api/v1/jobs/claim",
        json!({"types": ["evaluation"], "worker": "old-box"}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeats = {
        let stop = Arc::clone(&stop);
        let url = server.url("/api/v1/jobs/held/heartbeat");
        let body = json!({"attempt": held["attempt"], "lease_token": held["lease_token"]});
        std::thread::spawn(move || {
            let agent = support::agent();
            // A worker's cadence, not a wait: one heartbeat per interval.
            while !stop.load(Ordering::Relaxed) {
                let _ = agent.post(&url).send_json(&body);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    wait_for_status(&server, "lost", "queued");

    browser.goto(&server.url("/"));
    let owners = browser.wait_for(
        "the owner of the running job in the table",
        r#"const owner = (id) => document.querySelector(`tr[data-job-id="${id}"] .owner`)?.textContent;
           const hb = document.querySelector('tr[data-job-id="held"] .hb')?.textContent || '';
           return owner('held') === 'gpu-box-3' && hb.endsWith(' ago') && [owner('held'), owner('lost')];"#,
    );
    assert_eq!(owners, json!(["gpu-box-3", "–"]));

    // The job view: owner and last heartbeat of the running job.
    browser.click(r##"a[href="#/jobs/held"]"##);
    browser.wait_for(
        "the owner and last heartbeat in the job view",
        "return document.getElementById('job-title').textContent === 'held'
             && document.getElementById('d-owner').textContent === 'gpu-box-3'
             && document.getElementById('d-heartbeat').textContent.endsWith(' ago')
             && document.getElementById('events-card').hidden;",
    );

    // The rescued job: no owner, and its history's `lease_expired` row shown as such.
    browser.goto(&server.url("/#/jobs/lost"));
    let event = browser.wait_for(
        "the lease_expired row in the job view",
        r#"const li = document.querySelector('#d-events li[data-event="lease_expired"]');
           return document.getElementById('job-title').textContent === 'lost'
               && !document.getElementById('events-card').hidden && li && li.textContent;"#,
    );
    let event = event.as_str().unwrap_or_default();
    assert!(event.contains("lease expired"), "{event}");
    assert!(event.contains("old-box"), "{event}");
    assert_eq!(
        browser.eval("return document.getElementById('d-owner').textContent;"),
        "–"
    );

    stop.store(true, Ordering::Relaxed);
    heartbeats.join().expect("heartbeat thread");
}

// ------------------------------------------------------------------------------- artifacts

/// The optimized program a job stores; its `<img>` must stay text in the preview.
const PROGRAM_JSON: &str = r#"{"instructions":"Answer in one line. <img src=x onerror=window.pwned=1>","demos":[{"question":"2+2","answer":"4"}],"marker":"dspy-program-v1"}"#;

/// `POST path` with the bearer token, if any, asserting a 2xx; the JSON answer.
fn post_as(server: &Server, path: &str, body: Value, token: Option<&str>) -> Value {
    let mut request = support::agent().post(&server.url(path));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let (status, reply) = call(request.send_json(body));
    assert!(
        (200..300).contains(&status),
        "POST {path} → {status}: {reply}"
    );
    reply
}

/// Creates job `id` of type `report` and claims it as a worker; the claim's answer.
fn create_and_claim(server: &Server, id: &str, token: Option<&str>) -> Value {
    post_as(
        server,
        "/api/v1/jobs",
        json!({"id": id, "type": "report"}),
        token,
    );
    let claimed = post_as(
        server,
        "/api/v1/jobs/claim",
        json!({"types": ["report"], "worker": "gpu-box-1"}),
        token,
    );
    assert_eq!(claimed["id"], id, "{claimed}");
    claimed
}

/// Uploads an artifact as the worker that claimed the job: the claim's fence in headers.
fn upload(
    server: &Server,
    claimed: &Value,
    name: &str,
    content_type: &str,
    bytes: &[u8],
    token: Option<&str>,
) {
    let id = claimed["id"].as_str().expect("claimed job id");
    let attempt = claimed["attempt"].to_string();
    let lease_token = claimed["lease_token"].as_str().expect("lease token");
    let mut request = support::agent()
        .put(&server.url(&format!("/api/v1/jobs/{id}/artifacts/{name}")))
        .header("Content-Type", content_type)
        .header("Skill-Fleet-Attempt", attempt.as_str())
        .header("Skill-Fleet-Lease-Token", lease_token);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let (status, reply) = call(request.send(bytes));
    assert_eq!(status, 201, "PUT {name}: {reply}");
    assert_eq!(reply["name"], name, "{reply}");
}

/// A valid `width`×`height` RGB PNG (a gradient). Its pixels go in stored (uncompressed)
/// deflate blocks: a browser decodes it, and no compressor is needed.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::new();
    for y in 0..height {
        pixels.push(0); // filter: none
        for x in 0..width {
            let red = u8::try_from(x * 255 / width).expect("a byte");
            let green = u8::try_from(y * 255 / height).expect("a byte");
            pixels.extend([red, green, 160]);
        }
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = pixels.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).expect("a stored block's length");
        zlib.extend(len.to_le_bytes());
        zlib.extend((!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend(adler32(&pixels).to_be_bytes());
    let mut header = Vec::new();
    header.extend(width.to_be_bytes());
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]); // 8 bits per channel, RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &header), (b"IDAT", &zlib), (b"IEND", &Vec::new())] {
        out.extend(
            u32::try_from(data.len())
                .expect("a chunk's length")
                .to_be_bytes(),
        );
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for byte in bytes {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[test]
fn png_checksums_are_the_standard_ones() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    let image = png(3, 2);
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(image.ends_with(&[0xAE, 0x42, 0x60, 0x82]), "IEND's CRC");
}

/// Waits until the browser has saved `name` into `dir` (complete, not a `.crdownload`);
/// its bytes.
fn downloaded(dir: &Path, name: &str) -> Vec<u8> {
    let path: PathBuf = dir.join(name);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            return bytes;
        }
        let listing: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{name} was never downloaded; {} holds {listing:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JS expression: the artifacts listed in the job view, name → [type, size, size in
/// bytes (its tooltip), sha256 prefix].
const LISTED: &str = "Object.fromEntries([...document.querySelectorAll('#a-body tr')].map(tr => \
     [tr.dataset.artifact, [tr.cells[1].textContent, tr.cells[2].textContent, \
      tr.cells[2].title, tr.cells[4].textContent]]))";

/// A JS expression: the text of the preview of `name`, or ''.
fn preview_text(name: &str) -> String {
    format!(
        r#"(document.querySelector('#a-previews figure[data-artifact="{name}"] pre')?.textContent || '')"#
    )
}

/// A JS expression: the image of the preview of `name` has loaded (decoded, width > 0).
fn image_loaded(name: &str) -> String {
    format!(
        r#"(() => {{ const img = document.querySelector('#a-previews figure[data-artifact="{name}"] img');
             return !!img && img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight, img.src.split(':')[0]]; }})()"#
    )
}

#[test]
fn dashboard_lists_previews_and_downloads_a_jobs_artifacts() {
    let downloads = tempfile::tempdir().expect("downloads dir");
    let Some(browser) = browser_with_downloads(downloads.path()) else {
        return;
    };
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    let claimed = create_and_claim(&server, "optimize-1", None);
    let image = png(48, 32);
    // Bigger than the preview reads (256 KiB): the view shows its head and says so.
    let big = format!(
        "[{}]",
        (0..12_000)
            .map(|i| format!(r#"{{"trial":{i},"score":0.5}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(big.len() > 300 * 1024);
    upload(
        &server,
        &claimed,
        "program.json",
        "application/json",
        PROGRAM_JSON.as_bytes(),
        None,
    );
    upload(&server, &claimed, "scores.png", "image/png", &image, None);
    upload(
        &server,
        &claimed,
        "trials.json",
        "application/json",
        big.as_bytes(),
        None,
    );

    browser.goto(&server.url("/#/jobs/optimize-1"));
    let listed = browser.wait_for(
        "the three artifacts listed",
        &format!("return document.querySelectorAll('#a-body tr').length === 3 && {LISTED};"),
    );
    let (_, api) = server.get("/api/v1/jobs/optimize-1/artifacts");
    let sha = |i: usize| api["artifacts"][i]["sha256"].as_str().expect("sha256")[..12].to_owned();
    let names: Vec<&String> = listed.as_object().expect("an object").keys().collect();
    assert_eq!(
        names,
        ["program.json", "scores.png", "trials.json"],
        "{listed}"
    );
    assert_eq!(listed["program.json"][0], "application/json");
    assert_eq!(
        listed["program.json"][1],
        format!("{} B", PROGRAM_JSON.len())
    );
    assert_eq!(listed["scores.png"][0], "image/png");
    assert_eq!(listed["scores.png"][2], format!("{} bytes", image.len()));
    assert!(
        listed["trials.json"][1]
            .as_str()
            .is_some_and(|size| size.ends_with(" KiB")),
        "{listed}"
    );
    for (i, name) in ["program.json", "scores.png", "trials.json"]
        .iter()
        .enumerate()
    {
        assert_eq!(listed[name][3], sha(i), "{listed}");
    }

    // JSON, pretty-printed, its markup shown as text (nothing ran, no element was made).
    let program = browser.wait_for(
        "the program's JSON preview",
        &format!("return {};", preview_text("program.json")),
    );
    let program = program.as_str().unwrap_or_default();
    assert!(
        program.contains("\n  \"marker\": \"dspy-program-v1\""),
        "{program}"
    );
    assert!(
        program.contains("<img src=x onerror=window.pwned=1>"),
        "{program}"
    );
    assert_eq!(
        browser.eval("return [window.pwned === undefined, document.querySelectorAll('#a-previews pre img').length];"),
        json!([true, 0])
    );
    // The image, decoded.
    let loaded = browser.wait_for(
        "the PNG preview to load",
        &format!("return {};", image_loaded("scores.png")),
    );
    assert_eq!(loaded, json!([48, 32, "blob"]));
    // Only the head of the big one was read, and the view says so.
    let head = browser.wait_for(
        "the head of trials.json",
        &format!("return {}.length;", preview_text("trials.json")),
    );
    assert_eq!(head, 256 * 1024);
    let note = browser.eval(r#"return document.querySelector('#a-previews figure[data-artifact="trials.json"] .note').textContent;"#);
    assert!(
        note.as_str()
            .is_some_and(|n| n.starts_with("first 256 KiB of ")),
        "{note}"
    );

    // A file stored while the view is open shows up on the view's own refresh.
    upload(
        &server,
        &claimed,
        "notes.json",
        "application/json",
        br#"{"late": true}"#,
        None,
    );
    browser.wait_for(
        "the artifact uploaded while watching",
        &format!(
            "return {}.includes('\"late\": true');",
            preview_text("notes.json")
        ),
    );

    // The job ends naming its result: the list marks it.
    post_as(
        &server,
        "/api/v1/jobs/optimize-1/complete",
        support::with_fence(json!({"result_path": "artifact:program.json"}), &claimed),
        None,
    );
    browser.wait_for(
        "program.json marked as the result",
        r#"return document.getElementById('d-status').textContent === 'completed'
             && document.querySelector('#a-body tr[data-artifact="program.json"] .badge')?.textContent === 'result';"#,
    );

    // A plain link downloads the stored bytes.
    browser.click(r#"#a-body a[data-artifact="program.json"]"#);
    assert_eq!(
        downloaded(downloads.path(), "program.json"),
        PROGRAM_JSON.as_bytes()
    );
}

#[test]
fn dashboard_shows_artifacts_with_a_token_through_fetch() {
    let downloads = tempfile::tempdir().expect("downloads dir");
    let Some(browser) = browser_with_downloads(downloads.path()) else {
        return;
    };
    const TOKEN: &str = "art1fact-token";
    let (_dir, db) = temp_db();
    let mut command = server_command(&db);
    command.arg("--auth-token").arg(TOKEN);
    let server = Server::start_with(command);
    let claimed = create_and_claim(&server, "guarded-run", Some(TOKEN));
    let image = png(20, 10);
    upload(
        &server,
        &claimed,
        "program.json",
        "application/json",
        PROGRAM_JSON.as_bytes(),
        Some(TOKEN),
    );
    upload(
        &server,
        &claimed,
        "plot.png",
        "image/png",
        &image,
        Some(TOKEN),
    );
    // Without the token the files are refused: the page must send it.
    let (status, _) = server.get("/api/v1/jobs/guarded-run/artifacts/plot.png");
    assert_eq!(status, 401);

    browser.goto(&server.url("/"));
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-form button[type=submit]");
    browser.click(r##"a[href="#/jobs/guarded-run"]"##);
    browser.wait_for(
        "both artifacts listed",
        "return document.querySelectorAll('#a-body tr').length === 2;",
    );
    let program = browser.wait_for(
        "the program's JSON preview",
        &format!("return {};", preview_text("program.json")),
    );
    assert!(
        program
            .as_str()
            .is_some_and(|p| p.contains("\"marker\": \"dspy-program-v1\"")),
        "{program}"
    );
    let loaded = browser.wait_for(
        "the PNG preview to load",
        &format!("return {};", image_loaded("plot.png")),
    );
    assert_eq!(loaded, json!([20, 10, "blob"]));

    // A plain link cannot send the token: the download goes through fetch.
    browser.click(r#"#a-body a[data-artifact="plot.png"]"#);
    assert_eq!(downloaded(downloads.path(), "plot.png"), image);
    assert_eq!(
        browser.eval("return document.getElementById('notice').hidden;"),
        true
    );
}
