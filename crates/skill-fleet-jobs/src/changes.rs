//! Changes committed by other servers sharing a PostgreSQL database: the doorbell a server
//! rings after its commits (`NOTIFY`), the dedicated connection that hears the others'
//! (`LISTEN`), and the read of what changed, from the table, by version.
//!
//! The doorbell carries no data, only which jobs changed and to which version (or that there
//! were too many to list: [`Doorbell::Resync`]); a server that hears it reads the rows
//! themselves with [`JobStore::jobs_changed_since`]. That read cannot miss a commit: every
//! write takes its version from the `store_state` row and holds that row's lock until it
//! commits, so versions become visible in the order they were given (a later version is
//! never visible while an earlier one is still to commit).

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;

use crate::error::Result;
use crate::models::jobs::JobRow;
use crate::schema::jobs;
use crate::store::JobStore;
use skill_fleet_types::Job;

/// The channel servers notify and listen on (one per database: PostgreSQL scopes
/// notifications to the database they were sent in).
pub const CHANGE_CHANNEL: &str = "skill_fleet_changes";

/// The `application_name` of a server's listener connection, as `pg_stat_activity` shows it.
pub const LISTENER_APPLICATION_NAME: &str = "skill-fleet-listener";

/// The longest payload a doorbell sends; PostgreSQL refuses 8000 bytes and more.
pub const MAX_DOORBELL_BYTES: usize = 7999;

/// What one doorbell says. Its text: the sending server's run number, then either `resync` or
/// the changes as `id:version` (`id:-` for a deletion), separated by spaces. Job ids are
/// `[A-Za-z0-9_-]`, so neither separator can occur in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doorbell {
    /// These jobs changed (`Some(version)`) or were deleted (`None`).
    Changes {
        /// The server run that committed them (its boot epoch).
        from: u64,
        /// Job id and version after the change.
        changes: Vec<(String, Option<u64>)>,
    },
    /// More changes than one payload holds: read everything newer than what you saw, and
    /// forget what you cached (deletions are not listed).
    Resync {
        /// The server run that committed them.
        from: u64,
    },
}

impl Doorbell {
    /// The server run that rang.
    pub fn from(&self) -> u64 {
        match self {
            Doorbell::Changes { from, .. } | Doorbell::Resync { from } => *from,
        }
    }

    /// The payload for `changes` committed by run `from`: the list, or `resync` when the list
    /// would pass [`MAX_DOORBELL_BYTES`].
    pub fn encode(from: u64, changes: &[(String, Option<u64>)]) -> String {
        use std::fmt::Write;
        let mut text = from.to_string();
        for (id, version) in changes {
            let _ = match version {
                Some(version) => write!(text, " {id}:{version}"),
                None => write!(text, " {id}:-"),
            };
            if text.len() > MAX_DOORBELL_BYTES {
                return format!("{from} resync");
            }
        }
        text
    }

    /// Reads a payload; `None` for one this version does not understand (it is then treated
    /// as a resync by the caller).
    pub fn parse(payload: &str) -> Option<Doorbell> {
        let mut words = payload.split(' ');
        let from = words.next()?.parse().ok()?;
        let mut changes = Vec::new();
        for word in words {
            if word == "resync" {
                return Some(Doorbell::Resync { from });
            }
            let (id, version) = word.split_once(':')?;
            if skill_fleet_types::validate_job_id(id).is_err() {
                return None;
            }
            let version = match version {
                "-" => None,
                number => Some(number.parse().ok()?),
            };
            changes.push((id.to_owned(), version));
        }
        Some(Doorbell::Changes { from, changes })
    }
}

/// A dedicated connection that listens on [`CHANGE_CHANNEL`]; not pooled (a pooled
/// connection's `LISTEN` would end up with whichever caller took it next).
pub struct ChangeNotifications {
    conn: PgConnection,
}

impl std::fmt::Debug for ChangeNotifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotifications")
            .finish_non_exhaustive()
    }
}

impl ChangeNotifications {
    /// The payloads that arrived since the last call, without waiting (reads what the
    /// socket holds). An error means the connection is broken: open a new one.
    pub fn take(&mut self) -> Result<Vec<String>> {
        let mut payloads = Vec::new();
        for notification in self.conn.notifications_iter() {
            let notification = notification?;
            if notification.channel == CHANGE_CHANNEL {
                payloads.push(notification.payload);
            }
        }
        Ok(payloads)
    }

