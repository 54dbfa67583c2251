//! `cargo xtask soak kill-loop [--rounds N] [--seconds-per-round S] [--workers N] [--seed N]
//! [--no-build]`: SIGKILL the release server at random moments during ingest and check that
//! every acknowledged write survived (see `skill_fleet_testkit::kill_loop`).
//!
//! Exit code: 0 when nothing acknowledged was lost, 1 when something was (or the run broke),
//! 2 for bad usage.

use std::process::{Command, ExitCode};
use std::time::Duration;

use skill_fleet_testkit::kill_loop;

use crate::{Result, project_root};

const USAGE: &str = "usage: cargo xtask soak kill-loop [--rounds N] [--seconds-per-round S] [--workers N] [--seed N] [--no-build]

  --rounds N               kill-and-restart rounds [default: 20, at most 1000]
  --seconds-per-round S    longest a round runs before the kill [default: 2, at most 60];
                           the kill comes at a random moment in the last 70% of it
  --workers N              concurrent writers [default: 4, at most 64]
  --seed N                 seed of the random choices [default: from the clock]
  --no-build               use target/release/skill-fleet-server as it is";

struct Args {
    rounds: u32,
    seconds: f64,
    workers: usize,
    seed: Option<u64>,
    no_build: bool,
}

fn parse(args: &[String]) -> std::result::Result<Args, String> {
    let mut parsed = Args {
        rounds: 20,
        seconds: 2.0,
        workers: 4,
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
    println!(
        "kill loop: {} rounds of up to {:.1} s, {} workers, seed {seed}",
        args.rounds, args.seconds, args.workers
    );
    println!("round  killed after  acked  jobs  not acked  checked (all rounds)  restart");
    let report = kill_loop::run(&options, |round| {
        println!(
            "{:>5}  {:>10.0}ms  {:>5}  {:>4}  {:>9}  {:>20}  {:>5.0}ms",
            round.round,
            round.killed_after.as_secs_f64() * 1000.0,
            round.acknowledged,
            round.jobs,
            round.unacknowledged,
            round.checked,
            round.restart.as_secs_f64() * 1000.0,
        );
    })?;
    println!(
        "{} rounds, {} acknowledged writes checked, {:.1} s",
        report.rounds.len(),
        report.checked,
        report.elapsed.as_secs_f64()
    );
    if report.problems.is_empty() {
        println!("nothing acknowledged was lost");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        eprintln!("LOST: {problem}");
    }
    eprintln!(
        "{} problems (seed {seed}; server logs kept in {})",
        report.problems.len(),
        dir.keep().display()
    );
    Ok(ExitCode::FAILURE)
}
