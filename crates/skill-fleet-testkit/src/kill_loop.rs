//! The SIGKILL loop: workers write to a real server, the server is killed at a random moment,
//! restarted on the same database, and every write it acknowledged (a 2xx) must be there.
//!
//! Shared by `cargo xtask soak kill-loop` (release binary, many rounds) and the short CI
//! variant in the server crate's `faults` tests (debug binary, three rounds): the server is
//! the kit's [`TestServer`], requests go through the kit's HTTP client on a fresh connection
//! each, and choices come from the kit's seeded [`Rng`].
//!
//! Two kinds of workers write. The *token-less* ones create `soak` jobs and start them with
//! their first event (an open lease), as clients did before leases. What they had
//! acknowledged is checked after each restart:
//! - a created job (201/200) exists;
//! - a step change (`step-0007`, numbered so they only grow) is stored: the job's step is at
//!   least that one, or its history has it;
//! - a checkpoint (`{"k": n}`, n only grows per job) is stored: the stored `k` is at least n;
//! - a terminal transition (complete, fail, cancel) is the job's status.
//!
//! The *lease* workers (the `leases` submodule) claim jobs, fence every write with the claim's
//! attempt and token, heartbeat, and at random die or stall past their lease; their jobs'
//! histories must show one attempt at a time and every acknowledged write, and no refused one.
//!
//! The server runs with short leases ([`LeaseSettings`]: 1 s, renewed every 0.2 s, swept
//! every 0.2 s, `max_rescues` 1000, the lease type resumable). No job is in an impossible
//! state: a terminal job has `completed_at`, progress is within 0..=1, and right after a
//! restart a job is `running` only under a worker's lease (a restarted server gives remote
//! workers a full lease to come back; only its own earlier runs' jobs are taken back at
//! start-up). After the last round the loop waits for every lease to expire and checks that
//! nothing is left running: the sweep took every abandoned job back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::TestkitError;
use crate::http::{try_get, try_post, unpooled_agent};
use crate::rng::Rng;
use crate::server::{TestServer, command};

mod leases;

pub use leases::{COALESCE_GRACE, LeaseCounts, LeaseSettings};

/// How to run the loop.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `skill-fleet-server` binary.
    pub binary: PathBuf,
    /// Where the database, the configuration and the server logs go.
    pub dir: PathBuf,
    /// Kill-and-restart rounds.
    pub rounds: u32,
    /// Longest a round runs before the kill; the kill comes at a random moment in
    /// `[0.3, 1.0]` of it.
    pub round_time: Duration,
    /// Concurrent writers.
    pub workers: usize,
    /// Seed of the random choices (printed, so a failing run can be repeated).
    pub seed: u64,
}

/// What one round did.
#[derive(Debug, Clone)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// Acknowledged writes made in this round.
    pub acknowledged: usize,
    /// Jobs created in this round.
    pub jobs: usize,
    /// Requests that got no answer or a non-2xx one (not acknowledged, not checked).
    pub unacknowledged: usize,
    /// When the server was killed, from the start of the round's load.
    pub killed_after: Duration,
    /// Acknowledged writes (over all rounds so far) checked after the restart.
    pub checked: usize,
    /// Time from spawn to `listening on` after the kill.
    pub restart: Duration,
    /// What the lease workers did in this round.
    pub lease: LeaseCounts,
    /// Lease jobs so far.
    pub lease_jobs: usize,
    /// `lease_expired` rows in the lease jobs' histories so far (jobs the sweep took back).
    pub rescues: usize,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every round, in order.
    pub rounds: Vec<Round>,
    /// Acknowledged writes checked after the final restart (all of them).
    pub checked: usize,
    /// Lost acknowledged writes and impossible states; empty when the run passed.
    pub problems: Vec<String>,
    /// What the lease workers did over the run.
    pub lease: LeaseCounts,
    /// Lease jobs over the run.
    pub lease_jobs: usize,
    /// `lease_expired` rows in the lease jobs' histories at the end.
    pub rescues: usize,
    /// Lease jobs at the end: completed, failed, queued (rescued, never finished).
    pub lease_outcomes: (usize, usize, usize),
    /// Token-less jobs that were left running and that the sweep failed (`lease expired`).
    pub anonymous_rescued: usize,
    /// How long the wait for every lease to expire took after the last round.
    pub settle: Duration,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The type of every token-less soak job; it has no executor and is not resumable.
