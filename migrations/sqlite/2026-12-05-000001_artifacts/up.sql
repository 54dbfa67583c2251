-- Artifacts: the files a job produced, stored in the database so every server can serve
-- them and a backup holds them (docs/ARCHITECTURE.md, "Artifacts").
--
-- An upload is written as an `artifacts` row in state `writing` and its bytes as
-- `artifact_chunks` rows, each chunk in its own short transaction (a large file never sits
-- whole in memory, and no write waits on a slow upload). One last, fenced transaction makes
-- it `stored` (replacing a stored artifact of the same name). Only `stored` rows are ever
-- listed or served, so an upload cut by a crash is absent, never torn; the sweep deletes
-- `writing` rows left behind.
--
-- chunk_size: every chunk but the last holds exactly this many bytes (a Range request finds
--   its first chunk by division).
-- size, sha256: of the whole file; set when stored (size counts as chunks arrive).
-- attempt: the job attempt whose worker uploaded it; NULL for an operator's upload.
-- updated_at: the last chunk written (the sweep's age of a `writing` row).
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT,
    content_type TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    attempt INTEGER,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- One stored artifact per name and job; any number of uploads of it in flight.
CREATE UNIQUE INDEX artifacts_stored_name ON artifacts (job_id, name) WHERE state = 'stored';
-- The sweep of abandoned uploads.
CREATE INDEX artifacts_writing ON artifacts (updated_at) WHERE state = 'writing';

CREATE TABLE artifact_chunks (
    artifact_id BIGINT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (artifact_id, seq)
);
