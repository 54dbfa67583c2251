#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod config;
pub mod dashboard;
mod error;
pub mod executor;
mod logging;
mod retention;
mod startup;
mod tokens;

pub use config::{Cli, Command, Config, DbCommand};
pub use error::ServerError;
pub use logging::init_logging;
pub use startup::{db_status, init_db, serve, serve_until};