const JOB_TYPE: &str = "soak";

/// The error of a job the sweep failed because its lease expired (the jobs crate's
/// `LEASE_EXPIRED_ERROR`; the kit speaks HTTP only).
const LEASE_EXPIRED_ERROR: &str = "lease expired: worker lost";

/// What the server acknowledged for one job.
#[derive(Debug, Clone, Default)]
struct Acked {
    created: bool,
    step: Option<u32>,
    checkpoint: Option<u32>,
    terminal: Option<&'static str>,
}

impl Acked {
    fn writes(&self) -> usize {
        usize::from(self.created)
            + usize::from(self.step.is_some())
            + usize::from(self.checkpoint.is_some())
            + usize::from(self.terminal.is_some())
    }
}

type Ledger = BTreeMap<String, Acked>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the loop with the default [`LeaseSettings`]; `on_round` sees each round's summary as
/// it ends.
pub fn run(options: &Options, on_round: impl FnMut(&Round)) -> Result<Report, TestkitError> {
    run_with(options, &LeaseSettings::default(), on_round)
}

/// Runs the loop with `leases`; `on_round` sees each round's summary as it ends.
pub fn run_with(
    options: &Options,
    leases: &LeaseSettings,
    mut on_round: impl FnMut(&Round),
) -> Result<Report, TestkitError> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.dir).map_err(|source| TestkitError::Write {
        path: options.dir.clone(),
        source,
    })?;
    let database = options.dir.join("soak.db");
    let config = options.dir.join("soak.toml");
    std::fs::write(&config, "[executors]\n").map_err(|source| TestkitError::Write {
        path: config.clone(),
        source,
    })?;
    let ledger: Arc<Mutex<Ledger>> = Arc::new(Mutex::new(BTreeMap::new()));
    let shared = Arc::new(leases::Shared::new(leases.clone()));
    let mut random = Rng::new(options.seed);
    let mut rounds = Vec::new();
    let mut problems = Vec::new();
    let mut lease_total = LeaseCounts::default();
    let mut rescues = 0;

    let (mut server, _) = start_server(options, leases, &database, &config, 0)?;
    for round in 1..=options.rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let before = lock(&ledger).values().map(Acked::writes).sum::<usize>();
        let jobs_before = lock(&ledger).len();
        let unacknowledged = Arc::new(Mutex::new(0usize));
        let worker_problems = Arc::new(Mutex::new(Vec::new()));
        let mut workers: Vec<_> = (0..options.workers)
            .map(|worker| {
                let context = Worker {
                    base: server.base.clone(),
                    agent: unpooled_agent(),
                    round,
                    worker,
                    ledger: Arc::clone(&ledger),
                    stop: Arc::clone(&stop),
                    unacknowledged: Arc::clone(&unacknowledged),
                    problems: Arc::clone(&worker_problems),
                    random: Rng::new(random.next_u64() ^ u64::from(round) << 32 ^ worker as u64),
                };
                std::thread::spawn(move || context.run())
            })
            .collect();
        workers.extend((0..leases.workers).map(|index| {
            let context = leases::LeaseWorker {
                base: server.base.clone(),
                round,
                index,
                shared: Arc::clone(&shared),
                stop: Arc::clone(&stop),
                random: Rng::new(random.next_u64() ^ u64::from(round) << 40 ^ index as u64),
            };
            std::thread::spawn(move || context.run())
        }));
        let load_started = Instant::now();
        let fraction = 0.3 + 0.7 * random.unit();
        std::thread::sleep(options.round_time.mul_f64(fraction));
        // SIGKILL while the workers are mid-request: no shutdown code runs.
        server.kill();
        shared.killed();
        let killed_after = load_started.elapsed();
        stop.store(true, Ordering::Release);
        for worker in workers {
            let _ = worker.join();
        }
        let (next, restart) = start_server(options, leases, &database, &config, round)?;
        server = next;
        let snapshot = lock(&ledger).clone();
        let mut found = std::mem::take(&mut *lock(&worker_problems));
        found.extend(shared.take_problems());
        found.extend(check(&server.base, &snapshot, false).problems);
        let lease_check = leases::check(&server.base, &shared, false);
        found.extend(lease_check.problems);
        rescues = lease_check.rescues;
        let lease = shared.take_counts();
        lease_total.add(&lease);
        let summary = Round {
            round,
            acknowledged: snapshot.values().map(Acked::writes).sum::<usize>() - before,
            jobs: snapshot.len() - jobs_before,
            unacknowledged: *lock(&unacknowledged),
            killed_after,
            checked: snapshot.values().map(Acked::writes).sum(),
            restart,
            lease,
            lease_jobs: shared.jobs(),
            rescues,
        };
        on_round(&summary);
        rounds.push(summary);
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("after round {round}: {p}")),
        );
        if !problems.is_empty() {
            break;
        }
    }
    // Every lease is abandoned now: once the restarted server has been up for one lease and
    // the abandoned ones expired, the sweep must have taken every job back.
    let settle_started = Instant::now();
    let mut anonymous_rescued = 0;
    let mut lease_outcomes = (0, 0, 0);
    if problems.is_empty() {
        let deadline = leases.ttl * 3 + leases.rescue * 4 + SETTLE_SLACK;
        if !wait_for_nothing_running(&server.base, deadline) {
            problems.push(format!(
                "after the last round: jobs still running {:.1} s after the last restart \
                 (every lease should have expired and been swept)",
                deadline.as_secs_f64()
            ));
        }
        let snapshot = lock(&ledger).clone();
        let settled = check(&server.base, &snapshot, true);
        anonymous_rescued = settled.lease_expired;
        let lease_check = leases::check(&server.base, &shared, true);
        rescues = lease_check.rescues;
        lease_outcomes = (
            lease_check.completed,
            lease_check.failed,
            lease_check.queued,
        );
        problems.extend(
            settled
                .problems
                .into_iter()
                .chain(lease_check.problems)
                .map(|p| format!("after the last round, settled: {p}")),
        );
    }
    let settle = settle_started.elapsed();
    let checked = lock(&ledger).values().map(Acked::writes).sum();
    server.kill();
    Ok(Report {
        rounds,
        checked,
        problems,
        lease: lease_total,
        lease_jobs: shared.jobs(),
        rescues,
        lease_outcomes,
        anonymous_rescued,
        settle,
        elapsed: started.elapsed(),
    })
}

