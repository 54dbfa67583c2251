DROP TABLE artifact_chunks;
DROP TABLE artifacts;
