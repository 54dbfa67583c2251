"""Artifacts: the files a job produces, stored by the server (``GET /api/v1/jobs/{id}/artifacts``).

The rules here are the server's (``crates/skill-fleet-types/src/artifact.rs``), so a bad
name or content type is refused with a ``ValueError`` before anything is sent:

- a name is one plain file name: ``[A-Za-z0-9._-]{1,128}``, not starting with ``.``;
- a content type is ``type/subtype`` with optional parameters, printable ASCII, at most
  127 characters; left out, it is guessed from the name's extension as the server does.

Standard library only.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
from dataclasses import dataclass
from typing import Any

#: Longest artifact name the server accepts.
MAX_NAME_LEN = 128
#: Longest content type the server keeps.
MAX_CONTENT_TYPE_LEN = 127
#: The content type of an artifact whose extension says nothing.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The directory of a job's work dir whose files the server stores when the program exits.
ARTIFACTS_DIR = "artifacts"
#: The prefix of a ``result_path`` that names one of the job's artifacts.
RESULT_ARTIFACT_PREFIX = "artifact:"
#: The request headers that carry the claim's fence on an upload.
ATTEMPT_HEADER = "Skill-Fleet-Attempt"
LEASE_TOKEN_HEADER = "Skill-Fleet-Lease-Token"
#: Block size of streamed uploads, downloads and hashes.
BLOCK_SIZE = 64 * 1024

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9!#$&^_.+-]+")

# The server's own guesses (content_type_for), so the type sent is the one it would choose.
_BY_EXTENSION = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "ndjson": "application/x-ndjson",
    "txt": "text/plain; charset=utf-8",
    "log": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "htm": "text/html; charset=utf-8",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
    "yaml": "application/yaml",
    "yml": "application/yaml",
    "toml": "application/toml",
    "pkl": DEFAULT_CONTENT_TYPE,
    "pickle": DEFAULT_CONTENT_TYPE,
    "gz": "application/gzip",
    "zip": "application/zip",
    "parquet": "application/vnd.apache.parquet",
}


def validate_name(name: Any) -> str:
    """Returns ``name`` if the server accepts it as an artifact name, else raises
    ``ValueError`` saying why."""
    if not isinstance(name, str):
        raise ValueError(f"an artifact name must be a string, got {type(name).__name__}")
    if not _NAME.fullmatch(name) or name.startswith("."):
        shown = name if len(name) <= MAX_NAME_LEN + 16 else name[: MAX_NAME_LEN + 16] + "…"
        raise ValueError(
            f"invalid artifact name {shown!r}: one plain file name of 1 to {MAX_NAME_LEN} "
            "characters A-Z a-z 0-9 . _ -, not starting with '.' (never a path)"
        )
    return name


def validate_content_type(content_type: Any) -> str:
    """Returns ``content_type`` if the server keeps it (``type/subtype[; params]``,
    printable ASCII, at most 127 characters), else raises ``ValueError``."""
    if not isinstance(content_type, str):
        raise ValueError(f"a content type must be a string, got {type(content_type).__name__}")
    essence = content_type.split(";", 1)[0].strip()
    kind, _, sub = essence.partition("/")
    ok = (
        len(content_type) <= MAX_CONTENT_TYPE_LEN
        and all(0x20 <= ord(c) < 0x7F for c in content_type)
        and bool(_TOKEN.fullmatch(kind))
        and bool(_TOKEN.fullmatch(sub))
    )
    if not ok:
        raise ValueError(
            f"invalid content type {content_type[: MAX_CONTENT_TYPE_LEN + 16]!r}: "
            f"type/subtype with optional parameters, printable ASCII, at most "
            f"{MAX_CONTENT_TYPE_LEN} characters"
        )
    return content_type


def content_type_for(name: str) -> str | None:
    """The content type of a file named ``name``: the server's guess from its extension,
    else :mod:`mimetypes`' guess, else ``None`` (the server then stores
    ``application/octet-stream``)."""
    _, dot, extension = name.rpartition(".")
    if dot:
        known = _BY_EXTENSION.get(extension.lower())
        if known is not None:
            return known
    guessed, _ = mimetypes.guess_type(name, strict=True)
    return guessed


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The SHA-256 (lowercase hex) and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK_SIZE):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class Artifact:
    """One stored artifact of a job, as the server lists it."""

    name: str
    #: Its length in bytes.
    size: int
    #: The SHA-256 of its bytes, lowercase hex (its download's ``ETag``, quoted).
    sha256: str
    content_type: str
    #: When it was stored (RFC 3339).
    created_at: str
    #: The attempt of the job that stored it (``None`` for an operator's upload).
    attempt: int | None

    @classmethod
    def from_json(cls, body: Any) -> Artifact:
        """An artifact from the server's JSON; ``ValueError`` if it is not one."""
        if not isinstance(body, dict):
            raise ValueError(f"an artifact must be a JSON object, got {body!r}")
        attempt = body.get("attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            attempt = None
        try:
            return cls(
                name=str(body["name"]),
                size=int(body["size"]),
                sha256=str(body["sha256"]).lower(),
                content_type=str(body.get("content_type") or DEFAULT_CONTENT_TYPE),
                created_at=str(body.get("created_at") or ""),
                attempt=attempt,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an artifact: {body!r} ({err!r})") from None


class ChecksumMismatch(Exception):
    """The bytes received (or sent) do not have the SHA-256 the server stated."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"artifact {name!r}: SHA-256 {actual} does not match {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual
