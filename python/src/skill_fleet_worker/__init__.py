"""Run Python programs as skill-fleet jobs: executor-protocol lines on a clean stdout.

The core (this package but :mod:`skill_fleet_worker.dspy`) uses only the standard library.
The remote worker (:class:`Worker`, :class:`HttpClient`, ``python -m skill_fleet_worker
worker``) is imported on first use, so a program that only reports pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import JobContext
from .reporter import MAX_LINE_BYTES, Reporter, get_reporter

if TYPE_CHECKING:
    from .artifacts import Artifact, ChecksumMismatch
    from .client import ApiError, ArtifactTooLarge, Forbidden, HttpClient, LeaseLost
    from .worker import Outcome, Worker

__all__ = [
    "MAX_LINE_BYTES",
    "ApiError",
    "Artifact",
    "ArtifactTooLarge",
    "ChecksumMismatch",
    "Forbidden",
    "HttpClient",
    "JobContext",
    "LeaseLost",
    "Outcome",
    "Reporter",
    "Worker",
    "get_reporter",
]
__version__ = "0.1.0"

_LAZY = {
    "ApiError": "client",
    "Artifact": "artifacts",
    "ArtifactTooLarge": "client",
    "ChecksumMismatch": "artifacts",
    "Forbidden": "client",
    "HttpClient": "client",
    "LeaseLost": "client",
    "Outcome": "worker",
    "Worker": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
