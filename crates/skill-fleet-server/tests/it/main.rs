//! The server's integration tests, one binary: the real `skill-fleet-server` binary (built by
//! cargo for this package) on port 0, each test on its own temp database.

mod artifacts;
mod cluster;
mod config_docs;
mod dashboard;
mod executor;
mod faults;
mod leases;
mod ownership;
mod proptest_parsers;
mod restart;
mod security;
mod support;
mod tokens;
mod webdriver;
