//! Integration tests of the job store, each on its own temporary database.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

mod common;
mod concurrency;
mod legacy;
mod lifecycle;
mod list;
mod progress;
mod recovery;
mod tidy;
