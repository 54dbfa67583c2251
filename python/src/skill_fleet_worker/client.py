"""The lease protocol over HTTP: claim, heartbeat, events, artifacts, complete, fail.

:class:`HttpClient` is the one place for the HTTP, the errors and the retries of a remote
worker (standard library only: :mod:`urllib.request`, and :mod:`http.client` for the
artifacts, whose bodies are streamed from and to disk in blocks). Every call is retried with
exponential back-off and jitter (0.2 s doubling to 5 s) on a connection error and on 408,
429, 502, 503 and 504, until its deadline; any other 4xx or 5xx is raised at once as
:class:`ApiError`, and a 409 ``lease_lost`` as :class:`LeaseLost`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .artifacts import (
    ATTEMPT_HEADER,
    BLOCK_SIZE,
    LEASE_TOKEN_HEADER,
    Artifact,
    ChecksumMismatch,
    content_type_for,
    validate_content_type,
    validate_name,
)

#: Statuses worth retrying: a proxy or the server said "not now", not "no".
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
#: Job statuses after which a job never runs again by itself.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class ApiError(Exception):
    """The server answered with an error that retrying will not change."""

    def __init__(self, http_status: int, code: str | None, message: str, body: Any = None):
        super().__init__(f"HTTP {http_status} {code or 'error'}: {message}")
        #: The HTTP status (404, 409, 422, ...).
        self.http_status = http_status
        #: The error code of the body (``invalid_transition``, ``lease_lost``, ...), if any.
        self.code = code
        self.message = message
        #: The decoded body (JSON when it was JSON, else the text).
        self.body = body


class Forbidden(ApiError):
    """403 ``forbidden``: the token is valid but its role may not do this (a ``read`` token
    claiming, a worker token writing to a job of a type it may not take). The message names
    the token and its role; retrying will not help: use a token with the role it names."""

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(403, "forbidden", message, body)


class LeaseLost(ApiError):
    """409 ``lease_lost``: this attempt no longer owns the job; write nothing more.

    ``attempt`` and ``status`` are the job's current ones, as the server reported them
    (``None`` when it did not say).
    """

    def __init__(
        self,
        message: str,
        *,
        attempt: int | None,
        status: str | None,
        body: Any = None,
    ) -> None:
        super().__init__(409, "lease_lost", message, body)
        self.attempt = attempt
        self.status = status


class ArtifactTooLarge(ApiError):
    """413 ``payload_too_large``: the server's per-file (``max_artifact_bytes``) or per-job
    (``max_job_artifact_bytes``) limit refused the upload; nothing was stored. The message
    is the server's, which names the limit and the numbers."""

    def __init__(self, name: str, size: int, message: str, body: Any = None) -> None:
        super().__init__(
            413,
            "payload_too_large",
            f"artifact {name!r} ({size} bytes) is over the server's limit: {message}",
            body,
        )
        self.name = name
        self.size = size


class Unreachable(Exception):
    """No answer worth having before the call's deadline (connection errors, 502/503/504),
    or the call was aborted. ``last_error`` is the last failure seen."""

    def __init__(self, message: str, last_error: BaseException | None, *, aborted: bool):
        super().__init__(message)
        self.last_error = last_error
        self.aborted = aborted


@dataclass(frozen=True)
class Lease:
    """What fences a worker's writes: the job, its attempt and the claim's secret token."""

    job_id: str
    attempt: int
    token: str = field(repr=False)

    def fence(self) -> dict[str, Any]:
        """The fields every write carries."""
        return {"attempt": self.attempt, "lease_token": self.token}


@dataclass(frozen=True)
class Claim:
    """A claimed job: the job as ``GET /api/v1/jobs/{id}`` shows it, and its lease."""

    job: dict[str, Any]
    lease: Lease
    #: How long the lease lasts without a renewal.
    ttl_seconds: float
    #: How often to send a heartbeat.
    heartbeat_interval_seconds: float
    #: ``time.monotonic()`` just before the claim was sent: the lease is at least this fresh.
    claimed_at: float

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    @property
    def attempt(self) -> int:
        return self.lease.attempt

    @property
    def job_type(self) -> str:
        return str(self.job.get("type") or "")

    @property
    def checkpoint(self) -> Any:
        return self.job.get("checkpoint")

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.job.get("metadata")
        return metadata if isinstance(metadata, dict) else {}


