"""Artifacts without a server: names, the reporter's artifact line, the copy into artifacts/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_reporter import Pipe

from skill_fleet_worker import JobContext, Reporter
from skill_fleet_worker.artifacts import (
    Artifact,
    content_type_for,
    sha256_file,
    validate_content_type,
    validate_name,
)
from skill_fleet_worker.protocol import ArtifactLine, Invalid, Message, parse_line

SRC = Path(__file__).resolve().parents[1] / "src"

GOOD_NAMES = ["program.json", "scores.csv", "a", "A-b_c.1.png", "x" * 128, "a..b"]
BAD_NAMES = [
    "",
    ".",
    "..",
    ".hidden",
    "../etc/passwd",
    "a/b",
    "a\\b",
    "a b",
    "naïve.txt",
    "a\0b",
    "x" * 129,
    "trailing\n",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_the_server_accepts_pass(name: str):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [*BAD_NAMES, None, 3])
def test_names_the_server_refuses_raise(name: object):
    with pytest.raises(ValueError, match="artifact name"):
        validate_name(name)


def test_content_types_are_checked_and_guessed_as_the_server_does():
    assert validate_content_type("application/json") == "application/json"
    assert validate_content_type("text/plain; charset=utf-8")
    for bad in ["json", "text/\nplain", "a/" + "b" * 200, "/x", "text/", "té/x"]:
        with pytest.raises(ValueError, match="invalid content type"):
            validate_content_type(bad)
    assert content_type_for("program.JSON") == "application/json"
    assert content_type_for("scores.csv") == "text/csv; charset=utf-8"
    assert content_type_for("plot.png") == "image/png"
    assert content_type_for("noextension") is None


def test_file_hashes_are_streamed(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 100_000)
    import hashlib

    assert sha256_file(path) == (hashlib.sha256(b"abc" * 100_000).hexdigest(), 300_000)


def test_artifacts_are_read_from_the_servers_json():
    artifact = Artifact.from_json({
        "name": "p.json", "size": 3, "sha256": "AB", "content_type": "application/json",
        "created_at": "2026-12-05T00:00:00Z", "attempt": 2,
    })  # fmt: skip
    assert artifact == Artifact("p.json", 3, "ab", "application/json", "2026-12-05T00:00:00Z", 2)
    assert (
        Artifact.from_json({"name": "x", "size": 1, "sha256": "a", "attempt": None}).attempt is None
    )
    with pytest.raises(ValueError):
        Artifact.from_json({"name": "x"})


# -- the artifact line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"artifact": "program.json"}',
            Message(artifact=ArtifactLine("program.json", "program.json")),
        ),
        (
            '{"artifact": "out/p.json", "name": "best.json", "content_type": "application/json"}',
            Message(artifact=ArtifactLine("out/p.json", "best.json", "application/json")),
        ),
        # As on the server, an artifact line is nothing else.
        (
            '{"artifact": "a.txt", "progress": 0.5, "result": 1}',
            Message(artifact=ArtifactLine("a.txt", "a.txt")),
        ),
    ],
)
def test_artifact_lines_are_classified(line: str, expected: object):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        '{"artifact": 3}',
        '{"artifact": null}',
        '{"artifact": ""}',
        '{"artifact": "x.json", "name": "../x"}',
        '{"artifact": "dir/.hidden"}',  # the default name (the base name) must be valid too
        '{"artifact": "x.json", "content_type": "json"}',
        '{"artifact": "x.json", "name": 7}',
    ],
)
def test_bad_artifact_lines_are_invalid(line: str):
    assert isinstance(parse_line(line), Invalid)


def job_reporter(work_dir: Path) -> tuple[Reporter, Pipe]:
    pipe = Pipe()
    context = JobContext(job_id="job-1", job_type="t", work_dir=work_dir.resolve())
    return Reporter(context, fd=pipe.write_fd), pipe


def test_a_file_outside_the_work_dir_is_copied_into_artifacts(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    source = tmp_path / "elsewhere" / "scores.csv"
    source.parent.mkdir()
    source.write_bytes(b"a,b\n1,2\n")
    reporter, pipe = job_reporter(work)
    try:
        assert reporter.artifact(source) == "artifact:scores.csv"
        assert reporter.artifact(source, name="renamed.csv", content_type="text/csv") == (
            "artifact:renamed.csv"
        )
    finally:
        lines = pipe.lines()
    assert [json.loads(line) for line in lines] == [
        {"artifact": "artifacts/scores.csv", "name": "scores.csv"},
        {"artifact": "artifacts/renamed.csv", "name": "renamed.csv", "content_type": "text/csv"},
    ]
    assert (work / "artifacts" / "scores.csv").read_bytes() == source.read_bytes()
    assert (work / "artifacts" / "renamed.csv").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (work / "artifacts").iterdir()) == ["renamed.csv", "scores.csv"]


def test_a_file_inside_the_work_dir_is_announced_where_it_is(tmp_path: Path):
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "program.json").write_text("{}")
    reporter, pipe = job_reporter(work)
    try:
        # A relative path is the cwd's; here an absolute one inside the work dir.
        reporter.artifact(work / "out" / "program.json")
        # A symlink inside the work dir to a file outside: the file is copied.
        outside = tmp_path / "outside.txt"
        outside.write_text("outside")
        (work / "link.txt").symlink_to(outside)
        reporter.artifact(work / "link.txt")
    finally:
        lines = pipe.lines()
    assert [json.loads(line) for line in lines] == [
        {"artifact": "out/program.json", "name": "program.json"},
        {"artifact": "artifacts/link.txt", "name": "link.txt"},
    ]
    assert not (work / "artifacts" / "program.json").exists()
    assert (work / "artifacts" / "link.txt").read_text() == "outside"


@pytest.mark.parametrize(
    ("name", "content_type", "error"),
    [
        ("../up.json", None, "invalid artifact name"),
        (".hidden", None, "invalid artifact name"),
        ("a b", None, "invalid artifact name"),
        ("ok.json", "json", "invalid content type"),
    ],
)
def test_bad_names_raise_before_anything_is_written(
    tmp_path: Path, name: str, content_type: str | None, error: str
):
    source = tmp_path / "f.json"
    source.write_text("{}")
    reporter, pipe = job_reporter(tmp_path / "work")
    with pytest.raises(ValueError, match=error):
        reporter.artifact(source, name=name, content_type=content_type)
    assert pipe.lines() == []
    assert not (tmp_path / "work" / "artifacts").exists()


def test_a_default_name_that_is_not_valid_asks_for_a_name(tmp_path: Path):
    source = tmp_path / "my scores.csv"
    source.write_text("x")
    reporter, pipe = job_reporter(tmp_path / "work")
    with pytest.raises(ValueError, match=r"'my scores\.csv'"):
        reporter.artifact(source)
    assert pipe.lines() == []


def test_missing_files_and_directories_raise(tmp_path: Path):
    reporter, pipe = job_reporter(tmp_path / "work")
    with pytest.raises(FileNotFoundError):
        reporter.artifact(tmp_path / "nope.json")
    with pytest.raises(IsADirectoryError):
        reporter.artifact(tmp_path, name="dir")
    assert pipe.lines() == []


def test_outside_a_job_nothing_is_copied_or_written_but_a_note(tmp_path: Path):
    source = tmp_path / "p.json"
    source.write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILL_FLEET_")}
    env["PYTHONPATH"] = str(SRC)
    code = (
        "import sys\n"
        "from skill_fleet_worker import Reporter\n"
        "r = Reporter().install()\n"
        f"print('returned', r.artifact({str(source)!r}))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, timeout=60
    )
    assert process.returncode == 0, process.stderr.decode()
    assert process.stdout.decode().splitlines() == [f"returned {source}"]
    assert "artifact p.json" in process.stderr.decode()
    assert "not running as a job" in process.stderr.decode()
    assert not (tmp_path / "skill-fleet-work").exists()
