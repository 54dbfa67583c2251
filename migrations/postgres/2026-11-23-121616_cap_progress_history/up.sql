-- The per-job cap of the progress history (`max_history_rows_per_job`).
--
-- jobs.history_rows: how many job_progress rows the job has. The store keeps it on every
-- history insert and every thinning, so that the cap is checked without a count(*).
ALTER TABLE jobs ADD COLUMN history_rows BIGINT NOT NULL DEFAULT 0;
UPDATE jobs SET history_rows = (
    SELECT count(*) FROM job_progress WHERE job_progress.job_id = jobs.id
);

-- job_progress.flags: why a row is never thinned. Bit 1: it carries a checkpoint; bit 2: it
-- is a terminal state. (The first row of a job and step changes, rows whose step differs
-- from the previous row's, are kept too; they need no flag.) Rows written before this
-- migration do not know whether they carried a checkpoint; the last row of a finished job
-- is its terminal state.
ALTER TABLE job_progress ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
UPDATE job_progress SET flags = 2 WHERE seq IN (
    SELECT max(p.seq) FROM job_progress AS p
    JOIN jobs ON jobs.id = p.job_id
    WHERE jobs.status IN ('completed', 'failed', 'cancelled')
    GROUP BY p.job_id
);
