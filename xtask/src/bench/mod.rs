//! `cargo xtask bench [--quick] [--only SECTIONS] [--out PATH] [--ticks N] [--no-build]`:
//! the product measured end to end against baselines measured in the same run.
//!
//! `cargo xtask` runs a debug build of this crate, so `bench` first builds the release
//! binaries (`skill-fleet-server`, `skill-fleet`), then a release build of xtask itself (the
//! load generator and the SSE client must cost less than the server they measure), and runs
//! that with the same arguments. It prints a table per section and writes
//! `target/bench/report.json` (git commit, date, machine, every number).
//!
//! Exit code: 0 when the benchmark ran, whether goals were met or not; 1 when it could not
//! run (a build failed, the server did not start, a section broke); 2 for bad usage.

mod artifacts;
mod cli;
mod cluster;
mod faults;
mod http;
mod ingest;
mod leases;
mod report;
mod restart;
mod revalidate;
mod server;
mod sse;
pub mod sse_client;
mod stats;
mod store;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use self::http::{Load, LoadResult};
use self::server::{NO_EXECUTORS, Server, ServerSpec};
use crate::{Result, project_root};

const USAGE: &str =
    "usage: cargo xtask bench [--quick] [--only SECTIONS] [--out PATH] [--ticks N] [--no-build]

  --quick          short runs (CI; under two minutes with the binaries built)
  --only LIST      comma-separated sections: ingest,revalidate,sse,restart,cli,store,faults,
                   leases,cluster,artifacts (cluster needs a PostgreSQL; skipped without one)
  --out PATH       the JSON report [default: target/bench/report.json, or
                   report-SECTIONS.json when --only leaves sections out]
  --ticks N        ticks of the store section [default: 500, quick: 100]
  --no-build       use the release binaries already in target/release";

/// Every section, in the order they run.
const SECTIONS: [&str; 10] = [
    "ingest",
    "revalidate",
    "sse",
    "restart",
    "cli",
    "store",
    "faults",
    "leases",
    "cluster",
    "artifacts",
];

/// Tokio worker threads of the load generator (the machine has 2 cores; the server gets
/// the rest).
const CLIENT_THREADS: usize = 1;

/// Keep-alive connections of the load generator.
const CONNECTIONS: usize = 64;

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    only: Vec<&'static str>,
    out: Option<PathBuf>,
    ticks: Option<usize>,
    no_build: bool,
    /// Set by the debug xtask when it hands over to the release one: seconds spent building.
    built_seconds: Option<f64>,
    /// The arguments as given (handed on to the release build).
    raw: Vec<String>,
}

fn parse(args: &[String]) -> std::result::Result<Options, String> {
    let mut options = Options {
        quick: false,
        only: SECTIONS.to_vec(),
        out: None,
        ticks: None,
        no_build: false,
        built_seconds: None,
        raw: Vec::new(),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-build" => options.no_build = true,
            "--only" => {
                let list = value()?;
                let mut only = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let known = SECTIONS.iter().find(|s| **s == name).ok_or(format!(
                        "unknown section `{name}` (known: {})",
                        SECTIONS.join(",")
                    ))?;
                    only.push(*known);
                }
                if only.is_empty() {
                    return Err("--only needs at least one section".to_owned());
                }
                options.only = SECTIONS
                    .iter()
                    .copied()
                    .filter(|s| only.contains(s))
                    .collect();
            }
            "--out" => options.out = Some(PathBuf::from(value()?)),
            "--ticks" => {
                options.ticks = Some(value()?.parse().map_err(|e| format!("--ticks: {e}"))?)
            }
            "--built-seconds" => {
                options.built_seconds = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--built-seconds: {e}"))?,
                );
                continue;
            }
            "--" => continue,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    options.raw = args
        .iter()
        .filter(|a| *a != "--")
        .cloned()
        .collect::<Vec<_>>();
    Ok(options)
}

/// Everything a section needs.
pub struct Ctx {
    pub quick: bool,
    pub server_bin: PathBuf,
    pub cli_bin: PathBuf,
    /// This (release) binary, which also is the SSE client.
    pub xtask_bin: PathBuf,
    /// Server configuration with no executors.
    pub config: PathBuf,
    pub tmp: tempfile::TempDir,
    pub store_ticks: Option<usize>,
}

impl Ctx {
    /// A fresh server on its own database under the temp dir.
    pub fn start_server(&self, name: &str, bench_routes: bool) -> Result<Server> {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Server::start(&ServerSpec {
            binary: &self.server_bin,
            database: &dir.join("skill-fleet.db"),
            config: &self.config,
            bench_routes,
            log: &dir.join("server.log"),
            args: &[],
        })
    }

