-- Who cancelled or resumed a job: the name of the token that asked (NULL for other rows,
-- and when the server needs no token).
ALTER TABLE job_progress ADD COLUMN actor TEXT;
