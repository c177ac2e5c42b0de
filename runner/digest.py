"""Canonical JSON and sha256: the ground of every node key and content address."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """64 lowercase hex: the only shape of a digest read from disk that may name a path."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the same value gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_of(recipe: Any) -> str:
    return hashlib.sha256(canonical_json(recipe)).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