    /// A closed-loop load of one round: `requests` round robin over [`Ctx::connections`]
    /// keep-alive connections for [`Ctx::round_duration`], `expect` telling a good answer.
    pub fn closed_loop(&self, requests: Vec<Vec<u8>>, expect: fn(&http::Response) -> bool) -> Load {
        Load {
            connections: self.connections(),
            duration: self.round_duration(),
            max_per_connection: 2_000_000,
            requests: std::sync::Arc::new(requests),
            expect,
        }
    }

    pub fn connections(&self) -> usize {
        CONNECTIONS
    }

    pub fn rounds(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }

    pub fn round_duration(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 5 })
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs(1)
    }

    pub fn sse_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 10 })
    }

    pub fn stall_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 6 } else { 20 })
    }
}

/// Runs each load once as warm-up, then `rounds` times, alternating (the order rotates
/// every round so none always runs first); returns each load's rounds.
pub async fn alternate(
    ctx: &Ctx,
    server: &Server,
    loads: &[(&str, &Load)],
) -> Result<Vec<Vec<LoadResult>>> {
    let addr = server.addr;
    for (name, load) in loads {
        let warm = Load {
            duration: ctx.warmup(),
            requests: load.requests.clone(),
            ..**load
        };
        let result = http::run_load(addr, &warm).await?;
        if result.ok == 0 {
            return Err(format!(
                "warm-up of `{name}` got no good answer: {}",
                result
                    .first_unexpected
                    .unwrap_or_else(|| format!("{} connection errors", result.io_errors))
            )
            .into());
        }
    }
    let mut results: Vec<Vec<LoadResult>> = loads.iter().map(|_| Vec::new()).collect();
    for round in 0..ctx.rounds() {
        for k in 0..loads.len() {
            let index = (round + k) % loads.len();
            let (server0, client0) = (server.cpu_time(), server::cpu_time(std::process::id()));
            let mut result = http::run_load(addr, loads[index].1).await?;
            result.server_cpu = server.cpu_time().saturating_sub(server0);
            result.client_cpu = server::cpu_time(std::process::id()).saturating_sub(client0);
            results[index].push(result);
        }
    }
    Ok(results)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The build's target directory (`CARGO_TARGET_DIR`, else `target/` in the repository).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                project_root().join(dir)
            }
        })
        .unwrap_or_else(|| project_root().join("target"))
}

