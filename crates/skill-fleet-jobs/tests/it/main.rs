//! The job store's integration tests, one binary, each test on its own temporary database.
//! Store tests run on SQLite and on PostgreSQL (`support::both_backends!`); `postgres` holds
//! the tests of several servers sharing one PostgreSQL.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

mod artifacts;
mod concurrency;
mod history_cap;
mod leases;
mod legacy;
mod lifecycle;
mod list;
mod postgres;
mod progress;
mod proptest_legacy;
mod recovery;
mod support;
