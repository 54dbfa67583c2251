//! What skill-fleet's test suites share, in one place instead of copies and `#[path]`
//! includes: the real `skill-fleet-server` binary on 127.0.0.1:0 ([`server`]), one blocking
//! HTTP client ([`http`]), waits with a deadline ([`wait`]), a seeded random generator
//! ([`rng`]), temporary databases ([`temp`]), a PostgreSQL with a database per test
//! ([`postgres`]), several servers on one PostgreSQL database ([`cluster`]) and the SIGKILL
//! loop behind `cargo xtask soak kill-loop` ([`kill_loop`]).
//!
//! Test support only (`publish = false`): helpers here panic with a message naming what they
//! waited for or the path they could not use, because a failed set-up is a failed test. The
//! kill loop, which `cargo xtask` also runs, returns [`TestkitError`] instead.
#![deny(missing_docs)]

pub mod cluster;
mod error;
pub mod http;
pub mod kill_loop;
pub mod postgres;
pub mod rng;
pub mod server;
pub mod temp;
pub mod wait;

pub use cluster::Cluster;
pub use error::TestkitError;
pub use http::{agent, call};
pub use postgres::{PostgresCluster, PostgresDatabase, TestPostgres};
pub use rng::Rng;
pub use server::TestServer;
pub use temp::{TempDatabase, temp_db};
pub use wait::{DEADLINE, wait_for, wait_until};
