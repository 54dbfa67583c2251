//! Listing jobs: filters, newest-first keyset paging with an opaque cursor, counts.

use chrono::{DateTime, NaiveDateTime};
use diesel::dsl::count_star;
use diesel::prelude::*;
use skill_fleet_types::{JobList, JobStatus};

use crate::error::{Result, StoreError};
use crate::models::jobs::JobRow;
use crate::schema::jobs;
use crate::store::JobStore;

/// Page size when none is asked for.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// Largest page served.
pub const MAX_LIST_LIMIT: u32 = 500;

/// What [`JobStore::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Page size: 0 means [`DEFAULT_LIST_LIMIT`], larger than [`MAX_LIST_LIMIT`] is capped.
    pub limit: u32,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            status: None,
            job_type: None,
            limit: DEFAULT_LIST_LIMIT,
            cursor: None,
        }
    }
}

/// What [`JobStore::list`] accepts as a cursor, as a regular expression (the OpenAPI
/// document's `pattern` of `cursor`): the hex (either case) of `<micros>:<job id>`, where
/// `<micros>` is an optional sign and 1 to 18 digits (a time chrono can always hold).
pub const CURSOR_PATTERN: &str = "^(2[bBdD])?(3[0-9]){1,18}3[aA](3[0-9]|4[1-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aA]|2[dD]){1,64}$";

/// Where a page ends: the last job's `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    created_at: NaiveDateTime,
    id: String,
}

impl Cursor {
    /// Hex of `<created_at in µs>:<id>`: opaque to clients, cheap to check.
    fn encode(&self) -> String {
        let plain = format!(
            "{}:{}",
            self.created_at.and_utc().timestamp_micros(),
            self.id
        );
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(text: &str) -> Result<Cursor> {
        let invalid = || StoreError::InvalidInput(format!("invalid cursor `{text}`"));
        if !text.len().is_multiple_of(2) || text.len() > 256 {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (micros, id) = plain.split_once(':').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        let created_at = DateTime::from_timestamp_micros(micros)
            .ok_or_else(invalid)?
            .naive_utc();
        if skill_fleet_types::validate_job_id(id).is_err() {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at,
            id: id.to_owned(),
        })
    }
}

impl JobStore {
    /// A page of jobs, newest first (by `created_at`, then id), filtered by status and type.
    /// `next_cursor` is `None` on the last page; a cursor that is not one of ours is
    /// [`StoreError::InvalidInput`].
    pub fn list(&self, filter: &ListFilter) -> Result<JobList> {
        let limit = match filter.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let cursor = filter.cursor.as_deref().map(Cursor::decode).transpose()?;
        let mut query = jobs::table.select(JobRow::as_select()).into_boxed();
        if let Some(status) = filter.status {
            query = query.filter(jobs::status.eq(status.as_str()));
        }
        if let Some(job_type) = &filter.job_type {
            query = query.filter(jobs::job_type.eq(job_type.clone()));
        }
        if let Some(cursor) = cursor {
            query = query.filter(
                jobs::created_at.lt(cursor.created_at).or(jobs::created_at
                    .eq(cursor.created_at)
                    .and(jobs::id.lt(cursor.id))),
            );
        }
        let mut rows: Vec<JobRow> = query
            .order((jobs::created_at.desc(), jobs::id.desc()))
            .limit(i64::from(limit) + 1)
            .load(&mut self.conn()?)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(
                Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        let jobs = rows
            .into_iter()
            .map(JobRow::into_job)
            .collect::<Result<Vec<_>>>()?;
        Ok(JobList { jobs, next_cursor })
    }

    /// How many jobs are in each status; every status is listed, zeros included.
    pub fn counts_by_status(&self) -> Result<Vec<(JobStatus, u64)>> {
        let rows: Vec<(String, i64)> = jobs::table
            .group_by(jobs::status)
            .select((jobs::status, count_star()))
            .load(&mut self.conn()?)?;
        Ok(JobStatus::ALL
            .into_iter()
            .map(|status| {
                let count = rows
                    .iter()
                    .find(|(name, _)| name == status.as_str())
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
                (status, count)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            created_at: crate::models::now(),
            id: "job-1_x".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "zz", "abc", "3a", "31323a2e2e2f", "ffff"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
