//! `cargo xtask migrate [DATABASE_URL]`: applies the embedded migrations.

use std::process::ExitCode;

use crate::Result;

/// Database used when none is given.
const DEFAULT_URL: &str = "./skill-fleet.db";

pub fn run(args: &[String]) -> Result<ExitCode> {
    let url = match args {
        [] => DEFAULT_URL,
        [url] => url.as_str(),
        _ => {
            eprintln!("usage: cargo xtask migrate [DATABASE_URL]");
            return Ok(ExitCode::from(2));
        }
    };
    let applied = skill_fleet_jobs::run_migrations(url)?;
    if applied.is_empty() {
        println!("{url}: up to date, no migration applied");
    } else {
        for name in &applied {
            println!("applied {name}");
        }
        println!("{url}: applied {} migration(s)", applied.len());
    }
    Ok(ExitCode::SUCCESS)
}
