-- One row per job: its identity, lifecycle state and latest progress. PostgreSQL's form of
-- migrations/sqlite/2026-11-23-000001_create_jobs: the same columns with the types that
-- map to the same diesel types (`TEXT`, `DOUBLE PRECISION`, `INTEGER`, `BIGINT`,
-- `TIMESTAMP` without time zone, written by the store in UTC).
-- Ids, types and statuses compare byte-wise (`COLLATE "C"`), as SQLite compares text, so
-- `ORDER BY created_at, id` (claims, list pages and their cursors) is the same order on both.
-- JSON columns stay `TEXT` (the store reads and writes JSON text); the checks refuse what
-- is not JSON, as SQLite's `json_valid` does.
CREATE TABLE jobs (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    job_type TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    metadata TEXT NOT NULL DEFAULT '{}' CHECK ((metadata::json) IS NOT NULL),
    source TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    step TEXT,
    message TEXT,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    metric DOUBLE PRECISION,
    eta_seconds DOUBLE PRECISION,
    checkpoint TEXT CHECK (checkpoint IS NULL OR (checkpoint::json) IS NOT NULL),
    attempt INTEGER NOT NULL DEFAULT 0,
    result_path TEXT,
    result TEXT CHECK (result IS NULL OR (result::json) IS NOT NULL),
    error TEXT,
    create_body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    version BIGINT NOT NULL
);

-- `list` newest first, filtered by status and/or type, paged by (created_at, id);
-- `claim` takes the oldest queued job (of some types).
CREATE INDEX jobs_created_at_id ON jobs (created_at, id);
CREATE INDEX jobs_status_created_at ON jobs (status, created_at, id);
CREATE INDEX jobs_type_status_created_at ON jobs (job_type, status, created_at, id);
