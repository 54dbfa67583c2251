//! `skill-fleet`: the command-line client of the skill-fleet job server.
//!
//! Thin by design: parse the arguments (clap), hand them to one module per command, print
//! an error once with its causes, and exit with a documented code (see `--help`).

mod cli;
mod commands;
mod context;
mod error;
mod format;
mod live;
mod parse;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::context::Context;
use crate::error::code;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version print and exit 0; anything else is a usage error (2).
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                code::USAGE
            } else {
                code::OK
            });
        }
    };
    let ctx = Context::new(cli.global);
    match commands::run(&ctx, &cli.command) {
        Ok(exit) => ExitCode::from(exit),
        Err(err) if err.is_broken_pipe() => ExitCode::from(code::OK),
        Err(err) => {
            eprintln!("{}", err.report());
            ExitCode::from(err.exit_code())
        }
    }
}
