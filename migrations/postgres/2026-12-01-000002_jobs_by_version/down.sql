DROP INDEX jobs_by_version;
