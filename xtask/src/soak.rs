//! `cargo xtask soak kill-loop [--rounds N] [--seconds-per-round S] [--workers N]
//! [--lease-workers N] [--seed N] [--no-build]`: SIGKILL the release server at random moments
//! during ingest, with external workers holding leases that die or stall at random, and check
//! that every acknowledged write survived, that no job was written by two attempts at once and
//! that nothing refused landed (see `skill_fleet_testkit::kill_loop`).
//!
//! Exit code: 0 when nothing acknowledged was lost, 1 when something was (or the run broke),
//! 2 for bad usage.

use std::process::{Command, ExitCode};
use std::time::Duration;

use skill_fleet_testkit::kill_loop;

use crate::{Result, project_root};

const USAGE: &str = "usage: cargo xtask soak kill-loop [--rounds N] [--seconds-per-round S] [--workers N] [--lease-workers N] [--seed N] [--no-build]

  --rounds N               kill-and-restart rounds [default: 20, at most 1000]
  --seconds-per-round S    longest a round runs before the kill [default: 2, at most 60];
                           the kill comes at a random moment in the last 70% of it
  --workers N              concurrent token-less writers [default: 4, at most 64]
  --lease-workers N        concurrent workers that claim jobs, fence their writes, heartbeat,
                           and die or stall past their 1 s lease at random [default: 3, at
                           most 64; 0: none]
  --seed N                 seed of the random choices [default: from the clock]
  --no-build               use target/release/skill-fleet-server as it is";

struct Args {
    rounds: u32,
    seconds: f64,
    workers: usize,
    lease_workers: usize,
    seed: Option<u64>,
    no_build: bool,
}

fn parse(args: &[String]) -> std::result::Result<Args, String> {
    let mut parsed = Args {
        rounds: 20,
        seconds: 2.0,
        workers: 4,
        lease_workers: 3,
        seed: None,
        no_build: false,
    };
    let mut iter = args.iter().filter(|a| *a != "--");
    match iter.next().map(String::as_str) {
        Some("kill-loop") => {}
        Some(other) => return Err(format!("unknown soak test `{other}`")),
        None => return Err("name a soak test".to_owned()),
    }
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("`{arg}` needs a value"));
        let number = |text: String| {
            text.parse::<f64>()
                .map_err(|_| format!("`{arg}` needs a number, got `{text}`"))
        };
        match arg.as_str() {
            "--rounds" => parsed.rounds = number(value()?)? as u32,
            "--seconds-per-round" => parsed.seconds = number(value()?)?,
            "--workers" => parsed.workers = number(value()?)? as usize,
            "--lease-workers" => parsed.lease_workers = number(value()?)? as usize,
            "--seed" => {
                let text = value()?;
                parsed.seed = Some(
                    text.parse()
                        .map_err(|_| format!("`--seed` needs an integer, got `{text}`"))?,
                );
            }
            "--no-build" => parsed.no_build = true,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if !(1..=1000).contains(&parsed.rounds) {
        return Err("--rounds must be between 1 and 1000".to_owned());
    }
    if !(0.1..=60.0).contains(&parsed.seconds) {
        return Err("--seconds-per-round must be between 0.1 and 60".to_owned());
    }
    if !(1..=64).contains(&parsed.workers) {
        return Err("--workers must be between 1 and 64".to_owned());
    }
    if parsed.lease_workers > 64 {
        return Err("--lease-workers must be at most 64".to_owned());
    }
    Ok(parsed)
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let args = match parse(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}\n\n{USAGE}");
            return Ok(ExitCode::from(2));
        }
    };
    let root = project_root();
    if !args.no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        println!("$ cargo build --release -p skill-fleet-server");
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "skill-fleet-server"])
            .status()
            .map_err(|err| format!("cannot run cargo: {err}"))?;
        if !status.success() {
            return Err("`cargo build --release -p skill-fleet-server` failed".into());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("release").join("skill-fleet-server");
    if !binary.exists() {
        return Err(format!("`{}` is missing: build it first", binary.display()).into());
    }
    let dir = tempfile::tempdir()?;
    let seed = args.seed.unwrap_or_else(kill_loop::clock_seed);
    let options = kill_loop::Options {
        binary,
        dir: dir.path().to_owned(),
        rounds: args.rounds,
        round_time: Duration::from_secs_f64(args.seconds),
        workers: args.workers,
        seed,
    };
    let leases = kill_loop::LeaseSettings {
        workers: args.lease_workers,
        ..kill_loop::LeaseSettings::default()
    };
    println!(
        "kill loop: {} rounds of up to {:.1} s, {} token-less writers, {} lease workers \
         (lease {:.1} s, heartbeat {:.1} s, sweep {:.1} s), seed {seed}",
        args.rounds,
        args.seconds,
        args.workers,
        leases.workers,
        leases.ttl.as_secs_f64(),
        leases.heartbeat.as_secs_f64(),
        leases.rescue.as_secs_f64(),
    );
    println!(
        "round  killed after  acked  jobs  not acked  checked (all rounds)  restart  \
         claims  resumed  died  stalled  409 lost  lease jobs  rescues"
    );
    let report = kill_loop::run_with(&options, &leases, |round| {
        println!(
            "{:>5}  {:>10.0}ms  {:>5}  {:>4}  {:>9}  {:>20}  {:>5.0}ms  {:>6}  {:>7}  {:>4}  \
             {:>7}  {:>8}  {:>10}  {:>7}",
            round.round,
            round.killed_after.as_secs_f64() * 1000.0,
            round.acknowledged,
            round.jobs,
            round.unacknowledged,
            round.checked,
            round.restart.as_secs_f64() * 1000.0,
            round.lease.claims,
            round.lease.resumed,
            round.lease.died,
            round.lease.stalled,
            round.lease.lease_lost,
            round.lease_jobs,
            round.rescues,
        );
    })?;
    println!(
        "{} rounds, {} acknowledged writes checked, {:.1} s (settling {:.1} s)",
        report.rounds.len(),
        report.checked,
        report.elapsed.as_secs_f64(),
        report.settle.as_secs_f64()
    );
    let lease = &report.lease;
    let (completed, failed, queued) = report.lease_outcomes;
    println!(
        "lease workers: {} jobs ({} created), {} claims, {} attempts resumed after a restart, \
         {} heartbeats, {} fenced events, {} completes, {} fails acknowledged; {} died, {} \
         stalled past their lease; answers 409 lease_lost: {}, 409 invalid_transition (a job \
         ended): {}, other refusals: {}, 503: {}",
        report.lease_jobs,
        lease.created,
        lease.claims,
        lease.resumed,
        lease.heartbeats,
        lease.events,
        lease.completed,
        lease.failed,
        lease.died,
        lease.stalled,
        lease.lease_lost,
        lease.ended,
        lease.refused_other,
        lease.unavailable,
    );
    println!(
        "rescues (lease_expired rows): {}; lease jobs at the end: {completed} completed, \
         {failed} failed, {queued} queued; token-less jobs left running and failed by the \
         sweep: {}",
        report.rescues, report.anonymous_rescued
    );
    if report.problems.is_empty() {
        println!(
            "nothing acknowledged was lost, no job was written by two attempts at once, \
             nothing refused landed"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        eprintln!("PROBLEM: {problem}");
    }
    eprintln!(
        "{} problems (seed {seed}; server logs kept in {})",
        report.problems.len(),
        dir.keep().display()
    );
    Ok(ExitCode::FAILURE)
}
