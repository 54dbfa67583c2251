-- The same migration as PostgreSQL's, without jobs_by_version: one process owns an SQLite
-- database, so nothing reads changes by version, and every write would update the index.
-- The rescue sweep finds running jobs through jobs_status_created_at (status first) and
-- checks their expiry row by row: there are few running jobs. An index on the expiry made
-- every progress flush and heartbeat renewal (each moves it) update one more index.
DROP INDEX jobs_status_lease_expires_at;
