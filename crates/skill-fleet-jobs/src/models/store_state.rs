//! The `store_state` table: the store-wide change counter and boot epoch, and the [`Stamp`]
//! of a write transaction.

use std::cell::Cell;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::backend::{Active, Conn};
use crate::schema::store_state;

/// The version and time every change in one write transaction is stamped with.
///
/// The version is taken on first use, by [`Active::next_version`]: one statement that
/// increments the store-wide change counter and returns it, inside the transaction. A
/// transaction that changes no job never asks for it, so it leaves the counter alone (or
/// rolls back, see [`crate::store::JobStore::write_if`]). There is no read-then-write, so
/// the stamp does not rely on the database having a single writer.
#[derive(Debug)]
pub(crate) struct Stamp {
    /// `updated_at` for every job changed in this transaction.
    pub(crate) now: NaiveDateTime,
    /// When a lease taken or renewed in this transaction expires (`now` + the lease ttl).
    pub(crate) lease_until: NaiveDateTime,
    /// The version, once taken.
    version: Cell<Option<i64>>,
}

impl Stamp {
    /// A stamp for a write transaction at `now` (the database's clock, [`Active::now`]),
    /// whose leases last `lease_ttl`; no version taken yet.
    pub(crate) fn at(now: NaiveDateTime, lease_ttl: std::time::Duration) -> Stamp {
        let ttl = chrono::Duration::from_std(lease_ttl).unwrap_or(chrono::Duration::MAX);
        Stamp {
            now,
            lease_until: now.checked_add_signed(ttl).unwrap_or(NaiveDateTime::MAX),
            version: Cell::new(None),
        }
    }

    /// The version every job changed in this transaction gets: the change counter after
    /// this transaction's one increment.
    pub(crate) fn version(&self, conn: &mut Conn) -> QueryResult<i64> {
        if let Some(version) = self.version.get() {
            return Ok(version);
        }
        let version = Active::next_version(conn)?;
        self.version.set(Some(version));
        Ok(version)
    }
}

/// The store-wide change counter.
pub(crate) fn change_counter(conn: &mut Conn) -> QueryResult<i64> {
    store_state::table
        .find(1_i64)
        .select(store_state::change_counter)
        .first(conn)
}

/// Increments the boot epoch and returns the new value.
pub(crate) fn bump_boot_epoch(conn: &mut Conn) -> QueryResult<i64> {
    diesel::update(store_state::table.find(1_i64))
        .set(store_state::boot_epoch.eq(store_state::boot_epoch + 1))
        .returning(store_state::boot_epoch)
        .get_result(conn)
}
