//! The one error type of the store, and the one place diesel's `NotFound` becomes ours.

use std::path::PathBuf;

use skill_fleet_types::{JobStatus, ValidationError};

use crate::backend::Active;
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
    /// The job has no stored artifact of this name.
    #[error("job `{id}` has no artifact `{name}`")]
    ArtifactNotFound {
        /// The job.
        id: String,
        /// The name asked for.
        name: String,
    },
    /// An artifact past the per-artifact or per-job byte limit; nothing was stored.
    #[error("{0}")]
    TooLarge(String),
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
    /// A worker write whose attempt and token do not own the job (its lease expired and it
    /// was rescued, another attempt holds it, or a token-less write met a claimed job);
    /// nothing was written.
    #[error("lease lost on job `{id}`: {reason}")]
    LeaseLost {
        /// The job.
        id: String,
        /// The job's current attempt.
        attempt: u32,
        /// The job's current status.
        status: JobStatus,
        /// Why the write does not own the job.
        reason: String,
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
    /// This server's earlier writes kept the write lock longer than the busy timeout (they
    /// are waiting for another process's lock); nothing was written.
    #[error("database is locked: waited {} ms for this server's earlier writes", waited.as_millis())]
    Busy {
        /// How long this write waited.
        waited: std::time::Duration,
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
    /// Another process holds the database's lock (`<database>.lock`): a running server or
    /// a program embedding the store. Nothing was opened.
    #[error(
        "database {database} is in use by another {}",
        crate::owner::describe(owner)
    )]
    InUse {
        /// The database, as given.
        database: String,
        /// Its lock file.
        lock_path: PathBuf,
        /// What the holder wrote into the lock file, if it could be read.
        owner: Option<Box<crate::owner::OwnerRecord>>,
    },
    /// The lock file beside the database could not be opened, locked or written.
    #[error("cannot lock `{}`: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading a file (legacy import) failed.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A storage condition outside the program that refused a query: the operator (or time) fixes
/// it, the server does not. Nothing the refused call tried to write was committed. Which
/// database errors are which fault is the backend's to say (`backend/`); each variant names
/// the SQLite result codes and PostgreSQL conditions behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The disk (or the file system holding the database) is full: `SQLITE_FULL`;
    /// PostgreSQL's `53100` (disk full).
    Full,
    /// The database cannot be written: a read-only file system or file, or the database
    /// file was moved (`SQLITE_READONLY`); on PostgreSQL a read-only transaction (`25006`,
    /// a standby or `default_transaction_read_only`).
    ReadOnly,
    /// Another connection holds the write lock past the busy timeout (`SQLITE_BUSY`,
    /// `SQLITE_LOCKED`); on PostgreSQL a row lock held past the busy timeout (`55P03`), a
    /// statement timeout (`57014`), a deadlock (`40P01`), too many connections (`53300`).
    Busy,
    /// The operating system failed a read or write (`SQLITE_IOERR`, `SQLITE_CANTOPEN`), e.g.
    /// a file system that went read-only under the open database.
    Io,
    /// The database server cannot be reached or is going away (PostgreSQL): connection
    /// refused or lost (class `08`), administrator or crash shutdown, starting up or in
    /// recovery (`57P01`, `57P02`, `57P03`). Writes work again once it answers; the pool
    /// reconnects by itself.
    Unavailable,
}

impl StorageFault {
    /// What the condition is, for messages: `database is full`.
    pub fn describe(self) -> &'static str {
        match self {
            StorageFault::Full => "database is full",
            StorageFault::ReadOnly => "database is read-only",
            StorageFault::Busy => "database is busy",
            StorageFault::Io => "database i/o error",
            StorageFault::Unavailable => "database is unavailable",
        }
    }
}

impl StoreError {
    /// The storage condition behind this error, if it is one (disk full, read-only,
    /// locked, i/o), as the backend classifies it; `None` for refusals (not found,
    /// conflicts, invalid input) and bugs.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Database(err) => Active::fault_of(err),
            StoreError::Connection(err) => Active::fault_of_message(&err.to_string()),
            // r2d2's message carries the last connection error ("timed out waiting for
            // connection: unable to open database file"). Without one, every pooled
            // connection stayed in use past the busy timeout: the database is busy (r2d2
            // fails only by timing out).
            StoreError::Pool(err) => {
                Active::fault_of_message(&err.to_string()).or(Some(StorageFault::Busy))
            }
            StoreError::Busy { .. } => Some(StorageFault::Busy),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn sqlite(message: &str) -> StoreError {
        StoreError::Database(Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(message.to_owned()),
        ))
    }

    #[test]
    fn sqlite_messages_name_their_storage_fault() {
        assert!(sqlite("database or disk is full").storage_fault() == Some(StorageFault::Full));
        assert!(
            sqlite("attempt to write a readonly database").storage_fault()
                == Some(StorageFault::ReadOnly)
        );
        assert!(sqlite("database is locked").storage_fault() == Some(StorageFault::Busy));
        assert_eq!(
            sqlite("disk I/O error").storage_fault(),
            Some(StorageFault::Io)
        );
        let busy = StoreError::Busy {
            waited: std::time::Duration::from_millis(5),
        };
        assert!(busy.storage_fault() == Some(StorageFault::Busy));
        // A failed commit whose rollback failed too is read through to the commit's cause.
        let commit = StoreError::Database(Error::RollbackErrorOnCommit {
            rollback_error: Box::new(Error::NotInTransaction),
            commit_error: Box::new(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("database or disk is full".to_owned()),
            )),
        });
        assert!(commit.storage_fault() == Some(StorageFault::Full));
    }

    #[test]
    fn refusals_and_bugs_are_not_storage_faults() {
        assert_eq!(
            sqlite("UNIQUE constraint failed: jobs.id").storage_fault(),
            None
        );
        assert_eq!(sqlite("no such table: jobs").storage_fault(), None);
        let missing = StoreError::NotFound { id: "x".to_owned() };
        assert_eq!(missing.storage_fault(), None);
        // Client text never reaches the classification (only database errors are read).
        let input = StoreError::InvalidInput("database or disk is full".to_owned());
        assert_eq!(input.storage_fault(), None);
    }
}
