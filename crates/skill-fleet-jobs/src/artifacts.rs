//! Artifacts: the files a job produced, stored in the database in chunks.
//!
//! # Whole or absent
//!
//! An upload is written in three steps, none of which holds a write open while bytes travel:
//! 1. [`JobStore::begin_upload`] checks that the writer owns the running job (the fence,
//!    [`crate::admits`]) and inserts an `artifacts` row in state `writing`;
//! 2. [`JobStore::append_chunk`] writes each chunk of [`ARTIFACT_CHUNK_BYTES`] (the last may be
//!    shorter) in its own short transaction;
//! 3. [`JobStore::publish_upload`], in one transaction, checks the fence again, the chunks'
//!    count and total, and the job's byte limit, deletes a stored artifact of the same name,
//!    marks the upload `stored` and bumps the job's version.
//!
//! Reads only ever see `stored` rows, so an upload cut by a crash or a dropped connection is
//! absent, never torn; [`JobStore::discard_upload`] removes one at once, and
//! [`JobStore::discard_abandoned_uploads`] the ones nobody finished.
//!
//! # Reading
//!
//! [`JobStore::artifact`] finds a stored artifact; [`JobStore::artifact_chunk`] reads one of
//! its chunks. A reader holds no transaction between chunks: a download in progress while the
//! artifact is replaced or its job pruned ends early (the chunk is gone), and its hash does
//! not match, which every download checks.

use std::time::Duration;

use diesel::prelude::*;
use skill_fleet_types::{Artifact, Job, validate_artifact_name, validate_content_type};

use crate::backend::{Active, Conn};
use crate::error::{Result, StoreError};
use crate::lease::Writer;
use crate::lifecycle::{Action, transition};
use crate::models::artifacts::{ArtifactRow, NewArtifactRow, STORED, WRITING, delete_with_chunks};
use crate::models::jobs::JobRow;
use crate::schema::{artifact_chunks, artifacts, jobs};
use crate::store::JobStore;

/// The size of every chunk but an artifact's last.
pub const ARTIFACT_CHUNK_BYTES: usize = 1 << 20;

/// An upload in flight ([`JobStore::begin_upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Its row.
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// The artifact's name.
    pub name: String,
}

/// What [`JobStore::publish_upload`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The artifact, now listed and served.
    pub artifact: Artifact,
    /// Whether it replaced a stored artifact of the same name.
    pub replaced: bool,
    /// The job after the write (its version bumped).
    pub job: Job,
}

/// A stored artifact and where its bytes are ([`JobStore::artifact`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredArtifact {
    /// The job it belongs to.
    pub job_id: String,
    /// The artifact.
    pub artifact: Artifact,
    /// Its row, for [`JobStore::artifact_chunk`].
    pub id: i64,
    /// The size of every chunk but the last.
    pub chunk_size: u64,
}

impl StoredArtifact {
    /// How many chunks hold it.
    pub fn chunks(&self) -> u64 {
        self.artifact.size.div_ceil(self.chunk_size.max(1))
    }
}

/// The limits [`JobStore::publish_upload`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Largest artifact, in bytes.
    pub max_bytes: u64,
    /// Most bytes of stored artifacts one job may hold.
    pub max_job_bytes: u64,
}

