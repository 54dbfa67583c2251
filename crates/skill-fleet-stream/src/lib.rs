#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod error;
mod eta;
mod hub;
mod subscription;
mod update;

pub use error::StreamError;
pub use hub::{Hub, HubConfig, HubStats};
pub use subscription::Subscription;
pub use update::Update;

/// Re-exported from `skill-fleet-types`: the emitted state and the job status it carries.
pub use skill_fleet_types::{JobStatus, StreamEvent};
