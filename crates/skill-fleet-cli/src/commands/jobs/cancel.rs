//! `skill-fleet jobs cancel ID [--reason R]`.

use clap::Args;

use crate::context::{Context, out, out_json};
use crate::error::{CliError, code};

/// Options of `jobs cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Why; stored as the job's error.
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,
}

/// Runs `jobs cancel`.
pub fn run(ctx: &Context, args: &CancelArgs) -> Result<u8, CliError> {
    let job = ctx.client()?.cancel(&args.id, args.reason.as_deref())?;
    if ctx.json() {
        out_json(&job)?;
    } else {
        out(format!("cancelled job {} (status {})", job.id, job.status))?;
    }
    Ok(code::OK)
}
