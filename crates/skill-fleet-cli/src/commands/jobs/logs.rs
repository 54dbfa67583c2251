//! `skill-fleet jobs logs ID`: the job's output lines (jobs run by the server's executor).

use crate::context::{Context, out, out_json};
use crate::error::{CliError, code};

/// Runs `jobs logs`.
pub fn run(ctx: &Context, id: &str) -> Result<u8, CliError> {
    let logs = ctx.client()?.logs(id)?;
    if ctx.json() {
        out_json(&logs)?;
        return Ok(code::OK);
    }
    for (name, lines) in [("stdout", &logs.stdout), ("stderr", &logs.stderr)] {
        if lines.is_empty() {
            continue;
        }
        out(format!("--- {name} ---"))?;
        for line in lines {
            out(line)?;
        }
    }
    if logs.stdout.is_empty() && logs.stderr.is_empty() {
        out(format!("no output from job {}", logs.job_id))?;
    }
    Ok(code::OK)
}
