//! Several real servers on one PostgreSQL database (issue 19), through the HTTP API only:
//! 100 jobs worked by 10 external workers spread over 3 servers, some dying mid-job (each
//! job completes once, no attempt writes after losing its lease); SSE subscribers on one
//! server following a job fed through another, and reconnecting elsewhere with
//! `Last-Event-ID`; a SIGKILLed server's children rescued by the others; a PostgreSQL
//! restart mid-run; cached GETs on one server after a change committed through another.
//!
//! Short leases (2 s, heartbeats every 0.5 s, sweeps every 0.5 s) keep the suite fast. Each
//! test has its own database (the test kit's [`Cluster`]); without a PostgreSQL the tests
//! skip with a printed reason (and fail under `CI`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skill_fleet_testkit::cluster::{Cluster, process_gone};
use skill_fleet_testkit::http::{Endpoint, agent, streaming_agent};
use skill_fleet_testkit::{PostgresCluster, wait_for, wait_until};

use crate::support::{fence, with_fence};

/// This crate's server binary, which cargo builds for these tests.
const BINARY: &str = env!("CARGO_BIN_EXE_skill-fleet-server");

/// Leases of two seconds, renewed every half second, swept every half second; the tests'
/// job types go back to the queue when rescued, as often as it takes (a loaded machine may
/// stall a live worker past its lease).
const LEASES: &str = "lease_ttl_seconds = 2.0\n\
    heartbeat_interval_seconds = 0.5\n\
    rescue_interval_seconds = 0.5\n\
    max_rescues = 50\n\
    resumable_types = [\"cluster\", \"watched\", \"pg\"]\n";

/// `servers` servers with short leases and no executors; `None` (skip) without a
/// PostgreSQL.
fn cluster(servers: usize) -> Option<Cluster> {
    cluster_with(servers, LEASES)
}

/// `servers` servers configured by `config` (TOML) and no executors.
fn cluster_with(servers: usize, config: &str) -> Option<Cluster> {
    Cluster::start(
        Path::new(BINARY),
        servers,
        &format!("{config}\n[executors]\n"),
    )
}

/// The endpoints of the running servers, in index order (shared with worker threads).
fn endpoints(cluster: &Cluster) -> Vec<Endpoint> {
    cluster
        .running()
        .map(|(_, server)| server.endpoint.clone())
        .collect()
}

/// Claims a job of `job_type` on `server`, waiting up to `seconds` for one to be queued.
fn claim(server: &Endpoint, job_type: &str, worker: &str, seconds: u64) -> Value {
    wait_for(
        &format!("{worker} to claim a {job_type} job"),
        seconds,
        || {
            let (status, body) = server.post(
                "/api/v1/jobs/claim",
                json!({"types": [job_type], "worker": worker}),
            );
            assert!(status == 200 || status == 204, "{status} {body}");
            (status == 200).then_some(body)
        },
    )
}

/// Every history row of job `id` on `server`, paged with `after`.
fn history(server: &Endpoint, id: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = server.get(&format!(
            "/api/v1/jobs/{id}/progress?after={after}&limit=1000"
        ));
        assert_eq!(status, 200, "{page}");
        rows.extend(page["records"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return rows,
        }
    }
}

/// A GET's answer with the headers the cache sets.
struct Got {
    status: u16,
    etag: Option<String>,
    cache: Option<String>,
    body: Value,
}

