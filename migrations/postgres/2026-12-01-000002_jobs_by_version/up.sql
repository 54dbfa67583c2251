-- Jobs by version: a server sharing a PostgreSQL database reads what other servers changed
-- as `WHERE version > <the last version it saw> ORDER BY version` (see
-- crates/skill-fleet-jobs/src/changes.rs). Kept on SQLite too, so both backends have the
-- same schema.
CREATE INDEX jobs_by_version ON jobs (version);
