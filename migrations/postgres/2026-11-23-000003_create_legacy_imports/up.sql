-- One row per run of the legacy import (old Python in-memory job manager).
CREATE TABLE legacy_imports (
    id BIGSERIAL PRIMARY KEY NOT NULL,
    path TEXT NOT NULL,
    imported INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    imported_at TIMESTAMP NOT NULL
);
