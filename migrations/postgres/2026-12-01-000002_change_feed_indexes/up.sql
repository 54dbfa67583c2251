-- Jobs by version: a server sharing this database reads what other servers changed as
-- `WHERE version > <the last version it saw> ORDER BY version` (see
-- crates/skill-fleet-jobs/src/changes.rs).
CREATE INDEX jobs_by_version ON jobs (version);
-- The rescue sweep finds running jobs through jobs_status_created_at (status first) and
-- checks their expiry row by row: there are few running jobs. An index on the expiry made
-- every progress flush and heartbeat renewal (each moves it) update one more index, and
-- kept PostgreSQL from updating those rows in place (HOT).
DROP INDEX jobs_status_lease_expires_at;
