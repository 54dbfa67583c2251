"""Fixtures: a real server per test (see server.py), each in its own temp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server import LEASE_CONFIG, Server, dspy_config, require_dspy


@pytest.fixture
def dspy_server(tmp_path: Path) -> Iterator[Server]:
    """A started server whose `dspy` job type runs examples/dspy_optimize.py."""
    require_dspy()
    server = Server(tmp_path / "server", dspy_config()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lease_server(tmp_path: Path) -> Iterator[Server]:
    """A started server that runs nothing itself: jobs wait for remote workers."""
    server = Server(tmp_path / "server", LEASE_CONFIG).start()
    try:
        yield server
    finally:
        server.stop()
