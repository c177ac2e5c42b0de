"""Canonical JSON and sha256: the ground of every node key and content address."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
    with path.open("rb") as f:
        return stream_digest(f)


def stream_digest(f: BinaryIO) -> str:
    """sha256 of what is left to read from an open file."""
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Hashed:
    """The sha256 and length of a file's bytes, taken as they were written (one pass)."""

    digest: str
    size: int


class HashingWriter:
    """Writes to a binary file, hashing and counting every byte it writes."""

    def __init__(self, out: BinaryIO, prefix: Path | None = None) -> None:
        """`prefix`: a file whose bytes come first (a resumed download's part so far)."""
        self.out = out
        self._hash = hashlib.sha256()
        self.size = 0
        if prefix is not None:
            with prefix.open("rb") as f:
                while chunk := f.read(CHUNK):
                    self._hash.update(chunk)
                    self.size += len(chunk)

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def hashed(self) -> Hashed:
        return Hashed(self._hash.hexdigest(), self.size)
