"""film.lock: what was rendered for film.toml, committed beside it (dvc.lock, Cargo.lock).

Hosted renders are not reproducible, so the lock is what makes a film reproducible: for every
rendered node its key and the chosen output digest (plus the provider job id, model, seconds
and cost, for people reading the diff). A node whose key is in the lock takes the locked output
and is never re-rendered silently. The file is TOML, sorted by node id, one table per node,
so a pull request's diff shows exactly which shots changed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.store import write_atomic

LOCK_VERSION = 1
HEADER = "# film.lock: what runner rendered for {manifest}. Generated; commit it beside it.\n"


@dataclass(frozen=True)
class Entry:
    key: str
    output: str
    kind: str
    job_id: str | None = None
    backend: str | None = None
    model: str | None = None
    seconds: float | None = None
    cost_usd: float | None = None


class Lock:
    def __init__(self, path: Path, entries: dict[str, Entry]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def read(cls, path: Path, parsed: Path | None = None) -> Lock:
        """The lock at path. `parsed`: where to keep the parsed entries, by the file's digest
        (parsing 10,000 entries of TOML costs more than the rest of a no-op plan)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        digest = hashlib.sha256(raw).hexdigest()
        if parsed is not None:
            try:
                saved, entries = pickle.loads(parsed.read_bytes())
                if saved == digest:
                    return cls(path, entries)
            except (OSError, pickle.UnpicklingError, ValueError, EOFError, TypeError):
                pass
        lock = cls(path, cls._parse(path, raw))
        if parsed is not None:
            write_atomic(parsed, pickle.dumps((digest, lock.entries)))
        return lock

    @staticmethod
    def _parse(path: Path, raw: bytes) -> dict[str, Entry]:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UserError(
                f"{path}: not a readable lock file ({err}); restore it from git or delete it "
                "(the next render writes a new one)"
            ) from None
        if data.get("version") != LOCK_VERSION:
            raise UserError(
                f"{path}: lock file version {data.get('version')!r}; this runner reads "
                f"version {LOCK_VERSION}"
            )
        entries: dict[str, Entry] = {}
        for node, table in data.get("nodes", {}).items():
            try:
                entries[node] = Entry(**table)
            except TypeError as err:
                raise UserError(f"{path}: nodes.{node}: {err}") from None
        return entries

    def output_for(self, node: str, key: str) -> str | None:
        """The locked output of node when it is locked at this key."""
        entry = self.entries.get(node)
        return entry.output if entry is not None and entry.key == key else None

    def put(self, node: str, entry: Entry) -> bool:
        """Record a node; True when the lock changed."""
        if self.entries.get(node) == entry:
            return False
        self.entries[node] = entry
        return True

    def keep_only(self, nodes: set[str]) -> bool:
        """Forget nodes the manifest no longer has; True when any went."""
        gone = set(self.entries) - nodes
        for node in gone:
            del self.entries[node]
        return bool(gone)

    def write(self) -> None:
        lines = [HEADER.format(manifest=self.path.with_suffix(".toml").name)]
        lines.append(f"version = {LOCK_VERSION}\n")
        for node in sorted(self.entries):
            lines.append(f"\n[nodes.{_quote(node)}]\n")
            for field, value in asdict(self.entries[node]).items():
                if value is not None:
                    lines.append(f"{field} = {_value(value)}\n")
        write_atomic(self.path, "".join(lines).encode())


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string


def _value(value: Any) -> str:
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
