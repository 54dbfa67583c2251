-- Ownership of running jobs: a lease in the job's row (docs/ARCHITECTURE.md, "Leases").
--
-- lease_token: random, unguessable; every worker write must carry it (with `attempt`).
--   Kept after the job ends, so a retried complete with the same token is recognised;
--   cleared when the job goes back to the queue.
-- lease_owner: the worker's name, or `server:<boot epoch>` for the server's own children,
--   or `anonymous` for a job started by an event that carried no token.
-- lease_open: 1 when the job was started by a token-less event (an "open" lease): writes
--   without a token are accepted while it runs. 0 for claims: only the token writes.
-- lease_expires_at: when the rescue sweep may take the job back; NULL unless running.
-- lease_renewed_at: the last heartbeat (or write) that renewed the lease.
-- rescues: how many times an expired lease sent the job back to the queue.
-- not_before: a rescued job is not claimed before this (the rescue back-off).
ALTER TABLE jobs ADD COLUMN lease_token TEXT;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_open INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_expires_at TIMESTAMP;
ALTER TABLE jobs ADD COLUMN lease_renewed_at TIMESTAMP;
ALTER TABLE jobs ADD COLUMN rescues INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN not_before TIMESTAMP;

-- The rescue sweep: running jobs by lease expiry.
CREATE INDEX jobs_status_lease_expires_at ON jobs (status, lease_expires_at);

-- job_progress.attempt: the attempt that wrote the row (NULL for rows written before).
-- job_progress.event: what kind of row this is when it is not a progress report:
--   `lease_expired` (the rescue sweep took the job back from a lost worker).
ALTER TABLE job_progress ADD COLUMN attempt INTEGER;
ALTER TABLE job_progress ADD COLUMN event TEXT;
