"""film.lock: what was rendered for film.toml, committed beside it (dvc.lock, Cargo.lock).

Hosted renders are not reproducible, so the lock is what makes a film reproducible: for every
rendered node its key and the chosen output digest (plus the provider job id, model, seconds
and cost, for people reading the diff). A node whose key is in the lock takes the locked output
and is never re-rendered silently. The file is TOML, sorted by node id, one table per node,
so a pull request's diff shows exactly which shots changed.

Version 2 adds a `fields` table per node: one value per recipe field (plain for small scalars,
a short digest for the prompt), so `plan` explains a change from the lock alone, on a fresh
clone with no cache. Version-1 locks are read (their entries have no fields) and written back
as version 2 by the next render. Tables other than `nodes` are for later versions (per-profile
sections): the format grows by adding tables.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.cache.store import read_json, write_atomic, write_json
from runner.digest import is_sha256
from runner.errors import TOO_DEEP, UserError

LOCK_VERSION = 2
READS = (1, 2)  # every lock version this runner reads
PARSED_VERSION = 3  # the parsed copy kept in the cache (1 was a pickle, 2 had no fields)
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
    fields: dict[str, Any] | None = None  # explain.fingerprint of the recipe (version 2)


class Lock:
    def __init__(self, path: Path, entries: dict[str, Entry], version: int = LOCK_VERSION) -> None:
        self.path = path
        self.entries = entries
        self.version = version  # as read: an older one is rewritten by the next render

    @property
    def outdated(self) -> bool:
        return self.version != LOCK_VERSION and bool(self.entries)

    def spent_usd(self) -> float:
        """What the locked renders cost (the film's spend so far, as the team recorded it)."""
        return round(sum(e.cost_usd or 0.0 for e in self.entries.values()), 4)

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
                    entries = cls._entries(path, saved.get("nodes"))
                    version = saved.get("version")
                    if version in READS:
                        return cls(path, entries, version)
                except UserError:
                    pass  # a damaged copy: parse the file itself
        version, entries = cls._parse(path, raw)
        lock = cls(path, entries, version)
        if parsed is not None:
            nodes = {node: asdict(entry) for node, entry in lock.entries.items()}
            saved = {"lock": f"{PARSED_VERSION}:{digest}", "version": version, "nodes": nodes}
            write_json(parsed, saved)
        return lock

    @staticmethod
    def _parse(path: Path, raw: bytes) -> tuple[int, dict[str, Entry]]:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
            why = TOO_DEEP if isinstance(err, RecursionError) else err
            raise UserError(
                f"{path}: not a readable lock file ({why}); restore it from git or delete it "
                "(the next render writes a new one)"
            ) from None
        version = data.get("version")
        if version not in READS:
            raise UserError(
                f"{path}: lock file version {version!r}; this runner reads versions "
                f"{', '.join(map(str, READS))} (a newer runner wrote it: upgrade runner)"
            )
        return version, Lock._entries(path, data.get("nodes", {}))

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
            if entry.fields is not None and not (
                isinstance(entry.fields, dict)
                and all(isinstance(v, str | int | float | bool) for v in entry.fields.values())
            ):
                raise UserError(f"{where}.fields: expected a table of plain values; {RESTORE}")
            entries[node] = entry
        return entries

    def check_kinds(self, kinds: dict[str, str]) -> None:
        """Each entry's kind must be its node's (a frame's PNG is never a shot's video), and
        one output may not stand for nodes of two kinds: a lock from a pull request that
        points a node at another node's bytes is refused, not used."""
        seen: dict[str, tuple[str, str]] = {}  # output -> (node, kind)
        for node, entry in self.entries.items():
            kind = kinds.get(node)
            if kind is not None and entry.kind != kind:
                raise UserError(
                    f"{self.path}: nodes.{_quote(node)}.kind: {entry.kind!r}, but {node} is a "
                    f"{kind} node; {RESTORE}"
                )
            other = seen.setdefault(entry.output, (node, entry.kind))
            if other[1] != entry.kind:
                raise UserError(
                    f"{self.path}: nodes.{_quote(node)}.output: the same bytes as "
                    f"{other[0]}'s, a {other[1]} node; {RESTORE}"
                )

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
            entry = asdict(self.entries[node])
            fields = entry.pop("fields")
            for field, value in entry.items():
                if value is not None:
                    lines.append(f"{field} = {_value(value)}\n")
            if fields:  # None values are left out: a missing field reads as None
                lines.append(f"\n[nodes.{_quote(node)}.fields]\n")
                for name in sorted(fields):
                    if fields[name] is not None:
                        lines.append(f"{_key(name)} = {_value(fields[name])}\n")
        write_atomic(self.path, "".join(lines).encode())
        self.version = LOCK_VERSION


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string


def _key(name: str) -> str:
    """A bare TOML key where it can be one (`prompt`), else quoted (`"inputs.image"`)."""
    return name if _BARE.fullmatch(name) else _quote(name)


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _value(value: Any) -> str:
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
