//! `skill-fleet jobs watch ID`: follow a job's live progress until it ends.

use std::time::Duration;

use clap::Args;

use crate::context::Context;
use crate::error::CliError;
use crate::live;
use crate::parse::parse_positive_duration;

/// Options of `jobs watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Keep reconnecting this long when the server goes away (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, default_value = "5m")]
    pub reconnect_for: Duration,
}

/// Runs `jobs watch`; exit code 0 when the job completes, 1 when it fails or is cancelled.
pub fn run(ctx: &Context, args: &WatchArgs) -> Result<u8, CliError> {
    live::follow(&ctx.client()?, &args.id, ctx.json(), args.reconnect_for)
}
