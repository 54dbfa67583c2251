"""What the server tells a job's process: the ``SKILL_FLEET_*`` environment, read once."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Work directory of a run outside the server (no ``SKILL_FLEET_WORK_DIR``), under the cwd.
LOCAL_WORK_DIR = "skill-fleet-work"


@dataclass(frozen=True)
class JobContext:
    """The job a process runs, as the server describes it in its environment.

    Outside the server (no ``SKILL_FLEET_JOB_ID``) every field has a local default:
    attempt 1, empty metadata, no checkpoint, work directory ``./skill-fleet-work``.
    """

    job_id: str | None = None
    job_type: str | None = None
    attempt: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_path: Path | None = None
    checkpoint: Any = None
    checkpoint_path: Path | None = None
    work_dir: Path = field(default_factory=lambda: Path(LOCAL_WORK_DIR).resolve())

    @property
    def under_server(self) -> bool:
        """True when the server started this process (it set ``SKILL_FLEET_JOB_ID``)."""
        return self.job_id is not None

    @property
    def resuming(self) -> bool:
        """True when the server handed back a checkpoint (``SKILL_FLEET_CHECKPOINT``)."""
        return self.checkpoint_path is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobContext:
        """Reads the context from ``environ`` (default ``os.environ``).

        Raises ``ValueError`` for a value the server would never set (an attempt that is
        not a positive whole number, metadata that is not a JSON object).
        """
        env = os.environ if environ is None else environ
        attempt_text = env.get("SKILL_FLEET_ATTEMPT") or "1"
        try:
            attempt = int(attempt_text)
        except ValueError:
            raise ValueError(
                f"SKILL_FLEET_ATTEMPT must be a whole number, got {attempt_text!r}"
            ) from None
        if attempt < 1:
            raise ValueError(f"SKILL_FLEET_ATTEMPT must be 1 or more, got {attempt}")

        metadata: dict[str, Any] = {}
        metadata_path = _path(env.get("SKILL_FLEET_METADATA"))
        if metadata_path is not None:
            loaded = _load_json(metadata_path, "SKILL_FLEET_METADATA")
            if not isinstance(loaded, dict):
                raise ValueError(
                    f"metadata in {metadata_path} must be a JSON object, "
                    f"got {type(loaded).__name__}"
                )
            metadata = loaded

        checkpoint_path = _path(env.get("SKILL_FLEET_CHECKPOINT"))
        checkpoint = None
        if checkpoint_path is not None:
            checkpoint = _load_json(checkpoint_path, "SKILL_FLEET_CHECKPOINT")

        work_dir_text = env.get("SKILL_FLEET_WORK_DIR")
        work_dir = Path(work_dir_text) if work_dir_text else Path(LOCAL_WORK_DIR)
        return cls(
            job_id=env.get("SKILL_FLEET_JOB_ID") or None,
            job_type=env.get("SKILL_FLEET_JOB_TYPE") or None,
            attempt=attempt,
            metadata=metadata,
            metadata_path=metadata_path,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
            work_dir=work_dir.resolve(),
        )


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _load_json(path: Path, variable: str) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise ValueError(f"cannot read {variable} file {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{variable} file {path} is not JSON: {err}") from err
