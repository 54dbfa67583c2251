//! `cargo xtask demo`: the README's quick start. Builds the server and the CLI, starts the
//! server on the embedded SQLite default (a database under `target/demo/`), runs a real
//! optimization job with the bundled example optimizer and shows its live progress, then
//! stops the server. With `--cluster`, three servers on one PostgreSQL instead, one of them
//! killed mid-run ([`cluster`]).

mod cluster;

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use crate::project_root;

const USAGE: &str = "usage: cargo xtask demo [--trials N] [--cluster [--database-url URL]]";

/// What the command line asked for.
struct Args {
    trials: u32,
    cluster: bool,
    database_url: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        trials: 0,
        cluster: false,
        database_url: None,
    };
    let mut iter = args.iter().filter(|a| *a != "--");
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--trials" => {
                let text = value()?;
                parsed.trials =
                    text.parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or(format!(
                            "--trials needs a number from 1 to 1000, got `{text}`"
                        ))?;
            }
            "--cluster" => parsed.cluster = true,
            "--database-url" => parsed.database_url = Some(value()?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if parsed.database_url.is_some() && !parsed.cluster {
        return Err("--database-url goes with --cluster".to_owned());
    }
    if parsed.trials == 0 {
        parsed.trials = if parsed.cluster { 24 } else { 12 };
    }
    Ok(parsed)
}

/// Runs the demo; the exit code is the CLI's (0 when the job completed).
pub fn run(args: &[String]) -> crate::Result<ExitCode> {
    let args = match parse(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}\n{USAGE}");
            return Ok(ExitCode::from(2));
        }
    };
    let trials = args.trials.to_string();
    let root = project_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!("building skill-fleet-server and skill-fleet…");
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "skill-fleet-server",
            "-p",
            "skill-fleet-cli",
        ])
        .status()?;
    if !status.success() {
        return Err("cargo build failed".into());
    }
    let bin = crate::bench::target_dir().join("debug");
    if args.cluster {
        return cluster::run(&bin, args.database_url.as_deref(), args.trials);
    }
    let demo_dir = root.join("target").join("demo");
    std::fs::create_dir_all(&demo_dir)?;

    let mut server = Command::new(bin.join("skill-fleet-server"))
        .current_dir(&demo_dir)
        .args(["--bind", "127.0.0.1:0", "--database", "skill-fleet.db"])
        .env("SKILL_FLEET_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().ok_or("server has no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = server.kill();
        return Err("the server did not start within 60 s".into());
    };
    println!(
        "server listening on {url} (database {})",
        demo_dir.join("skill-fleet.db").display()
    );
    println!("starting an optimization job with the bundled example optimizer…\n");

    let cli = bin.join("skill-fleet");
    let watch = Command::new(&cli)
        .args([
            "--server",
            &url,
            "optimize",
            "--optimizer",
            "miprov2",
            "--model",
            "demo-model",
        ])
        .args(["--metadata", &format!("trials={trials}"), "--watch"])
        .env("SKILL_FLEET_CACHE_DIR", demo_dir.join("cache"))
        .status()?;
    println!();
    let _ = Command::new(&cli)
        .args(["--server", &url, "jobs", "list", "--limit", "5"])
        .env("SKILL_FLEET_CACHE_DIR", demo_dir.join("cache"))
        .status();

    // SIGTERM: the server stops gracefully (streams ended, progress written).
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status();
    let _ = server.wait();
    println!("\nserver stopped. Run it yourself with: cargo run -p skill-fleet-server");
    Ok(ExitCode::from(
        u8::try_from(watch.code().unwrap_or(1)).unwrap_or(1),
    ))
}
