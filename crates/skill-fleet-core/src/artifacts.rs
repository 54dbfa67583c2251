//! Artifacts: storing the files a job produces (from a worker's upload or the server's own
//! children) and reading them back, over the store's chunked uploads.
//!
//! An [`ArtifactUpload`] takes the bytes as they come, hashes them, cuts them into the
//! store's chunks (one chunk buffered at most, so a large file never sits whole in memory)
//! and refuses them past the per-artifact limit as soon as they pass it. [`ArtifactUpload::
//! finish`] publishes the artifact in one fenced transaction and emits it on the change feed
//! (the job's version changed: caches forget its listing). An upload that is dropped unfinished
//! (a cut connection, an error) is discarded: nothing of it is ever listed.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use skill_fleet_jobs::{
    ARTIFACT_CHUNK_BYTES, ArtifactLimits, Published, StoreError, StoredArtifact, Upload, Writer,
    too_large_file,
};
use skill_fleet_types::{Artifact, content_type_for, validate_artifact_name};

use crate::error::Result;
use crate::feed::{ChangeKind, Committed};
use crate::service::JobService;

/// An upload under way: takes the bytes as they come (hashed, cut into the store's chunks,
/// refused past the per-artifact limit at once); [`ArtifactUpload::finish`] publishes it in
/// one fenced transaction. Dropped unfinished, it is discarded: nothing of it is listed.
pub struct ArtifactUpload<'a> {
    service: &'a JobService,
    upload: Option<Upload>,
    writer: Writer,
    limits: ArtifactLimits,
    hasher: Sha256,
    buffer: Vec<u8>,
    next_chunk: u32,
    size: u64,
}

impl std::fmt::Debug for ArtifactUpload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactUpload")
            .field("upload", &self.upload)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl JobService {
    /// Sets the artifact limits (per artifact, per job).
    pub fn with_artifact_limits(mut self, limits: ArtifactLimits) -> JobService {
        self.artifact_limits = limits;
        self
    }

    /// The artifact limits.
    pub fn artifact_limits(&self) -> ArtifactLimits {
        self.artifact_limits
    }

    /// Starts storing artifact `name` of job `id` for `writer`, who must own the running job
    /// (checked now and again when the upload is finished). `content_type` defaults to what
    /// the name's extension says. A `declared_size` past the per-artifact limit is refused
    /// before any byte is read.
    pub async fn begin_artifact(
        &self,
        id: &str,
        name: &str,
        content_type: Option<&str>,
        declared_size: Option<u64>,
        writer: Writer,
    ) -> Result<ArtifactUpload<'_>> {
        validate_artifact_name(name)?;
        let limits = self.artifact_limits;
        if let Some(size) = declared_size
            && size > limits.max_bytes
        {
            return Err(too_large_file(name, size, limits.max_bytes).into());
        }
        let content_type = content_type
            .unwrap_or_else(|| content_type_for(name))
            .to_owned();
        let (job_id, artifact, upload_writer) = (id.to_owned(), name.to_owned(), writer.clone());
        let upload = self
            .blocking(move |store| {
                store.begin_upload(&job_id, &artifact, &content_type, &upload_writer)
            })
            .await?;
        Ok(ArtifactUpload {
            service: self,
            upload: Some(upload),
            writer,
            limits,
            hasher: Sha256::new(),
            buffer: Vec::with_capacity(ARTIFACT_CHUNK_BYTES),
            next_chunk: 0,
            size: 0,
        })
    }

    /// Deletes uploads that had no chunk for `idle` (the rescue sweep calls this; a server
    /// that owns its SQLite database calls it at start-up with zero: every upload in flight
    /// died with the earlier run).
    pub async fn discard_abandoned_uploads(&self, idle: std::time::Duration) -> Result<usize> {
        self.blocking(move |store| store.discard_abandoned_uploads(idle))
            .await
    }

    /// The stored artifacts of job `id`, by name.
    pub async fn artifacts(&self, id: &str) -> Result<Vec<Artifact>> {
        let id = id.to_owned();
        self.blocking(move |store| store.artifacts(&id)).await
    }

    /// The stored artifact `name` of job `id`, and where its bytes are.
    pub async fn artifact(&self, id: &str, name: &str) -> Result<StoredArtifact> {
        let (id, name) = (id.to_owned(), name.to_owned());
        self.blocking(move |store| store.artifact(&id, &name)).await
    }

    /// Chunk `seq` of a stored artifact.
    pub async fn artifact_chunk(&self, artifact: &StoredArtifact, seq: u64) -> Result<Bytes> {
        let artifact = artifact.clone();
        self.blocking(move |store| store.artifact_chunk(&artifact, seq))
            .await
            .map(Bytes::from)
    }
}

