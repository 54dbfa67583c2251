//! `cargo xtask demo --cluster [--database-url URL] [--trials N]`: three servers on one
//! PostgreSQL database (one the demo creates and drops, or `--database-url`), three
//! optimization jobs with the bundled example optimizer, the CLI watching one of them
//! through a server other than the one running it, then kill -9 of that server mid-run:
//! its job is rescued and finishes on another server, narrated as it happens.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skill_fleet_testkit::cluster::{Cluster, job_processes};
use skill_fleet_testkit::http::{agent, try_get, try_post};
use skill_fleet_testkit::{PostgresDatabase, TestPostgres};

use crate::project_root;

/// Servers in the demo.
const SERVERS: usize = 3;

/// Short leases, so a lost server's job is rescued within seconds; each server runs up to
/// two optimizations, so a survivor has room for the rescued one.
fn config(optimizer: &Path) -> String {
    format!(
        "lease_ttl_seconds = 3.0\n\
         heartbeat_interval_seconds = 0.5\n\
         rescue_interval_seconds = 0.5\n\
         max_concurrent_jobs = 2\n\
         [executors.optimization]\n\
         command = [\"python3\", \"{}\"]\n\
         max_concurrent = 2\n",
        optimizer.display()
    )
}

/// A line of the demo's own narration (the CLI's lines come between them).
fn say(text: impl std::fmt::Display) {
    println!("==> {text}");
}