fn cargo_build(packages: &[&str]) -> Result {
    let mut command = Command::new(cargo());
    command
        .current_dir(project_root())
        .args(["build", "--release"]);
    for package in packages {
        command.args(["-p", package]);
    }
    println!("$ cargo build --release -p {}", packages.join(" -p "));
    let status = command
        .status()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release -p {}` failed",
            packages.join(" -p ")
        )
        .into());
    }
    Ok(())
}

fn needs_binaries(options: &Options) -> bool {
    options.only.iter().any(|s| *s != "store")
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let options = match parse(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{err}\n\n{USAGE}");
            return Ok(ExitCode::from(2));
        }
    };
    let started = Instant::now();
    if cfg!(debug_assertions) && options.built_seconds.is_none() {
        // Build the binaries, then hand over to a release build of this benchmark.
        if !options.no_build {
            if needs_binaries(&options) {
                cargo_build(&["skill-fleet-server", "skill-fleet-cli"])?;
            }
            cargo_build(&["xtask"])?;
        }
        let release = target_dir().join("release").join("xtask");
        if !release.exists() {
            return Err(
                format!("`{}` is missing: run without --no-build", release.display()).into(),
            );
        }
        let status = Command::new(&release)
            .arg("bench")
            .args(&options.raw)
            .arg("--built-seconds")
            .arg(format!("{:.3}", started.elapsed().as_secs_f64()))
            .status()
            .map_err(|err| format!("cannot run `{}`: {err}", release.display()))?;
        return Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(2) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        });
    }
    let mut build_seconds = options.built_seconds.unwrap_or(0.0);
    if options.built_seconds.is_none() && !options.no_build && needs_binaries(&options) {
        cargo_build(&["skill-fleet-server", "skill-fleet-cli"])?;
        build_seconds = started.elapsed().as_secs_f64();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run_sections(&options));
    let (report, failed) = outcome?;
    let total = build_seconds + started.elapsed().as_secs_f64();
    let mut report = report;
    report["build_seconds"] = json!(build_seconds);
    report["wall_seconds"] = json!(total);
    // A partial run never overwrites the report of the whole suite.
    let file = if options.only.len() == SECTIONS.len() {
        "report.json".to_owned()
    } else {
        format!("report-{}.json", options.only.join("-"))
    };
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench").join(file));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .map_err(|err| format!("cannot write `{}`: {err}", out.display()))?;
    println!(
        "\nwall time {total:.1} s (building {build_seconds:.1} s); report: {}",
        out.display()
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_sections(options: &Options) -> Result<(Value, bool)> {
    let release = target_dir().join("release");
    let tmp = tempfile::Builder::new()
        .prefix("skill-fleet-bench-")
        .tempdir()?;
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, NO_EXECUTORS)?;
    let ctx = Ctx {
        quick: options.quick,
        server_bin: release.join("skill-fleet-server"),
        cli_bin: release.join("skill-fleet"),
        xtask_bin: std::env::current_exe()?,
        config,
        tmp,
        store_ticks: options.ticks,
    };
    if needs_binaries(options) {
        for binary in [&ctx.server_bin, &ctx.cli_bin] {
            if !binary.exists() {
                return Err(format!("`{}` is missing: build it first", binary.display()).into());
            }
        }
    }
    let machine = machine_info();
    println!(
        "\n## skill-fleet benchmark{} — {} on {}",
        if ctx.quick { " (quick)" } else { "" },
        machine["git_commit"].as_str().unwrap_or("?"),
        machine["cpu_model"].as_str().unwrap_or("?")
    );
    println!(
        "{} cores, {:.1} GiB, kernel {}, load average at start {}",
        machine["nproc"],
        machine["memory_kib"].as_f64().unwrap_or(0.0) / 1024.0 / 1024.0,
        machine["kernel"].as_str().unwrap_or("?"),
        machine["loadavg_start"].as_str().unwrap_or("?")
    );
    let mut sections = serde_json::Map::new();
    let mut goals = Vec::new();
    let mut failed = false;
    for name in &options.only {
        let started = Instant::now();
        let outcome = match *name {
            "ingest" => ingest::run(&ctx).await,
            "revalidate" => revalidate::run(&ctx).await,
            "sse" => sse::run(&ctx).await,
            "restart" => restart::run(&ctx).await,
            "cli" => cli::run(&ctx).await,
            "store" => store::run(&ctx).await,
            "faults" => faults::run(&ctx).await,
            "leases" => leases::run(&ctx).await,
            "cluster" => cluster::run(&ctx).await,
            "artifacts" => artifacts::run(&ctx).await,
            _ => unreachable!("sections are checked when parsing"),
        };
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(section) => {
                section.print();
                println!("\n({name}: {seconds:.1} s)");
                for row in &section.rows {
                    if let Some((goal, met)) = &row.goal {
                        goals.push(json!({
                            "section": name, "measure": row.measure, "goal": goal,
                            "value": row.value, "ratio": row.ratio, "met": met,
                        }));
                    }
                }
                let mut value = section.to_json();
                value["seconds"] = json!(seconds);
                sections.insert((*name).to_owned(), value);
            }
            Err(err) => {
                failed = true;
                eprintln!("\nerror: section `{name}` could not run: {err}");
                sections.insert((*name).to_owned(), json!({"error": err.to_string()}));
            }
        }
    }
    let met = goals.iter().filter(|g| g["met"] == json!(true)).count();
    println!("\ngoals met: {met} of {}", goals.len());
    for goal in goals.iter().filter(|g| g["met"] == json!(false)) {
        println!(
            "  missed: {} — {} (goal {})",
            goal["section"].as_str().unwrap_or(""),
            goal["measure"].as_str().unwrap_or(""),
            goal["goal"].as_str().unwrap_or("")
        );
    }
    let mut machine = machine;
    machine["loadavg_end"] = json!(read_trimmed("/proc/loadavg"));
    let report = json!({
        "mode": if ctx.quick { "quick" } else { "full" },
        "date": chrono::Utc::now().to_rfc3339(),
        "git_commit": machine["git_commit"].clone(),
        "git_dirty": machine["git_dirty"].clone(),
        "machine": machine,
        "sections": sections,
        "goals": goals,
    });
    Ok((report, failed))
}

fn read_trimmed(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .current_dir(project_root())
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine_info() -> Value {
    let cpuinfo = read_trimmed("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(|model| model.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let memory_kib: u64 = read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    json!({
        "git_commit": command_line("git", &["rev-parse", "HEAD"]),
        "git_dirty": !command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_kib": memory_kib,
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "cpu_model": cpu_model,
        "rustc": command_line("rustc", &["--version"]),
        "open_files_limit": command_line("sh", &["-c", "ulimit -Hn"]),
        "loadavg_start": read_trimmed("/proc/loadavg"),
    })
}
