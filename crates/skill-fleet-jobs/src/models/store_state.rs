//! The `store_state` table: the store-wide change counter and boot epoch.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::schema::store_state;

/// The version and time every change in one write transaction is stamped with.
///
/// `begin` reads the store-wide change counter; the version is that plus one. `commit` stores
/// it, and must be called once the transaction has changed a job. Inside an immediate
/// transaction no other writer runs, so the read-then-write is safe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    /// The version every job changed in this transaction gets.
    pub(crate) version: i64,
    /// `updated_at` for every job changed in this transaction.
    pub(crate) now: NaiveDateTime,
}

impl Stamp {
    /// Reads the counter at the start of a write transaction.
    pub(crate) fn begin(conn: &mut SqliteConnection) -> QueryResult<Stamp> {
        Ok(Stamp {
            version: change_counter(conn)? + 1,
            now: super::now(),
        })
    }

    /// Bumps the store-wide counter to this stamp's version.
    pub(crate) fn commit(&self, conn: &mut SqliteConnection) -> QueryResult<()> {
        diesel::update(store_state::table.find(1_i64))
            .set(store_state::change_counter.eq(self.version))
            .execute(conn)?;
        Ok(())
    }
}

/// The store-wide change counter.
pub(crate) fn change_counter(conn: &mut SqliteConnection) -> QueryResult<i64> {
    store_state::table
        .find(1_i64)
        .select(store_state::change_counter)
        .first(conn)
}

/// Increments the boot epoch and returns the new value.
pub(crate) fn bump_boot_epoch(conn: &mut SqliteConnection) -> QueryResult<i64> {
    diesel::update(store_state::table.find(1_i64))
        .set(store_state::boot_epoch.eq(store_state::boot_epoch + 1))
        .returning(store_state::boot_epoch)
        .get_result(conn)
}
