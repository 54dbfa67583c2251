#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod artifact;
mod cache;
mod client;
mod error;
#[cfg(test)]
mod fake_server;
mod lease;
mod watch;

pub use artifact::{Download, PARTIAL_SUFFIX, Progress, Transfer, partial_path, sha256_hex};
pub use cache::{CACHE_DIR_ENV, Cache, CacheEntry, CacheStats};
pub use client::{
    CONNECT_TIMEOUT, Client, DEFAULT_SERVER_URL, Fetched, Health, JobFilter, READ_TIMEOUT,
    SOURCE_HEADER,
};
pub use error::ClientError;
pub use lease::{LEASE_DROP_WAIT, Lease, LeaseState};
pub use skill_fleet_types::JobLogs;
pub use watch::{StopHandle, Watch, WatchOptions};

/// The wire types this client speaks, re-exported so users need only this crate.
pub use skill_fleet_types as types;
