//! One module per command, each with its own `run`.

pub mod cache;
pub mod jobs;
pub mod optimize;

use crate::cli::{CacheCommand, Command};
use crate::context::Context;
use crate::error::CliError;

/// Runs `command`; returns the exit code.
pub fn run(ctx: &Context, command: &Command) -> Result<u8, CliError> {
    match command {
        Command::Jobs { command } => jobs::run(ctx, command),
        Command::Optimize(args) => optimize::run(ctx, args),
        Command::Cache { command } => match command {
            CacheCommand::Stats => cache::stats(ctx),
            CacheCommand::Clear => cache::clear(ctx),
            CacheCommand::Prune(args) => cache::prune(ctx, args),
        },
    }
}
