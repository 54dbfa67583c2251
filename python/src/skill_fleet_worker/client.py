"""The lease protocol over HTTP: claim, heartbeat, events, complete, fail.

:class:`HttpClient` is the one place for the HTTP, the errors and the retries of a remote
worker (standard library only: :mod:`urllib.request`). Every call is retried with
exponential back-off and jitter (0.2 s doubling to 5 s) on a connection error and on 408,
429, 502, 503 and 504, until its deadline; any other 4xx or 5xx is raised at once as
:class:`ApiError`, and a 409 ``lease_lost`` as :class:`LeaseLost`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    # -- HTTP, errors, retries --------------------------------------------------------------

    def _job_path(self, lease: Lease, action: str) -> str:
        return f"/api/v1/jobs/{urllib.parse.quote(lease.job_id, safe='')}/{action}"

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
        if deadline is None and self.retry_seconds is not None:
            deadline = self._clock() + self.retry_seconds
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
        backoff = self._backoff()
        attempt = 0
        while True:
            if abort is not None and abort.is_set():
                raise Unreachable(f"POST {path}: aborted", None, aborted=True)
            attempt += 1
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._clock())
                if timeout <= 0:
                    raise Unreachable(
                        f"POST {path}: no answer before the deadline", None, aborted=False
                    )
            error: BaseException
            retry_after: float | None = None
            sent = self._clock()
            try:
                status, answer = self._post(path, data, timeout)
                return status, answer, sent
            except _Retryable as err:
                error, retry_after = err.cause, err.retry_after
            delay = backoff.next_delay()
            if retry_after is not None:
                delay = max(delay, min(retry_after, backoff.maximum))
            if deadline is not None and self._clock() + delay > deadline:
                raise Unreachable(
                    f"POST {path}: gave up after {attempt} tries: {error}", error, aborted=False
                )
            if self._log is not None:
                self._log(f"POST {path}: {error}; retrying in {delay:.2f}s (try {attempt})")
            if abort is not None:
                if abort.wait(delay):
                    raise Unreachable(f"POST {path}: aborted", error, aborted=True)
            else:
                time.sleep(delay)

    def _post(self, path: str, data: bytes, timeout: float) -> tuple[int, Any]:
        request = urllib.request.Request(self.server + path, data=data, method="POST")
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
