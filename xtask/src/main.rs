//! `cargo xtask …`: project chores (migrations, the generated schema, the benchmark suite).
//!
//! Exit codes: 0 success, 1 failure (including `schema --check` finding a stale file),
//! 2 bad usage.

mod bench;
mod demo;
mod migrate;
mod new_migration;
mod release;
mod schema;
mod soak;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Errors of every subcommand, printed once by `main`.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo [--trials N] [--cluster [--database-url URL]]
                           start the server, run a real optimization job, watch it live;
                           --cluster: three servers on one PostgreSQL, one killed mid-run
  migrate [DATABASE_URL]   apply the embedded migrations (default ./skill-fleet.db)
  new-migration NAME       create migrations/<timestamp>_NAME/{up,down}.sql
  release [--dry-run] [--skip-tests]
                           check versions, metadata, git and tests; pack <target dir>/dist/*.tar.gz
  schema [--check]         regenerate crates/skill-fleet-jobs/src/schema.rs, or check it
  bench [--quick] [--only SECTIONS] [--out PATH] [--ticks N] [--no-build]
                           the benchmark suite (release build): table + target/bench/report.json;
                           sections ingest,revalidate,sse,restart,cli,store,faults,leases,cluster
  bench-store [--ticks N]  the store section alone (`bench --only store`)
  test [--rust-only | --python-only] [-- CARGO_TEST_ARGS…]
                           the whole test suite: cargo test --workspace, then python/ci.sh
  soak kill-loop [--rounds N] [--seconds-per-round S] [--workers N] [--lease-workers N] [--seed N] [--no-build]
                           SIGKILL the release server during ingest, restart, and check that
                           every acknowledged write survived";

/// The repository root: the parent of this crate's directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let outcome = match command.as_str() {
        "migrate" => migrate::run(rest),
        "new-migration" => new_migration::run(rest),
        "schema" => schema::run(rest),
        "bench" => bench::run(rest),
        "bench-store" => {
            let mut args = vec!["--only".to_owned(), "store".to_owned()];
            args.extend(rest.iter().filter(|a| *a != "--").cloned());
            bench::run(&args)
        }
        "bench-sse-client" => bench::sse_client::run(rest),
        "demo" => demo::run(rest),
        "soak" => soak::run(rest),
        "test" => test::run(rest),
        "release" => release::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
