ALTER TABLE job_progress DROP COLUMN actor;
