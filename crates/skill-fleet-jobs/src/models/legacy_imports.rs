//! The `legacy_imports` table: one row per legacy import run.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::backend::Conn;
use crate::schema::legacy_imports;

/// A new `legacy_imports` row.
#[derive(Debug, Insertable)]
#[diesel(table_name = legacy_imports, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct NewLegacyImport<'a> {
    pub(crate) path: &'a str,
    pub(crate) imported: i32,
    pub(crate) skipped: i32,
    pub(crate) failed: i32,
    pub(crate) imported_at: NaiveDateTime,
}

impl NewLegacyImport<'_> {
    /// Records the import.
    pub(crate) fn insert(&self, conn: &mut Conn) -> QueryResult<()> {
        diesel::insert_into(legacy_imports::table)
            .values(self)
            .execute(conn)
            .map(drop)
    }
}