impl ArtifactUpload<'_> {
    /// The bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next bytes of the file; written to the store a chunk at a time. Past the
    /// per-artifact limit the upload is discarded and refused.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        let total = self.size.saturating_add(bytes.len() as u64);
        if total > self.limits.max_bytes {
            let name = self.name().to_owned();
            self.discard().await;
            return Err(too_large_file(&name, total, self.limits.max_bytes).into());
        }
        self.size = total;
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let room = ARTIFACT_CHUNK_BYTES - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == ARTIFACT_CHUNK_BYTES {
                self.write_chunk().await?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered as the next chunk; on failure the upload is discarded.
    async fn write_chunk(&mut self) -> Result<()> {
        let Some(upload) = self.upload.clone() else {
            return Err(StoreError::InvalidInput("the upload was discarded".to_owned()).into());
        };
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(ARTIFACT_CHUNK_BYTES));
        let seq = self.next_chunk;
        let written = self
            .service
            .blocking(move |store| store.append_chunk(&upload, seq, &chunk))
            .await;
        if let Err(err) = written {
            self.discard().await;
            return Err(err);
        }
        self.next_chunk += 1;
        Ok(())
    }

    /// Writes the last chunk and publishes the artifact (fenced again, the per-job limit
    /// checked, a stored artifact of the same name replaced), then tells the change feed. On
    /// any refusal nothing is stored.
    pub async fn finish(mut self) -> Result<Published> {
        if !self.buffer.is_empty() {
            self.write_chunk().await?;
        }
        let Some(upload) = self.upload.clone() else {
            return Err(StoreError::InvalidInput("the upload was discarded".to_owned()).into());
        };
        let sha256 = format!("{:x}", std::mem::take(&mut self.hasher).finalize());
        let (size, writer, limits) = (self.size, self.writer.clone(), self.limits);
        let published = self
            .service
            .blocking(move |store| store.publish_upload(&upload, size, &sha256, &writer, limits))
            .await;
        match published {
            Ok(published) => {
                self.upload = None;
                self.service.emit(Committed::of(
                    ChangeKind::Artifact,
                    published.job.clone(),
                    None,
                ));
                Ok(published)
            }
            Err(err) => {
                self.discard().await;
                Err(err)
            }
        }
    }

    /// Deletes what was written of the upload.
    pub async fn discard(&mut self) {
        if let Some(upload) = self.upload.take() {
            let name = upload.name.clone();
            if let Err(err) = self
                .service
                .blocking(move |store| store.discard_upload(&upload))
                .await
            {
                // The sweep of abandoned uploads takes it later.
                tracing::warn!(artifact = %name, error = %err, "could not discard an unfinished upload");
            }
        }
    }

    fn name(&self) -> &str {
        self.upload
            .as_ref()
            .map_or("", |upload| upload.name.as_str())
    }
}

impl Drop for ArtifactUpload<'_> {
    /// An upload dropped unfinished (its request was cut) is discarded in the background.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let store = self.service.store().clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                if let Err(err) = store.discard_upload(&upload) {
                    tracing::warn!(artifact = %upload.name, error = %err, "could not discard a cut upload");
                }
            });
        }
    }
}