/// Runs the cluster demo with the debug binaries in `bin`; the exit code is 0 when every
/// job completed and the CLI saw its job complete.
pub fn run(bin: &Path, database_url: Option<&str>, trials: u32) -> crate::Result<ExitCode> {
    let server_bin = bin.join("skill-fleet-server");
    let config = config(&project_root().join("examples").join("toy_optimizer.py"));
    let cluster = match database_url {
        Some(url) => {
            say(format!(
                "using the database {url} (left as it is afterwards)"
            ));
            Cluster::spawn_on_url(url, &server_bin, SERVERS, &config, &[])?
        }
        None => {
            let postgres = TestPostgres::find().map_err(|reason| {
                format!("no PostgreSQL for the demo: {reason}; or give one with --database-url")
            })?;
            let database: PostgresDatabase = postgres.database();
            say(format!(
                "created the database {} on {} (dropped at the end)",
                database.name(),
                postgres.origin()
            ));
            Cluster::spawn(database, &server_bin, SERVERS, &config, &[])?
        }
    };
    let mut cluster = cluster;
    let bases: Vec<String> = cluster.running().map(|(_, s)| s.base.clone()).collect();
    for (i, server) in cluster.running() {
        say(format!(
            "server {i} listening on {} (pid {}), on the same database",
            server.base,
            server.child.id()
        ));
    }

    // One job created through each server; whichever server's executor hears of it first
    // (its own feed, or the others' doorbell) claims it.
    let http = agent();
    let ids: Vec<String> = (0..SERVERS).map(|i| format!("demo-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let body = json!({"id": id, "metadata": {"trials": trials, "trial_seconds": 0.3,
                                                 "model": "demo-model", "optimizer": "miprov2"}});
        let (status, reply) = try_post(&http, &format!("{}/api/v1/optimization", bases[i]), &body)?;
        if status != 201 && status != 200 {
            return Err(format!("creating {id} through server {i}: {status} {reply}").into());
        }
    }
    say(format!(
        "created {} optimization jobs ({trials} trials each), one through each server",
        ids.len()
    ));
    let runs = wait_until(Duration::from_secs(60), "each job to start", || {
        let runs = running_on(&cluster);
        (runs.len() == ids.len()).then_some(runs)
    })?;
    for (id, server) in &runs {
        say(format!("{id} runs on server {server}"));
    }

    // Watch demo-0 through another server than the one running it, then kill that one.
    let watched = &ids[0];
    let victim = runs[watched];
    let watcher = (victim + 1) % SERVERS;
    say(format!(
        "the CLI watches {watched} through server {watcher}; server {victim} runs it: \
         `skill-fleet --server {} jobs watch {watched}`",
        bases[watcher]
    ));
    let cache = tempfile::tempdir()?;
    let mut cli = Command::new(bin.join("skill-fleet"))
        .args(["--server", &bases[watcher], "jobs", "watch", watched])
        .env("SKILL_FLEET_CACHE_DIR", cache.path())
        .stdin(Stdio::null())
        .spawn()?;
    let job = |id: &str| -> Option<Value> {
        let (status, job) = try_get(&http, &format!("{}/api/v1/jobs/{id}", bases[watcher])).ok()?;
        (status == 200).then_some(job)
    };
    let trial_at_kill = wait_until(Duration::from_secs(60), "a few trials", || {
        let trial = job(watched)?["checkpoint"]["trial"].as_u64()?;
        (trial >= u64::from(trials / 4).max(1)).then_some(trial)
    })?;
    let pid = cluster.get(victim).map_or(0, |server| server.child.id());
    say(format!(
        "kill -9 server {victim} (pid {pid}) while {watched} is at trial {trial_at_kill}: its \
         child dies with it, its lease stops being renewed"
    ));
    cluster.kill(victim);
    let killed = Instant::now();

    // Narrate what becomes of every job, as the survivors see it.
    let mut seen: BTreeMap<String, (String, u64, Option<usize>)> = BTreeMap::new();
    let mut finished_on: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now_running = running_on(&cluster);
        let mut all_done = true;
        for id in &ids {
            let Some(state) = job(id) else {
                all_done = false;
                continue;
            };
            let status = state["status"].as_str().unwrap_or("?").to_owned();
            let attempt = state["attempt"].as_u64().unwrap_or(0);
            let on = now_running.get(id).copied();
            if let Some(server) = on {
                finished_on.insert(id.clone(), server);
            }
            let now = (status.clone(), attempt, on);
            if seen.get(id) != Some(&now) {
                let at = killed.elapsed().as_secs_f64();
                match (status.as_str(), on) {
                    ("queued", _) if attempt > 0 => say(format!(
                        "{at:5.1} s  {id}: lease expired, rescued by a surviving server's sweep; \
                         back in the queue with its checkpoint (trial {})",
                        state["checkpoint"]["trial"]
                    )),
                    ("running", Some(server)) => say(format!(
                        "{at:5.1} s  {id}: running on server {server} (attempt {attempt})"
                    )),
                    ("completed", _) => say(format!(
                        "{at:5.1} s  {id}: completed after {attempt} attempt(s), metric {}",
                        state["result"]["metric"]
                    )),
                    (other, _) if other != "running" => {
                        say(format!("{at:5.1} s  {id}: {other} (attempt {attempt})"))
                    }
                    _ => {}
                }
                seen.insert(id.clone(), now);
            }
            all_done &= status == "completed" || status == "failed" || status == "cancelled";
        }
        if all_done {
            break;
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            return Err("the jobs did not finish within 180 s of the kill".into());
        }
        // Polling the survivors for the narration, not waiting for a condition.
        std::thread::sleep(Duration::from_millis(100));
    }
    let watch = cli.wait()?;
    println!();
    say(format!(
        "the CLI on server {watcher} exited with {} (0: it saw {watched} complete)",
        watch.code().unwrap_or(-1)
    ));
    let mut ok = watch.success();
    for id in &ids {
        let state = job(id).unwrap_or(Value::Null);
        ok &= state["status"] == "completed";
        say(format!(
            "{id}: {}, {} attempt(s), resumed from trial {}, last ran on server {}",
            state["status"].as_str().unwrap_or("?"),
            state["attempt"],
            state["result"]["resumed_from_trial"],
            finished_on
                .get(id)
                .map_or_else(|| "?".to_owned(), |s| s.to_string())
        ));
    }
    for i in 0..cluster.len() {
        if cluster.get(i).is_some() {
            cluster.terminate(i);
        }
    }
    drop(cluster);
    say("servers stopped; the database the demo created is dropped");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Which server's children run which job now.
fn running_on(cluster: &Cluster) -> BTreeMap<String, usize> {
    cluster
        .running()
        .flat_map(|(i, server)| {
            job_processes(server.child.id())
                .into_iter()
                .map(move |process| (process.job_id, i))
        })
        .collect()
}

/// Checks `check` every 50 ms until it returns `Some`, for at most `limit`.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> crate::Result<T> {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > give_up {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
