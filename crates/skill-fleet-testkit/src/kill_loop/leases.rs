//! The kill loop's external workers, and what their jobs' histories must show.
//!
//! Each round a few worker threads claim jobs of [`LEASE_TYPE`] (a type the server does not
//! run), post fenced events (every `message` a marker naming the job, the attempt, the worker
//! and the event), heartbeat and complete or fail. At random a worker *dies* (stops
//! heartbeating and writing without a word, so the lease expires and the rescue sweep takes
//! the job back) or *stalls* past its lease and then keeps going as if nothing happened, so its
//! writes must get 409 `lease_lost` and land nowhere. An attempt interrupted by the SIGKILL is
//! carried over to the next round's workers, which resume it against the restarted server
//! (resending the write that got no answer, as a real worker riding out a restart does).
//!
//! What is checked, from each job's history rows and final state ([`check`]):
//! - one attempt at a time: the rows' `attempt` values, in `seq` order, never decrease; after a
//!   `lease_expired` row of attempt k only later attempts write; a row never carries the
//!   marker of a newer attempt than its own, and a progress row carries its own attempt's;
//! - acknowledged writes are there: every event answered `durable: true` has its row (with
//!   its attempt), and a coalesced one is missing only if a later write of its attempt or a
//!   kill came within [`COALESCE_GRACE`] of its 202;
//! - refused writes are not: a marker every send of which got a 4xx is in no row;
//! - a job some attempt completed (200) is completed with that attempt's result and attempt,
//!   one failed (200) is failed with its error, and no two attempts ended the same job;
//! - no claim hands out an attempt number twice, and no answer is a 5xx other than 503.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::lock;
use crate::http::{try_get, try_post, unpooled_agent};
use crate::rng::Rng;

/// The type of the lease workers' jobs: no executor runs it, and the server is told it is
/// resumable, so a rescued job goes back to the queue for another attempt.
pub(super) const LEASE_TYPE: &str = "soak_lease";

/// How long after its 202 a coalesced event may still be superseded by the next write of its
/// attempt or lost to a kill (the flush runs every 100 ms; ten of those is generous).
pub const COALESCE_GRACE: Duration = Duration::from_secs(1);

/// Most history rows quoted in a problem.
const ROWS_SHOWN: usize = 40;

/// The external workers and the leases the server is started with.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Worker threads per round (0: none, the loop as it was before leases).
    pub workers: usize,
    /// `--lease-ttl-seconds`.
    pub ttl: Duration,
    /// `--heartbeat-interval-seconds`; the workers heartbeat this often.
    pub heartbeat: Duration,
    /// `--rescue-interval-seconds`.
    pub rescue: Duration,
}

impl Default for LeaseSettings {
    /// Three workers; a 1 s lease renewed every 0.2 s, swept every 0.2 s.
    fn default() -> LeaseSettings {
        LeaseSettings {
            workers: 3,
            ttl: Duration::from_secs(1),
            heartbeat: Duration::from_millis(200),
            rescue: Duration::from_millis(200),
        }
    }
}

impl LeaseSettings {
    /// How long a stalling worker stays silent: past its lease and two sweeps.
    fn stall(&self) -> Duration {
        self.ttl + self.rescue * 2 + Duration::from_millis(100)
    }
}

/// What the lease workers did, in one round or the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Jobs created (when a claim found nothing queued).
    pub created: usize,
    /// Claims answered with a job.
    pub claims: usize,
    /// Attempts carried over a kill and resumed against the restarted server.
    pub resumed: usize,
    /// Heartbeats answered 200.
    pub heartbeats: usize,
    /// Fenced events answered 202.
    pub events: usize,
    /// Completes answered 200.
    pub completed: usize,
    /// Fails answered 200.
    pub failed: usize,
    /// Attempts abandoned without a word.
    pub died: usize,
    /// Attempts that went silent past their lease and then kept writing.
    pub stalled: usize,
    /// Answers 409 `lease_lost`.
    pub lease_lost: usize,
    /// Answers 409 `invalid_transition`: an event of an attempt on a job that is no longer
    /// running (a newer attempt ended it); refused without a word about the lease.
    pub ended: usize,
    /// Other refusals (4xx).
    pub refused_other: usize,
    /// Answers 503 (the database was busy; the write is retried).
    pub unavailable: usize,
}

