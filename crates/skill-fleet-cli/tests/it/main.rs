//! The CLI's integration tests, one binary: the real `skill-fleet` binary and the typed client
//! against a real server run in-process on port 0.

mod artifacts;
mod client;
mod commands;
mod lease;
mod support;
mod watch;