impl ArtifactLimits {
    /// The default largest artifact: 256 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
    /// The default most bytes per job: 1 GiB.
    pub const DEFAULT_MAX_JOB_BYTES: u64 = 1 << 30;
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_bytes: ArtifactLimits::DEFAULT_MAX_BYTES,
            max_job_bytes: ArtifactLimits::DEFAULT_MAX_JOB_BYTES,
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn chunk_size_i32() -> i32 {
    i32::try_from(ARTIFACT_CHUNK_BYTES).unwrap_or(i32::MAX)
}

impl JobRow {
    /// Whether `writer` may store an artifact on this job now: the writer owns the job (checked
    /// first, as for every lifecycle write) and the transition table allows it (the job is
    /// running).
    fn admits_artifact(&self, writer: &Writer) -> Result<()> {
        self.admits(writer)?;
        let status = self.job_status()?;
        if transition(status, Action::StoreArtifact).is_none() {
            return Err(StoreError::InvalidTransition {
                id: self.id.clone(),
                from: status,
                action: Action::StoreArtifact,
            });
        }
        Ok(())
    }
}

impl JobStore {
    /// Starts an upload of artifact `name` (replacing a stored one of that name once it is
    /// published) to job `job_id`, if `writer` owns the running job. Nothing is listed until
    /// [`JobStore::publish_upload`].
    pub fn begin_upload(
        &self,
        job_id: &str,
        name: &str,
        content_type: &str,
        writer: &Writer,
    ) -> Result<Upload> {
        validate_artifact_name(name)?;
        validate_content_type(content_type)?;
        self.write(|conn| {
            let row = JobRow::find_for_write(conn, job_id)?;
            row.admits_artifact(writer)?;
            let now = Active::now(conn)?;
            let attempt = match writer {
                Writer::Operator => None,
                _ => Some(row.attempt),
            };
            let new = NewArtifactRow {
                job_id,
                name,
                state: WRITING,
                size: 0,
                content_type,
                chunk_size: chunk_size_i32(),
                attempt,
                created_at: now,
                updated_at: now,
            };
            let insert = diesel::insert_into(artifacts::table).values(&new);
            let id: i64 = match conn {
                Conn::Postgres(pg) => insert.returning(artifacts::id).get_result(pg)?,
                Conn::Sqlite(sqlite) => insert.returning(artifacts::id).get_result(sqlite)?,
            };
            Ok(Upload {
                id,
                job_id: job_id.to_owned(),
                name: name.to_owned(),
            })
        })
    }

    /// Writes chunk `seq` (from 0) of an upload, in its own transaction. Chunks come in order
    /// and every chunk but the last is [`ARTIFACT_CHUNK_BYTES`] long: a chunk is refused
    /// unless the ones before it hold exactly `seq` full chunks. Refused when the upload was
    /// discarded.
    pub fn append_chunk(&self, upload: &Upload, seq: u32, data: &[u8]) -> Result<()> {
        if data.len() > ARTIFACT_CHUNK_BYTES {
            return Err(StoreError::InvalidInput(format!(
                "chunk {seq} of artifact `{}` is {} bytes, more than {ARTIFACT_CHUNK_BYTES}",
                upload.name,
                data.len()
            )));
        }
        let seq = i32::try_from(seq).map_err(|_| {
            StoreError::InvalidInput(format!("artifact `{}` has too many chunks", upload.name))
        })?;
        self.write(|conn| {
            let now = Active::now(conn)?;
            // Marks the upload alive, and finds whether it still is and whether this chunk
            // follows full ones.
            let before = i64::from(seq) * i64::from(chunk_size_i32());
            let touched = diesel::update(
                artifacts::table
                    .filter(artifacts::id.eq(upload.id))
                    .filter(artifacts::state.eq(WRITING))
                    .filter(artifacts::size.eq(before)),
            )
            .set((
                artifacts::updated_at.eq(now),
                artifacts::size.eq(artifacts::size + to_i64(data.len() as u64)),
            ))
            .execute(conn)?;
            if touched == 0 {
                let alive =
                    ArtifactRow::by_id(conn, upload.id)?.is_some_and(|row| row.state == WRITING);
                if !alive {
                    return Err(discarded(upload));
                }
                return Err(StoreError::InvalidInput(format!(
                    "chunk {seq} of artifact `{}` does not follow {seq} full chunks",
                    upload.name
                )));
            }
            let insert = diesel::insert_into(artifact_chunks::table).values((
                artifact_chunks::artifact_id.eq(upload.id),
                artifact_chunks::seq.eq(seq),
                artifact_chunks::data.eq(data),
            ));
            match conn {
                Conn::Postgres(pg) => insert.execute(pg)?,
                Conn::Sqlite(sqlite) => insert.execute(sqlite)?,
            };
            Ok(())
        })
    }

