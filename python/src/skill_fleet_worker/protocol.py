"""What one line of a program's stdout means, decided exactly as the server decides it.

The remote worker reads the same executor protocol as the server's own executor
(``docs/PROTOCOL.md``, ``crates/skill-fleet-server/src/executor/protocol.rs``):

- a JSON object with ``result`` and/or ``result_path``: the job's result (the last one wins);
- a JSON object with any of ``step``, ``progress``, ``cost_usd``, ``metric``, ``message``,
  ``checkpoint``: a progress update (fields left out, or null, keep their values);
- a JSON object with ``artifact`` (a path in the work dir, with an optional ``name`` and
  ``content_type``): a file to store as one of the job's artifacts, now; nothing else of
  that line is read;
- anything else (plain text, JSON that is not an object, an object with none of those
  fields): a log line.

A protocol object whose known fields have a wrong type or value (``{"progress": 7}``) is
:class:`Invalid`: reported and skipped, never sent. Unknown fields are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from .artifacts import validate_content_type, validate_name

#: The fields of a progress update, in the server's order.
PROGRESS_FIELDS = ("step", "progress", "cost_usd", "metric", "message", "checkpoint")
#: The longest stdout line read as one line (as the server: the rest of a longer one is
#: skipped).
MAX_PROTOCOL_LINE = 1024 * 1024

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Result:
    """A result line: ``result`` (any JSON but null) and/or ``result_path``."""

    result: Any = None
    result_path: str | None = None


@dataclass(frozen=True)
class ArtifactLine:
    """An artifact line: store the file at ``path`` (relative to the work dir, inside it)
    as the artifact ``name`` (the line's ``name``, else the path's base name), now."""

    path: str
    name: str
    content_type: str | None = None


@dataclass(frozen=True)
class Message:
    """A protocol line: progress fields (``update``), a result, or both; or an artifact.

    ``update`` holds only the known, non-null progress fields, checked; ``step`` is a
    string (a whole number is the same step as its digits, as on the server).
    """

    update: dict[str, Any] | None = None
    result: Result | None = None
    artifact: ArtifactLine | None = None


@dataclass(frozen=True)
class Log:
    """Not a protocol line: shown as the program's output."""

    text: str


@dataclass(frozen=True)
class Invalid:
    """A protocol line with a bad value: reported and skipped."""

    line: str
    reason: str


Line = Message | Log | Invalid


def _no_constants(name: str) -> Any:
    # The server's JSON parser knows no NaN or Infinity: such a line is plain text there.
    raise ValueError(f"{name} is not JSON")


def parse_line(line: str) -> Line:
    """Classifies one line of stdout (without its newline)."""
    trimmed = line.strip()
    if not trimmed.startswith("{"):
        return Log(line)
    try:
        obj = json.loads(trimmed, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return Log(line)
    if not isinstance(obj, dict):
        return Log(line)

    if "artifact" in obj:
        # As on the server, an artifact line is only that: its other fields are not read.
        try:
            return Message(artifact=_artifact(obj))
        except ValueError as err:
            return Invalid(line, str(err))

    result: Result | None = None
    if "result" in obj or "result_path" in obj:
        path = obj.get("result_path")
        if path is not None and not isinstance(path, str):
            return Invalid(line, f"result_path must be a string, got {json.dumps(path)}")
        result = Result(result=obj.get("result"), result_path=path)

    update: dict[str, Any] = {}
    for name in PROGRESS_FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        try:
            update[name] = _check(name, value)
        except ValueError as err:
            return Invalid(line, str(err))

    if not update and result is None:
        # A JSON object that says nothing we know: a log line.
        return Log(line)
    return Message(update=update or None, result=result)


def _artifact(obj: dict[str, Any]) -> ArtifactLine:
    path = obj["artifact"]
    if not isinstance(path, str) or not path:
        raise ValueError(f"artifact must name a file (a path), got {json.dumps(path)}")
    name = obj.get("name")
    name = validate_name(PurePosixPath(path).name if name is None else name)
    content_type = obj.get("content_type")
    if content_type is not None:
        validate_content_type(content_type)
    return ArtifactLine(path=path, name=name, content_type=content_type)


def _check(name: str, value: Any) -> Any:
    if name == "step":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and _I64_MIN <= value <= _I64_MAX:
            return str(value)
        raise ValueError(f"step must be a string or a whole number, got {json.dumps(value)}")
    if name == "message":
        if isinstance(value, str):
            return value
        raise ValueError(f"message must be a string, got {json.dumps(value)}")
    if name == "checkpoint":
        return value
    # progress, cost_usd, metric: numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {json.dumps(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "progress" and not 0.0 <= number <= 1.0:
        raise ValueError(f"progress must be in 0..=1, got {value!r}")
    if name == "cost_usd" and number < 0.0:
        raise ValueError(f"cost_usd must not be negative, got {value!r}")
    return value


def read_line(stream: IO[bytes], limit: int = MAX_PROTOCOL_LINE) -> bytes | None:
    """One line of ``stream`` without its newline (and a trailing CR), at most ``limit``
    bytes of it: the rest of a longer line is read and skipped. ``None`` at end of file."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        line = line[:-1]
    elif len(line) > limit:
        line = line[:limit]
        while True:  # skip the rest of the line
            rest = stream.readline(65536)
            if not rest or rest.endswith(b"\n"):
                break
    if line.endswith(b"\r"):
        line = line[:-1]
    return line
