//! The artifact routes: a worker's upload (fenced, streamed into the store's chunks), the
//! listing, and the download (streamed from the store's chunks, strong ETag, `Range`).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use skill_fleet_jobs::{StoredArtifact, Writer};
use skill_fleet_types::{
    ATTEMPT_HEADER, Artifact, ArtifactList, ErrorBody, LEASE_TOKEN_HEADER, fence_from_headers,
    validate_content_type,
};

use crate::cache::{Representation, etag, http_date, is_not_modified};
use crate::error::ApiError;
use crate::extract::{ArtifactPath, JobId};
use crate::routes::jobs::{cached, to_body};
use crate::state::AppState;

/// Chunks read ahead of the socket by a download: one being written, one or two read.
const READ_AHEAD_CHUNKS: usize = 2;

/// `PUT /api/v1/jobs/{id}/artifacts/{name}`: a worker stores a file its job produced.
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{id}/artifacts/{name}",
    operation_id = "upload_artifact",
    description = "Stores the request body as the job's artifact `name`, streamed into the database in chunks (a large file never sits whole in the server's memory). A claimed job's upload carries the claim's fence in the headers `Skill-Fleet-Attempt` and `Skill-Fleet-Lease-Token` (a mismatch is 409 `lease_lost`, checked before the body is read and again when it is stored); an upload without them is accepted only on a job started by token-less events. The job must be `running`. The artifact is whole or absent: it is listed only once every byte is stored, and a cut upload leaves nothing. The same name again replaces the artifact. Its `Content-Type` is kept (absent: guessed from the name's extension); its SHA-256 is recorded. Past `max_artifact_bytes` per artifact or `max_job_artifact_bytes` per job: 413, nothing stored.",
    tag = "workers",
    summary = "Upload an artifact",
    params(
        ("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)"),
        ("name" = String, Path, description = "The artifact's name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.` (400 otherwise)"),
        ("Skill-Fleet-Attempt" = Option<u32>, Header, description = "The claim's `attempt` (with `Skill-Fleet-Lease-Token`)"),
        ("Skill-Fleet-Lease-Token" = Option<String>, Header, description = "The claim's `lease_token` (with `Skill-Fleet-Attempt`)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes; any `Content-Type` (kept as the artifact's)."),
    responses(
        (status = 200, description = "Stored, replacing the artifact of the same name", body = Artifact),
        (status = 201, description = "Stored", body = Artifact),
        (status = 400, description = "The id or name is invalid, a header is not text, `Content-Length` is not a number, or the body was cut (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not running (`invalid_transition`), or this attempt does not own it (`lease_lost`)", body = ErrorBody),
        (status = 413, description = "Larger than `max_artifact_bytes`, or the job's artifacts would pass `max_job_artifact_bytes` (`payload_too_large`); nothing stored", body = ErrorBody),
        (status = 422, description = "Only one of the two fence headers, an attempt that is not a number, or a `Content-Type` that is not `type/subtype` (`invalid_input`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
        (status = 503, description = "The database cannot be written now (`unavailable`): retry", body = ErrorBody),
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    ArtifactPath { id, name }: ArtifactPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        headers
            .get(&name)
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| ApiError::BadRequest(format!("the `{name}` header is not text")))
            })
            .transpose()
    };
    let content_type = text(header::CONTENT_TYPE)?;
    if let Some(content_type) = content_type {
        validate_content_type(content_type)?;
    }
    let declared_size = text(header::CONTENT_LENGTH)?
        .map(|length| {
            length.trim().parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("`content-length` `{length}` is not a number"))
            })
        })
        .transpose()?;
    let fence = fence_from_headers(
        text(header::HeaderName::from_static(ATTEMPT_HEADER))?,
        text(header::HeaderName::from_static(LEASE_TOKEN_HEADER))?,
    )?;
    let service = state.service();
    let mut upload = service
        .begin_artifact(&id, &name, content_type, declared_size, Writer::of(fence))
        .await?;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let bytes = frame.map_err(|err| {
            ApiError::BadRequest(format!(
                "the upload of artifact `{name}` to job `{id}` was cut after {} bytes: {err}",
                upload.size()
            ))
        })?;
        if let Err(err) = upload.write(&bytes).await {
            drain(frames).await;
            return Err(err.into());
        }
    }
    let published = upload.finish().await?;
    let status = if published.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(published.artifact)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/jobs/{id}/artifacts/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Reads and drops what is left of a refused upload's body, up to [`DRAIN_BYTES`] or
/// [`DRAIN_TIME`], so the client that is still sending reads the refusal instead of a reset
/// connection (a server that answers with a body unread behind it closes the connection,
/// and the kernel resets it under the client's next write).
async fn drain(mut frames: axum::body::BodyDataStream) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(bytes)) = frames.next().await {
            left = left.saturating_sub(bytes.len() as u64);
            if left == 0 {
                return;
            }
        }
    })
    .await;
}

