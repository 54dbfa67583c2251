//! Artifacts: listing a job's files, downloading one (streamed, resumable, checked against
//! its SHA-256) and uploading one under a lease's fence.
//!
//! A download never holds the file in memory: the body is copied through a small buffer
//! into the writer or file, hashed on the way. The server's strong `ETag` is the
//! artifact's SHA-256, so every finished download is checked against it. A download to a
//! path writes `PATH.part` and renames it into place only once the check passed; a
//! `PATH.part` left by a cut download is continued with `Range` and `If-Range` (the server
//! sends the whole file instead when the artifact changed since).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skill_fleet_types::{
    ATTEMPT_HEADER, Artifact, ArtifactList, Fence, LEASE_TOKEN_HEADER, validate_artifact_name,
    validate_content_type,
};

use crate::client::{Client, Fetched, api_error};
use crate::error::ClientError;

/// Size of the buffer a download is copied through.
const CHUNK: usize = 64 * 1024;

/// What a download to a path appends to the path's file name for the file it writes until
/// the download is complete and checked: `program.json.part`.
pub const PARTIAL_SUFFIX: &str = ".part";

/// A download's progress callback: bytes held so far (with those a resumed download
/// already had) and the artifact's size when the server said it.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// An artifact that was downloaded and matched its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex (the server's `ETag`, checked against the bytes).
    pub sha256: String,
    /// The `Content-Type` it was served with.
    pub content_type: Option<String>,
    /// Bytes already held locally that the download continued from (0 when it fetched the
    /// whole file).
    pub resumed_from: u64,
}

/// How a download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// The bytes were written and matched the artifact's SHA-256.
    Fetched(Transfer),
    /// The server answered `304 Not Modified`: the local copy, whose SHA-256 was sent as
    /// `If-None-Match`, is the artifact. Nothing was written.
    UpToDate {
        /// The SHA-256 of the local copy (and of the artifact), lowercase hex.
        sha256: String,
    },
}

/// The artifact a transfer is about, for error messages.
struct Target<'a> {
    job_id: &'a str,
    name: &'a str,
    url: &'a str,
}

