-- Coalesced progress history: at most one row per job per flush, plus step changes and
-- terminal states. `seq` comes from a sequence, global to the table, so it also increases
-- per job (in the order rows were inserted; on a shared database two servers' rows
-- interleave, and one committed later may carry the smaller seq).
CREATE TABLE job_progress (
    seq BIGSERIAL PRIMARY KEY NOT NULL,
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step TEXT,
    progress DOUBLE PRECISION NOT NULL,
    message TEXT,
    cost_usd DOUBLE PRECISION NOT NULL,
    metric DOUBLE PRECISION,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX job_progress_job_id_seq ON job_progress (job_id, seq);
