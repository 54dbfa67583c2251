#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod emitted;
mod error;
mod eta;
mod hub;
mod id;
mod subscription;
mod update;

pub use emitted::Emitted;
pub use error::StreamError;
pub use hub::{Hub, HubConfig, HubStats};
pub use id::{VERSION_SHIFT, event_id_version, version_event_id};
pub use subscription::Subscription;
pub use update::Update;

/// Re-exported from `skill-fleet-types`: the emitted state and the job status it carries.
pub use skill_fleet_types::{JobStatus, StreamEvent};