/// Most bytes of a refused upload read to let its client hear the refusal.
const DRAIN_BYTES: u64 = 64 << 20;

/// Longest a refused upload is read to let its client hear the refusal.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /api/v1/jobs/{id}/artifacts`: the job's stored artifacts.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/artifacts",
    operation_id = "list_artifacts",
    description = "The job's stored artifacts, by name, with their sizes, SHA-256 and content types. Uploads under way are not listed. Its `ETag` changes with the job's `version`, which every stored artifact bumps.",
    tag = "jobs",
    summary = "List a job's artifacts",
    params(("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)")),
    responses(
        (status = 200, description = "The artifacts", body = ArtifactList),
        (status = 400, description = "The id is not a valid job id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id (`not_found`)", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn list(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    cached(&state, request, async |parts| {
        let JobId(id) = JobId::from_request_parts(parts, &state).await?;
        let scope = state.generations().job(&id);
        let job = state.service().get(&id).await?;
        let artifacts = state.service().artifacts(&id).await?;
        let representation = Representation {
            etag: etag(format_args!("{}.v{}.artifacts", job.id, job.version)),
            last_modified: job.updated_at,
            settled: job.status.is_terminal(),
            body: to_body(&ArtifactList {
                total_bytes: artifacts.iter().map(|a| a.size).sum(),
                job_id: job.id,
                artifacts,
            })?,
        };
        Ok((scope, representation))
    })
    .await
}

/// `GET /api/v1/jobs/{id}/artifacts/{name}`: the artifact's bytes, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/artifacts/{name}",
    operation_id = "download_artifact",
    description = "The artifact's bytes, streamed from the database a chunk at a time. Its strong `ETag` is its SHA-256 (quoted): `If-None-Match` with it answers 304, and a download can be checked against it. One `Range` (`bytes=A-B`, `bytes=A-`, `bytes=-N`) answers 206 with `Content-Range`; an unsatisfiable one 416; several ranges, or an `If-Range` that does not match the `ETag`, the whole file. `Content-Disposition: attachment` names the file.",
    tag = "jobs",
    summary = "Download an artifact",
    params(
        ("id" = String, Path, description = "The job id, `[A-Za-z0-9_-]{1,64}` (400 otherwise)"),
        ("name" = String, Path, description = "The artifact's name (400 when invalid)"),
    ),
    responses(
        (status = 200, description = "The whole file, with its stored `Content-Type`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for, with `Content-Range`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (`If-None-Match` matched the SHA-256)"),
        (status = 400, description = "The id or name is invalid (`bad_request`)", body = ErrorBody),
        (status = 401, description = "A token is configured and the request did not carry it (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No job with this id, or no artifact of this name (`not_found`)", body = ErrorBody),
        (status = 416, description = "The range is outside the file (`range_not_satisfiable`); `Content-Range: bytes */SIZE`", body = ErrorBody),
        (status = 500, description = "The database failed (`internal`)", body = ErrorBody),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    ArtifactPath { id, name }: ArtifactPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stored = state.service().artifact(&id, &name).await?;
    let artifact = &stored.artifact;
    let tag = artifact.etag();
    let mut response_headers = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            response_headers.insert(name, value);
        }
    };
    set(header::ETAG, &tag);
    set(header::LAST_MODIFIED, &http_date(artifact.created_at));
    set(header::CACHE_CONTROL, "no-cache");
    set(header::ACCEPT_RANGES, "bytes");
    if is_not_modified(&headers, &tag, Some(artifact.created_at)) {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    set(header::CONTENT_TYPE, &artifact.content_type);
    set(
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename=\"{}\"", artifact.name),
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Served from the dashboard's origin: never run as a page there.
    set(header::CONTENT_SECURITY_POLICY, "sandbox");
    let size = artifact.size;
    let range = match requested_range(&headers, &tag, size) {
        Ok(range) => range,
        Err(Unsatisfiable) => {
            return Err(ApiError::RangeNotSatisfiable {
                message: format!(
                    "the range asked of artifact `{name}` of job `{id}` is outside its {size} bytes"
                ),
                size,
            });
        }
    };
    let (status, start, end) = match range {
        Some((start, end)) => {
            set(
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{size}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        None => (StatusCode::OK, 0, size),
    };
    set(header::CONTENT_LENGTH, &(end - start).to_string());
    let body = stream_bytes(state.clone(), stored, start, end);
    Ok((status, response_headers, body).into_response())
}

/// A `Range` that names no byte of the file.
#[derive(Debug, PartialEq, Eq)]
struct Unsatisfiable;

/// The one byte range `[start, end)` a request asks for, if it asks for one that the
/// server honours: a single `bytes=` range, and an `If-Range` (if any) equal to `etag`.
/// Anything else (no `Range`, several ranges, another unit, a stale `If-Range`, a date in
/// `If-Range`) means the whole file.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(range) = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        // Strong comparison: only the same bytes may be resumed.
        if if_range.to_str().ok().map(str::trim) != Some(etag) {
            return Ok(None);
        }
    }
    parse_range(range, size)
}

/// Parses one `bytes=` range of a file of `size` bytes into `[start, end)`; `Ok(None)` for
/// what is not one byte range (served whole).
fn parse_range(range: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Err(Unsatisfiable),
            Some(_) if size == 0 => Err(Unsatisfiable),
            Some(suffix) => Ok(Some((size.saturating_sub(suffix), size))),
            None => Ok(None),
        },
        // `bytes=A-`: from A to the end.
        (false, true) => match number(first) {
            Some(start) if start < size => Ok(Some((start, size))),
            Some(_) => Err(Unsatisfiable),
            None => Ok(None),
        },
        // `bytes=A-B`: A to B inclusive, B clipped to the end.
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= size {
                    Err(Unsatisfiable)
                } else {
                    Ok(Some((start, last.saturating_add(1).min(size))))
                }
            }
            _ => Ok(None),
        },
        (true, true) => Ok(None),
    }
}