impl LeaseCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &LeaseCounts) {
        self.created += other.created;
        self.claims += other.claims;
        self.resumed += other.resumed;
        self.heartbeats += other.heartbeats;
        self.events += other.events;
        self.completed += other.completed;
        self.failed += other.failed;
        self.died += other.died;
        self.stalled += other.stalled;
        self.lease_lost += other.lease_lost;
        self.ended += other.ended;
        self.refused_other += other.refused_other;
        self.unavailable += other.unavailable;
    }
}

/// What the server answered to one write.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 2xx; for an event, whether the answer said `durable`.
    Acked { durable: bool },
    /// 4xx, with the error code.
    Refused { status: u16, code: String },
    /// No answer (the server was killed) or a 5xx: it may or may not have landed.
    Unanswered,
}

/// One write of an attempt, as sent and answered.
#[derive(Debug, Clone)]
struct Sent {
    /// The event's `message`, or `complete` / `fail`.
    marker: String,
    outcome: Outcome,
    at: Instant,
}

/// Everything one attempt sent.
#[derive(Debug, Clone, Default)]
struct AttemptLog {
    worker: String,
    sent: Vec<Sent>,
    /// The result of a complete answered 200.
    completed: Option<Value>,
    /// The results of completes that got no answer.
    completes_unanswered: Vec<Value>,
    /// The error of a fail answered 200.
    failed: Option<String>,
    fails_unanswered: Vec<String>,
}

/// Every attempt of every lease job.
type Ledger = BTreeMap<String, BTreeMap<u32, AttemptLog>>;

/// What the lease workers share across threads and rounds.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: LeaseSettings,
    ledger: Mutex<Ledger>,
    counts: Mutex<LeaseCounts>,
    carried: Mutex<Vec<Attempt>>,
    problems: Mutex<Vec<String>>,
    kills: Mutex<Vec<Instant>>,
}

impl Shared {
    pub(super) fn new(settings: LeaseSettings) -> Shared {
        Shared {
            settings,
            ledger: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(LeaseCounts::default()),
            carried: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
            kills: Mutex::new(Vec::new()),
        }
    }

    /// The server was SIGKILLed now.
    pub(super) fn killed(&self) {
        lock(&self.kills).push(Instant::now());
    }

    /// The round's counts, reset for the next one.
    pub(super) fn take_counts(&self) -> LeaseCounts {
        std::mem::take(&mut *lock(&self.counts))
    }

    /// Problems the workers saw as they happened (5xx answers, a reused attempt number).
    pub(super) fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.problems))
    }

    /// Lease jobs so far.
    pub(super) fn jobs(&self) -> usize {
        lock(&self.ledger).len()
    }

    fn count(&self, change: impl FnOnce(&mut LeaseCounts)) {
        change(&mut lock(&self.counts));
    }

    fn problem(&self, text: String) {
        lock(&self.problems).push(text);
    }

    fn log(&self, job: &str, attempt: u32, change: impl FnOnce(&mut AttemptLog)) {
        let mut ledger = lock(&self.ledger);
        let log = ledger
            .entry(job.to_owned())
            .or_default()
            .entry(attempt)
            .or_default();
        change(log);
    }
}

/// One step of an attempt's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Event {
        n: usize,
        step: bool,
        checkpoint: bool,
    },
    /// Silent past the lease, then on with the plan.
    Stall,
    /// Silent for good.
    Die,
    Complete,
    Fail,
}

/// A claim being worked on; moves to the next round's workers when a kill interrupts it.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    job: String,
    attempt: u32,
    token: String,
    worker: String,
    ops: Vec<Op>,
    /// The next op to send: advanced only once the server answered it.
    next: usize,
    events: usize,
    /// Keeps writing after a refusal (a stalled worker that does not know it was replaced).
    zombie: bool,
    last_heartbeat: Instant,
}

impl Attempt {
    fn fence(&self) -> Value {
        json!({"attempt": self.attempt, "lease_token": self.token})
    }

    fn marker(&self, n: usize) -> String {
        format!("{} a{} {} e{n}", self.job, self.attempt, self.worker)
    }
}

