CREATE INDEX jobs_status_lease_expires_at ON jobs (status, lease_expires_at);
