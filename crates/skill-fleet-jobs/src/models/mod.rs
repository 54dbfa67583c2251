//! Row types and row-level queries, one module per table.

pub(crate) mod artifacts;
pub(crate) mod job_progress;
pub(crate) mod jobs;
pub(crate) mod legacy_imports;
pub(crate) mod store_state;

use chrono::{DateTime, NaiveDateTime, Utc};

/// The current UTC time, truncated to whole microseconds so that it survives the round trip
/// through the database and through a list cursor unchanged.
pub(crate) fn now() -> NaiveDateTime {
    truncate_micros(Utc::now())
}

/// Truncates a UTC time to whole microseconds, as stored.
pub(crate) fn truncate_micros(at: DateTime<Utc>) -> NaiveDateTime {
    DateTime::from_timestamp_micros(at.timestamp_micros())
        .unwrap_or(at)
        .naive_utc()
}
