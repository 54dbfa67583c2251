//! `cargo xtask bench-store [-- ARGS]`: the progress-batch benchmark of the job store, in a
//! release build (`cargo bench -p skill-fleet-jobs --bench progress_batch`).

use std::process::{Command, ExitCode};

use crate::{Result, project_root};

pub fn run(args: &[String]) -> Result<ExitCode> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let extra = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let status = Command::new(cargo)
        .current_dir(project_root())
        .args([
            "bench",
            "-p",
            "skill-fleet-jobs",
            "--bench",
            "progress_batch",
            "--",
        ])
        .args(extra)
        .status()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
