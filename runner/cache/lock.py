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
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.cache.store import read_json, write_atomic, write_json
from runner.digest import is_sha256
from runner.errors import TOO_DEEP, UserError

LOCK_VERSION = 1
PARSED_VERSION = 2  # the parsed copy kept in the cache (1 was a pickle)
RESTORE = "restore film.lock from git, or delete it (the next render writes a new one)"
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
            saved = read_json(parsed)  # JSON, never a pickle: the cache is read, not run
            if isinstance(saved, dict) and saved.get("lock") == f"{PARSED_VERSION}:{digest}":
                try:
                    return cls(path, cls._entries(path, saved.get("nodes")))
                except UserError:
                    pass  # a damaged copy: parse the file itself
        lock = cls(path, cls._parse(path, raw))
        if parsed is not None:
            nodes = {node: asdict(entry) for node, entry in lock.entries.items()}
            write_json(parsed, {"lock": f"{PARSED_VERSION}:{digest}", "nodes": nodes})
        return lock

    @staticmethod
    def _parse(path: Path, raw: bytes) -> dict[str, Entry]:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
            why = TOO_DEEP if isinstance(err, RecursionError) else err
            raise UserError(
                f"{path}: not a readable lock file ({why}); restore it from git or delete it "
                "(the next render writes a new one)"
            ) from None
        if data.get("version") != LOCK_VERSION:
            raise UserError(
                f"{path}: lock file version {data.get('version')!r}; this runner reads "
                f"version {LOCK_VERSION}"
            )
        return Lock._entries(path, data.get("nodes", {}))

    @staticmethod
    def _entries(path: Path, nodes: Any) -> dict[str, Entry]:
        """Checked entries from the lock's `nodes` table."""
        if not isinstance(nodes, dict):
            raise UserError(f"{path}: nodes: expected a table of node entries; {RESTORE}")
        entries: dict[str, Entry] = {}
        for node, table in nodes.items():
            where = f"{path}: nodes.{_quote(node)}"
            if not isinstance(table, dict):
                raise UserError(f"{where}: expected a table; {RESTORE}")
            try:
                entry = Entry(**table)
            except TypeError as err:
                raise UserError(f"{where}: {err}; {RESTORE}") from None
            # A digest names a path in the cache: anything but 64 lowercase hex could name
            # a file outside it (and send that file to a provider as a reference image).
            for field in ("key", "output"):
                if not is_sha256(getattr(entry, field)):
                    raise UserError(
                        f"{where}.{field}: not a sha256 digest (64 lowercase hex); {RESTORE}"
                    )
            entries[node] = entry
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