/// Beyond three leases and four sweeps, how long the settling wait gives a loaded machine.
const SETTLE_SLACK: Duration = Duration::from_secs(10);

/// Whether, within `deadline`, the server at `base` lists no running job.
fn wait_for_nothing_running(base: &str, deadline: Duration) -> bool {
    let agent = unpooled_agent();
    let give_up = Instant::now() + deadline;
    loop {
        let url = format!("{base}/api/v1/jobs?status=running&limit=1");
        if let Ok((200, page)) = try_get(&agent, &url)
            && page["jobs"].as_array().is_some_and(Vec::is_empty)
        {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One writer: creates jobs and drives each through progress, step changes, checkpoints and
/// (mostly) a terminal transition, recording what was acknowledged.
struct Worker {
    base: String,
    agent: ureq::Agent,
    round: u32,
    worker: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    unacknowledged: Arc<Mutex<usize>>,
    problems: Arc<Mutex<Vec<String>>>,
    random: Rng,
}

impl Worker {
    fn run(mut self) {
        let mut n = 0;
        while !self.stop.load(Ordering::Acquire) {
            n += 1;
            let id = format!("r{}-w{}-{n}", self.round, self.worker);
            if !self.drive(&id) {
                // The server is gone: wait for the round to end.
                while !self.stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// False once the server stops answering.
    fn drive(&mut self, id: &str) -> bool {
        let body = json!({"id": id, "type": JOB_TYPE, "metadata": {"round": self.round}});
        match self.post("/api/v1/jobs", &body) {
            Answer::Acked(_) => self.record(id, |acked| acked.created = true),
            Answer::Refused => return true,
            Answer::Gone => return false,
        }
        let events = 2 + self.random.below(12);
        let mut step = 0;
        let mut checkpoint = 0;
        for i in 0..events {
            if self.stop.load(Ordering::Acquire) {
                return true;
            }
            let mut event = json!({"progress": (i + 1) as f64 / (events + 1) as f64});
            let step_change = i == 0 || self.random.below(3) == 0;
            if step_change {
                step += 1;
                event["step"] = json!(format!("step-{step:04}"));
            }
            let with_checkpoint = self.random.below(4) == 0;
            if with_checkpoint {
                checkpoint += 1;
                event["checkpoint"] = json!({"k": checkpoint});
            }
            if self.random.below(2) == 0 {
                event["message"] = json!(format!("event {i} of {id}"));
            }
            match self.post(&format!("/api/v1/jobs/{id}/events"), &event) {
                Answer::Acked(ack) => {
                    if (step_change || with_checkpoint) && ack["durable"] != json!(true) {
                        lock(&self.problems).push(format!(
                            "job {id}: a step change or checkpoint was acknowledged as not durable: {ack}"
                        ));
                    }
                    self.record(id, |acked| {
                        if step_change {
                            acked.step = Some(step);
                        }
                        if with_checkpoint {
                            acked.checkpoint = Some(checkpoint);
                        }
                    });
                }
                Answer::Refused => return true,
                Answer::Gone => return false,
            }
        }
        let (path, status, body) = match self.random.below(5) {
            0 | 1 => ("complete", "completed", json!({"result": {"score": 1}})),
            2 => ("fail", "failed", json!({"error": "soak failure"})),
            3 => ("cancel", "cancelled", json!({})),
            // Left running: recovery fails it after the kill.
            _ => return true,
        };
        match self.post(&format!("/api/v1/jobs/{id}/{path}"), &body) {
            Answer::Acked(_) => self.record(id, |acked| acked.terminal = Some(status)),
            Answer::Refused => {}
            Answer::Gone => return false,
        }
        true
    }

    fn record(&self, id: &str, change: impl FnOnce(&mut Acked)) {
        change(lock(&self.ledger).entry(id.to_owned()).or_default());
    }

    fn post(&self, path: &str, body: &Value) -> Answer {
        match try_post(&self.agent, &format!("{}{path}", self.base), body) {
            Ok((status, value)) if (200..300).contains(&status) => Answer::Acked(value),
            Ok(_) => {
                *lock(&self.unacknowledged) += 1;
                Answer::Refused
            }
            Err(_) => {
                *lock(&self.unacknowledged) += 1;
                Answer::Gone
            }
        }
    }
}

enum Answer {
    Acked(Value),
    Refused,
    Gone,
}

/// What [`check`] found.
struct Checked {
    problems: Vec<String>,
    /// Jobs failed by the sweep (`lease expired`): left running by a kill, taken back.
    lease_expired: usize,
}

/// Every acknowledged write in `ledger` against the restarted server; with `settled` (every
/// lease has expired since), nothing may be running.
fn check(base: &str, ledger: &Ledger, settled: bool) -> Checked {
    let agent = unpooled_agent();
    let mut problems = Vec::new();
    let mut lease_expired = 0;
    for (id, acked) in ledger {
        let job = match try_get(&agent, &format!("{base}/api/v1/jobs/{id}")) {
            Ok((200, job)) => job,
            Ok((404, _)) if !acked.created => continue,
            Ok((status, body)) => {
                problems.push(format!("job {id}: GET answered {status}: {body}"));
                continue;
            }
            Err(err) => {
                problems.push(format!("job {id}: GET failed: {err}"));
                continue;
            }
        };
        let status = job["status"].as_str().unwrap_or("");
        if !["queued", "running", "completed", "failed", "cancelled"].contains(&status) {
            problems.push(format!("job {id}: unknown status `{status}`"));
        }
        let owner = job["lease"]["owner"].as_str().unwrap_or("");
        if status == "running" && settled {
            problems.push(format!(
                "job {id}: still running (owner `{owner}`) after every lease had time to expire \
                 (the sweep should have failed it)"
            ));
        } else if status == "running" && (owner.is_empty() || owner.starts_with("server:")) {
            problems.push(format!(
                "job {id}: still running after a restart without a worker's lease (owner \
                 `{owner}`; start-up recovery should have failed it)"
            ));
        }
        if status == "failed" && job["error"].as_str() == Some(LEASE_EXPIRED_ERROR) {
            lease_expired += 1;
        }
        let terminal = ["completed", "failed", "cancelled"].contains(&status);
        if terminal && job["completed_at"].is_null() {
            problems.push(format!("job {id}: {status} without completed_at"));
        }
        let progress = job["progress"]["progress"].as_f64().unwrap_or(0.0);
        if !(0.0..=1.0).contains(&progress) {
            problems.push(format!("job {id}: progress {progress} out of range"));
        }
        if let Some(want) = acked.terminal
            && status != want
        {
            problems.push(format!(
                "job {id}: acknowledged {want}, stored {status} (lost terminal state)"
            ));
        }
        if let Some(want) = acked.step {
            let stored = job["progress"]["step"]
                .as_str()
                .and_then(|step| step.strip_prefix("step-"))
                .and_then(|n| n.parse::<u32>().ok());
            if stored.is_none_or(|stored| stored < want)
                && !history_has_step(&agent, base, id, want)
            {
                problems.push(format!(
                    "job {id}: acknowledged step-{want:04}, stored {} and not in the history (lost step change)",
                    job["progress"]["step"]
                ));
            }
        }
        if let Some(want) = acked.checkpoint {
            let stored = job["checkpoint"]["k"].as_u64();
            if stored.is_none_or(|stored| stored < u64::from(want)) {
                problems.push(format!(
                    "job {id}: acknowledged checkpoint {want}, stored {} (lost checkpoint)",
                    job["checkpoint"]
                ));
            }
        }
    }
    Checked {
        problems,
        lease_expired,
    }
}

/// Whether the job's progress history holds `step-{step}`.
fn history_has_step(agent: &ureq::Agent, base: &str, id: &str, step: u32) -> bool {
    let want = format!("step-{step:04}");
    let mut after = 0;
    loop {
        let url = format!("{base}/api/v1/jobs/{id}/progress?after={after}&limit=1000");
        let Ok((200, page)) = try_get(agent, &url) else {
            return false;
        };
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.iter().any(|r| r["step"] == json!(want)) {
            return true;
        }
        match page["next_after"].as_i64() {
            Some(next) if next > after => after = next,
            _ => return false,
        }
    }
}

/// Starts the server on `database` with the short leases of `leases`, its stderr in
/// `server-{round}.log` of the run's directory, and waits for its `listening on` line;
/// returns how long that took.
fn start_server(
    options: &Options,
    leases: &LeaseSettings,
    database: &Path,
    config: &Path,
    round: u32,
) -> Result<(TestServer, Duration), TestkitError> {
    let log_path = options.dir.join(format!("server-{round}.log"));
    let log = std::fs::File::create(&log_path).map_err(|source| TestkitError::Write {
        path: log_path.clone(),
        source,
    })?;
    let spawned = Instant::now();
    let mut server = command(&options.binary, database);
    server
        .arg("--config")
        .arg(config)
        .arg("--lease-ttl-seconds")
        .arg(leases.ttl.as_secs_f64().to_string())
        .arg("--heartbeat-interval-seconds")
        .arg(leases.heartbeat.as_secs_f64().to_string())
        .arg("--rescue-interval-seconds")
        .arg(leases.rescue.as_secs_f64().to_string())
        // Jobs are failed by a lost acknowledged write, never by the loop's rescues.
        .arg("--max-rescues")
        .arg("1000")
        .arg("--resumable-types")
        .arg(leases::LEASE_TYPE)
        .stderr(Stdio::from(log));
    match TestServer::spawn(server) {
        Ok(server) => Ok((server, spawned.elapsed())),
        Err(TestkitError::NotListening {
            binary, seconds, ..
        }) => Err(TestkitError::NotListening {
            binary,
            seconds,
            stderr: std::fs::read_to_string(&log_path).unwrap_or_default(),
        }),
        Err(err) => Err(err),
    }
}

/// A seed from the clock, for runs that do not name one.
pub fn clock_seed() -> u64 {
    Rng::clock_seed()
}
