//! The job store's integration tests, one binary, each test on its own temporary database.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

mod concurrency;
mod history_cap;
mod leases;
mod legacy;
mod lifecycle;
mod list;
mod progress;
mod proptest_legacy;
mod recovery;
mod support;