    /// Makes an upload a stored artifact, if `writer` still owns the running job, its chunks
    /// add up to `size`, and the job's stored artifacts (less one of the same name, which this
    /// replaces) plus this one stay within `limits`. In one transaction, which also bumps the
    /// job's version. On a refusal nothing changes; the upload stays to be discarded.
    pub fn publish_upload(
        &self,
        upload: &Upload,
        size: u64,
        sha256: &str,
        writer: &Writer,
        limits: ArtifactLimits,
    ) -> Result<Published> {
        if size > limits.max_bytes {
            return Err(too_large_file(&upload.name, size, limits.max_bytes));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidInput(format!(
                "sha256 of artifact `{}` is not 64 hex digits",
                upload.name
            )));
        }
        let sha256 = sha256.to_ascii_lowercase();
        self.write(|conn| {
            let mut job = JobRow::find_for_write(conn, &upload.job_id)?;
            job.admits_artifact(writer)?;
            let row = ArtifactRow::by_id(conn, upload.id)?
                .filter(|row| row.state == WRITING)
                .ok_or_else(|| discarded(upload))?;
            // Chunks were appended in order, each after full ones (`append_chunk`), so the
            // byte count and the chunk count say the upload is whole.
            let chunks: i64 = artifact_chunks::table
                .filter(artifact_chunks::artifact_id.eq(upload.id))
                .count()
                .get_result(conn)?;
            let expected = size.div_ceil(u64::try_from(row.chunk_size).unwrap_or(1).max(1));
            let whole = u64::try_from(row.size).ok() == Some(size)
                && u64::try_from(chunks).ok() == Some(expected);
            if !whole {
                return Err(StoreError::InvalidInput(format!(
                    "upload of artifact `{}` to job `{}` is not whole: {} bytes in {chunks} chunks written, {size} announced",
                    upload.name, upload.job_id, row.size
                )));
            }
            let others: Vec<ArtifactRow> = ArtifactRow::stored_of(conn, &upload.job_id)?;
            let replaced: Vec<i64> = others
                .iter()
                .filter(|other| other.name == upload.name)
                .map(|other| other.id)
                .collect();
            let kept: u64 = others
                .iter()
                .filter(|other| other.name != upload.name)
                .map(|other| u64::try_from(other.size).unwrap_or(0))
                .sum();
            if kept.saturating_add(size) > limits.max_job_bytes {
                return Err(StoreError::TooLarge(format!(
                    "job `{}` would hold {} bytes of artifacts with `{}` ({size} bytes), more than its limit of {} bytes",
                    upload.job_id,
                    kept.saturating_add(size),
                    upload.name,
                    limits.max_job_bytes
                )));
            }
            delete_with_chunks(conn, &replaced)?;
            let now = Active::now(conn)?;
            diesel::update(artifacts::table.find(upload.id))
                .set((
                    artifacts::state.eq(STORED),
                    artifacts::sha256.eq(&sha256),
                    artifacts::created_at.eq(now),
                    artifacts::updated_at.eq(now),
                ))
                .execute(conn)?;
            let stored = ArtifactRow::by_id(conn, upload.id)?.ok_or_else(|| discarded(upload))?;
            let stamp = self.stamp(conn)?;
            job.updated_at = stamp.now;
            job.version = stamp.version(conn)?;
            diesel::update(jobs::table.find(&job.id))
                .set((
                    jobs::updated_at.eq(job.updated_at),
                    jobs::version.eq(job.version),
                ))
                .execute(conn)?;
            Ok(Published {
                artifact: stored.into_artifact(),
                replaced: !replaced.is_empty(),
                job: job.into_job()?,
            })
        })
    }

    /// Deletes an upload that will not be published (and its chunks); nothing if it is gone
    /// or was published.
    pub fn discard_upload(&self, upload: &Upload) -> Result<()> {
        self.write(|conn| {
            let ids: Vec<i64> = artifacts::table
                .filter(artifacts::id.eq(upload.id))
                .filter(artifacts::state.eq(WRITING))
                .select(artifacts::id)
                .load(conn)?;
            delete_with_chunks(conn, &ids).map(drop)?;
            Ok(())
        })
    }

