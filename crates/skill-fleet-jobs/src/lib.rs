#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod artifacts;
mod backend;
mod changes;
mod error;
mod lease;
mod legacy;
mod lifecycle;
mod list;
mod models;
mod owner;
mod progress;
mod recovery;
mod schema;
mod store;

pub use artifacts::{
    ARTIFACT_CHUNK_BYTES, ArtifactLimits, Published, StoredArtifact, Upload, too_large_file,
};
pub use changes::{
    CHANGE_CHANNEL, ChangeNotifications, Doorbell, LISTENER_APPLICATION_NAME, MAX_DOORBELL_BYTES,
};
pub use error::{Result, StorageFault, StoreError};
pub use lease::{
    ANONYMOUS_OWNER, Heartbeat, HeldLease, LEASE_EXPIRED_ERROR, LEASE_EXPIRED_EVENT, LeasePolicy,
    RescuePolicy, RescueReport, RescueScope, Rescued, SERVER_OWNER_PREFIX, Writer, admits,
};
pub use legacy::{DEFAULT_LEGACY_TYPE, IMPORTED_RUNNING_ERROR, ImportReport, LEGACY_SOURCE};
pub use lifecycle::{Action, ClaimFilter, Claimed, Created, NewJob, RESUMED_EVENT, transition};
pub use list::{CURSOR_PATTERN, DEFAULT_LIST_LIMIT, ListFilter, MAX_LIST_LIMIT};
pub use owner::{DatabaseOwner, OwnerRecord, Ownership, lock_path, owner_of};
pub use progress::{BatchReport, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, ProgressWrite};
pub use recovery::{INTERRUPTED_ERROR, PruneReport};
pub use store::{
    DEFAULT_MAX_HISTORY_ROWS_PER_JOB, JobStore, MIGRATIONS, MigrationStatus, POSTGRES_MIGRATIONS,
    StoreOptions, is_shared_url, migration_status, run_migrations,
};
