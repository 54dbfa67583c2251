//! `skill-fleet jobs …`: one module per subcommand.

pub mod artifacts;
pub mod cancel;
pub mod list;
pub mod logs;
pub mod results;
pub mod resume;
pub mod show;
pub mod watch;

use crate::cli::JobsCommand;
use crate::context::Context;
use crate::error::CliError;

/// Runs a `jobs` subcommand; returns the exit code.
pub fn run(ctx: &Context, command: &JobsCommand) -> Result<u8, CliError> {
    match command {
        JobsCommand::List(args) => list::run(ctx, args),
        JobsCommand::Show(args) => show::run(ctx, &args.id),
        JobsCommand::Results(args) => results::run(ctx, &args.id),
        JobsCommand::Cancel(args) => cancel::run(ctx, args),
        JobsCommand::Resume(args) => resume::run(ctx, &args.id),
        JobsCommand::Logs(args) => logs::run(ctx, &args.id),
        JobsCommand::Watch(args) => watch::run(ctx, args),
        JobsCommand::Artifacts(args) => artifacts::run(ctx, args),
    }
}
