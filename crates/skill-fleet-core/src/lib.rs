#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod artifacts;
mod cluster;
mod error;
mod feed;
mod flusher;
mod limits;
mod live;
mod rescuer;
mod runner;
mod service;
mod stream;
mod writes;

pub use artifacts::ArtifactUpload;
pub use cluster::{ClusterSettings, ClusterStats, LISTEN_POLL, LISTENER_CHECK, run_cluster_feed};
pub use error::{CoreError, Result};
pub use feed::{Audience, ChangeFeed, ChangeKind, ChangeListener, Committed};
pub use flusher::run_flusher;
pub use rescuer::{ABANDONED_UPLOAD_IDLE, RescueSettings, run_rescuer};
pub use runner::Runner;
pub use service::{DEFAULT_HEARTBEAT_INTERVAL, JobService};
pub use stream::{StreamStart, event_from_job};
pub use writes::{Claimant, DURABLE_HEARTBEATS_AFTER_FAULT};