    /// Deletes uploads no chunk was written to for `idle` (their writer crashed or gave up),
    /// with their chunks; how many. Each upload in its own short transaction.
    pub fn discard_abandoned_uploads(&self, idle: Duration) -> Result<usize> {
        let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        let mut discarded = 0;
        loop {
            let gone = self.write(|conn| {
                let cutoff = Active::now(conn)?
                    .checked_sub_signed(idle)
                    .unwrap_or(chrono::NaiveDateTime::MIN);
                let ids: Vec<i64> = artifacts::table
                    .filter(artifacts::state.eq(WRITING))
                    .filter(artifacts::updated_at.lt(cutoff))
                    .select(artifacts::id)
                    .order(artifacts::id.asc())
                    .limit(1)
                    .load(conn)?;
                Ok(delete_with_chunks(conn, &ids)?)
            })?;
            if gone == 0 {
                return Ok(discarded);
            }
            discarded += gone;
        }
    }

    /// How many uploads are under way (or abandoned and not yet swept), all jobs together.
    pub fn uploads_in_flight(&self) -> Result<u64> {
        let count: i64 = artifacts::table
            .filter(artifacts::state.eq(WRITING))
            .count()
            .get_result(&mut *self.conn()?)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The stored artifacts of job `job_id`, by name; [`StoreError::NotFound`] when there
    /// is no such job.
    pub fn artifacts(&self, job_id: &str) -> Result<Vec<Artifact>> {
        let conn = &mut *self.conn()?;
        // The job first: an unknown job is not an empty list.
        JobRow::find_status(conn, job_id)?.ok_or_else(|| StoreError::NotFound {
            id: job_id.to_owned(),
        })?;
        Ok(ArtifactRow::stored_of(conn, job_id)?
            .into_iter()
            .map(ArtifactRow::into_artifact)
            .collect())
    }

    /// The stored artifact `name` of job `job_id`; [`StoreError::NotFound`] for an unknown
    /// job, [`StoreError::ArtifactNotFound`] for an unknown name.
    pub fn artifact(&self, job_id: &str, name: &str) -> Result<StoredArtifact> {
        let conn = &mut *self.conn()?;
        let Some(row) = ArtifactRow::stored(conn, job_id, name)? else {
            JobRow::find_status(conn, job_id)?.ok_or_else(|| StoreError::NotFound {
                id: job_id.to_owned(),
            })?;
            return Err(StoreError::ArtifactNotFound {
                id: job_id.to_owned(),
                name: name.to_owned(),
            });
        };
        Ok(StoredArtifact {
            job_id: job_id.to_owned(),
            id: row.id,
            chunk_size: u64::try_from(row.chunk_size).unwrap_or(1).max(1),
            artifact: row.into_artifact(),
        })
    }

    /// Chunk `seq` of a stored artifact; [`StoreError::ArtifactNotFound`] when it is gone
    /// (replaced or pruned since it was found).
    pub fn artifact_chunk(&self, artifact: &StoredArtifact, seq: u64) -> Result<Vec<u8>> {
        let conn = &mut *self.conn()?;
        let seq = i32::try_from(seq).unwrap_or(i32::MAX);
        let query = artifact_chunks::table
            .filter(artifact_chunks::artifact_id.eq(artifact.id))
            .filter(artifact_chunks::seq.eq(seq))
            .select(artifact_chunks::data);
        let data: Option<Vec<u8>> = match conn {
            Conn::Postgres(pg) => query.first(pg).optional()?,
            Conn::Sqlite(sqlite) => query.first(sqlite).optional()?,
        };
        data.ok_or_else(|| StoreError::ArtifactNotFound {
            id: artifact.job_id.clone(),
            name: artifact.artifact.name.clone(),
        })
    }

    /// Whether job `job_id` holds a stored artifact `name` (what a `result_path` of
    /// `artifact:NAME` must name); false for an unknown job.
    pub fn has_artifact(&self, job_id: &str, name: &str) -> Result<bool> {
        let conn = &mut *self.conn()?;
        Ok(ArtifactRow::stored(conn, job_id, name)?.is_some())
    }
}

fn discarded(upload: &Upload) -> StoreError {
    StoreError::Conflict {
        id: upload.job_id.clone(),
        reason: format!(
            "the upload of artifact `{}` was discarded (abandoned for too long, or its job was deleted)",
            upload.name
        ),
    }
}

/// The refusal of an artifact larger than the per-file limit.
pub fn too_large_file(name: &str, size: u64, max: u64) -> StoreError {
    StoreError::TooLarge(format!(
        "artifact `{name}` is {size} bytes or more, more than the limit of {max} bytes per artifact"
    ))
}