impl Target<'_> {
    fn io(&self, action: &'static str, target: &Path, source: io::Error) -> ClientError {
        ClientError::ArtifactIo {
            job_id: self.job_id.to_owned(),
            name: self.name.to_owned(),
            action,
            target: target.display().to_string(),
            source,
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ClientError {
        ClientError::ArtifactDownload {
            job_id: self.job_id.to_owned(),
            name: self.name.to_owned(),
            url: self.url.to_owned(),
            reason: reason.into(),
        }
    }

    fn mismatch(&self, expected: &str, actual: &str) -> ClientError {
        ClientError::ArtifactHashMismatch {
            job_id: self.job_id.to_owned(),
            name: self.name.to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        }
    }
}

/// A download's response, its headers read, its body not yet.
struct Opened {
    status: u16,
    /// The `ETag` as a SHA-256 (lowercase hex), when it is one.
    sha256: Option<String>,
    content_type: Option<String>,
    content_length: Option<u64>,
    /// `Content-Range: bytes START-END/SIZE` as `(START, SIZE)`.
    range: Option<(u64, u64)>,
    body: ureq::Body,
}

impl Client {
    /// `GET /api/v1/jobs/{id}/artifacts`: the job's artifacts by name, revalidated against
    /// the local cache.
    pub fn list_artifacts(&self, id: &str) -> Result<Fetched<ArtifactList>, ClientError> {
        let url = self.job_url(id, "/artifacts")?;
        self.get_cached(&url)
    }

    /// The URL of one artifact's download. The id and the name are checked first, so
    /// neither can change the path.
    pub fn artifact_url(&self, id: &str, name: &str) -> Result<String, ClientError> {
        validate_artifact_name(name)?;
        self.job_url(id, &format!("/artifacts/{name}"))
    }

    /// `GET /api/v1/jobs/{id}/artifacts/{name}` into `out`, streamed, and checked against
    /// the artifact's SHA-256 once the last byte is written.
    ///
    /// With `if_none_match` (the SHA-256 of a copy already held, hex) the server answers
    /// [`Download::UpToDate`] when that is still the artifact, and nothing is written.
    /// `progress` is called after every chunk. On
    /// [`ClientError::ArtifactHashMismatch`] the bytes are already in `out`: do not use
    /// them. Use [`Client::download_artifact_to`] for a file, which also resumes.
    pub fn download_artifact(
        &self,
        id: &str,
        name: &str,
        out: &mut dyn Write,
        if_none_match: Option<&str>,
        mut progress: Option<Progress<'_>>,
    ) -> Result<Download, ClientError> {
        let url = self.artifact_url(id, name)?;
        let target = Target {
            job_id: id,
            name,
            url: &url,
        };
        let if_none_match = if_none_match.map(str::to_ascii_lowercase);
        let mut opened = self.open_download(&target, if_none_match.as_deref(), None)?;
        match opened.status {
            304 => {
                return Ok(Download::UpToDate {
                    sha256: if_none_match.unwrap_or_default(),
                });
            }
            200 => {}
            status => return Err(error_answer(&url, status, opened.body)),
        }
        let expected = opened
            .sha256
            .clone()
            .ok_or_else(|| target.bad("no sha256 etag to check the bytes against"))?;
        let output = Path::new("the output");
        let mut hasher = Sha256::new();
        let total = opened.content_length;
        let size = self.copy_body(
            &target,
            &mut opened,
            out,
            output,
            &mut hasher,
            0,
            total,
            &mut progress,
        )?;
        out.flush().map_err(|err| target.io("write", output, err))?;
        let actual = hex(&hasher.finalize());
        if actual != expected {
            return Err(target.mismatch(&expected, &actual));
        }
        Ok(Download::Fetched(Transfer {
            size,
            sha256: actual,
            content_type: opened.content_type,
            resumed_from: 0,
        }))
    }

    /// Downloads an artifact to the file `path`, streamed into `PATH.part` (see
    /// [`partial_path`]), checked against its SHA-256, then renamed into place.
    ///
    /// - When `path` exists, its SHA-256 goes as `If-None-Match`: an unchanged artifact is
    ///   [`Download::UpToDate`] and nothing is downloaded.
    /// - When `PATH.part` holds the start of the artifact (a cut download), the rest is
    ///   asked for with `Range: bytes=N-` and `If-Range: "<sha256>"`; a server that sends
    ///   the whole file instead (the artifact changed) is followed from byte 0.
    /// - When the finished file does not match the SHA-256, `PATH.part` is removed (so the
    ///   next try starts over) and the error is [`ClientError::ArtifactHashMismatch`];
    ///   `path` is left as it was.
    /// - Any other failure leaves `PATH.part` for the next try to continue.
    pub fn download_artifact_to(
        &self,
        id: &str,
        name: &str,
        path: &Path,
        mut progress: Option<Progress<'_>>,
    ) -> Result<Download, ClientError> {
        let url = self.artifact_url(id, name)?;
        let target = Target {
            job_id: id,
            name,
            url: &url,
        };
        let part = partial_path(path);
        let current = match File::open(path) {
            Ok(file) => Some(sha256_of(file, None).map_err(|err| target.io("read", path, err))?),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(target.io("read", path, err)),
        };
        let mut resume = match self.resume_point(&target, &part, &mut progress)? {
            Some(Resumed::Complete(transfer)) => {
                fs::rename(&part, path).map_err(|err| target.io("write", path, err))?;
                return Ok(Download::Fetched(transfer));
            }
            resume => resume,
        };
        // Twice at most: a 416 (the artifact shrank under the partial file) starts over.
        loop {
            let (offset, prefix) = match &resume {
                Some(Resumed::From {
                    offset,
                    sha256,
                    hasher,
                }) => (*offset, Some((sha256.clone(), hasher.clone()))),
                _ => (0, None),
            };
            let range = prefix.as_ref().map(|(sha256, _)| (offset, sha256.as_str()));
            let mut opened = self.open_download(&target, current.as_deref(), range)?;
            let (start, total, hasher) = match (opened.status, prefix) {
                (304, _) => {
                    // The file in place is the artifact: a partial file beside it is stale.
                    let _ = fs::remove_file(&part);
                    return Ok(Download::UpToDate {
                        sha256: current.unwrap_or_default(),
                    });
                }
                (206, Some((_, hasher))) => {
                    let Some((start, size)) = opened.range else {
                        return Err(target.bad("a 206 without a content-range"));
                    };
                    if start != offset {
                        return Err(target.bad(format!(
                            "asked for the bytes from {offset}, got a 206 from {start}"
                        )));
                    }
                    (start, Some(size), hasher)
                }
                (416, Some(_)) => {
                    resume = None;
                    continue;
                }
                // The whole file: a fresh download, or the artifact changed (If-Range).
                (200, _) => (0, opened.content_length, Sha256::new()),
                (status, _) => return Err(error_answer(&url, status, opened.body)),
            };
            let expected = match (opened.sha256.clone(), &resume) {
                (Some(sha256), _) => sha256,
                // A 206 only comes when If-Range matched: the bytes are of that version.
                (None, Some(Resumed::From { sha256, .. })) if start > 0 => sha256.clone(),
                (None, _) => return Err(target.bad("no sha256 etag to check the bytes against")),
            };
            let mut file =
                open_partial(&part, start).map_err(|err| target.io("write", &part, err))?;
            let mut hasher = hasher;
            let size = self.copy_body(
                &target,
                &mut opened,
                &mut file,
                &part,
                &mut hasher,
                start,
                total,
                &mut progress,
            )?;
            file.sync_all()
                .map_err(|err| target.io("write", &part, err))?;
            drop(file);
            let actual = hex(&hasher.finalize());
            if actual != expected {
                let _ = fs::remove_file(&part);
                return Err(target.mismatch(&expected, &actual));
            }
            fs::rename(&part, path).map_err(|err| target.io("write", path, err))?;
            return Ok(Download::Fetched(Transfer {
                size,
                sha256: actual,
                content_type: opened.content_type,
                resumed_from: start,
            }));
        }
    }

    /// `PUT /api/v1/jobs/{id}/artifacts/{name}`: uploads what `body` reads, streamed
    /// (chunked), fenced by the claim's `fence` when the job was claimed. `content_type`
    /// `None` lets the server guess from the name. Nothing is stored unless the whole body
    /// arrived; the same name again replaces the artifact. A refusal because the attempt no
    /// longer owns the job is [`ClientError::Api`] with code `lease_lost`.
    pub fn upload_artifact(
        &self,
        id: &str,
        name: &str,
        body: &mut dyn Read,
        content_type: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<Artifact, ClientError> {
        self.put_artifact(
            id,
            name,
            body,
            None,
            Path::new("the input"),
            content_type,
            fence,
        )
    }

    /// Like [`Client::upload_artifact`], reading the file at `path` (sent with its
    /// `Content-Length`, so the server can refuse a file over its limit before any byte).
    pub fn upload_artifact_file(
        &self,
        id: &str,
        name: &str,
        path: &Path,
        content_type: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<Artifact, ClientError> {
        let url = self.artifact_url(id, name)?;
        let target = Target {
            job_id: id,
            name,
            url: &url,
        };
        let mut file = File::open(path).map_err(|err| target.io("read", path, err))?;
        let length = file
            .metadata()
            .map_err(|err| target.io("read", path, err))?
            .len();
        self.put_artifact(id, name, &mut file, Some(length), path, content_type, fence)
    }

    #[allow(clippy::too_many_arguments)]
    fn put_artifact(
        &self,
        id: &str,
        name: &str,
        body: &mut dyn Read,
        length: Option<u64>,
        source: &Path,
        content_type: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<Artifact, ClientError> {
        let url = self.artifact_url(id, name)?;
        if let Some(content_type) = content_type {
            validate_content_type(content_type)?;
        }
        let target = Target {
            job_id: id,
            name,
            url: &url,
        };
        let mut request = self
            .agent
            .put(&url)
            .header("accept", "application/json")
            // A refusal (a lost lease, a file over the limit) comes before the body is sent.
            .header("expect", "100-continue");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(length) = length {
            request = request.header("content-length", length.to_string());
        }
        if let Some(fence) = fence {
            request = request
                .header(ATTEMPT_HEADER, fence.attempt.to_string())
                .header(LEASE_TOKEN_HEADER, fence.lease_token.as_str());
        }
        let mut reader = Tracked {
            inner: body,
            error: None,
            sent: 0,
        };
        let response = request.send(ureq::SendBody::from_reader(&mut reader));
        if let Some(err) = reader.error.take() {
            return Err(target.io("read", source, err));
        }
        if reader.sent > 0
            && let Err(err) = &response
            && closed_by_peer(err)
        {
            // Not "unreachable": it answered, and hung up before reading all of the body.
            return Err(ClientError::ArtifactUploadCut {
                job_id: id.to_owned(),
                name: name.to_owned(),
                url: url.clone(),
                sent: reader.sent,
            });
        }
        let reply = self.finish(&url, response)?;
        match reply.status {
            200 | 201 => serde_json::from_str(&reply.body).map_err(|source| ClientError::Decode {
                url: url.clone(),
                source,
            }),
            status => Err(api_error(&url, status, &reply.body)),
        }
    }

    /// Sends the download's GET; the body is left to read.
    fn open_download(
        &self,
        target: &Target<'_>,
        if_none_match: Option<&str>,
        range: Option<(u64, &str)>,
    ) -> Result<Opened, ClientError> {
        let mut request = self
            .agent
            .get(target.url)
            // Ranges and the sha256 are of the stored bytes: no content coding in between.
            .header("accept-encoding", "identity");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(sha256) = if_none_match {
            request = request.header("if-none-match", format!("\"{sha256}\""));
        }
        if let Some((offset, sha256)) = range {
            request = request
                .header("range", format!("bytes={offset}-"))
                .header("if-range", format!("\"{sha256}\""));
        }
        // The body may take as long as it takes: no overall limit on reading it.
        let response = request
            .config()
            .timeout_recv_body(None)
            .build()
            .call()
            .map_err(|err| self.transport_error(target.url, err))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Opened {
            status: response.status().as_u16(),
            sha256: header("etag").as_deref().and_then(etag_sha256),
            content_type: header("content-type"),
            content_length: header("content-length").and_then(|v| v.trim().parse().ok()),
            range: header("content-range").as_deref().and_then(content_range),
            body: response.into_body(),
        })
    }

    /// Copies the body into `out` through the hasher, from byte `start` of the artifact;
    /// returns the artifact's size (`start` + the bytes copied), checked against `total`.
    #[allow(clippy::too_many_arguments)]
    fn copy_body(
        &self,
        target: &Target<'_>,
        opened: &mut Opened,
        out: &mut dyn Write,
        out_path: &Path,
        hasher: &mut Sha256,
        start: u64,
        total: Option<u64>,
        progress: &mut Option<Progress<'_>>,
    ) -> Result<u64, ClientError> {
        let mut reader = opened.body.as_reader();
        let mut buffer = vec![0_u8; CHUNK];
        let mut done = start;
        if let Some(report) = progress.as_deref_mut() {
            report(done, total);
        }
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.transport_error(target.url, ureq::Error::from(err))),
            };
            let chunk = &buffer[..read];
            out.write_all(chunk)
                .map_err(|err| target.io("write", out_path, err))?;
            hasher.update(chunk);
            done += read as u64;
            if let Some(report) = progress.as_deref_mut() {
                report(done, total);
            }
        }
        match total {
            Some(total) if total != done => {
                Err(target.bad(format!("the body ended at byte {done} of {total}")))
            }
            _ => Ok(done),
        }
    }

    /// What a partial file beside the target is good for: nothing (`None`), the start of
    /// the artifact as listed now, or all of it (a download that ended before its rename).
    fn resume_point(
        &self,
        target: &Target<'_>,
        part: &Path,
        progress: &mut Option<Progress<'_>>,
    ) -> Result<Option<Resumed>, ClientError> {
        let held = match fs::metadata(part) {
            Ok(metadata) if metadata.is_file() => metadata.len(),
            Ok(_) => return Err(target.io("write", part, io::Error::other("not a file"))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(target.io("read", part, err)),
        };
        if held == 0 {
            return Ok(None);
        }
        // Which version the partial bytes are of is not recorded: take the artifact as it is
        // listed now. If-Range has the server send everything when that is no longer so,
        // and the final check catches a partial file of an older version.
        let list = self.list_artifacts(target.job_id)?.value;
        let Some(artifact) = list.artifacts.into_iter().find(|a| a.name == target.name) else {
            return Ok(None);
        };
        if held > artifact.size {
            return Ok(None);
        }
        let file = File::open(part).map_err(|err| target.io("read", part, err))?;
        let mut hasher = Sha256::new();
        hash_prefix(file, held, &mut hasher).map_err(|err| target.io("read", part, err))?;
        if held < artifact.size {
            return Ok(Some(Resumed::From {
                offset: held,
                sha256: artifact.sha256,
                hasher,
            }));
        }
        if hex(&hasher.finalize()) != artifact.sha256 {
            return Ok(None);
        }
        if let Some(report) = progress.as_deref_mut() {
            report(held, Some(held));
        }
        Ok(Some(Resumed::Complete(Transfer {
            size: held,
            sha256: artifact.sha256,
            content_type: Some(artifact.content_type),
            resumed_from: held,
        })))
    }
}

/// What a partial file holds.
enum Resumed {
    /// The first `offset` bytes of the artifact whose SHA-256 is `sha256`, already hashed.
    From {
        offset: u64,
        sha256: String,
        hasher: Sha256,
    },
    /// The whole artifact, checked.
    Complete(Transfer),
}

/// Records the first error of the reader an upload is sent from, to tell a file that
/// cannot be read from a network that fails.
struct Tracked<'a> {
    inner: &'a mut dyn Read,
    error: Option<io::Error>,
    /// Bytes read so far (handed to the connection).
    sent: u64,
}

