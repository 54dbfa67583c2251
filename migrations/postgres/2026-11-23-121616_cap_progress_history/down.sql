ALTER TABLE job_progress DROP COLUMN flags;
ALTER TABLE jobs DROP COLUMN history_rows;
