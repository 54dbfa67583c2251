-- Coalesced progress history: at most one row per job per flush, plus step changes and
-- terminal states. `seq` is the rowid, global to the table, so it also increases per job.
CREATE TABLE job_progress (
    seq INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step TEXT,
    progress REAL NOT NULL,
    message TEXT,
    cost_usd REAL NOT NULL,
    metric REAL,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX job_progress_job_id_seq ON job_progress (job_id, seq);
