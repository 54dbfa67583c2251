//! The `artifacts` and `artifact_chunks` tables: one row per artifact (or upload in flight),
//! its bytes in fixed-size chunks.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use skill_fleet_types::Artifact;

use crate::backend::Conn;
use crate::schema::{artifact_chunks, artifacts};

/// `artifacts.state` of an upload in flight: never listed nor served.
pub(crate) const WRITING: &str = "writing";
/// `artifacts.state` of a whole, stored artifact.
pub(crate) const STORED: &str = "stored";

/// One `artifacts` row as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = artifacts, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct ArtifactRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) size: i64,
    pub(crate) sha256: Option<String>,
    pub(crate) content_type: String,
    pub(crate) chunk_size: i32,
    pub(crate) attempt: Option<i32>,
    pub(crate) created_at: NaiveDateTime,
}

/// A new `artifacts` row (an upload starting).
#[derive(Debug, Insertable)]
#[diesel(table_name = artifacts, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct NewArtifactRow<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) state: &'a str,
    pub(crate) size: i64,
    pub(crate) content_type: &'a str,
    pub(crate) chunk_size: i32,
    pub(crate) attempt: Option<i32>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

impl ArtifactRow {
    /// The wire form (an upload in flight has no hash yet: empty).
    pub(crate) fn into_artifact(self) -> Artifact {
        Artifact {
            name: self.name,
            size: u64::try_from(self.size).unwrap_or(0),
            sha256: self.sha256.unwrap_or_default(),
            content_type: self.content_type,
            created_at: self.created_at.and_utc(),
            attempt: self.attempt.and_then(|a| u32::try_from(a).ok()),
        }
    }

    /// The stored artifacts of one job, by name.
    pub(crate) fn stored_of(conn: &mut Conn, job_id: &str) -> QueryResult<Vec<ArtifactRow>> {
        artifacts::table
            .filter(artifacts::job_id.eq(job_id))
            .filter(artifacts::state.eq(STORED))
            .order(artifacts::name.asc())
            .select(ArtifactRow::as_select())
            .load(conn)
    }

    /// The stored artifact `name` of one job, if there is one.
    pub(crate) fn stored(
        conn: &mut Conn,
        job_id: &str,
        name: &str,
    ) -> QueryResult<Option<ArtifactRow>> {
        artifacts::table
            .filter(artifacts::job_id.eq(job_id))
            .filter(artifacts::name.eq(name))
            .filter(artifacts::state.eq(STORED))
            .select(ArtifactRow::as_select())
            .first(conn)
            .optional()
    }

    /// One row by id, whatever its state.
    pub(crate) fn by_id(conn: &mut Conn, id: i64) -> QueryResult<Option<ArtifactRow>> {
        artifacts::table
            .find(id)
            .select(ArtifactRow::as_select())
            .first(conn)
            .optional()
    }
}

/// Deletes the rows `ids` of `artifacts` with their chunks; how many artifacts went.
pub(crate) fn delete_with_chunks(conn: &mut Conn, ids: &[i64]) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::delete(artifact_chunks::table.filter(artifact_chunks::artifact_id.eq_any(ids)))
        .execute(conn)?;
    diesel::delete(artifacts::table.filter(artifacts::id.eq_any(ids))).execute(conn)
}
