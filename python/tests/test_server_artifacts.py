"""Artifacts against the real server: fenced uploads from a remote worker, listing,
downloads, and the DSPy runner's program.json stored by the executor.

A server built before the artifact routes makes these tests skip (fail under ``CI``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from server import LEASE_CONFIG, Server, unavailable
from test_server_dspy import load_program

from skill_fleet_worker.artifacts import ChecksumMismatch
from skill_fleet_worker.client import ApiError, ArtifactTooLarge, HttpClient, Lease, LeaseLost

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
MIB = 1024 * 1024


def require_artifact_routes(server: Server, job_id: str) -> None:
    status, body = server.request("GET", f"/api/v1/jobs/{job_id}/artifacts")
    if status == 404 and "no route" in json.dumps(body):
        unavailable(f"this skill-fleet-server has no artifact routes (built before them): {body}")
    assert status == 200, (status, body)


def payload(size: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 256 for i in range(size))


def test_a_worker_uploads_lists_downloads_and_a_stale_fence_stores_nothing(
    lease_server: Server, tmp_path: Path
):
    job_id = lease_server.create_job("evaluation", {})
    require_artifact_routes(lease_server, job_id)
    client = HttpClient(lease_server.url, retry_seconds=30)
    claim = client.claim(["evaluation"], "box-1")
    assert claim is not None and claim.job_id == job_id

    small = tmp_path / "scores.json"
    small.write_bytes(b'{"accuracy": 0.91}\n')
    big = tmp_path / "model.bin"
    big.write_bytes(payload(3 * MIB + 123, 1))  # many blocks, past any 1 MiB chunk
    stored_small = client.upload_artifact(claim.lease, small)
    stored_big = client.upload_artifact(claim.lease, big, content_type="application/x-model")
    assert stored_small.attempt == 1 and stored_small.content_type == "application/json"
    assert stored_big.size == big.stat().st_size

    # A fence that does not own the job: lease lost, nothing stored (no new name, no
    # replacement of an existing one).
    other = tmp_path / "other.bin"
    other.write_bytes(payload(2 * MIB, 2))
    for wrong in (Lease(job_id, 1, "not-the-token"), Lease(job_id, 2, claim.lease.token)):
        for name in ("intruder.bin", "model.bin"):
            with pytest.raises(LeaseLost) as lost:
                client.upload_artifact(wrong, other, name=name)
            assert (lost.value.attempt, lost.value.status) == (1, "running")

    listed = {a.name: a for a in client.list_artifacts(job_id)}
    assert sorted(listed) == ["model.bin", "scores.json"]
    for path in (small, big):
        data = path.read_bytes()
        assert listed[path.name].size == len(data)
        assert listed[path.name].sha256 == hashlib.sha256(data).hexdigest()
    assert listed["model.bin"].content_type == "application/x-model"
    body = lease_server.get(f"/api/v1/jobs/{job_id}/artifacts")
    assert body["total_bytes"] == small.stat().st_size + big.stat().st_size

    for path in (small, big):
        copy = client.download_artifact(job_id, path.name, tmp_path / "copies")
        assert copy.read_bytes() == path.read_bytes()
    with pytest.raises(ChecksumMismatch):
        client.download_artifact(job_id, "scores.json", tmp_path / "x.json", sha256="0" * 64)
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ApiError) as missing:
        client.download_artifact(job_id, "intruder.bin", tmp_path / "copies")
    assert missing.value.http_status == 404

    # The same name again replaces it; the job completes naming an artifact.
    small.write_bytes(b'{"accuracy": 0.93}\n')
    replaced = client.upload_artifact(claim.lease, small)
    assert replaced.sha256 == hashlib.sha256(small.read_bytes()).hexdigest()
    job = client.complete(claim.lease, {"accuracy": 0.93}, "artifact:scores.json")
    assert job["status"] == "completed" and job["result_path"] == "artifact:scores.json"
    result = lease_server.get(f"/api/v1/jobs/{job_id}/result")
    assert result["result_url"] == f"/api/v1/jobs/{job_id}/artifacts/scores.json"
    # After the end, no upload is accepted any more.
    with pytest.raises(ApiError) as ended:
        client.upload_artifact(claim.lease, small, name="late.json")
    assert ended.value.http_status == 409
    assert sorted(a.name for a in client.list_artifacts(job_id)) == ["model.bin", "scores.json"]


def test_uploads_past_the_limits_are_refused_with_the_limit_and_store_nothing(tmp_path: Path):
    config = f"max_artifact_bytes = {MIB}\nmax_job_artifact_bytes = {2 * MIB}\n" + LEASE_CONFIG
    server = Server(tmp_path / "server", config).start()
    try:
        job_id = server.create_job("evaluation", {})
        require_artifact_routes(server, job_id)
        client = HttpClient(server.url, retry_seconds=30)
        claim = client.claim(["evaluation"], "box-1")
        assert claim is not None
        too_big = tmp_path / "too_big.bin"
        too_big.write_bytes(payload(MIB + 1, 4))
        with pytest.raises(ArtifactTooLarge) as refused:
            client.upload_artifact(claim.lease, too_big)
        assert refused.value.size == MIB + 1
        assert str(MIB) in refused.value.message, refused.value.message
        assert client.list_artifacts(job_id) == []

        one = tmp_path / "one.bin"
        one.write_bytes(payload(MIB, 5))
        client.upload_artifact(claim.lease, one, name="a.bin")
        client.upload_artifact(claim.lease, one, name="b.bin")  # the job's 2 MiB: full
        small = tmp_path / "c.txt"
        small.write_bytes(b"one byte too many")
        with pytest.raises(ArtifactTooLarge) as full:
            client.upload_artifact(claim.lease, small)
        assert str(2 * MIB) in full.value.message, full.value.message
        assert [a.name for a in client.list_artifacts(job_id)] == ["a.bin", "b.bin"]
        # Replacing one by a smaller file of the same name fits (the old one is not counted).
        client.upload_artifact(claim.lease, small, name="a.bin")
        assert [a.size for a in client.list_artifacts(job_id)] == [small.stat().st_size, MIB]
    finally:
        server.stop()


@pytest.mark.parametrize("runner", ["worker", "executor"])
def test_a_program_stores_the_same_artifacts_under_the_worker_and_the_executor(
    tmp_path: Path, runner: str
):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(payload(MIB + 7, 3))
    program = [sys.executable, str(HERE / "worker_programs.py"), "artifacts", str(outside)]
    if runner == "executor":
        config = f"[executors.evaluation]\ncommand = {json.dumps(program)}\n"
    else:
        config = LEASE_CONFIG
    server = Server(tmp_path / "server", config).start()
    try:
        job_id = server.create_job("evaluation", {})
        require_artifact_routes(server, job_id)
        if runner == "worker":
            env = {**os.environ, "PYTHONPATH": str(SRC)}
            process = subprocess.run(
                [sys.executable, "-m", "skill_fleet_worker", "worker", "--server", server.url,
                 "--type", "evaluation", "--worker", "box-1", "--work-dir",
                 str(tmp_path / "work"), "--once", "--poll-seconds", "0.1", "--", *program],
                stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=120,
            )  # fmt: skip
            log = process.stderr.decode(errors="replace")
            assert process.returncode == 0, log
        job = server.wait_status(job_id, {"completed", "failed", "cancelled"}, timeout=60)
        if runner == "executor":
            log = "\n".join(server.logs(job_id)["stderr"])
        assert job["status"] == "completed", (job, log)
        assert job["result_path"] == "artifact:small.txt"
        listed = {a["name"]: a for a in server.get(f"/api/v1/jobs/{job_id}/artifacts")["artifacts"]}
        assert sorted(listed) == ["big.bin", "leftover.csv", "small.txt"], log
        expected = {
            "small.txt": b"small\n",
            "big.bin": outside.read_bytes(),
            "leftover.csv": b"a,b\n1,2\n",
        }
        client = HttpClient(server.url, retry_seconds=30)
        for name, data in expected.items():
            assert listed[name]["size"] == len(data)
            assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
            assert listed[name]["attempt"] == 1
            assert client.download_artifact(job_id, name, tmp_path / "dl/").read_bytes() == data
        assert listed["big.bin"]["content_type"] == "application/x-test"
        assert listed["small.txt"]["content_type"] == "text/plain; charset=utf-8"
        # Both refuse the path outside the work dir and the symlink leading out of it.
        assert "../outside.txt" in log and "artifacts/escape.txt" in log, log
    finally:
        server.stop()


def test_a_dspy_job_stores_its_program_as_an_artifact(dspy_server: Server, tmp_path: Path):
    job_id = dspy_server.create_job("dspy", {"optimizer": "bootstrap"})
    require_artifact_routes(dspy_server, job_id)
    job = dspy_server.wait_status(job_id, {"completed", "failed", "cancelled"})
    assert job["status"] == "completed", (job, dspy_server.logs(job_id))
    assert job["result_path"] == "artifact:program.json"
    result = dspy_server.get(f"/api/v1/jobs/{job_id}/result")
    assert result["result_url"] == f"/api/v1/jobs/{job_id}/artifacts/program.json"

    client = HttpClient(dspy_server.url, retry_seconds=30)
    [artifact] = [a for a in client.list_artifacts(job_id) if a.name == "program.json"]
    assert artifact.content_type == "application/json" and artifact.attempt == 1
    copy = client.download_artifact(job_id, "program.json", tmp_path)
    saved = Path(job["result"]["program_path"])
    assert copy.read_bytes() == saved.read_bytes()  # the file program.save() wrote
    assert "metadata" in json.loads(copy.read_text())
    load_program(str(copy))  # a DSPy program loads the downloaded copy


def test_the_package_guesses_content_types_exactly_as_the_server_does(
    lease_server: Server,
) -> None:
    """The package keeps a copy of the server's extension table (so it sends what the server
    would store); every entry must match what the server guesses for an upload that names
    no type, so the two tables cannot drift apart."""
    import http.client
    from urllib.parse import urlparse

    from skill_fleet_worker.artifacts import _BY_EXTENSION

    job_id = lease_server.create_job("evaluation", {})
    require_artifact_routes(lease_server, job_id)
    client = HttpClient(lease_server.url, retry_seconds=30)
    claim = client.claim(["evaluation"], "box-types")
    assert claim is not None
    address = urlparse(lease_server.url)
    for extension, expected in sorted(_BY_EXTENSION.items()):
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)
        connection.request(
            "PUT",
            f"/api/v1/jobs/{job_id}/artifacts/file.{extension}",
            body=b"x",
            headers={
                "skill-fleet-attempt": str(claim.lease.attempt),
                "skill-fleet-lease-token": claim.lease.token,
            },
        )
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        assert response.status == 201, body
        assert body["content_type"] == expected, (extension, body)