    /// A round trip on the connection (`SELECT 1`): whether it still works, in both
    /// directions.
    pub fn check(&mut self) -> Result<()> {
        diesel::sql_query("SELECT 1").execute(&mut self.conn)?;
        Ok(())
    }
}

impl JobStore {
    /// Opens a connection listening for other servers' doorbells; `None` on SQLite (one
    /// process owns the database: there is nobody else to hear).
    pub fn listen_for_changes(&self) -> Result<Option<ChangeNotifications>> {
        let Some(postgres) = self.backend().postgres() else {
            return Ok(None);
        };
        let mut conn = crate::backend::postgres::connect(postgres.url())?;
        diesel::sql_query(format!(
            "SET application_name = '{LISTENER_APPLICATION_NAME}'"
        ))
        .execute(&mut conn)?;
        diesel::sql_query(format!("LISTEN {CHANGE_CHANNEL}")).execute(&mut conn)?;
        Ok(Some(ChangeNotifications { conn }))
    }

    /// Rings the doorbell: `NOTIFY` with `payload` (see [`Doorbell::encode`]), outside any
    /// transaction, so only after the commits it announces. Nothing on SQLite.
    pub fn ring_doorbell(&self, payload: &str) -> Result<()> {
        if self.backend().postgres().is_none() {
            return Ok(());
        }
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANGE_CHANNEL)
            .bind::<Text, _>(payload)
            .execute(&mut *self.conn()?)?;
        Ok(())
    }

    /// How many servers listen for changes on this database now (their listener
    /// connections in `pg_stat_activity`); `None` on SQLite.
    pub fn listening_servers(&self) -> Result<Option<u64>> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        if self.backend().postgres().is_none() {
            return Ok(None);
        }
        let count: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind::<Text, _>(LISTENER_APPLICATION_NAME)
        .get_result(&mut *self.conn()?)?;
        Ok(Some(u64::try_from(count.n).unwrap_or(0)))
    }

    /// The jobs whose version is above `version`, oldest change first, at most `limit`: what
    /// changed since a reader last looked (see the module documentation for why nothing
    /// committed is skipped). Each job appears once, as it is now.
    pub fn jobs_changed_since(&self, version: u64, limit: usize) -> Result<Vec<Job>> {
        let after = i64::try_from(version).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<JobRow> = jobs::table
            .filter(jobs::version.gt(after))
            .order(jobs::version.asc())
            .limit(limit)
            .select(JobRow::as_select())
            .load(&mut *self.conn()?)?;
        rows.into_iter().map(JobRow::into_job).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_round_trip() {
        let changes = vec![
            ("job-1".to_owned(), Some(41)),
            ("gone".to_owned(), None),
            ("resync".to_owned(), Some(7)),
        ];
        let text = Doorbell::encode(12, &changes);
        assert_eq!(text, "12 job-1:41 gone:- resync:7");
        assert_eq!(
            Doorbell::parse(&text),
            Some(Doorbell::Changes { from: 12, changes })
        );
        assert_eq!(
            Doorbell::parse("3"),
            Some(Doorbell::Changes {
                from: 3,
                changes: vec![]
            })
        );
    }

    #[test]
    fn too_many_changes_become_a_resync() {
        let changes: Vec<_> = (0..2000)
            .map(|n| (format!("job-{n:05}"), Some(n)))
            .collect();
        let text = Doorbell::encode(5, &changes);
        assert_eq!(text, "5 resync");
        assert_eq!(Doorbell::parse(&text), Some(Doorbell::Resync { from: 5 }));
        let fits: Vec<_> = changes[..100].to_vec();
        assert!(Doorbell::encode(5, &fits).len() <= MAX_DOORBELL_BYTES);
    }

    #[test]
    fn unreadable_payloads_are_refused() {
        for payload in ["", "x 1:2", "1 job", "1 job:x", "1 ../etc:3", "1 a:1:2"] {
            assert_eq!(Doorbell::parse(payload), None, "{payload}");
        }
    }
}
