CREATE INDEX jobs_status_lease_expires_at ON jobs (status, lease_expires_at);
DROP INDEX jobs_by_version;