/// `GET path`, with `If-None-Match: etag` when given.
fn get(server: &Endpoint, path: &str, if_none_match: Option<&str>) -> Got {
    let mut request = agent().get(&server.url(path));
    if let Some(etag) = if_none_match {
        request = request.header("If-None-Match", etag);
    }
    let mut response = request
        .call()
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (etag, cache) = (header("etag"), header("x-cache"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Got {
        status,
        etag,
        cache,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

// ---------------------------------------------------------------------------------------------
// SSE

/// One SSE event: its `id:` and its `data:` as JSON.
#[derive(Debug, Clone)]
struct Event {
    id: u64,
    data: Value,
    /// When this process read it.
    at: Instant,
}

/// An SSE stream read on a thread of its own into a shared list.
struct Sse {
    what: String,
    events: Arc<Mutex<Vec<Event>>>,
    ended: Arc<AtomicBool>,
}

impl Sse {
    /// Opens `GET /api/v1/jobs/{job}/stream` on `server`, with `Last-Event-ID` when given.
    fn open(server: &Endpoint, job: &str, last_event_id: Option<u64>) -> Sse {
        let url = server.url(&format!("/api/v1/jobs/{job}/stream"));
        let mut request = streaming_agent()
            .get(&url)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", &id.to_string());
        }
        let response = request
            .call()
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let reader = BufReader::new(response.into_body().into_reader());
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let (sink, done) = (Arc::clone(&events), Arc::clone(&ended));
        std::thread::spawn(move || {
            let mut id = None;
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().parse::<u64>().ok();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let data = serde_json::from_str(data.trim()).expect("an event's data is JSON");
                    let id = id.take().expect("every event carries an id");
                    sink.lock().unwrap().push(Event {
                        id,
                        data,
                        at: Instant::now(),
                    });
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        Sse {
            what: format!("the stream of {job} on {}", server.base),
            events,
            ended,
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for an event `check` accepts; the first such.
    fn wait(&self, what: &str, deadline: Duration, check: impl Fn(&Value) -> bool) -> Event {
        wait_until(&format!("{what} on {}", self.what), deadline, || {
            self.events().into_iter().find(|event| check(&event.data))
        })
    }

    /// Waits for the server to end the stream; every event it sent.
    fn wait_end(&self, deadline: Duration) -> Vec<Event> {
        wait_until(&format!("the end of {}", self.what), deadline, || {
            self.ended.load(Ordering::SeqCst).then(|| self.events())
        })
    }
}

/// The SSE rules for one stream: ids strictly increasing, progress never going back, steps
/// in the order they were posted (`steps`), `running` until one terminal state, which is
/// last.
fn check_stream(what: &str, events: &[Event], steps: &[String]) {
    assert!(!events.is_empty(), "{what}: no event");
    for pair in events.windows(2) {
        assert!(
            pair[0].id < pair[1].id,
            "{what}: ids go {} then {}: {:?}",
            pair[0].id,
            pair[1].id,
            ids(events)
        );
        let progress = |e: &Event| e.data["progress"].as_f64().unwrap();
        assert!(
            progress(&pair[0]) <= progress(&pair[1]),
            "{what}: progress went back: {} then {}",
            pair[0].data,
            pair[1].data
        );
    }
    let step_index = |event: &Event| {
        event.data["step"]
            .as_str()
            .and_then(|step| steps.iter().position(|s| s == step))
    };
    let order: Vec<usize> = events.iter().filter_map(step_index).collect();
    assert!(
        order.windows(2).all(|pair| pair[0] <= pair[1]),
        "{what}: steps out of order: {order:?}"
    );
    let (last, before) = events.split_last().unwrap();
    assert_eq!(last.data["status"], "completed", "{what}: {}", last.data);
    assert_eq!(last.data["progress"], 1.0, "{what}: {}", last.data);
    for event in before {
        assert_eq!(event.data["status"], "running", "{what}: {}", event.data);
    }
}

fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().map(|event| event.id).collect()
}

// ---------------------------------------------------------------------------------------------
// 100 jobs, 10 workers, 3 servers

/// Jobs of the first test.
const JOBS: usize = 100;
/// Workers of the first test.
const WORKERS: usize = 10;
/// Progress steps each job reports (each a durable event, then a coalesced one).
const STEPS: usize = 4;

/// (worker, its n-th claim) that dies mid-job: it stops after its second step, with a
/// coalesced event still pending on its server, and never heartbeats again.
const DEATHS: [(usize, usize); 7] = [(0, 2), (1, 2), (2, 2), (3, 2), (4, 2), (5, 1), (5, 4)];

/// What the workers saw, for the checks after the run.
#[derive(Default)]
struct Ledger {
    /// Job id → each (worker, attempt) whose complete was answered 200.
    completed: Mutex<BTreeMap<String, Vec<(String, u64)>>>,
    /// Each write of a lost attempt after its job was rescued.
    late: Mutex<Vec<LateWrite>>,
    /// Attempts a live worker found lost (the machine stalled it past its lease).
    lost_alive: Mutex<Vec<(String, u64)>>,
    /// Attempts abandoned on purpose.
    died: Mutex<Vec<(String, u64)>>,
    /// Jobs completed so far.
    done: AtomicUsize,
    /// Set when a worker panics, so the others stop instead of waiting out their deadline.
    abort: AtomicBool,
}

/// A write of a lost attempt, sent after every server showed its job rescued.
#[derive(Debug)]
#[allow(dead_code)] // read by the failure message's `Debug`
struct LateWrite {
    job: String,
    attempt: u64,
    write: &'static str,
    /// The server the attempt worked through, and the one this write went to.
    worked_on: String,
    sent_to: String,
    status: u16,
    reply: Value,
}

/// Sets the ledger's `abort` when the thread holding it panics.
struct AbortOnPanic<'a>(&'a Ledger);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
}

/// How one attempt ended for its worker.
enum Run {
    Completed,
    /// A write was refused with `lease_lost`: the worker stops, as the protocol says.
    Lost,
    /// The worker died on purpose.
    Died,
}

/// A worker's write: `Ok` for the expected status, `Err(())` for `lease_lost`; anything else
/// fails the test.
fn worker_write(server: &Endpoint, path: &str, body: Value, ok: u16) -> Result<Value, ()> {
    let (status, reply) = server.post(path, body);
    if status == ok {
        return Ok(reply);
    }
    assert!(
        status == 409 && reply["error"]["code"] == "lease_lost",
        "POST {path} on {}: {status} {reply}",
        server.base
    );
    Err(())
}

/// One attempt: the steps (durable and coalesced events, heartbeats), then complete, unless
/// the worker dies after its second step.
fn run_job(server: &Endpoint, claimed: &Value, worker: &str, dies: bool) -> Run {
    let id = claimed["id"].as_str().unwrap();
    for k in 0..STEPS {
        let progress = (k as f64 + 1.0) / 10.0;
        let step = json!({"step": format!("s{k}"), "progress": progress,
                          "message": format!("{worker} at step {k}")});
        let events = format!("/api/v1/jobs/{id}/events");
        match worker_write(server, &events, with_fence(step, claimed), 202) {
            Ok(ack) => assert_eq!(ack["durable"], true, "{ack}"),
            Err(()) => return Run::Lost,
        }
        let coalesced = json!({"progress": progress + 0.05, "cost_usd": k as f64 * 0.01});
        if worker_write(server, &events, with_fence(coalesced, claimed), 202).is_err() {
            return Run::Lost;
        }
        if dies && k == 1 {
            return Run::Died;
        }
        let heartbeat = format!("/api/v1/jobs/{id}/heartbeat");
        match worker_write(server, &heartbeat, fence(claimed), 200) {
            Ok(ack) => assert_eq!(ack["stop"], false, "{ack}"),
            Err(()) => return Run::Lost,
        }
    }
    let result = json!({"result": {"worker": worker, "attempt": claimed["attempt"]}});
    match worker_write(
        server,
        &format!("/api/v1/jobs/{id}/complete"),
        with_fence(result, claimed),
        200,
    ) {
        Ok(_) => Run::Completed,
        Err(()) => Run::Lost,
    }
}

/// Worker `w`: claims a job on server `(w + n) % 3` for its n-th claim and works it, until
/// every job completed.
fn worker<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    w: usize,
    servers: &'scope [Endpoint],
    ledger: &'scope Ledger,
    give_up: Instant,
) {
    let _abort = AbortOnPanic(ledger);
    let mut claims = 0;
    while ledger.done.load(Ordering::SeqCst) < JOBS && !ledger.abort.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < give_up,
            "worker {w}: only {} of {JOBS} jobs completed in time",
            ledger.done.load(Ordering::SeqCst)
        );
        let server = &servers[(w + claims) % servers.len()];
        let name = format!("w{w}-{claims}");
        let (status, claimed) = server.post(
            "/api/v1/jobs/claim",
            json!({"types": ["cluster"], "worker": name}),
        );
        match status {
            200 => {}
            204 => {
                // Pacing the polls of an empty queue (rescued jobs come back after a sweep).
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            other => panic!("claim on {}: {other} {claimed}", server.base),
        }
        claims += 1;
        let id = claimed["id"].as_str().unwrap().to_owned();
        let attempt = claimed["attempt"].as_u64().unwrap();
        let dies = DEATHS.contains(&(w, claims));
        match run_job(server, &claimed, &name, dies) {
            Run::Completed => {
                ledger
                    .completed
                    .lock()
                    .unwrap()
                    .entry(id)
                    .or_default()
                    .push((name, attempt));
                ledger.done.fetch_add(1, Ordering::SeqCst);
            }
            Run::Lost => ledger.lost_alive.lock().unwrap().push((id, attempt)),
            Run::Died => {
                ledger.died.lock().unwrap().push((id.clone(), attempt));
                scope.spawn(move || ghost(servers, ledger, claimed, &server.base));
            }
        }
    }
}

/// The dead worker's attempt, come back once its job was rescued: an event, a heartbeat and
/// a complete with its old fence, each to some server; all recorded for the checks.
fn ghost(servers: &[Endpoint], ledger: &Ledger, claimed: Value, worked_on: &str) {
    let _abort = AbortOnPanic(ledger);
    let id = claimed["id"].as_str().unwrap();
    let attempt = claimed["attempt"].as_u64().unwrap();
    wait_for(
        &format!("attempt {attempt} of {id} to be rescued"),
        20,
        || {
            // Every server must say so (one alone could answer from a cache).
            let moved_on = servers.iter().all(|server| {
                let (status, job) = server.get(&format!("/api/v1/jobs/{id}"));
                status == 200 && !(job["status"] == "running" && job["attempt"] == attempt)
            });
            (moved_on || ledger.abort.load(Ordering::SeqCst)).then_some(())
        },
    );
    // The server the attempt worked on holds its live state and learns of the rescue from
    // the change feed, about a tick after the commit (at once when it rescued the job
    // itself); until then it may answer a heartbeat or a coalesced event from memory (the
    // database's fence refuses the write itself either way). Once it refuses, every server
    // must refuse every late write.
    if let Some(home) = servers.iter().find(|server| server.base == worked_on) {
        wait_for(
            &format!("{worked_on} to refuse attempt {attempt} of {id}"),
            10,
            || {
                let (status, _) =
                    home.post(&format!("/api/v1/jobs/{id}/heartbeat"), fence(&claimed));
                (status == 409 || ledger.abort.load(Ordering::SeqCst)).then_some(())
            },
        );
    }
    let writes = [
        (
            "event",
            "events",
            with_fence(json!({"progress": 0.99, "message": "late"}), &claimed),
        ),
        ("heartbeat", "heartbeat", fence(&claimed)),
        (
            "complete",
            "complete",
            with_fence(json!({"result": {"late": true}}), &claimed),
        ),
    ];
    for (n, (write, path, body)) in writes.into_iter().enumerate() {
        let server = &servers[(n + attempt as usize) % servers.len()];
        let (status, reply) = server.post(&format!("/api/v1/jobs/{id}/{path}"), body);
        ledger.late.lock().unwrap().push(LateWrite {
            job: id.to_owned(),
            attempt,
            write,
            worked_on: worked_on.to_owned(),
            sent_to: server.base.clone(),
            status,
            reply,
        });
    }
}

#[test]
fn three_servers_and_ten_workers_complete_every_job_once_and_fence_every_lost_attempt() {
    let Some(cluster) = cluster(3) else {
        return;
    };
    let started = Instant::now();
    let servers = endpoints(&cluster);
    let ids: Vec<String> = (0..JOBS).map(|n| format!("c{n:03}")).collect();
    for (n, id) in ids.iter().enumerate() {
        servers[n % servers.len()].post_ok(
            "/api/v1/jobs",
            json!({"id": id, "type": "cluster"}),
            201,
        );
    }
    let ledger = Ledger::default();
    let give_up = Instant::now() + Duration::from_secs(90);
    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let (servers, ledger) = (&servers, &ledger);
            scope.spawn(move || worker(scope, w, servers, ledger, give_up));
        }
    });
    let worked = started.elapsed();

    let late = ledger.late.into_inner().unwrap();
    let died = ledger.died.into_inner().unwrap();
    // Every job completed exactly once, by the attempt whose complete was answered 200, and
    // every server says so.
    let completed = ledger.completed.into_inner().unwrap();
    let lost_alive = ledger.lost_alive.into_inner().unwrap();
    let mut rescues = 0;
    for id in &ids {
        let winners = completed.get(id).cloned().unwrap_or_default();
        assert_eq!(winners.len(), 1, "{id} completed by {winners:?}");
        let (worker, attempt) = &winners[0];
        for server in &servers {
            let job = wait_for(&format!("{id} completed on {}", server.base), 10, || {
                let (status, job) = server.get(&format!("/api/v1/jobs/{id}"));
                (status == 200 && job["status"] == "completed").then_some(job)
            });
            assert_eq!(job["result"]["worker"], worker.as_str(), "{job}");
            assert_eq!(job["attempt"], *attempt, "{job}");
        }

        // The history: attempts never decrease; nothing of attempt k after its
        // `lease_expired` row; one such row per lost attempt.
        let rows = history(&servers[0], id);
        let attempts: Vec<u64> = rows
            .iter()
            .map(|r| r["attempt"].as_u64().unwrap())
            .collect();
        assert!(
            attempts.windows(2).all(|w| w[0] <= w[1]),
            "{id}: attempts go back: {attempts:?}"
        );
        let mut expired = Vec::new();
        for (at, row) in rows.iter().enumerate() {
            if row["event"] == "lease_expired" {
                let k = row["attempt"].as_u64().unwrap();
                let after: Vec<&Value> = rows[at + 1..]
                    .iter()
                    .filter(|later| later["attempt"] == k)
                    .collect();
                assert!(
                    after.is_empty(),
                    "{id}: attempt {k} wrote after its lease expired: {after:?}"
                );
                expired.push(k);
            }
        }
        let lost: Vec<u64> = died
            .iter()
            .chain(&lost_alive)
            .filter(|(job, _)| job == id)
            .map(|(_, attempt)| *attempt)
            .collect();
        for k in &lost {
            assert!(
                expired.contains(k),
                "{id}: attempt {k} was abandoned but never rescued: {rows:?}"
            );
        }
        assert_eq!(
            expired.len() as u64,
            attempt - 1,
            "{id}: {} rescues before attempt {attempt} completed: {rows:?}",
            expired.len()
        );
        rescues += expired.len();
    }
    // Every late write of a lost attempt was refused as `lease_lost` (checked last, so a
    // failure here comes after everything above held: nothing of it landed).
    assert_eq!(late.len(), 3 * died.len(), "{late:?}");
    let accepted: Vec<_> = late
        .iter()
        .filter(|late| !(late.status == 409 && late.reply["error"]["code"] == "lease_lost"))
        .collect();
    eprintln!(
        "cluster: {JOBS} jobs, {WORKERS} workers on 3 servers: {} workers died mid-job, {} live \
         attempts lost their lease, {rescues} rescues, {} late writes of which {} refused; \
         worked in {:.1} s, checked in {:.1} s",
        died.len(),
        lost_alive.len(),
        late.len(),
        late.len() - accepted.len(),
        worked.as_secs_f64(),
        started.elapsed().as_secs_f64() - worked.as_secs_f64()
    );
    assert!(
        accepted.is_empty(),
        "late writes of lost attempts not refused with 409 lease_lost: {accepted:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SSE across servers

#[test]
fn subscribers_on_other_servers_follow_a_job_in_order_and_resume_on_any_server() {
    let Some(cluster) = cluster(3) else {
        return;
    };
    let [a, b, c] = [0, 1, 2].map(|i| cluster.server(i).endpoint.clone());
    a.post_ok(
        "/api/v1/jobs",
        json!({"id": "watched", "type": "watched"}),
        201,
    );
    let claimed = claim(&a, "watched", "feeder", 30);
    // The feeder's lease is kept alive apart from its events, whatever the waits take.
    let stop = Arc::new(AtomicBool::new(false));
    let beater = keep_alive(&a, &claimed, &stop);
    let on_b = Sse::open(&b, "watched", None);
    let on_c = Sse::open(&c, "watched", None);
    for sse in [&on_b, &on_c] {
        sse.wait("the running state", Duration::from_secs(10), |e| {
            e["status"] == "running"
        });
    }

    let steps: Vec<String> = (1..=10).map(|k| format!("phase-{k}")).collect();
    let events = "/api/v1/jobs/watched/events";
    let mut resumed = Vec::new();
    let mut delays_ms = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let progress = (k as f64 + 1.0) / 12.0;
        let durable = json!({"step": step, "progress": progress, "message": format!("step {k}")});
        let ack = a.post_ok(events, with_fence(durable, &claimed), 202);
        assert_eq!(ack["durable"], true, "{ack}");
        let sent = Instant::now();
        a.post_ok(
            events,
            with_fence(json!({"progress": progress + 0.02}), &claimed),
            202,
        );
        for sse in [&on_b, &on_c] {
            let seen = sse.wait(step, Duration::from_secs(5), |e| e["step"] == step.as_str());
            delays_ms.push(seen.at.saturating_duration_since(sent).as_millis());
        }
        if k == 4 {
            // Reconnects mid-run: to C with the newest id B sent, and to A (the oldest
            // server) with the newest id C sent.
            for (what, from, to) in [("C, with B's id", &on_b, &c), ("A, with C's id", &on_c, &a)] {
                let last = from.events().last().cloned().unwrap();
                resumed.push((what, Sse::open(to, "watched", Some(last.id)), last));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    beater.join().unwrap();
    a.post_ok(
        "/api/v1/jobs/watched/complete",
        with_fence(json!({"result": {"ok": true}}), &claimed),
        200,
    );

    for (what, sse) in [("B", &on_b), ("C", &on_c)] {
        let events = sse.wait_end(Duration::from_secs(10));
        check_stream(&format!("the stream on {what}"), &events, &steps);
    }
    let step_of = |event: &Event| {
        event.data["step"]
            .as_str()
            .and_then(|step| steps.iter().position(|s| s == step))
    };
    for (what, sse, from) in resumed {
        let events = sse.wait_end(Duration::from_secs(10));
        let what = format!("the stream resumed on {what} {}", from.id);
        check_stream(&what, &events, &steps);
        // It continues where the other server's stream was: no id at or below the one
        // given, no state older than the one it named.
        let back: Vec<u64> = ids(&events)
            .into_iter()
            .filter(|id| *id <= from.id)
            .collect();
        assert!(
            back.is_empty(),
            "{what}: ids {back:?} of {:?}",
            ids(&events)
        );
        let first = &events[0];
        assert!(
            first.data["progress"].as_f64() >= from.data["progress"].as_f64(),
            "{what}: went back from {} to {}",
            from.data,
            first.data
        );
        assert!(step_of(first) >= step_of(&from), "{what}: {}", first.data);
    }
    delays_ms.sort_unstable();
    eprintln!(
        "cluster SSE: a step posted through A reached the subscribers on B and C after \
         {delays_ms:?} ms"
    );
}

// ---------------------------------------------------------------------------------------------
// kill -9 of a server running children

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_jobs_of_a_sigkilled_server_are_rescued_and_completed_by_the_others() {
    let optimizer = root().join("examples").join("toy_optimizer.py");
    let config = format!(
        "{LEASES}max_concurrent_jobs = 2\n\
         [executors.toy]\ncommand = [\"python3\", \"{}\"]\nmax_concurrent = 2\n",
        optimizer.display()
    );
    let Some(mut cluster) = Cluster::start(Path::new(BINARY), 3, &config) else {
        return;
    };
    // Each server creates two (its own feed wakes its executor, which takes two at most).
    let ids: Vec<String> = (0..6).map(|n| format!("k{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        cluster.server(n % 3).post_ok(
            "/api/v1/jobs",
            json!({"id": id, "type": "toy",
                   "metadata": {"trials": 12, "trial_seconds": 0.25}}),
            201,
        );
    }
    let victim = 1;
    let doomed = wait_for("server 1 to run children that checkpointed", 60, || {
        let children = cluster.children(victim);
        let checkpointed = children.iter().all(|child| {
            let (_, job) = cluster
                .server(victim)
                .get(&format!("/api/v1/jobs/{}", child.job_id));
            job["checkpoint"]["trial"].as_u64().is_some_and(|t| t >= 1)
        });
        (!children.is_empty() && checkpointed).then_some(children)
    });
    cluster.kill(victim);
    for child in &doomed {
        wait_for(
            &format!("child {} of the killed server to be gone", child.pid),
            30,
            || process_gone(child.pid).then_some(()),
        );
    }
    let rescuers = wait_for("the killed server's jobs to run on the others", 60, || {
        let mut found = BTreeMap::new();
        for child in &doomed {
            let on = [0, 2]
                .into_iter()
                .find(|&i| cluster.children(i).iter().any(|c| c.job_id == child.job_id));
            found.insert(child.job_id.clone(), on?);
        }
        Some(found)
    });
    // A server started now (the killed one, again) leaves the others' running jobs alone: its
    // start-up (done before it listens) rescued nothing more.
    let fresh = cluster.restart(victim).endpoint.clone();
    for id in &ids {
        let expected = usize::from(doomed.iter().any(|child| &child.job_id == id));
        let rows = history(&fresh, id);
        let rescues = rows
            .iter()
            .filter(|r| r["event"] == "lease_expired")
            .count();
        assert_eq!(
            rescues, expected,
            "{id}: the restarted server's start-up took a job another live server runs: {rows:?}"
        );
    }

    let a = cluster.server(0).endpoint.clone();
    for id in &ids {
        let done = wait_for(&format!("{id} to complete"), 60, || {
            let (_, job) = a.get(&format!("/api/v1/jobs/{id}"));
            assert!(
                job["status"] == "running"
                    || job["status"] == "queued"
                    || job["status"] == "completed",
                "{job}"
            );
            (job["status"] == "completed").then_some(job)
        });
        let rows = history(&a, id);
        let rescues = rows
            .iter()
            .filter(|r| r["event"] == "lease_expired")
            .count();
        let attempts: Vec<u64> = rows.iter().filter_map(|r| r["attempt"].as_u64()).collect();
        assert!(
            attempts.windows(2).all(|w| w[0] <= w[1]),
            "{id}: {attempts:?}"
        );
        if doomed.iter().any(|child| &child.job_id == id) {
            assert_eq!(done["attempt"], 2, "{id}: {done}");
            assert_eq!(rescues, 1, "{id}: {rows:?}");
            assert!(
                done["result"]["resumed_from_trial"]
                    .as_u64()
                    .is_some_and(|t| t >= 1),
                "{id} did not resume from its checkpoint: {done}"
            );
        } else {
            assert_eq!(
                done["attempt"], 1,
                "{id} was taken from a live server: {done}"
            );
            assert_eq!(rescues, 0, "{id}: {rows:?}");
        }
    }
    eprintln!(
        "cluster kill: server {victim} ran {:?} when killed; rescued onto servers {rescuers:?}",
        doomed.iter().map(|c| &c.job_id).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL restart

/// Heartbeats every half second whatever the answers (as a worker does), until stopped.
fn keep_alive(
    server: &Endpoint,
    claimed: &Value,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let url = server.url(&format!(
        "/api/v1/jobs/{}/heartbeat",
        claimed["id"].as_str().unwrap()
    ));
    let body = fence(claimed);
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let agent = agent();
        while !stop.load(Ordering::SeqCst) {
            let _ = agent.post(&url).send_json(&body);
            // Pacing the beats (not waiting for a condition).
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// `POST path` until it is answered `ok` (a write retried through an outage); the answer.
fn retried(server: &Endpoint, path: &str, body: &Value, ok: u16, seconds: u64) -> Value {
    wait_for(
        &format!("POST {path} on {} to be {ok}", server.base),
        seconds,
        || {
            let (status, reply) = server.post(path, body.clone());
            assert!(
                status == ok || status == 503,
                "POST {path}: {status} {reply}"
            );
            (status == ok).then_some(reply)
        },
    )
}

fn assert_unavailable(reply: (u16, Value), what: &str) {
    let (status, body) = reply;
    assert_eq!(status, 503, "{what} during the outage: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{what}: {body}");
}

#[test]
fn a_postgresql_restart_loses_no_acknowledged_write_and_the_servers_recover_by_themselves() {
    let Some(postgres) = PostgresCluster::for_test() else {
        return;
    };
    let config = format!("{LEASES}busy_timeout_ms = 500\n[executors]\n");
    let cluster = Cluster::start_on(postgres.postgres(), Path::new(BINARY), 2, &config);
    let [a, b] = [0, 1].map(|i| cluster.server(i).endpoint.clone());

    // `p1` worked through A and `p2` through B, both kept alive; `done` finished and `waiting`
    // queued, both cached on both servers.
    for (server, id, job_type) in [
        (&a, "p1", "pg"),
        (&b, "p2", "pg"),
        (&a, "done", "old"),
        (&b, "waiting", "idle"),
    ] {
        server.post_ok("/api/v1/jobs", json!({"id": id, "type": job_type}), 201);
    }
    let done = claim(&a, "old", "finisher", 30);
    a.post_ok(
        "/api/v1/jobs/done/complete",
        with_fence(json!({"result": {"kept": true}}), &done),
        200,
    );
    let p1 = claim(&a, "pg", "worker-a", 30);
    let p2 = claim(&b, "pg", "worker-b", 30);
    let (p1_id, p2_id) = (p1["id"].as_str().unwrap(), p2["id"].as_str().unwrap());
    assert_eq!((p1_id, p2_id), ("p1", "p2"));
    let stop = Arc::new(AtomicBool::new(false));
    let beaters = [keep_alive(&a, &p1, &stop), keep_alive(&b, &p2, &stop)];
    for (server, claimed) in [(&a, &p1), (&b, &p2)] {
        let id = claimed["id"].as_str().unwrap();
        let body = json!({"step": "before", "progress": 0.2, "checkpoint": {"n": 1}});
        let ack = server.post_ok(
            &format!("/api/v1/jobs/{id}/events"),
            with_fence(body, claimed),
            202,
        );
        assert_eq!(ack["durable"], true, "{ack}");
    }
    let mut cached = Vec::new();
    for server in [&a, &b] {
        for path in ["/api/v1/jobs/done", "/api/v1/jobs/waiting"] {
            let etag = wait_for(&format!("{path} cached on {}", server.base), 10, || {
                let got = get(server, path, None);
                assert_eq!(got.status, 200, "{}", got.body);
                (got.cache.as_deref() == Some("HIT")).then_some(got.etag)
            })
            .expect("an etag");
            cached.push((server.clone(), path, etag));
        }
    }
    let stream_a = Sse::open(&a, "p1", None);
    let stream_b = Sse::open(&b, "p1", None);
    for sse in [&stream_a, &stream_b] {
        sse.wait("step `before`", Duration::from_secs(10), |e| {
            e["step"] == "before"
        });
    }
    // Each server hears the other's changes about a tick later, and each such change
    // invalidates what it cached of that job: the entries are settled once they stayed hits
    // for a while (nothing changes `done` or `waiting` any more).
    let mut settled_since: Option<Instant> = None;
    wait_for("the cached answers to settle", 10, || {
        let hits = cached
            .iter()
            .all(|(server, path, _)| get(server, path, None).cache.as_deref() == Some("HIT"));
        match (hits, settled_since) {
            (false, _) => settled_since = None,
            (true, None) => settled_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > Duration::from_millis(300) => {
                return Some(());
            }
            (true, Some(_)) => {}
        }
        None
    });

    postgres.stop().unwrap();
    let outage = Instant::now();
    // Writes are refused as storage faults: not saved, retry.
    assert_unavailable(
        a.post("/api/v1/jobs", json!({"id": "during-a", "type": "pg"})),
        "a create on A",
    );
    assert_unavailable(
        b.post("/api/v1/jobs", json!({"id": "during-b", "type": "pg"})),
        "a create on B",
    );
    let during = json!({"step": "during", "progress": 0.5});
    assert_unavailable(
        b.post("/api/v1/jobs/p2/events", with_fence(during, &p2)),
        "a step change on B",
    );
    assert_unavailable(
        a.post(
            "/api/v1/jobs/p1/complete",
            with_fence(json!({"result": {"too": "early"}}), &p1),
        ),
        "a complete on A",
    );
    // Coalesced progress is held in memory and streamed at once.
    let held = a.post_ok(
        "/api/v1/jobs/p1/events",
        with_fence(
            json!({"progress": 0.6, "message": "during the outage"}),
            &p1,
        ),
        202,
    );
    assert_eq!(held["durable"], false, "{held}");
    stream_a.wait(
        "the progress made during the outage",
        Duration::from_secs(5),
        |e| e["progress"] == 0.6,
    );
    // Cached reads keep working, conditional ones too; so do health checks.
    for (server, path, etag) in &cached {
        let got = get(server, path, None);
        assert_eq!(
            (got.status, got.cache.as_deref()),
            (200, Some("HIT")),
            "{path} on {}: {}",
            server.base,
            got.body
        );
        let got = get(server, path, Some(etag));
        assert_eq!(got.status, 304, "{path} on {}: {}", server.base, got.body);
    }
    for server in [&a, &b] {
        assert_eq!(server.get("/healthz").0, 200);
    }
    // Longer than a lease: every lease has run out by the database's clock.
    wait_for("the outage to outlast a lease", 30, || {
        (outage.elapsed() > Duration::from_millis(2500)).then_some(())
    });
    assert!(
        !stream_a.ended.load(Ordering::SeqCst),
        "the stream on A ended in the outage"
    );
    assert!(
        !stream_b.ended.load(Ordering::SeqCst),
        "the stream on B ended in the outage"
    );

    postgres.start_again().unwrap();
    let restarted = Instant::now();
    // Writes work again without a restart, on both servers.
    retried(
        &a,
        "/api/v1/jobs",
        &json!({"id": "after-a", "type": "pg"}),
        201,
        30,
    );
    retried(
        &b,
        "/api/v1/jobs",
        &json!({"id": "after-b", "type": "pg"}),
        201,
        30,
    );
    let recovered = restarted.elapsed();
    let during = with_fence(json!({"step": "during", "progress": 0.5}), &p2);
    retried(&b, "/api/v1/jobs/p2/events", &during, 202, 30);
    // The progress held through the outage reaches the database.
    wait_for("p1's held progress to be written", 30, || {
        let (_, job) = a.get("/api/v1/jobs/p1");
        (job["progress"]["progress"] == 0.6).then_some(())
    });
    // The leases survived (the sweep waits a lease after an outage), and the jobs complete.
    retried(
        &a,
        "/api/v1/jobs/p1/complete",
        &with_fence(json!({"result": {"by": "a"}}), &p1),
        200,
        30,
    );
    retried(
        &b,
        "/api/v1/jobs/p2/complete",
        &with_fence(json!({"result": {"by": "b"}}), &p2),
        200,
        30,
    );
    stop.store(true, Ordering::SeqCst);
    for beater in beaters {
        beater.join().unwrap();
    }
    // New work flows: a job created after the restart is claimed on one server and completed
    // on the other.
    let next = claim(&b, "pg", "worker-c", 30);
    assert!(next["id"] == "after-a" || next["id"] == "after-b", "{next}");
    let next_id = next["id"].as_str().unwrap();
    a.post_ok(
        &format!("/api/v1/jobs/{next_id}/complete"),
        with_fence(json!({"result": {}}), &next),
        200,
    );

    // Nothing acknowledged was lost, on either server's view.
    for server in [&a, &b] {
        for (id, by) in [("p1", "a"), ("p2", "b")] {
            let job = wait_for(&format!("{id} completed on {}", server.base), 10, || {
                let (_, job) = server.get(&format!("/api/v1/jobs/{id}"));
                (job["status"] == "completed").then_some(job)
            });
            assert_eq!(job["result"]["by"], by, "{job}");
            assert_eq!(job["attempt"], 1, "{id} was rescued: {job}");
            assert_eq!(job["checkpoint"], json!({"n": 1}), "{job}");
            let rows = history(server, id);
            assert!(rows.iter().any(|r| r["step"] == "before"), "{id}: {rows:?}");
            assert!(
                rows.iter().all(|r| r["event"] != "lease_expired"),
                "{id}: {rows:?}"
            );
        }
        assert!(history(server, "p2").iter().any(|r| r["step"] == "during"));
        let (_, done) = server.get("/api/v1/jobs/done");
        assert_eq!(done["result"], json!({"kept": true}), "{done}");
    }
    // Both streams lived through it and saw the end.
    for (what, sse) in [("A", &stream_a), ("B", &stream_b)] {
        let events = sse.wait_end(Duration::from_secs(10));
        let last = &events.last().unwrap().data;
        assert_eq!(last["status"], "completed", "the stream on {what}: {last}");
    }
    eprintln!(
        "cluster PostgreSQL restart: outage {:.1} s; writes accepted again {:.2} s after \
         PostgreSQL was back",
        (restarted - outage).as_secs_f64(),
        recovered.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Caches across servers

#[test]
fn a_cached_get_on_one_server_shows_a_change_committed_through_another_within_a_tick() {
    // Leases long enough that nothing but the test's writes changes the job.
    let Some(cluster) = cluster_with(2, "lease_ttl_seconds = 60.0\n") else {
        return;
    };
    let [a, b] = [0, 1].map(|i| cluster.server(i).endpoint.clone());
    a.post_ok(
        "/api/v1/jobs",
        json!({"id": "cached", "type": "cache"}),
        201,
    );
    let claimed = claim(&a, "cache", "w", 30);
    let path = "/api/v1/jobs/cached";
    let mut delays = Vec::new();
    for round in 0..6 {
        // B holds the job in its cache.
        let etag = wait_for("the job cached on B", 10, || {
            let got = get(&b, path, None);
            assert_eq!(got.status, 200, "{}", got.body);
            (got.cache.as_deref() == Some("HIT")).then_some(got.etag)
        })
        .expect("an etag");
        let before = get(&b, path, None).body;
        // A change through A: a step change (durable) on even rounds, coalesced progress
        // (written at A's next flush) on odd ones.
        let step = format!("round-{round}");
        let change = if round % 2 == 0 {
            json!({"step": step, "progress": 0.1 * f64::from(round)})
        } else {
            json!({"progress": 0.1 * f64::from(round), "message": step})
        };
        a.post_ok(
            "/api/v1/jobs/cached/events",
            with_fence(change, &claimed),
            202,
        );
        let changed = Instant::now();
        let shows = |body: &Value| {
            body["progress"]["step"] == step.as_str()
                || body["progress"]["message"] == step.as_str()
        };
        // Revalidation (If-None-Match) on rounds 0, 1, 4, 5; a plain GET on rounds 2, 3.
        let conditional = round / 2 != 1;
        let got = wait_until(
            &format!("B to show round {round} (conditional: {conditional})"),
            Duration::from_secs(2),
            || {
                let got = get(&b, path, conditional.then_some(etag.as_str()));
                match got.status {
                    304 => None,
                    200 if shows(&got.body) => Some(got),
                    200 => {
                        assert_eq!(got.body["version"], before["version"], "{}", got.body);
                        None
                    }
                    other => panic!("{other}: {}", got.body),
                }
            },
        );
        delays.push(changed.elapsed().as_millis());
        assert_ne!(got.etag.as_deref(), Some(etag.as_str()));
    }
    // A list cached on B shows a job created through A.
    let list = "/api/v1/jobs?type=cache&limit=10";
    let etag = wait_for("the list cached on B", 10, || {
        let got = get(&b, list, None);
        (got.cache.as_deref() == Some("HIT")).then_some(got.etag)
    })
    .expect("an etag");
    a.post_ok(
        "/api/v1/jobs",
        json!({"id": "cached-2", "type": "cache"}),
        201,
    );
    let created = Instant::now();
    wait_until(
        "B's list to show the job created on A",
        Duration::from_secs(2),
        || {
            let got = get(&b, list, Some(&etag));
            let jobs = got.body["jobs"].as_array().cloned().unwrap_or_default();
            (got.status == 200 && jobs.iter().any(|j| j["id"] == "cached-2")).then_some(())
        },
    );
    delays.push(created.elapsed().as_millis());
    eprintln!(
        "cluster cache: B showed A's change after {delays:?} ms (durable, coalesced, plain GET, \
         If-None-Match; the last a list)"
    );
}