@dataclass(frozen=True)
class HeartbeatAnswer:
    """A heartbeat's answer: ``stop`` true means the job ended (cancel, budget, time
    limit): stop the program, do not complete or fail it."""

    stop: bool
    status: str | None
    reason: str | None
    lease_expires_at: str | None
    body: dict[str, Any]
    #: ``time.monotonic()`` when the answered try was sent: the lease is at least this fresh.
    sent_at: float = 0.0


@dataclass(frozen=True)
class EventAnswer:
    """An event's answer (202): the job's status after it, and whether it was written
    before the answer. A terminal ``status`` (the event crossed the budget) means stop."""

    status: str | None
    durable: bool
    body: dict[str, Any]

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class Backoff:
    """Exponential back-off with jitter: each delay is drawn from [d/2, d], d doubling
    from ``first`` to at most ``maximum``."""

    first: float = 0.2
    maximum: float = 5.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _next: float = field(default=0.0, init=False, repr=False)

    def next_delay(self) -> float:
        base = self._next or self.first
        self._next = min(base * 2.0, self.maximum)
        return self.rng.uniform(base / 2.0, base)

    def reset(self) -> None:
        self._next = 0.0


class HttpClient:
    """The worker's calls to one server.

    ``token`` is the bearer token (``Authorization: Bearer ...``). ``timeout`` bounds one
    request; ``retry_seconds`` how long a call keeps retrying by default (``None``: until
    it succeeds or is aborted). Each call also takes a ``deadline`` (a ``time.monotonic()``
    value that also shortens the request timeout) and an ``abort`` event that ends the
    retries at once. ``log`` receives a line per retry.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry_seconds: float | None = 600.0,
        backoff: Callable[[], Backoff] = Backoff,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server must be an http:// or https:// URL, got {server!r}")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._backoff = backoff
        self._log = log
        self._clock = clock
        # Never follow redirects with the token and a POST body to somewhere else.
        self._opener = urllib.request.build_opener(_NoRedirect)

    # -- the protocol ---------------------------------------------------------------------

    def claim(
        self,
        types: Sequence[str],
        worker: str | None = None,
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> Claim | None:
        """Takes the oldest queued job of ``types`` (now running, with a lease), or
        ``None`` when nothing is queued (204)."""
        body: dict[str, Any] = {"types": list(types)}
        if worker is not None:
            body["worker"] = worker
        # The lease is at least as fresh as the try that got the answer (not the first try).
        status, answer, claimed_at = self._call(
            "/api/v1/jobs/claim", body, deadline=deadline, abort=abort
        )
        if status == 204:
            return None
        job = _object(answer, "claim")
        try:
            lease = Lease(
                job_id=str(job["id"]), attempt=int(job["attempt"]), token=str(job["lease_token"])
            )
            ttl = float(job.get("lease_ttl_seconds", 90.0))
            interval = float(job.get("heartbeat_interval_seconds", 15.0))
        except (KeyError, TypeError, ValueError) as err:
            raise ApiError(status, None, f"a claim answer without a lease: {err!r}", job) from None
        public = {k: v for k, v in job.items() if k != "lease_token"}
        return Claim(
            job=public,
            lease=lease,
            ttl_seconds=ttl,
            heartbeat_interval_seconds=interval,
            claimed_at=claimed_at,
        )

    def heartbeat(
        self, lease: Lease, *, deadline: float | None = None, abort: threading.Event | None = None
    ) -> HeartbeatAnswer:
        """Renews the lease; the answer says whether to stop."""
        _, answer, sent_at = self._call(
            self._job_path(lease, "heartbeat"), lease.fence(), deadline=deadline, abort=abort
        )
        body = _object(answer, "heartbeat")
        return HeartbeatAnswer(
            stop=body.get("stop") is True,
            status=_text(body.get("status")),
            reason=_text(body.get("reason")),
            lease_expires_at=_text(body.get("lease_expires_at")),
            body=body,
            sent_at=sent_at,
        )

    def event(
        self,
        lease: Lease,
        fields: Mapping[str, Any],
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> EventAnswer:
        """Reports progress fields (and/or a checkpoint); renews the lease."""
        body = {**fields, **lease.fence()}
        _, answer, _ = self._call(
            self._job_path(lease, "events"), body, deadline=deadline, abort=abort
        )
        ack = answer if isinstance(answer, dict) else {}
        return EventAnswer(
            status=_text(ack.get("status")), durable=ack.get("durable") is True, body=ack
        )

    def complete(
        self,
        lease: Lease,
        result: Any = None,
        result_path: str | None = None,
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Completes the job with its result; returns the job. Safe to retry: the server
        answers 200 again to a repeat with the same token."""
        body: dict[str, Any] = {}
        if result is not None:
            body["result"] = result
        if result_path is not None:
            body["result_path"] = result_path
        body.update(lease.fence())
        _, answer, _ = self._call(
            self._job_path(lease, "complete"), body, deadline=deadline, abort=abort
        )
        return _object(answer, "complete")

    def fail(
        self,
        lease: Lease,
        error: str,
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Fails the job with ``error``; returns the job."""
        body = {"error": error, **lease.fence()}
        _, answer, _ = self._call(
            self._job_path(lease, "fail"), body, deadline=deadline, abort=abort
        )
        return _object(answer, "fail")

    # -- artifacts ----------------------------------------------------------------------------

    def upload_artifact(
        self,
        lease: Lease | str,
        path: str | os.PathLike[str],
        name: str | None = None,
        content_type: str | None = None,
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> Artifact:
        """Stores the file at ``path`` as the job's artifact ``name`` (default: its base
        name): ``PUT /api/v1/jobs/{id}/artifacts/{name}``, the body streamed from disk in
        blocks with its ``Content-Length``, the claim's fence in the ``Skill-Fleet-Attempt``
        and ``Skill-Fleet-Lease-Token`` headers. ``lease`` may be a bare job id (no fence:
        accepted only on a job with an open lease). ``content_type`` defaults to the
        server's guess from the name's extension (else :mod:`mimetypes`').

        Returns the stored artifact, whose SHA-256 is checked against the bytes sent
        (:class:`ChecksumMismatch` otherwise). Raises ``ValueError`` for a bad name or
        content type, :class:`LeaseLost` when the fence no longer owns the job,
        :class:`ArtifactTooLarge` past the server's limits, :class:`ApiError` for other
        refusals; nothing is stored on any error. A retry sends the file again from its
        start.
        """
        source = Path(path)
        name = validate_name(source.name if name is None else name)
        if content_type is None:
            content_type = content_type_for(name)
        else:
            validate_content_type(content_type)
        job_id = lease.job_id if isinstance(lease, Lease) else lease
        headers: dict[str, str] = {}
        if isinstance(lease, Lease):
            headers[ATTEMPT_HEADER] = str(lease.attempt)
            headers[LEASE_TOKEN_HEADER] = lease.token
        if content_type is not None:
            headers["Content-Type"] = content_type
        url = f"{self._jobs_path(job_id)}/artifacts/{urllib.parse.quote(name, safe='')}"
        sent: list[tuple[str, int]] = []

        def once(timeout: float) -> tuple[int, Any]:
            with source.open("rb") as f:
                return self._put_file(url, f, headers, timeout, sent)

        try:
            _, answer, _ = self._retry(f"PUT {url}", once, deadline=deadline, abort=abort)
        except ApiError as err:
            if err.http_status == 413:
                try:
                    size = source.stat().st_size
                except OSError:
                    size = sent[-1][1] if sent else 0
                raise ArtifactTooLarge(name, size, err.message, err.body) from None
            raise
        try:
            artifact = Artifact.from_json(answer)
        except ValueError as err:
            raise ApiError(
                200, None, f"the upload answer is not an artifact: {err}", answer
            ) from None
        digest, size = sent[-1]
        if artifact.sha256 != digest or artifact.size != size:
            raise ChecksumMismatch(name, artifact.sha256, digest)
        return artifact

    def list_artifacts(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> list[Artifact]:
        """The job's stored artifacts, by name (``GET /api/v1/jobs/{id}/artifacts``)."""
        path = f"{self._jobs_path(job_id)}/artifacts"
        _, answer, _ = self._retry(
            f"GET {path}",
            lambda timeout: self._send("GET", path, None, timeout),
            deadline=deadline,
            abort=abort,
        )
        body = _object(answer, "artifact list")
        items = body.get("artifacts")
        if not isinstance(items, list):
            raise ApiError(200, None, f"an artifact list without artifacts: {body!r}", body)
        try:
            return [Artifact.from_json(item) for item in items]
        except ValueError as err:
            raise ApiError(200, None, str(err), body) from None

    def download_artifact(
        self,
        job_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        deadline: float | None = None,
        abort: threading.Event | None = None,
    ) -> Path:
        """Downloads the job's artifact ``name`` to ``dest`` (a file, or a directory to put
        ``name`` in: one that exists, or a path ending with ``/``), streamed to disk in
        blocks; returns the file's path.

        The bytes are checked against ``sha256`` when given, else against the download's
        ``ETag`` (the artifact's SHA-256), else against the listing; on a mismatch nothing
        is left at ``dest`` and :class:`ChecksumMismatch` is raised. The file appears at
        ``dest`` whole (written beside it, then renamed). 404: :class:`ApiError`.
        """
        name = validate_name(name)
        target = Path(dest)
        if target.is_dir() or os.fspath(dest).endswith(("/", os.sep)):
            target = target / name
        url = f"{self._jobs_path(job_id)}/artifacts/{urllib.parse.quote(name, safe='')}"

        def once(timeout: float) -> tuple[int, Any]:
            return self._get_file(url, target, timeout)

        _, answer, _ = self._retry(f"GET {url}", once, deadline=deadline, abort=abort)
        temp, digest, _, etag = answer
        try:
            expected = sha256.lower() if sha256 is not None else etag
            if expected is None:
                listed = [a for a in self.list_artifacts(job_id, abort=abort) if a.name == name]
                expected = listed[0].sha256 if listed else None
            if expected is None:
                raise ApiError(200, None, f"artifact {name!r}: no SHA-256 to check it against")
            if digest != expected:
                raise ChecksumMismatch(name, expected, digest)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return target

    def _jobs_path(self, job_id: str) -> str:
        return f"/api/v1/jobs/{urllib.parse.quote(job_id, safe='')}"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(self.server)
        if parsed.scheme == "https":
            return http.client.HTTPSConnection(parsed.hostname or "", parsed.port, timeout=timeout)
        return http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=timeout)

    def _start(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: Mapping[str, str],
    ) -> None:
        prefix = urllib.parse.urlsplit(self.server).path.rstrip("/")
        connection.putrequest(method, prefix + path, skip_accept_encoding=True)
        connection.putheader("Accept", "application/json")
        if self.token:
            connection.putheader("Authorization", f"Bearer {self.token}")
        for key, value in headers.items():
            connection.putheader(key, value)

    def _put_file(
        self,
        path: str,
        f: IO[bytes],
        headers: Mapping[str, str],
        timeout: float,
        sent: list[tuple[str, int]],
    ) -> tuple[int, Any]:
        """One PUT of the open file ``f``: ``Content-Length`` from its size, the body
        written in blocks of :data:`BLOCK_SIZE`. Appends (SHA-256, size) of what was sent
        to ``sent``."""
        size = os.fstat(f.fileno()).st_size
        connection = self._connection(timeout)
        try:
            try:
                self._start(connection, "PUT", path, headers)
                connection.putheader("Content-Length", str(size))
                connection.endheaders()
            except (OSError, http.client.HTTPException) as err:
                raise _Retryable(err) from err
            digest = hashlib.sha256()
            done = 0
            send_error: BaseException | None = None
            while done < size:
                block = f.read(min(BLOCK_SIZE, size - done))
                if not block:
                    # The file shrank: the request cannot be finished, so the server sees a
                    # cut upload and stores nothing.
                    raise OSError(f"{getattr(f, 'name', 'the file')} shrank while being uploaded")
                digest.update(block)
                try:
                    connection.send(block)
                except OSError as err:
                    # The server may have answered early (a 409, a 413) and closed: read it.
                    send_error = err
                    break
                done += len(block)
            sent.append((digest.hexdigest(), done))
            try:
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as err:
                raise _Retryable(send_error or err) from err
            status = response.status
            if 200 <= status < 300 and send_error is None:
                return status, _decode(raw)
            if 200 <= status < 300:
                raise _Retryable(send_error or OSError("upload cut"))
            raise _error(status, _decode(raw), response.getheader("Retry-After"))
        finally:
            connection.close()

    def _get_file(self, path: str, target: Path, timeout: float) -> tuple[int, Any]:
        """One GET streamed to a temporary file beside ``target``; returns (200, (its path,
        SHA-256, size, the ETag's SHA-256 or None))."""
        connection = self._connection(timeout)
        try:
            try:
                self._start(connection, "GET", path, {})
                connection.endheaders()
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as err:
                raise _Retryable(err) from err
            if response.status != 200:
                try:
                    raw = response.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                raise _error(response.status, _decode(raw), response.getheader("Retry-After"))
            etag = response.getheader("ETag")
            if etag is not None:
                etag = etag.strip().removeprefix("W/").strip('"').lower() or None
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".part", dir=target.parent
            )
            digest = hashlib.sha256()
            size = 0
            try:
                with os.fdopen(fd, "wb") as out:
                    while True:
                        try:
                            block = response.read(BLOCK_SIZE)
                        except (OSError, http.client.HTTPException) as err:
                            raise _Retryable(err) from err
                        if not block:
                            break
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            return 200, (temp, digest.hexdigest(), size, etag)
        finally:
            connection.close()

    # -- HTTP, errors, retries --------------------------------------------------------------

    def _job_path(self, lease: Lease, action: str) -> str:
        return f"{self._jobs_path(lease.job_id)}/{action}"

    def _call(
        self,
        path: str,
        body: Any,
        *,
        deadline: float | None,
        abort: threading.Event | None,
    ) -> tuple[int, Any, float]:
        """POSTs ``body`` (JSON) until an answer that is not worth retrying, the deadline or
        an abort. Returns (status, decoded body, when the answered try was sent) for a 2xx;
        raises otherwise."""
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
        return self._retry(
            f"POST {path}",
            lambda timeout: self._send("POST", path, data, timeout),
            deadline=deadline,
            abort=abort,
        )

    def _retry(
        self,
        what: str,
        once: Callable[[float], tuple[int, Any]],
        *,
        deadline: float | None,
        abort: threading.Event | None,
    ) -> tuple[int, Any, float]:
        """Calls ``once(timeout)`` until it returns, raises something not worth retrying,
        or the deadline or an abort comes. Returns (status, answer, when the answered try
        was sent)."""
        if deadline is None and self.retry_seconds is not None:
            deadline = self._clock() + self.retry_seconds
        backoff = self._backoff()
        attempt = 0
        while True:
            if abort is not None and abort.is_set():
                raise Unreachable(f"{what}: aborted", None, aborted=True)
            attempt += 1
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._clock())
                if timeout <= 0:
                    raise Unreachable(f"{what}: no answer before the deadline", None, aborted=False)
            error: BaseException
            retry_after: float | None = None
            sent = self._clock()
            try:
                status, answer = once(timeout)
                return status, answer, sent
            except _Retryable as err:
                error, retry_after = err.cause, err.retry_after
            delay = backoff.next_delay()
            if retry_after is not None:
                delay = max(delay, min(retry_after, backoff.maximum))
            if deadline is not None and self._clock() + delay > deadline:
                raise Unreachable(
                    f"{what}: gave up after {attempt} tries: {error}", error, aborted=False
                )
            if self._log is not None:
                self._log(f"{what}: {error}; retrying in {delay:.2f}s (try {attempt})")
            if abort is not None:
                if abort.wait(delay):
                    raise Unreachable(f"{what}: aborted", error, aborted=True)
            else:
                time.sleep(delay)

    def _send(self, method: str, path: str, data: bytes | None, timeout: float) -> tuple[int, Any]:
        request = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as err:
            with contextlib.closing(err):
                try:
                    raw = err.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                headers = err.headers
            retry_after = headers.get("Retry-After") if headers else None
            raise _error(err.code, _decode(raw), retry_after) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise _Retryable(err) from err


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Retryable(Exception):
    def __init__(self, cause: BaseException, retry_after: float | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after


def _error(status: int, body: Any, retry_after: str | None) -> Exception:
    code: str | None = None
    message = body if isinstance(body, str) else ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = _text(error.get("code"))
        message = _text(error.get("message")) or ""
    if not message:
        message = http.client.responses.get(status, "error")
    if status == 409 and code == "lease_lost":
        details = error if isinstance(error, dict) else {}
        attempt = details.get("attempt")
        return LeaseLost(
            message,
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
            status=_text(details.get("status")),
            body=body,
        )
    if status == 403:
        return Forbidden(message, body)
    api_error = ApiError(status, code, message, body)
    if status in RETRY_STATUSES:
        seconds: float | None = None
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                seconds = max(0.0, float(retry_after))
        return _Retryable(api_error, seconds)
    return api_error


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()[:1000]


def _object(answer: Any, what: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise ApiError(200, None, f"the {what} answer is not a JSON object: {answer!r}", answer)
    return answer


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
