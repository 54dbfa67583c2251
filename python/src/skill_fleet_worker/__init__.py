"""Run Python programs as skill-fleet jobs: executor-protocol lines on a clean stdout.

The core (this package but :mod:`skill_fleet_worker.dspy`) uses only the standard library.
"""

from .context import JobContext
from .reporter import MAX_LINE_BYTES, Reporter, get_reporter

__all__ = ["MAX_LINE_BYTES", "JobContext", "Reporter", "get_reporter"]
__version__ = "0.1.0"
