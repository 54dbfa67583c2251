//! The web dashboard end to end: the real server binary, headless Chromium over WebDriver:
//! the jobs table, the live job view, cancel and resume, the token form, and who runs a job
//! (its lease's owner and last heartbeat; `lease_expired` rows of its history).
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`). Without
//! them the tests say so and pass, except under CI (`CI` set), where they fail.
//! `SKILL_FLEET_UPDATE_SCREENSHOT=1` rewrites `docs/dashboard.png`.

use crate::support;
use crate::webdriver;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, server_command, temp_db};
use webdriver::{Browser, WAIT, find_chromedriver};

/// A browser, or `None` (after saying why) when chromedriver is not installed.
fn browser() -> Option<Browser> {
    match find_chromedriver() {
        Some(driver) => Some(Browser::start(&driver)),
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

    // Cancel asks first, then stops the job.
    browser.click("#cancel");
    browser.click("#cancel-yes");
    wait_for_status(&server, "live-run", "cancelled");
    browser.wait_for(
        "the job view to show it cancelled",
        "return document.getElementById('d-status').textContent === 'cancelled'
             && document.getElementById('d-live').textContent === 'finished'
             && document.getElementById('cancel').disabled;",
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