/// The attempt number in a marker written for `job` (`{job} a{k} …`), if it is one.
fn marker_attempt(job: &str, message: &str) -> Option<u32> {
    let rest = message.strip_prefix(job)?.strip_prefix(" a")?;
    rest.split(' ').next()?.parse().ok()
}

/// What became of one request.
enum Answer {
    Ok(Value),
    /// 409 `lease_lost`.
    Lost,
    /// Another 4xx.
    Refused(u16, String),
    /// 503: try again.
    Busy,
    /// A 5xx other than 503 (reported as a problem).
    Broken,
    /// No answer.
    Gone,
}

/// One external worker for one round.
pub(super) struct LeaseWorker {
    pub(super) base: String,
    pub(super) round: u32,
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) random: Rng,
}

impl LeaseWorker {
    pub(super) fn run(mut self) {
        let agent = unpooled_agent();
        let mut claims = 0;
        while !self.stopped() {
            let carried = lock(&self.shared.carried).pop();
            let attempt = match carried {
                Some(attempt) => {
                    self.shared.count(|c| c.resumed += 1);
                    attempt
                }
                None => {
                    claims += 1;
                    match self.claim(&agent, claims) {
                        Some(Some(attempt)) => attempt,
                        Some(None) => continue,
                        None => break,
                    }
                }
            };
            if let Some(interrupted) = self.drive(&agent, attempt) {
                lock(&self.shared.carried).push(interrupted);
                break;
            }
        }
        // The server is gone or the round is over: wait for the round to end.
        while !self.stopped() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn post(&self, agent: &ureq::Agent, path: &str, body: &Value) -> Answer {
        let url = format!("{}{path}", self.base);
        match try_post(agent, &url, body) {
            Ok((status, value)) if (200..300).contains(&status) => Answer::Ok(value),
            Ok((409, value)) if value["error"]["code"] == json!("lease_lost") => {
                self.shared.count(|c| c.lease_lost += 1);
                Answer::Lost
            }
            Ok((503, _)) => {
                self.shared.count(|c| c.unavailable += 1);
                Answer::Busy
            }
            Ok((status, value)) if status >= 500 => {
                self.shared.problem(format!(
                    "POST {path} {body} answered {status}: {value} (a server error)"
                ));
                Answer::Broken
            }
            Ok((status, value)) => {
                let code = value["error"]["code"].as_str().unwrap_or("").to_owned();
                if status == 409 && code == "invalid_transition" {
                    self.shared.count(|c| c.ended += 1);
                } else {
                    self.shared.count(|c| c.refused_other += 1);
                }
                Answer::Refused(status, code)
            }
            Err(_) => Answer::Gone,
        }
    }

    /// A claimed attempt; `Some(None)` when nothing was queued (a job was created instead);
    /// `None` once the server stops answering.
    fn claim(&mut self, agent: &ureq::Agent, n: usize) -> Option<Option<Attempt>> {
        let worker = format!("r{}-l{}-c{n}", self.round, self.index);
        let body = json!({"types": [LEASE_TYPE], "worker": worker});
        let claimed = match self.post(agent, "/api/v1/jobs/claim", &body) {
            Answer::Ok(Value::Null) => {
                let id = format!("r{}-l{}-{n}", self.round, self.index);
                let job = json!({"id": id, "type": LEASE_TYPE});
                return match self.post(agent, "/api/v1/jobs", &job) {
                    Answer::Ok(_) => {
                        self.shared.count(|c| c.created += 1);
                        Some(None)
                    }
                    Answer::Gone => None,
                    _ => Some(None),
                };
            }
            Answer::Ok(claimed) => claimed,
            Answer::Gone => return None,
            Answer::Busy | Answer::Lost | Answer::Refused(..) | Answer::Broken => {
                std::thread::sleep(Duration::from_millis(20));
                return Some(None);
            }
        };
        let (Some(job), Some(attempt), Some(token)) = (
            claimed["id"].as_str(),
            claimed["attempt"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok()),
            claimed["lease_token"].as_str(),
        ) else {
            self.shared.problem(format!(
                "a claim answered 200 without id, attempt or lease_token: {claimed}"
            ));
            return Some(None);
        };
        self.shared.count(|c| c.claims += 1);
        let mut reused = false;
        {
            let mut ledger = lock(&self.shared.ledger);
            let attempts = ledger.entry(job.to_owned()).or_default();
            if let Some(earlier) = attempts.get(&attempt) {
                reused = true;
                let earlier = earlier.worker.clone();
                drop(ledger);
                self.shared.problem(format!(
                    "job {job}: attempt {attempt} was handed to {worker} after {earlier} had it \
                     (a claim must start a new attempt)"
                ));
            } else {
                attempts.insert(
                    attempt,
                    AttemptLog {
                        worker: worker.clone(),
                        ..AttemptLog::default()
                    },
                );
            }
        }
        if reused {
            return Some(None);
        }
        Some(Some(self.plan(job, attempt, token, worker)))
    }

    /// A random plan: a few events, then complete (mostly) or fail; one in five dies on the
    /// way, one in five stalls past its lease and keeps going.
    fn plan(&mut self, job: &str, attempt: u32, token: &str, worker: String) -> Attempt {
        let events = 2 + self.random.below(6);
        let mut ops: Vec<Op> = (0..events)
            .map(|n| Op::Event {
                n,
                step: n == 0 || self.random.below(3) == 0,
                checkpoint: self.random.below(4) == 0,
            })
            .collect();
        ops.push(if self.random.chance(85) {
            Op::Complete
        } else {
            Op::Fail
        });
        let fate = self.random.below(5);
        let zombie = fate == 1;
        match fate {
            0 => ops.insert(self.random.below(events + 1), Op::Die),
            1 => ops.insert(1 + self.random.below(events), Op::Stall),
            _ => {}
        }
        Attempt {
            job: job.to_owned(),
            attempt,
            token: token.to_owned(),
            worker,
            ops,
            next: 0,
            events,
            zombie,
            last_heartbeat: Instant::now(),
        }
    }

    /// Works through the attempt's plan; the attempt back when a kill interrupted it.
    fn drive(&mut self, agent: &ureq::Agent, mut a: Attempt) -> Option<Attempt> {
        let settings = self.shared.settings.clone();
        while let Some(op) = a.ops.get(a.next).copied() {
            if self.stopped() {
                return Some(a);
            }
            if matches!(op, Op::Event { .. }) && a.last_heartbeat.elapsed() >= settings.heartbeat {
                let path = format!("/api/v1/jobs/{}/heartbeat", a.job);
                match self.post(agent, &path, &a.fence()) {
                    Answer::Ok(ack) => {
                        a.last_heartbeat = Instant::now();
                        self.shared.count(|c| c.heartbeats += 1);
                        if ack["stop"] == json!(true) && !a.zombie {
                            return None;
                        }
                    }
                    Answer::Gone => return Some(a),
                    Answer::Busy => {}
                    Answer::Lost | Answer::Refused(..) | Answer::Broken => {
                        a.last_heartbeat = Instant::now();
                        if !a.zombie {
                            return None;
                        }
                    }
                }
            }
            match op {
                Op::Die => {
                    self.shared.count(|c| c.died += 1);
                    return None;
                }
                Op::Stall => {
                    self.shared.count(|c| c.stalled += 1);
                    a.next += 1;
                    let until = Instant::now() + settings.stall();
                    while Instant::now() < until {
                        if self.stopped() {
                            return Some(a);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    // Half of them write straight away, as a process back from a pause does,
                    // so that a write (not only a heartbeat) races the sweep.
                    if self.random.chance(50) {
                        a.last_heartbeat = Instant::now();
                    }
                    continue;
                }
                Op::Event { .. } | Op::Complete | Op::Fail => {}
            }
            let (path, body, marker) = self.request(&a, op);
            let answer = self.post(agent, &path, &body);
            let outcome = match &answer {
                Answer::Ok(ack) => Outcome::Acked {
                    durable: ack["durable"] == json!(true),
                },
                Answer::Lost => Outcome::Refused {
                    status: 409,
                    code: "lease_lost".to_owned(),
                },
                Answer::Refused(status, code) => Outcome::Refused {
                    status: *status,
                    code: code.clone(),
                },
                Answer::Busy | Answer::Broken | Answer::Gone => Outcome::Unanswered,
            };
            let acked = matches!(outcome, Outcome::Acked { .. });
            let unanswered = outcome == Outcome::Unanswered;
            self.shared.log(&a.job, a.attempt, |log| {
                log.sent.push(Sent {
                    marker,
                    outcome,
                    at: Instant::now(),
                });
                match op {
                    Op::Complete if acked => log.completed = Some(body["result"].clone()),
                    Op::Complete if unanswered => {
                        log.completes_unanswered.push(body["result"].clone());
                    }
                    Op::Fail if acked => log.failed = body["error"].as_str().map(str::to_owned),
                    Op::Fail if unanswered => {
                        log.fails_unanswered
                            .push(body["error"].as_str().unwrap_or("").to_owned());
                    }
                    _ => {}
                }
            });
            match answer {
                Answer::Ok(_) => {
                    self.shared.count(|c| match op {
                        Op::Complete => c.completed += 1,
                        Op::Fail => c.failed += 1,
                        _ => c.events += 1,
                    });
                    a.next += 1;
                }
                Answer::Gone => return Some(a),
                Answer::Busy => std::thread::sleep(Duration::from_millis(20)),
                Answer::Broken => return None,
                Answer::Lost | Answer::Refused(..) => {
                    if !a.zombie {
                        return None;
                    }
                    a.next += 1;
                }
            }
            // Work between writes: an attempt lasts a few heartbeat intervals.
            std::thread::sleep(Duration::from_millis(30 + self.random.below(120) as u64));
        }
        None
    }

    /// The path, body and marker of one write.
    fn request(&self, a: &Attempt, op: Op) -> (String, Value, String) {
        let mut body = a.fence();
        match op {
            Op::Event {
                n,
                step,
                checkpoint,
            } => {
                let marker = a.marker(n);
                body["progress"] = json!((n + 1) as f64 / (a.events + 2) as f64);
                body["message"] = json!(marker);
                if step {
                    body["step"] = json!(format!("a{}-s{n}", a.attempt));
                }
                if checkpoint {
                    body["checkpoint"] = json!({"attempt": a.attempt, "n": n});
                }
                (format!("/api/v1/jobs/{}/events", a.job), body, marker)
            }
            Op::Fail => {
                body["error"] = json!(format!("{} gave up on attempt {}", a.worker, a.attempt));
                (
                    format!("/api/v1/jobs/{}/fail", a.job),
                    body,
                    "fail".to_owned(),
                )
            }
            Op::Complete | Op::Stall | Op::Die => {
                body["result"] = json!({"job": a.job, "attempt": a.attempt, "worker": a.worker});
                (
                    format!("/api/v1/jobs/{}/complete", a.job),
                    body,
                    "complete".to_owned(),
                )
            }
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub(super) problems: Vec<String>,
    /// `lease_expired` rows over all lease jobs.
    pub(super) rescues: usize,
    /// Jobs completed, failed, queued and running.
    pub(super) completed: usize,
    pub(super) failed: usize,
    pub(super) queued: usize,
    pub(super) running: usize,
}

/// A history row, as far as the checks need it.
#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    attempt: Option<u32>,
    event: Option<String>,
    message: Option<String>,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attempt = self
            .attempt
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        write!(f, "seq {} attempt {attempt}", self.seq)?;
        if let Some(event) = &self.event {
            write!(f, " [{event}]")?;
        }
        write!(f, ": {}", self.message.as_deref().unwrap_or(""))
    }
}

fn rows_text(rows: &[Row]) -> String {
    let shown: Vec<String> = rows
        .iter()
        .rev()
        .take(ROWS_SHOWN)
        .rev()
        .map(|row| format!("\n    {row}"))
        .collect();
    let skipped = rows.len().saturating_sub(ROWS_SHOWN);
    if skipped > 0 {
        format!("\n    ({skipped} earlier rows){}", shown.concat())
    } else {
        shown.concat()
    }
}

/// The whole history of `id`, or why it could not be read.
fn history(agent: &ureq::Agent, base: &str, id: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/api/v1/jobs/{id}/progress?after={after}&limit=1000");
        let page = match try_get(agent, &url) {
            Ok((200, page)) => page,
            Ok((status, body)) => return Err(format!("GET {url} answered {status}: {body}")),
            Err(err) => return Err(format!("GET {url} failed: {err}")),
        };
        for record in page["records"].as_array().into_iter().flatten() {
            rows.push(Row {
                seq: record["seq"].as_i64().unwrap_or(0),
                attempt: record["attempt"]
                    .as_u64()
                    .and_then(|a| u32::try_from(a).ok()),
                event: record["event"].as_str().map(str::to_owned),
                message: record["message"].as_str().map(str::to_owned),
            });
        }
        match page["next_after"].as_i64() {
            Some(next) if next > after => after = next,
            _ => return Ok(rows),
        }
    }
}

/// Every lease job against the server at `base`; with `settled`, nothing may be running.
pub(super) fn check(base: &str, shared: &Shared, settled: bool) -> Checked {
    let agent = unpooled_agent();
    let ledger = lock(&shared.ledger).clone();
    let kills = lock(&shared.kills).clone();
    let mut checked = Checked::default();
    for (id, attempts) in &ledger {
        let job = match try_get(&agent, &format!("{base}/api/v1/jobs/{id}")) {
            Ok((200, job)) => job,
            Ok((status, body)) => {
                checked
                    .problems
                    .push(format!("lease job {id}: GET answered {status}: {body}"));
                continue;
            }
            Err(err) => {
                checked
                    .problems
                    .push(format!("lease job {id}: GET failed: {err}"));
                continue;
            }
        };
        let rows = match history(&agent, base, id) {
            Ok(rows) => rows,
            Err(err) => {
                checked.problems.push(format!("lease job {id}: {err}"));
                continue;
            }
        };
        let found = check_job(id, &job, &rows, attempts, &kills, settled);
        checked.rescues += rows
            .iter()
            .filter(|row| row.event.as_deref() == Some("lease_expired"))
            .count();
        match job["status"].as_str().unwrap_or("") {
            "completed" => checked.completed += 1,
            "failed" => checked.failed += 1,
            "queued" => checked.queued += 1,
            "running" => checked.running += 1,
            _ => {}
        }
        if !found.is_empty() {
            let summary = format!(
                "job status {}, attempt {}, result {}, error {}",
                job["status"], job["attempt"], job["result"], job["error"]
            );
            for problem in found {
                checked.problems.push(format!(
                    "lease job {id}: {problem}\n  {summary}; history:{}",
                    rows_text(&rows)
                ));
            }
        }
    }
    checked
}

/// The problems of one job: its state `job`, its history `rows`, what its attempts sent.
fn check_job(
    id: &str,
    job: &Value,
    rows: &[Row],
    attempts: &BTreeMap<u32, AttemptLog>,
    kills: &[Instant],
    settled: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let status = job["status"].as_str().unwrap_or("");
    let terminal = ["completed", "failed", "cancelled"].contains(&status);
    if settled && status == "running" {
        problems.push("still running after every lease had time to expire".to_owned());
    }
    if status == "running" {
        let owner = job["lease"]["owner"].as_str().unwrap_or("");
        if owner.is_empty() || owner.starts_with("server:") {
            problems.push(format!(
                "running without a worker's lease (owner `{owner}`) after a restart"
            ));
        }
    }

    // One attempt at a time.
    let mut highest = 0;
    let mut expired: Option<u32> = None;
    for (index, row) in rows.iter().enumerate() {
        let last = index + 1 == rows.len();
        let Some(attempt) = row.attempt else {
            problems.push(format!("row {} carries no attempt", row.seq));
            continue;
        };
        if attempt < highest {
            problems.push(format!(
                "row {} was written by attempt {attempt} after attempt {highest} had written \
                 (two attempts wrote at once)",
                row.seq
            ));
        }
        highest = highest.max(attempt);
        if let Some(gone) = expired
            && attempt <= gone
            && !(last && status == "failed")
        {
            problems.push(format!(
                "row {} was written by attempt {attempt} after attempt {gone}'s lease expired",
                row.seq
            ));
        }
        if row.event.as_deref() == Some("lease_expired") {
            expired = Some(expired.map_or(attempt, |gone| gone.max(attempt)));
            continue;
        }
        if let Some(marked) = row.message.as_deref().and_then(|m| marker_attempt(id, m)) {
            if marked > attempt {
                problems.push(format!(
                    "row {} is attributed to attempt {attempt} but carries attempt {marked}'s \
                     write",
                    row.seq
                ));
            } else if marked < attempt && !(last && terminal) {
                problems.push(format!(
                    "row {} of attempt {attempt} carries attempt {marked}'s message (an old \
                     attempt's write landed under a newer one)",
                    row.seq
                ));
            }
        }
    }

    // Acknowledged writes are there; refused ones are not.
    let present: BTreeSet<(u32, &str)> = rows
        .iter()
        .filter_map(|row| Some((row.attempt?, row.message.as_deref()?)))
        .collect();
    let anywhere: BTreeSet<&str> = rows.iter().filter_map(|r| r.message.as_deref()).collect();
    for (&attempt, log) in attempts {
        let events: Vec<&Sent> = log
            .sent
            .iter()
            .filter(|s| s.marker != "complete" && s.marker != "fail")
            .collect();
        let mut markers: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
        for sent in &events {
            markers.entry(sent.marker.as_str()).or_default().push(sent);
        }
        for (marker, sends) in &markers {
            let here = present.contains(&(attempt, *marker));
            if sends
                .iter()
                .all(|s| matches!(s.outcome, Outcome::Refused { .. }))
                && anywhere.contains(marker)
            {
                let answers: Vec<String> = sends
                    .iter()
                    .map(|s| match &s.outcome {
                        Outcome::Refused { status, code } => format!("{status} {code}"),
                        other => format!("{other:?}"),
                    })
                    .collect();
                problems.push(format!(
                    "`{marker}` was refused ({}) yet is in the history (a refused write landed)",
                    answers.join(", ")
                ));
            }
            if here {
                continue;
            }
            for sent in sends {
                match sent.outcome {
                    Outcome::Acked { durable: true } => problems.push(format!(
                        "`{marker}` was acknowledged durable (202) but attempt {attempt} has no \
                         row with it (a lost durable write)"
                    )),
                    Outcome::Acked { durable: false } => {
                        let grace = sent.at + COALESCE_GRACE;
                        let superseded = log.sent.iter().any(|later| {
                            later.at > sent.at
                                && later.at <= grace
                                && matches!(later.outcome, Outcome::Acked { .. })
                        });
                        let killed = kills.iter().any(|&k| k >= sent.at && k <= grace);
                        if !superseded && !killed {
                            let after: Vec<String> = log
                                .sent
                                .iter()
                                .filter(|later| later.at > sent.at)
                                .map(|later| {
                                    format!(
                                        "{} → {:?} {} ms later",
                                        later.marker,
                                        later.outcome,
                                        (later.at - sent.at).as_millis()
                                    )
                                })
                                .collect();
                            problems.push(format!(
                                "`{marker}` was acknowledged (202, coalesced) and is not in the \
                                 history, though no later write of attempt {attempt} and no kill \
                                 came within {} ms; what attempt {attempt} sent after it: [{}]",
                                COALESCE_GRACE.as_millis(),
                                after.join("; ")
                            ));
                        }
                    }
                    Outcome::Refused { .. } | Outcome::Unanswered => {}
                }
            }
        }
    }

    // Ends: a completed job has its completer's result.
    let completers: Vec<u32> = attempts
        .iter()
        .filter(|(_, log)| log.completed.is_some() || log.failed.is_some())
        .map(|(&attempt, _)| attempt)
        .collect();
    if completers.len() > 1 {
        problems.push(format!(
            "attempts {completers:?} were each answered 200 for ending the job"
        ));
    }
    for (&attempt, log) in attempts {
        if let Some(result) = &log.completed {
            if status != "completed" || &job["result"] != result {
                problems.push(format!(
                    "attempt {attempt} ({}) was answered 200 for completing with {result}, but \
                     the job is {status} with result {}",
                    log.worker, job["result"]
                ));
            }
            if job["attempt"].as_u64() != Some(u64::from(attempt)) {
                problems.push(format!(
                    "attempt {attempt} completed the job, which now says attempt {}",
                    job["attempt"]
                ));
            }
        }
        if let Some(error) = &log.failed
            && (status != "failed" || job["error"].as_str() != Some(error))
        {
            problems.push(format!(
                "attempt {attempt} ({}) was answered 200 for failing with `{error}`, but the job \
                 is {status} with error {}",
                log.worker, job["error"]
            ));
        }
    }
    if status == "completed" {
        let known = attempts.values().any(|log| {
            log.completed.as_ref() == Some(&job["result"])
                || log.completes_unanswered.contains(&job["result"])
        });
        if !known {
            problems.push(format!(
                "completed with {} though no attempt sent that result",
                job["result"]
            ));
        }
    }
    if status == "failed" {
        let error = job["error"].as_str().unwrap_or("");
        let known = error.starts_with("lease expired")
            || attempts.values().any(|log| {
                log.failed.as_deref() == Some(error)
                    || log.fails_unanswered.iter().any(|e| e == error)
            });
        if !known {
            problems.push(format!("failed with `{error}` though no attempt sent it"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, attempt: u32, event: Option<&str>, message: &str) -> Row {
        Row {
            seq,
            attempt: Some(attempt),
            event: event.map(str::to_owned),
            message: Some(message.to_owned()),
        }
    }

    fn acked(marker: &str, durable: bool, at: Instant) -> Sent {
        Sent {
            marker: marker.to_owned(),
            outcome: Outcome::Acked { durable },
            at,
        }
    }

    #[test]
    fn markers_name_their_attempt() {
        assert_eq!(marker_attempt("j-1", "j-1 a3 r1-l0-c2 e4"), Some(3));
        assert_eq!(marker_attempt("j-1", "j-12 a3 w e4"), None);
        assert_eq!(marker_attempt("j-1", "lease expired: worker lost"), None);
    }

    #[test]
    fn a_clean_history_passes() {
        let t = Instant::now();
        let job = json!({"status": "completed", "attempt": 2, "result": {"r": 2}});
        let rows = vec![
            row(1, 1, None, "j a1 w e0"),
            row(2, 1, Some("lease_expired"), "lease expired: worker lost"),
            row(3, 2, None, "j a2 v e0"),
            row(4, 2, None, "j a2 v e0"),
        ];
        let mut attempts = BTreeMap::new();
        attempts.insert(
            1,
            AttemptLog {
                sent: vec![acked("j a1 w e0", true, t)],
                ..AttemptLog::default()
            },
        );
        attempts.insert(
            2,
            AttemptLog {
                sent: vec![acked("j a2 v e0", true, t)],
                completed: Some(json!({"r": 2})),
                ..AttemptLog::default()
            },
        );
        assert!(check_job("j", &job, &rows, &attempts, &[], true).is_empty());
    }

    #[test]
    fn overlapping_attempts_and_lost_writes_are_found() {
        let t = Instant::now();
        let job = json!({"status": "queued", "attempt": 2, "result": null});
        let rows = vec![row(1, 2, None, "j a2 v e0"), row(2, 1, None, "j a1 w e1")];
        let mut attempts = BTreeMap::new();
        attempts.insert(
            1,
            AttemptLog {
                sent: vec![
                    acked("j a1 w e0", true, t),
                    Sent {
                        marker: "j a1 w e1".to_owned(),
                        outcome: Outcome::Refused {
                            status: 409,
                            code: "lease_lost".to_owned(),
                        },
                        at: t,
                    },
                ],
                ..AttemptLog::default()
            },
        );
        let problems = check_job("j", &job, &rows, &attempts, &[], false);
        let text = problems.join("\n");
        assert!(text.contains("two attempts wrote at once"), "{text}");
        assert!(text.contains("a lost durable write"), "{text}");
        assert!(text.contains("a refused write landed"), "{text}");
    }

    #[test]
    fn a_coalesced_write_may_be_superseded_or_lost_to_a_kill() {
        let t = Instant::now();
        let job = json!({"status": "queued", "attempt": 1, "result": null});
        let later = t + Duration::from_millis(50);
        let log = |sent| {
            let mut attempts = BTreeMap::new();
            attempts.insert(
                1,
                AttemptLog {
                    sent,
                    ..AttemptLog::default()
                },
            );
            attempts
        };
        let superseded = log(vec![
            acked("j a1 w e0", false, t),
            acked("complete", false, later),
        ]);
        assert!(check_job("j", &job, &[], &superseded, &[], false).is_empty());
        let killed = log(vec![acked("j a1 w e0", false, t)]);
        assert!(check_job("j", &job, &[], &killed, &[later], false).is_empty());
        let problems = check_job("j", &job, &[], &killed, &[], false);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
