//! The one error type of the store, and the one place diesel's `NotFound` becomes ours.

use std::path::PathBuf;

use skill_fleet_types::{JobStatus, ValidationError};

use crate::lifecycle::Action;

/// Everything the store can fail with. Messages are lowercase and name the job id or path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No job with this id.
    #[error("job `{id}` not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The job is in a state that does not allow the action; nothing was written.
    #[error("job `{id}` is {from}, cannot {action}")]
    InvalidTransition {
        /// The job.
        id: String,
        /// Its status when the action was refused.
        from: JobStatus,
        /// What was asked.
        action: Action,
    },
    /// The id exists with a different body.
    #[error("job `{id}` already exists: {reason}")]
    Conflict {
        /// The clashing id.
        id: String,
        /// What differs.
        reason: String,
    },
    /// A value given to the store is invalid (id, type, metadata, numbers, cursor, file).
    #[error("{0}")]
    InvalidInput(String),
    /// A stored row cannot be read back (bad JSON, unknown status): the database was edited
    /// by hand or by a newer version.
    #[error("job `{id}` has a corrupt `{field}` column: {reason}")]
    Corrupt {
        /// The job whose row is bad.
        id: String,
        /// The column.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database refused a query.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// Connecting to the database failed.
    #[error("cannot connect to the database: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// No pooled connection could be had.
    #[error("database pool error: {0}")]
    Pool(#[from] r2d2::Error),
    /// Running or inspecting migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Reading a file (legacy import) failed.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<ValidationError> for StoreError {
    fn from(err: ValidationError) -> Self {
        StoreError::InvalidInput(err.to_string())
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Turns diesel's `NotFound` for a lookup by id into [`StoreError::NotFound`]; the one place
/// that mapping happens.
pub(crate) trait OrNotFound<T> {
    /// Maps `Err(NotFound)` to [`StoreError::NotFound`] naming `id`.
    fn or_not_found(self, id: &str) -> Result<T>;
}

impl<T> OrNotFound<T> for diesel::QueryResult<T> {
    fn or_not_found(self, id: &str) -> Result<T> {
        self.map_err(|err| match err {
            diesel::result::Error::NotFound => StoreError::NotFound { id: id.to_owned() },
            other => StoreError::Database(other),
        })
    }
}
