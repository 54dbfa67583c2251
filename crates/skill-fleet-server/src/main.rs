//! `skill-fleet-server`: parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use skill_fleet_server::{Cli, Command, Config, DbCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::resolve(&cli) {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    skill_fleet_server::init_logging(config.log_format);
    let result = match &cli.command {
        None | Some(Command::Serve) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(skill_fleet_server::ServerError::Serve)
            .and_then(|runtime| runtime.block_on(skill_fleet_server::serve(config))),
        Some(Command::InitDb { import }) => {
            skill_fleet_server::init_db(&config.database, import.as_deref()).map(|r| print!("{r}"))
        }
        Some(Command::Db {
            command: DbCommand::Status,
        }) => skill_fleet_server::db_status(&config.database).map(|r| print!("{r}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &dyn std::error::Error) -> ExitCode {
    let mut message = format!("skill-fleet-server: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
    ExitCode::FAILURE
}
