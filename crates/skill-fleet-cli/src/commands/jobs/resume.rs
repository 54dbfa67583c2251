//! `skill-fleet jobs resume ID`: queue a failed, cancelled or interrupted job again.

use crate::context::{Context, out, out_json};
use crate::error::{CliError, code};

/// Runs `jobs resume`.
pub fn run(ctx: &Context, id: &str) -> Result<u8, CliError> {
    let job = ctx.client()?.resume(id)?;
    if ctx.json() {
        out_json(&job)?;
    } else {
        out(format!(
            "resumed job {} (status {}, attempt {})",
            job.id, job.status, job.attempt
        ))?;
    }
    Ok(code::OK)
}
