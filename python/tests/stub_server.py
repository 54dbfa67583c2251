"""A tiny lease-protocol server for the worker's unit tests (stdlib ``http.server``).

It hands out the jobs queued with :meth:`StubServer.add_job`, records every request, and
answers each route with a default that a test can replace (``stub.on["heartbeat"] = ...``)
or hold (``stub.gate("events")``). Artifacts: ``PUT .../artifacts/NAME`` is the action
``artifact`` (the body read in blocks, kept in ``stub.artifacts``; ``stub.early["artifact"]``
answers before reading the body and closes), ``GET .../artifacts`` is ``artifacts`` and
``GET .../artifacts/NAME`` is ``download``. Listens on 127.0.0.1 port 0.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, Any]
Handler = Callable[["Call"], Answer]


@dataclass
class Call:
    """One request as the stub saw it."""

    action: str  # claim, heartbeat, events, complete, fail, artifact, artifacts, download
    job_id: str | None
    body: Any
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    #: 0 for the first call of this action, 1 for the second, ...
    index: int = 0
    #: The artifact's name (artifact, download).
    name: str | None = None
    #: An upload's body, as received.
    raw: bytes = b""


def lease_lost(attempt: int = 2, status: str = "queued") -> Answer:
    return 409, {
        "error": {
            "code": "lease_lost",
            "message": "this attempt no longer owns the job",
            "attempt": attempt,
            "status": status,
        }
    }


def error(status: int, code: str, message: str = "stub error") -> Answer:
    return status, {"error": {"code": code, "message": message}}


class StubServer:
    def __init__(self, *, ttl: float = 2.0, interval: float = 0.2) -> None:
        self.ttl = ttl
        self.interval = interval
        self.calls: list[Call] = []
        self.queue: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.on: dict[str, Handler] = {}
        self._gates: dict[str, threading.Event] = {}
        #: Stored artifacts: (job id, name) -> (bytes, content type).
        self.artifacts: dict[tuple[str, str], tuple[bytes, str]] = {}
        #: Answers given before an upload's body is read (then the connection is closed).
        self.early: dict[str, Handler] = {}
        #: Serve these bytes instead of the stored ones (with the stored ETag).
        self.corrupt_downloads: bytes | None = None
        stub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = stub._handle(self.path, raw, dict(self.headers.items()))
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def do_PUT(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 6 or parts[:3] != ["api", "v1", "jobs"] or parts[4] != "artifacts":
                    self._answer(*error(404, "not_found"))
                    return
                headers = dict(self.headers.items())
                call = stub._record("artifact", parts[3], None, headers, name=parts[5])
                early = stub.early.get("artifact")
                if early is not None:
                    self.close_connection = True
                    self._answer(*early(call))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = bytearray()
                while len(data) < length:
                    block = self.rfile.read(min(65536, length - len(data)))
                    if not block:
                        break
                    data.extend(block)
                call.raw = bytes(data)
                call.body = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                self._answer(*stub._respond(call))

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:3] != ["api", "v1", "jobs"] or len(parts) not in (5, 6):
                    self._answer(*error(404, "not_found"))
                    return
                job_id = parts[3]
                if len(parts) == 5 and parts[4] == "artifacts":
                    call = stub._record("artifacts", job_id, None, dict(self.headers.items()))
                    self._answer(*stub._respond(call))
                    return
                name = parts[5]
                call = stub._record("download", job_id, None, dict(self.headers.items()), name=name)
                stored = stub.artifacts.get((job_id, name))
                if "download" in stub.on:
                    self._answer(*stub._respond(call))
                    return
                if stored is None:
                    self._answer(*error(404, "not_found"))
                    return
                data, content_type = stored
                etag = hashlib.sha256(data).hexdigest()
                if stub.corrupt_downloads is not None:
                    data = stub.corrupt_downloads
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status: int, answer: Any) -> None:
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for gate in self._gates.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- scripting --------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str = "job-1",
        *,
        attempt: int = 1,
        job_type: str = "evaluation",
        checkpoint: Any = None,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        job = {
            "id": job_id,
            "type": job_type,
            "status": "running",
            "attempt": attempt,
            "checkpoint": checkpoint,
            "metadata": metadata or {},
            "progress": {
                "progress": 0.0,
                "step": None,
                "message": None,
                "cost_usd": 0.0,
                "metric": None,
                "eta_seconds": None,
            },
            "lease": {
                "owner": "w",
                "expires_at": "2030-01-01T00:00:00Z",
                "renewed_at": "2030-01-01T00:00:00Z",
            },
            "lease_token": token or f"token-{job_id}-{attempt}",
            "lease_ttl_seconds": self.ttl,
            "heartbeat_interval_seconds": self.interval,
        }
        with self.cond:
            self.queue.append(job)
        return job

    def gate(self, action: str) -> threading.Event:
        """Holds every ``action`` request until the returned event is set."""
        gate = threading.Event()
        self._gates[action] = gate
        return gate

    def answer_first(self, action: str, answers: list[Answer]) -> None:
        """The first calls of ``action`` get ``answers``; later ones the default."""

        def handler(call: Call) -> Answer:
            if call.index < len(answers):
                return answers[call.index]
            return self.default(call)

        self.on[action] = handler

    # -- looking ------------------------------------------------------------------------------

    def of(self, action: str) -> list[Call]:
        with self.cond:
            return [c for c in self.calls if c.action == action]

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = check()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; "
                        f"calls: {[(c.action, c.body) for c in self.calls]}"
                    )
                self.cond.wait(min(remaining, 0.1))

    # -- answering ----------------------------------------------------------------------------

    def _handle(self, path: str, raw: bytes, headers: dict[str, str]) -> Answer:
        parts = path.strip("/").split("/")  # api v1 jobs claim | api v1 jobs ID action
        if parts[:3] != ["api", "v1", "jobs"]:
            return error(404, "not_found")
        if parts[3:] == ["claim"]:
            action, job_id = "claim", None
        elif len(parts) == 5:
            action, job_id = parts[4], parts[3]
        else:
            return error(404, "not_found")
        body = json.loads(raw) if raw else None
        return self._respond(self._record(action, job_id, body, headers))

    def _record(
        self,
        action: str,
        job_id: str | None,
        body: Any,
        headers: dict[str, str],
        name: str | None = None,
    ) -> Call:
        with self.cond:
            index = sum(1 for c in self.calls if c.action == action)
            call = Call(action, job_id, body, headers, index=index, name=name)
            self.calls.append(call)
            self.cond.notify_all()
        return call

    def _respond(self, call: Call) -> Answer:
        gate = self._gates.get(call.action)
        if gate is not None:
            gate.wait(30)
        handler = self.on.get(call.action, self.default)
        answer = handler(call)
        with self.cond:  # an upload counts as done once answered
            self.cond.notify_all()
        return answer

    def artifact_json(self, job_id: str, name: str) -> dict[str, Any]:
        data, content_type = self.artifacts[(job_id, name)]
        return {
            "name": name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": content_type,
            "created_at": "2030-01-01T00:00:00Z",
            "attempt": 1,
        }

    def default(self, call: Call) -> Answer:
        if call.action == "claim":
            with self.cond:
                if not self.queue:
                    return 204, None
                return 200, self.queue.popleft()
        if call.action == "heartbeat":
            return 200, {
                "job_id": call.job_id,
                "attempt": call.body["attempt"],
                "status": "running",
                "stop": False,
                "reason": None,
                "lease_expires_at": "2030-01-01T00:00:00Z",
            }
        if call.action == "events":
            return 202, {"job_id": call.job_id, "status": "running", "durable": False}
        if call.action == "complete":
            return 200, {
                "id": call.job_id,
                "status": "completed",
                "result": call.body.get("result"),
                "result_path": call.body.get("result_path"),
            }
        if call.action == "fail":
            return 200, {"id": call.job_id, "status": "failed", "error": call.body["error"]}
        if call.action == "artifact":
            assert call.job_id is not None and call.name is not None
            key = (call.job_id, call.name)
            status = 200 if key in self.artifacts else 201
            content_type = call.headers.get("Content-Type") or "application/octet-stream"
            with self.cond:
                self.artifacts[key] = (call.raw, content_type)
            return status, self.artifact_json(*key)
        if call.action == "artifacts":
            with self.cond:
                names = sorted(n for j, n in self.artifacts if j == call.job_id)
                items = [self.artifact_json(str(call.job_id), n) for n in names]
            return 200, {
                "job_id": call.job_id,
                "artifacts": items,
                "total_bytes": sum(i["size"] for i in items),
            }
        return error(404, "not_found")