impl Read for Tracked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(read) => {
                self.sent += read as u64;
                Ok(read)
            }
            Err(err) if err.kind() != io::ErrorKind::Interrupted => {
                let copy = io::Error::new(err.kind(), err.to_string());
                self.error.get_or_insert(err);
                Err(copy)
            }
            other => other,
        }
    }
}

/// True for a transport error that means the server closed the connection under a request
/// still being sent.
fn closed_by_peer(err: &ureq::Error) -> bool {
    matches!(err, ureq::Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    ))
}

/// The file a download to `path` writes until it is complete: `path` with
/// [`PARTIAL_SUFFIX`] appended to its file name.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(ToOwned::to_owned).unwrap_or_default();
    name.push(PARTIAL_SUFFIX);
    path.with_file_name(name)
}

/// The SHA-256 of what `reader` reads, lowercase hex (the form of an artifact's `sha256`).
pub fn sha256_hex(reader: impl Read) -> io::Result<String> {
    sha256_of(reader, None)
}

fn sha256_of(mut reader: impl Read, limit: Option<u64>) -> io::Result<String> {
    let mut hasher = Sha256::new();
    match limit {
        Some(limit) => hash_prefix(reader, limit, &mut hasher)?,
        None => {
            io::copy(&mut reader, &mut HashWriter(&mut hasher))?;
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Hashes exactly the first `length` bytes of `reader`.
fn hash_prefix(reader: impl Read, length: u64, hasher: &mut Sha256) -> io::Result<()> {
    let copied = io::copy(&mut reader.take(length), &mut HashWriter(hasher))?;
    if copied == length {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file shrank to {copied} bytes while being read"),
        ))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the partial file to write from byte `start`: cut there (nothing past it is kept),
/// created when missing.
fn open_partial(part: &Path, start: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)?;
    file.set_len(start)?;
    file.seek(SeekFrom::Start(start))?;
    Ok(file)
}

/// The body of a refusal as the crate's error.
fn error_answer(url: &str, status: u16, mut body: ureq::Body) -> ClientError {
    let text = body
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    api_error(url, status, &text)
}

/// A strong `ETag` holding a SHA-256 (`"<64 hex>"`), as lowercase hex; `None` for anything
/// else (a weak tag cannot vouch for the bytes).
fn etag_sha256(etag: &str) -> Option<String> {
    let hex = etag.trim().strip_prefix('"')?.strip_suffix('"')?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// `Content-Range: bytes START-END/SIZE` as `(START, SIZE)`.
fn content_range(value: &str) -> Option<(u64, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, size) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
        size.trim().parse::<u64>().ok()?,
    );
    (start <= end && end < size).then_some((start, size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fake_server::{Answer, FakeServer, Seen};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const JOB: &str = "j1";
    const NAME: &str = "data.bin";

    /// `length` bytes that are not all alike, so a misplaced range shows.
    fn bytes(length: usize, seed: u8) -> Vec<u8> {
        (0..length)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
            .collect()
    }

    fn sha(data: &[u8]) -> String {
        sha256_hex(data).unwrap()
    }

    /// What the scripted server holds: the artifact it lists, the bytes it serves (the
    /// same, unless the test makes the artifact change between the two), and how it
    /// treats ranges.
    struct Script {
        listed: Vec<u8>,
        served: Vec<u8>,
        honor_ranges: bool,
        /// Send the range only when `If-Range` names the served bytes.
        check_if_range: bool,
        /// Cut the body of the first download after this many bytes.
        cut_first_after: Option<usize>,
    }

    impl Script {
        fn of(data: Vec<u8>) -> Script {
            Script {
                listed: data.clone(),
                served: data,
                honor_ranges: true,
                check_if_range: true,
                cut_first_after: None,
            }
        }
    }

    /// A server that answers the list and the download of `data.bin` of job `j1` as the
    /// contract says (ETag, If-None-Match, Range with If-Range, 416).
    fn server(script: Script) -> FakeServer {
        let downloads = AtomicUsize::new(0);
        FakeServer::start(move |seen: &Seen| {
            let list = format!("/api/v1/jobs/{JOB}/artifacts");
            if seen.path == list {
                let body = serde_json::json!({
                    "job_id": JOB,
                    "artifacts": [{"name": NAME, "size": script.listed.len(),
                        "sha256": sha(&script.listed), "content_type": "application/octet-stream",
                        "created_at": "2026-01-01T00:00:00Z", "attempt": 1}],
                    "total_bytes": script.listed.len(),
                });
                return Answer::new(200, body.to_string());
            }
            if seen.path != format!("{list}/{NAME}") {
                return Answer::new(
                    404,
                    r#"{"error":{"code":"not_found","message":"artifact not found"}}"#,
                );
            }
            let data = &script.served;
            let etag = format!("\"{}\"", sha(data));
            if seen.header("if-none-match") == Some(etag.as_str()) {
                return Answer::new(304, "").header("etag", etag);
            }
            let first = downloads.fetch_add(1, Ordering::SeqCst) == 0;
            let range = seen
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok())
                .filter(|_| script.honor_ranges)
                .filter(|_| {
                    !script.check_if_range || seen.header("if-range").is_none_or(|tag| tag == etag)
                });
            let mut answer = match range {
                Some(start) if start >= data.len() => {
                    return Answer::new(416, "")
                        .header("content-range", format!("bytes */{}", data.len()));
                }
                Some(start) => Answer::new(206, data[start..].to_vec()).header(
                    "content-range",
                    format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
                ),
                None => Answer::new(200, data.clone()),
            };
            if first {
                answer.cut_after = script.cut_first_after;
            }
            answer
                .header("etag", etag)
                .header("content-type", "application/octet-stream")
        })
    }

    fn downloads(server: &FakeServer) -> Vec<Seen> {
        server
            .seen()
            .into_iter()
            .filter(|seen| seen.path.ends_with(NAME))
            .collect()
    }

    #[test]
    fn a_cut_download_resumes_with_range_and_ends_identical() {
        let data = bytes(300_000, 1);
        let server = server(Script {
            cut_first_after: Some(100_000),
            ..Script::of(data.clone())
        });
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        let err = client
            .download_artifact_to(JOB, NAME, &path, None)
            .unwrap_err();
        // The connection closed early: a transient error, and the partial file is kept.
        assert!(err.is_transient(), "{err:?}");
        assert!(!path.exists(), "{err}");
        let part = partial_path(&path);
        assert_eq!(fs::read(&part).unwrap(), &data[..100_000], "{err}");

        let mut reports = Vec::new();
        let mut progress = |done, total| reports.push((done, total));
        let done = client
            .download_artifact_to(JOB, NAME, &path, Some(&mut progress))
            .unwrap();
        assert_eq!(
            done,
            Download::Fetched(Transfer {
                size: 300_000,
                sha256: sha(&data),
                content_type: Some("application/octet-stream".into()),
                resumed_from: 100_000,
            })
        );
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!part.exists());
        let second = downloads(&server).pop().unwrap();
        assert_eq!(second.header("range"), Some("bytes=100000-"));
        assert_eq!(
            second.header("if-range"),
            Some(format!("\"{}\"", sha(&data)).as_str())
        );
        assert_eq!(reports.first(), Some(&(100_000, Some(300_000))));
        assert_eq!(reports.last(), Some(&(300_000, Some(300_000))));
    }

    #[test]
    fn a_changed_artifact_is_fetched_whole_from_byte_zero() {
        // Listed as the old version, served as the new one: If-Range does not match, so the
        // server sends everything and the partial file is overwritten from the start.
        let old = bytes(50_000, 2);
        let new = bytes(70_000, 3);
        let server = server(Script {
            listed: old.clone(),
            ..Script::of(new.clone())
        });
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        fs::write(partial_path(&path), &old[..20_000]).unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert!(
            matches!(&done, Download::Fetched(t) if t.resumed_from == 0 && t.size == 70_000),
            "{done:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), new);

        // A server that ignores ranges altogether is followed the same way.
        let server = super::tests::server(Script {
            honor_ranges: false,
            ..Script::of(new.clone())
        });
        let client = Client::new(&server.base).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(partial_path(&path), &new[..10_000]).unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert!(
            matches!(&done, Download::Fetched(t) if t.resumed_from == 0),
            "{done:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), new);
    }

    #[test]
    fn a_corrupt_partial_file_fails_the_check_and_is_removed() {
        let data = bytes(40_000, 4);
        let server = server(Script::of(data.clone()));
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        let part = partial_path(&path);
        let mut wrong = data[..15_000].to_vec();
        wrong[7] ^= 0xff;
        fs::write(&part, &wrong).unwrap();
        let err = client
            .download_artifact_to(JOB, NAME, &path, None)
            .unwrap_err();
        let mut corrupt = wrong.clone();
        corrupt.extend_from_slice(&data[15_000..]);
        match &err {
            ClientError::ArtifactHashMismatch {
                job_id,
                name,
                expected,
                actual,
            } => {
                assert_eq!((job_id.as_str(), name.as_str()), (JOB, NAME));
                assert_eq!(expected, &sha(&data));
                assert_eq!(actual, &sha(&corrupt));
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "artifact `data.bin` of job `j1` failed its sha256 check: expected {}, got {}",
                sha(&data),
                sha(&corrupt)
            )
        );
        assert!(!part.exists() && !path.exists());
        // The next try starts over and succeeds.
        client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn an_unchanged_file_is_up_to_date_and_a_changed_one_is_replaced() {
        let data = bytes(10_000, 5);
        let server = server(Script::of(data.clone()));
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        fs::write(&path, &data).unwrap();
        fs::write(partial_path(&path), b"stale").unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert_eq!(done, Download::UpToDate { sha256: sha(&data) });
        let asked = downloads(&server).pop().unwrap();
        assert_eq!(
            asked.header("if-none-match"),
            Some(format!("\"{}\"", sha(&data)).as_str())
        );
        assert!(!partial_path(&path).exists());

        fs::write(&path, b"an older version").unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert!(matches!(done, Download::Fetched(_)), "{done:?}");
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_partial_file_past_the_artifact_starts_over() {
        // Listed at 2000 bytes, served at 500 by a server that does not look at If-Range:
        // the range from 1000 is unsatisfiable (416).
        let served = bytes(500, 6);
        let server = server(Script {
            listed: bytes(2000, 7),
            check_if_range: false,
            ..Script::of(served.clone())
        });
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        fs::write(partial_path(&path), bytes(1000, 7)).unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert!(matches!(done, Download::Fetched(_)), "{done:?}");
        assert_eq!(fs::read(&path).unwrap(), served);
        let asked = downloads(&server);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert_eq!(asked[1].header("range"), None);
    }

    #[test]
    fn a_complete_partial_file_is_checked_and_renamed_without_a_download() {
        let data = bytes(3000, 8);
        let server = server(Script::of(data.clone()));
        let client = Client::new(&server.base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        fs::write(partial_path(&path), &data).unwrap();
        let done = client.download_artifact_to(JOB, NAME, &path, None).unwrap();
        assert!(
            matches!(&done, Download::Fetched(t) if t.resumed_from == 3000),
            "{done:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(downloads(&server).is_empty());
    }

    #[test]
    fn a_writer_download_checks_the_hash_and_honours_if_none_match() {
        let data = bytes(200_000, 9);
        let server = server(Script::of(data.clone()));
        let client = Client::new(&server.base).unwrap();
        let mut out = Vec::new();
        let done = client
            .download_artifact(JOB, NAME, &mut out, None, None)
            .unwrap();
        assert!(
            matches!(&done, Download::Fetched(t) if t.size == 200_000),
            "{done:?}"
        );
        assert_eq!(out, data);
        let mut out = Vec::new();
        let done = client
            .download_artifact(JOB, NAME, &mut out, Some(&sha(&data)), None)
            .unwrap();
        assert_eq!(done, Download::UpToDate { sha256: sha(&data) });
        assert!(out.is_empty());

        // A server whose ETag does not match its bytes: refused.
        let liar = FakeServer::start(|_: &Seen| {
            Answer::new(200, "not what the tag says")
                .header("etag", format!("\"{}\"", "0".repeat(64)))
        });
        let client = Client::new(&liar.base).unwrap();
        let err = client
            .download_artifact(JOB, NAME, &mut Vec::new(), None, None)
            .unwrap_err();
        assert!(
            matches!(err, ClientError::ArtifactHashMismatch { .. }),
            "{err}"
        );
        // A writer that fails is the writer's error, not the network's.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let client = Client::new(&server.base).unwrap();
        let err = client
            .download_artifact(JOB, NAME, &mut Full, None, None)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::ArtifactIo {
                    action: "write",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "artifact `data.bin` of job `j1`: cannot write the output"
        );
        // An unknown artifact is the server's 404.
        let err = client
            .download_artifact(JOB, "other.bin", &mut Vec::new(), None, None)
            .unwrap_err();
        assert_eq!(err.status(), Some(404), "{err}");
    }

    #[test]
    fn uploads_carry_the_fence_the_type_and_the_length() {
        let stored = serde_json::json!({"name": NAME, "size": 5,
            "sha256": sha(b"hello"), "content_type": "text/plain",
            "created_at": "2026-01-01T00:00:00Z", "attempt": 2});
        let server = FakeServer::start(move |seen: &Seen| {
            if seen.header(LEASE_TOKEN_HEADER) == Some("stale") {
                return Answer::new(
                    409,
                    r#"{"error":{"code":"lease_lost","message":"job `j1` is held by attempt 3"}}"#,
                );
            }
            Answer::new(201, stored.to_string())
        });
        let client = Client::new(&server.base).unwrap().with_token("tok");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello.txt");
        fs::write(&file, b"hello").unwrap();
        let fence = Fence {
            attempt: 2,
            lease_token: "secret".into(),
        };
        let artifact = client
            .upload_artifact_file(JOB, NAME, &file, Some("text/plain"), Some(&fence))
            .unwrap();
        assert_eq!(artifact.sha256, sha(b"hello"));
        let seen = server.seen().pop().unwrap();
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.path, "/api/v1/jobs/j1/artifacts/data.bin");
        assert_eq!(seen.header(ATTEMPT_HEADER), Some("2"));
        assert_eq!(seen.header(LEASE_TOKEN_HEADER), Some("secret"));
        assert_eq!(seen.header("content-length"), Some("5"));
        assert_eq!(seen.header("content-type"), Some("text/plain"));
        assert_eq!(seen.header("authorization"), Some("Bearer tok"));
        assert_eq!(seen.body, b"hello");

        // From a reader: chunked, no fence headers without a fence.
        client
            .upload_artifact(JOB, NAME, &mut &b"streamed bytes"[..], None, None)
            .unwrap();
        let seen = server.seen().pop().unwrap();
        assert_eq!(seen.body, b"streamed bytes");
        assert_eq!(seen.header(ATTEMPT_HEADER), None);
        assert_eq!(seen.header("content-type"), None);

        let stale = Fence {
            attempt: 2,
            lease_token: "stale".into(),
        };
        let err = client
            .upload_artifact_file(JOB, NAME, &file, None, Some(&stale))
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(skill_fleet_types::ErrorCode::LeaseLost),
            "{err}"
        );

        // A file that cannot be read is named as such, not blamed on the network.
        let err = client
            .upload_artifact_file(JOB, NAME, &dir.path().join("missing"), None, None)
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::ArtifactIo { action: "read", .. }),
            "{err}"
        );
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("bad sector"))
            }
        }
        let err = client
            .upload_artifact(JOB, NAME, &mut Broken, None, None)
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::ArtifactIo { action: "read", .. }),
            "{err}"
        );
    }

    #[test]
    fn partial_files_sit_beside_the_target() {
        assert_eq!(
            partial_path(Path::new("out/program.json")),
            Path::new("out/program.json.part")
        );
        assert_eq!(partial_path(Path::new("a")), Path::new("a.part"));
    }

    #[test]
    fn only_a_strong_sha256_etag_vouches_for_the_bytes() {
        let sha = "ab".repeat(32);
        assert_eq!(etag_sha256(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(
            etag_sha256(&format!("\"{}\"", sha.to_uppercase())),
            Some(sha.clone())
        );
        assert_eq!(etag_sha256(&format!("W/\"{sha}\"")), None);
        assert_eq!(etag_sha256(&sha), None);
        assert_eq!(etag_sha256("\"abc\""), None);
        assert_eq!(etag_sha256(&format!("\"{}\"", "zz".repeat(32))), None);
    }

    #[test]
    fn content_ranges_parse_or_are_refused() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, 200)));
        assert_eq!(content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(content_range("bytes */200"), None);
        assert_eq!(content_range("bytes 150-100/200"), None);
        assert_eq!(content_range("bytes 100-200/200"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }

    #[test]
    fn sha256_is_the_known_value() {
        assert_eq!(
            sha256_hex(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut hasher = Sha256::new();
        hash_prefix(&b"abcdef"[..], 3, &mut hasher).unwrap();
        assert_eq!(
            hex(&hasher.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = hash_prefix(&b"ab"[..], 3, &mut Sha256::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_partial_file_is_cut_where_the_download_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("a.part");
        fs::write(&part, b"0123456789").unwrap();
        let mut file = open_partial(&part, 4).unwrap();
        file.write_all(b"xy").unwrap();
        drop(file);
        assert_eq!(fs::read(&part).unwrap(), b"0123xy");
        let mut file = open_partial(&dir.path().join("new.part"), 0).unwrap();
        file.write_all(b"z").unwrap();
        assert_eq!(fs::read(dir.path().join("new.part")).unwrap(), b"z");
    }

    #[test]
    fn names_are_validated_before_any_url_is_built() {
        let client = Client::new("http://127.0.0.1:9").unwrap();
        for bad in ["../x", "a/b", ".hidden", ""] {
            let err = client.artifact_url("job", bad).unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{bad}: {err}");
            let err = client
                .upload_artifact("job", bad, &mut &b""[..], None, None)
                .unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{bad}: {err}");
        }
        assert_eq!(
            client.artifact_url("job", "program.json").unwrap(),
            "http://127.0.0.1:9/api/v1/jobs/job/artifacts/program.json"
        );
        let err = client
            .upload_artifact("job", "a.txt", &mut &b""[..], Some("not a type"), None)
            .unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    }
}
