"""film.lock: what was rendered for film.toml, committed beside it (dvc.lock, Cargo.lock).

Hosted renders are not reproducible, so the lock is what makes a film reproducible: for every
rendered node its key and the chosen output digest (plus the provider job id, model, seconds
and cost, for people reading the diff). A node whose key is in the lock takes the locked output
and is never re-rendered silently. The file is TOML, sorted by node id, one table per node,
so a pull request's diff shows exactly which shots changed.

Version 2 adds a `fields` table per node: one value per recipe field (plain for small scalars,
a short digest for the prompt), so `plan` explains a change from the lock alone, on a fresh
clone with no cache. Version 3 keeps a section per profile (`[profiles.final.nodes."shots.a"]`,
the default profile's as `profiles.default`): a render updates only its own profile's, so a
default-profile checkout never forgets (nor lets `cache gc` drop) the final profile's paid
renders. Versions 1 and 2 are read as the default profile's section and written back as
version 3 by the next render.
"""

from __future__ import annotations

import dataclasses
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

LOCK_VERSION = 3
READS = (1, 2, 3)  # every lock version this runner reads
PARSED_VERSION = 4  # the parsed copy kept in the cache (1 a pickle, 2 no fields, 3 no profiles)
DEFAULT = "default"  # the section of a render without --profile
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
    """Every profile's section of film.lock; `entries` is the section of `profile`, the one
    this run reads and writes."""

    def __init__(
        self,
        path: Path,
        entries: dict[str, Entry],
        version: int = LOCK_VERSION,
        *,
        profile: str = DEFAULT,
        profiles: dict[str, dict[str, Entry]] | None = None,
    ) -> None:
        self.path = path
        self.profile = profile
        self.profiles = dict(profiles or {})
        self.profiles[profile] = entries
        self.entries = entries
        self.version = version  # as read: an older one is rewritten by the next render
        self._tables: dict[str, tuple[Entry, str]] = {}  # table -> (entry, its TOML)

    @property
    def outdated(self) -> bool:
        return self.version != LOCK_VERSION and bool(self.entries)

    def all_entries(self) -> list[Entry]:
        """Every profile's entries (what `cache gc` must keep, what `push` uploads)."""
        return [e for section in self.profiles.values() for e in section.values()]

    def spent_usd(self) -> float:
        """What the locked renders cost (the film's spend so far, as the team recorded it):
        every profile's, a render two profiles share counted once."""
        costs = {e.key: e.cost_usd or 0.0 for e in self.all_entries()}
        return round(sum(costs.values()), 4)

    @classmethod
    def read(cls, path: Path, parsed: Path | None = None, profile: str | None = None) -> Lock:
        """The lock at path, with `profile`'s section (None: the default profile's) as its
        entries. `parsed`: where to keep the parsed entries, by the file's digest (parsing
        10,000 entries of TOML costs more than the rest of a no-op plan)."""
        profile = profile or DEFAULT
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {}, profile=profile)
        digest = hashlib.sha256(raw).hexdigest()
        if parsed is not None:
            saved = read_json(parsed)  # JSON, never a pickle: the cache is read, not run
            if isinstance(saved, dict) and saved.get("lock") == f"{PARSED_VERSION}:{digest}":
                try:
                    version = saved.get("version")
                    sections = saved.get("profiles")
                    if version in READS and isinstance(sections, dict):
                        profiles = {
                            name: cls._entries(path, nodes, f"profiles.{_quote(name)}.")
                            for name, nodes in sections.items()
                        }
                        return cls._of(path, profiles, version, profile)
                except UserError:
                    pass  # a damaged copy: parse the file itself
        version, profiles = cls.parse(path, raw)
        if parsed is not None:
            sections = {
                name: {node: asdict(entry) for node, entry in entries.items()}
                for name, entries in profiles.items()
            }
            saved = {"lock": f"{PARSED_VERSION}:{digest}", "version": version, "profiles": sections}
            write_json(parsed, saved)
        return cls._of(path, profiles, version, profile)

    @classmethod
    def _of(
        cls, path: Path, profiles: dict[str, dict[str, Entry]], version: int, profile: str
    ) -> Lock:
        return cls(path, profiles.get(profile, {}), version, profile=profile, profiles=profiles)

    @staticmethod
    def parse(path: Path, raw: bytes) -> tuple[int, dict[str, dict[str, Entry]]]:
        """The version and every profile's entries of a lock file's bytes (`path` names it in
        messages: a file here, or `REV:path` from git)."""
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
        if version < 3:  # one section: the default profile's
            return version, {DEFAULT: Lock._entries(path, data.get("nodes", {}))}
        sections = data.get("profiles", {})
        if not isinstance(sections, dict):
            raise UserError(f"{path}: profiles: expected a table of profiles; {RESTORE}")
        profiles: dict[str, dict[str, Entry]] = {}
        for name, section in sections.items():
            where = f"profiles.{_quote(name)}"
            if not isinstance(section, dict):
                raise UserError(f"{path}: {where}: expected a table; {RESTORE}")
            profiles[name] = Lock._entries(path, section.get("nodes", {}), f"{where}.")
        return version, profiles

    @staticmethod
    def _entries(path: Path, nodes: Any, prefix: str = "") -> dict[str, Entry]:
        """Checked entries from a `nodes` table."""
        if not isinstance(nodes, dict):
            raise UserError(f"{path}: {prefix}nodes: expected a table of node entries; {RESTORE}")
        entries: dict[str, Entry] = {}
        for node, table in nodes.items():
            where = f"{path}: {prefix}nodes.{_quote(node)}"
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
                    f"{self.path}: {self._section}nodes.{_quote(node)}.kind: {entry.kind!r}, "
                    f"but {node} is a {kind} node; {RESTORE}"
                )
            other = seen.setdefault(entry.output, (node, entry.kind))
            if other[1] != entry.kind:
                raise UserError(
                    f"{self.path}: {self._section}nodes.{_quote(node)}.output: the same bytes as "
                    f"{other[0]}'s, a {other[1]} node; {RESTORE}"
                )

    @property
    def _section(self) -> str:
        """Where this profile's nodes are in the file as read (for messages)."""
        return "" if self.version < 3 else f"profiles.{_key(self.profile)}."

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
        """Every profile's section, sorted; a profile with no nodes is left out."""
        lines = [HEADER.format(manifest=self.path.with_suffix(".toml").name)]
        lines.append(f"version = {LOCK_VERSION}\n")
        for name in sorted(self.profiles):
            entries = self.profiles[name]
            for node in sorted(entries):
                table = f"profiles.{_key(name)}.nodes.{_quote(node)}"
                # A render writes the lock after each paid node: each entry is formatted once
                # (entries are replaced, never changed), not once per write.
                done = self._tables.get(table)
                if done is None or done[0] is not entries[node]:
                    done = self._tables[table] = (entries[node], _table(table, entries[node]))
                lines.append(done[1])
        write_atomic(self.path, "".join(lines).encode())
        self.version = LOCK_VERSION


def _table(table: str, entry: Entry) -> str:
    """One node's entry as TOML tables."""
    lines = [f"\n[{table}]\n"]
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if field.name != "fields" and value is not None:
            lines.append(f"{field.name} = {_value(value)}\n")
    if entry.fields:  # None values are left out: a missing field reads as None
        lines.append(f"\n[{table}.fields]\n")
        for name in sorted(entry.fields):
            if entry.fields[name] is not None:
                lines.append(f"{_key(name)} = {_value(entry.fields[name])}\n")
    return "".join(lines)


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