/// The bytes `[start, end)` of a stored artifact as a response body: a task reads chunks
/// from the store ahead of the socket (at most [`READ_AHEAD_CHUNKS`] waiting), so memory
/// stays flat whatever the file's size. A chunk that cannot be read (the artifact was
/// replaced or pruned meanwhile, the database failed) ends the body with an error: the
/// client sees a cut response, never wrong bytes under the promised length.
fn stream_bytes(state: AppState, stored: StoredArtifact, start: u64, end: u64) -> Body {
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD_CHUNKS);
    if start < end {
        tokio::spawn(async move {
            let chunk_size = stored.chunk_size;
            for seq in start / chunk_size..end.div_ceil(chunk_size) {
                let read = state.service().artifact_chunk(&stored, seq).await;
                let piece = read
                    .map(|chunk| {
                        let offset = seq * chunk_size;
                        let from = usize::try_from(start.saturating_sub(offset)).unwrap_or(0);
                        let to = usize::try_from((end - offset).min(chunk.len() as u64))
                            .unwrap_or(chunk.len());
                        chunk.slice(from.min(to)..to)
                    })
                    .map_err(|err| {
                        tracing::warn!(artifact = %stored.artifact.name, error = %err, "artifact download cut");
                        std::io::Error::other(err.to_string())
                    });
                let failed = piece.is_err();
                if sender.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    Body::from_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

/// The benchmark baseline of a download: the same artifact's bytes, loaded once into memory
/// and served from there (config-gated, outside the API document).
pub async fn bench_from_memory(
    State(state): State<AppState>,
    ArtifactPath { id, name }: ArtifactPath,
) -> Result<Response, ApiError> {
    static LOADED: std::sync::Mutex<Option<(String, Bytes)>> = std::sync::Mutex::new(None);
    let key = format!("{id}/{name}");
    let cached = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .filter(|(loaded, _)| *loaded == key)
        .map(|(_, bytes)| bytes.clone());
    let bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let stored = state.service().artifact(&id, &name).await?;
            let mut all = Vec::with_capacity(usize::try_from(stored.artifact.size).unwrap_or(0));
            for seq in 0..stored.chunks() {
                all.extend_from_slice(&state.service().artifact_chunk(&stored, seq).await?);
            }
            let bytes = Bytes::from(all);
            *LOADED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((key, bytes.clone()));
            bytes
        }
    };
    // One body of known length: what serving these bytes costs at best.
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_honoured_and_the_rest_served_whole() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=500-", 1000), Ok(Some((500, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok(Some((0, 1000))));
        assert_eq!(parse_range("bytes=900-5000", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=999-999", 1000), Ok(Some((999, 1000))));
        // Served whole: several ranges, other units, nonsense, a reversed range.
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=x-y", 1000), Ok(None));
        assert_eq!(parse_range("bytes=5-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=-", 1000), Ok(None));
        // Unsatisfiable: past the end, an empty suffix, anything of an empty file.
        assert_eq!(parse_range("bytes=1000-", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=1000-2000", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-10", 0), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Err(Unsatisfiable));
    }

    #[test]
    fn if_range_must_be_the_same_entity() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        assert_eq!(
            requested_range(&headers, "\"abc\"", 100),
            Ok(Some((10, 100)))
        );
        headers.insert(header::IF_RANGE, HeaderValue::from_static("\"abc\""));
        assert_eq!(
            requested_range(&headers, "\"abc\"", 100),
            Ok(Some((10, 100)))
        );
        headers.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(requested_range(&headers, "\"abc\"", 100), Ok(None));
        headers.insert(
            header::IF_RANGE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(requested_range(&headers, "\"abc\"", 100), Ok(None));
    }
}
