-- One row per job: its identity, lifecycle state and latest progress.
-- Timestamps are UTC, written by the store as `YYYY-MM-DD HH:MM:SS.ffffff`.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    source TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    step TEXT,
    message TEXT,
    cost_usd REAL NOT NULL DEFAULT 0,
    metric REAL,
    eta_seconds REAL,
    checkpoint TEXT CHECK (checkpoint IS NULL OR json_valid(checkpoint)),
    attempt INTEGER NOT NULL DEFAULT 0,
    result_path TEXT,
    result TEXT CHECK (result IS NULL OR json_valid(result)),
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
