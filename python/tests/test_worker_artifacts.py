"""Artifacts over HTTP against the stub server: the upload, the fence, the worker's uploads,
the downloads. No fixed sleeps."""

from __future__ import annotations

import hashlib
import http.client
from pathlib import Path
from typing import Any

import pytest
from stub_server import Call, StubServer, error, lease_lost
from test_worker import fast_client, make_worker, no_run_threads_left, output, pid_alive

from skill_fleet_worker.artifacts import BLOCK_SIZE, ChecksumMismatch
from skill_fleet_worker.client import ApiError, ArtifactTooLarge, Lease, LeaseLost
from skill_fleet_worker.worker import Ending

LEASE = Lease("job-1", 2, "tok-2")
MIB = 1024 * 1024


def payload(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every block http.client sends."""
    sizes: list[int] = []
    original = http.client.HTTPConnection.send

    def send(self: http.client.HTTPConnection, data: Any) -> None:
        sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", send)
    return sizes


def test_an_upload_streams_the_file_in_blocks_with_its_length_type_and_fence(
    tmp_path: Path, sends: list[int]
):
    data = payload(MIB + 3)
    source = tmp_path / "big.json"
    source.write_bytes(data)
    with StubServer() as stub:
        client = fast_client(stub.url, token="secret")
        artifact = client.upload_artifact(LEASE, source)
        [call] = stub.of("artifact")
    assert (call.job_id, call.name) == ("job-1", "big.json")
    assert call.raw == data
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in headers
    assert headers["content-type"] == "application/json"  # the server's guess for .json
    assert headers["skill-fleet-attempt"] == "2"
    assert headers["skill-fleet-lease-token"] == "tok-2"
    assert headers["authorization"] == "Bearer secret"
    # The body went out in blocks, never the file at once.
    assert max(sends) <= BLOCK_SIZE
    assert sum(s for s in sends if s <= BLOCK_SIZE) >= len(data)
    assert len(sends) > len(data) // BLOCK_SIZE
    assert artifact.name == "big.json" and artifact.size == len(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()


def test_an_upload_names_and_types_are_checked_and_sent_as_given(tmp_path: Path):
    source = tmp_path / "f.zzq"
    source.write_bytes(b"x")
    with StubServer() as stub:
        client = fast_client(stub.url)
        with pytest.raises(ValueError, match="invalid artifact name"):
            client.upload_artifact(LEASE, source, name="../f.zzq")
        with pytest.raises(ValueError, match="invalid content type"):
            client.upload_artifact(LEASE, source, content_type="nonsense")
        assert not stub.calls
        client.upload_artifact(LEASE, source, name="g.dat", content_type="text/x-mine")
        client.upload_artifact("job-2", source)  # no fence: for a job with an open lease
        first, second = stub.of("artifact")
    assert first.name == "g.dat" and first.headers["Content-Type"] == "text/x-mine"
    assert "Skill-Fleet-Attempt" not in second.headers
    assert "Skill-Fleet-Lease-Token" not in second.headers
    assert "Content-Type" not in second.headers  # nothing known: the server decides


def test_lease_lost_on_an_upload_raises_and_is_not_retried(tmp_path: Path):
    source = tmp_path / "f.txt"
    source.write_bytes(payload(3 * MIB))
    with StubServer() as stub:
        stub.on["artifact"] = lambda call: lease_lost(attempt=3, status="running")
        client = fast_client(stub.url)
        with pytest.raises(LeaseLost) as lost:
            client.upload_artifact(LEASE, source)
        assert (lost.value.attempt, lost.value.status) == (3, "running")
        assert len(stub.of("artifact")) == 1
        assert not stub.artifacts


def test_an_answer_before_the_body_is_read_is_still_heard(tmp_path: Path):
    # The server may refuse at the headers (a wrong fence) and close while the body is sent.
    source = tmp_path / "f.txt"
    source.write_bytes(payload(8 * MIB))
    with StubServer() as stub:
        stub.early["artifact"] = lambda call: lease_lost()
        with pytest.raises(LeaseLost):
            fast_client(stub.url).upload_artifact(LEASE, source)
        assert not stub.artifacts


def test_413_is_a_clear_error_naming_the_limit(tmp_path: Path):
    source = tmp_path / "huge.bin"
    source.write_bytes(b"z" * 1000)
    limit = "artifact is 1000 bytes, over the per-file limit max_artifact_bytes = 512"
    with StubServer() as stub:
        stub.on["artifact"] = lambda call: error(413, "payload_too_large", limit)
        with pytest.raises(ArtifactTooLarge) as refused:
            fast_client(stub.url).upload_artifact(LEASE, source)
        assert len(stub.of("artifact")) == 1  # not retried
    err = refused.value
    assert (err.http_status, err.code, err.size, err.name) == (
        413,
        "payload_too_large",
        1000,
        "huge.bin",
    )
    assert "max_artifact_bytes = 512" in str(err) and "'huge.bin' (1000 bytes)" in str(err)


def test_an_upload_is_retried_whole_on_503(tmp_path: Path):
    data = payload(300_000)
    source = tmp_path / "r.bin"
    source.write_bytes(data)
    with StubServer() as stub:
        stub.answer_first("artifact", [error(503, "unavailable"), error(502, "bad_gateway")])
        artifact = fast_client(stub.url).upload_artifact(LEASE, source)
        calls = stub.of("artifact")
    assert len(calls) == 3 and all(c.raw == data for c in calls)
    assert artifact.size == len(data)


def test_an_answer_with_another_checksum_is_an_error(tmp_path: Path):
    source = tmp_path / "c.txt"
    source.write_bytes(b"what was sent")

    def wrong(call: Call) -> Any:
        return 201, {"name": "c.txt", "size": 13, "sha256": "0" * 64, "content_type": "x/y",
                     "created_at": "2030-01-01T00:00:00Z", "attempt": 2}  # fmt: skip

    with StubServer() as stub:
        stub.on["artifact"] = wrong
        with pytest.raises(ChecksumMismatch):
            fast_client(stub.url).upload_artifact(LEASE, source)


def test_downloads_are_streamed_checked_and_listed(tmp_path: Path):
    data = payload(MIB + 17)
    with StubServer() as stub:
        stub.artifacts[("job-1", "big.bin")] = (data, "application/octet-stream")
        stub.artifacts[("job-1", "a.json")] = (b"{}", "application/json")
        client = fast_client(stub.url)
        listed = client.list_artifacts("job-1")
        assert [(a.name, a.size) for a in listed] == [("a.json", 2), ("big.bin", len(data))]
        assert listed[1].sha256 == hashlib.sha256(data).hexdigest()

        dest = client.download_artifact("job-1", "big.bin", tmp_path / "out" / "copy.bin")
        assert dest == tmp_path / "out" / "copy.bin" and dest.read_bytes() == data
        (tmp_path / "dir").mkdir()
        into_dir = client.download_artifact("job-1", "a.json", tmp_path / "dir")
        assert into_dir == tmp_path / "dir" / "a.json" and into_dir.read_bytes() == b"{}"
        new_dir = client.download_artifact("job-1", "a.json", f"{tmp_path}/new/")
        assert new_dir == tmp_path / "new" / "a.json" and new_dir.read_bytes() == b"{}"

        with pytest.raises(ChecksumMismatch):  # a checksum given by the caller wins
            client.download_artifact("job-1", "a.json", tmp_path / "x.json", sha256="ab" * 32)
        stub.corrupt_downloads = b"{!"
        with pytest.raises(ChecksumMismatch):  # the bytes do not match the ETag
            client.download_artifact("job-1", "a.json", tmp_path / "y.json")
        with pytest.raises(ApiError) as missing:
            client.download_artifact("job-1", "nope.json", tmp_path / "z.json")
        assert missing.value.http_status == 404
    # Nothing half-written is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "new", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]


# -- the worker -------------------------------------------------------------------------------


def test_the_worker_uploads_artifacts_in_order_and_the_files_left_in_artifacts(tmp_path: Path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(payload(MIB + 5))
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, "artifacts", str(outside))
        outcome = worker.run_once()
        assert outcome is not None and outcome.completed, (outcome, output(worker))
        writes = [c for c in stub.calls if c.action in ("events", "artifact", "complete")]
    job_dir = tmp_path / "work" / "job-1"
    order = [c.name if c.action == "artifact" else c.action for c in writes]
    # In the order written: the announced ones between the events, the leftovers (those not
    # stored yet) after the program exits, then complete.
    assert order == ["events", "small.txt", "big.bin", "events", "leftover.csv", "complete"], order
    by_name = {c.name: c for c in writes if c.action == "artifact"}
    assert by_name["small.txt"].raw == b"small\n"
    assert by_name["small.txt"].headers["Content-Type"] == "text/plain; charset=utf-8"
    assert by_name["big.bin"].raw == outside.read_bytes()
    assert by_name["big.bin"].headers["Content-Type"] == "application/x-test"
    assert (job_dir / "artifacts" / "big.bin").read_bytes() == outside.read_bytes()  # the copy
    assert by_name["leftover.csv"].raw == b"a,b\n1,2\n"
    for call in by_name.values():
        assert call.headers["Skill-Fleet-Attempt"] == "1"
        assert call.headers["Skill-Fleet-Lease-Token"] == "token-job-1-1"
    assert writes[-1].body["result_path"] == "artifact:small.txt"
    log = output(worker)
    assert "'../outside.txt' must be a relative path inside the job directory" in log, log
    assert "'artifacts/escape.txt' is outside the job directory" in log, log


def test_lease_lost_on_an_upload_stops_the_program_and_writes_nothing_more(tmp_path: Path):
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        stub.on["artifact"] = lambda call: lease_lost()
        worker = make_worker(stub, tmp_path, "artifact-forever")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.LEASE_LOST, outcome
        job_dir = tmp_path / "work" / "job-1"
        assert (job_dir / "terminated").is_file()  # SIGTERM reached it
        assert not pid_alive(int((job_dir / "pid").read_text()))
        assert no_run_threads_left()
        assert [c.action for c in stub.calls] == ["claim", "artifact"]
        assert not stub.artifacts


def test_an_artifact_over_the_limit_is_skipped_with_the_servers_reason(tmp_path: Path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"b" * 2000)

    def too_big(call: Call) -> Any:
        if call.name == "big.bin":
            return error(413, "payload_too_large", "over max_artifact_bytes (1024)")
        return stub.default(call)

    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        stub.on["artifact"] = too_big
        worker = make_worker(stub, tmp_path, "artifacts", str(outside))
        outcome = worker.run_once()
        assert outcome is not None and outcome.completed, (outcome, output(worker))
        assert sorted(name for _, name in stub.artifacts) == ["leftover.csv", "small.txt"]
        # The copy in artifacts/ was refused once: not tried again at the exit.
        assert len([c for c in stub.of("artifact") if c.name == "big.bin"]) == 2
    assert "artifact big.bin not stored" in output(worker)
    assert "over max_artifact_bytes (1024)" in output(worker)


def test_a_failing_program_still_stores_its_artifacts_before_the_fail(tmp_path: Path):
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        program = (
            "import os, pathlib, sys\n"
            "d = pathlib.Path(os.environ['SKILL_FLEET_WORK_DIR']) / 'artifacts'\n"
            "d.mkdir()\n"
            "(d / 'trace.log').write_text('what went wrong')\n"
            "sys.exit(4)\n"
        )
        worker = make_worker(stub, tmp_path, command=[__import__("sys").executable, "-c", program])
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.FAILED
        assert [c.action for c in stub.calls if c.action != "heartbeat"] == [
            "claim", "artifacts", "artifact", "fail",
        ]  # fmt: skip
        assert stub.artifacts[("job-1", "trace.log")][0] == b"what went wrong"


def test_a_server_without_artifact_routes_does_not_stop_the_job(tmp_path: Path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o")
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        no_route = error(404, "not_found", "no route for PUT /api/v1/jobs/job-1/artifacts/x")
        stub.on["artifact"] = lambda call: no_route
        worker = make_worker(stub, tmp_path, "artifacts", str(outside))
        outcome = worker.run_once()
        assert outcome is not None and outcome.completed, (outcome, output(worker))
    assert "this server has no artifacts" in output(worker)


def test_a_404_for_the_job_on_an_upload_stops_the_run(tmp_path: Path):
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        stub.on["artifact"] = lambda call: error(404, "not_found", "no job `job-1`")
        worker = make_worker(stub, tmp_path, "artifact-forever")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.STOPPED, outcome
        assert "artifact upload refused" in outcome.detail
        assert not stub.of("complete") and not stub.of("fail")
