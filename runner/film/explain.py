"""Why a node renders: causes as codes, and the one place they become words.

ninja's `EXPLAIN` and doit's reasons keyed by name: the planner decides and records `Cause`s
(`{code, field, node, before, after}`, the `plan --json` contract); `describe` turns one into
prose for the terminal and the `reasons` list. A recipe is compared through its `fingerprint`:
one value per field, plain for small scalars (seconds, size, model) so film.lock reads well in a
diff, a short digest for long ones (the prompt), so a fresh clone with no cache can still say
"prompt changed" or "seconds changed: 4 -> 8".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.digest import key_of
from runner.film.graph import Node

# Cause codes (README: consumers ignore codes they do not know).
NEVER_RENDERED = "never_rendered"
FIELD_CHANGED = "field_changed"
UPSTREAM_CHANGED = "upstream_changed"
PICK_CHANGED = "pick_changed"
RECIPE_VERSION = "recipe_version"
RECIPE_CHANGED = "recipe_changed"  # a version-1 lock entry: it changed, the lock cannot say how
OUTPUT_MISSING = "output_missing"
LOCKED_ELSEWHERE = "locked_elsewhere"
REFETCH_FREE = "refetch_free"
WAITS_FOR = "waits_for"
RERENDER = "rerender_requested"

DIGESTED = frozenset({"prompt", "negative_prompt"})  # always a digest, however short
PLAIN_CHARS = 40  # longer strings are kept as a digest
DIGEST = "sha256:"
INPUT = "inputs."
VERSION_FIELDS = frozenset({"v", "version"})
SKIP = frozenset({"kind"})

Fingerprint = dict[str, Any]


@dataclass(frozen=True)
class Cause:
    code: str
    field: str | None = None
    node: str | None = None
    before: Any = None
    after: Any = None
    known: bool = False  # before/after hold the plain values
    backend: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code}
        for name in ("field", "node", "backend"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.known:
            out |= {"before": self.before, "after": self.after}
        return out


@dataclass(frozen=True)
class Before:
    """What a node was last made from: film.lock's entry (the team's record), else this
    machine's build history. `fields` is None for a version-1 lock entry (no fields kept)."""

    fields: Mapping[str, Any] | None
    key: str | None = None  # the key film.lock names; None from this machine's history


def describe(cause: Cause, *, text: bool = False) -> str:
    """The one place a cause becomes words: the `reasons` of `plan --json`, and with `text`
    the terminal's plan (where a node that waits reads "after X", not like an error)."""
    code = cause.code
    if code == WAITS_FOR and text:
        return f"after {cause.node}"
    if code == FIELD_CHANGED:
        values = f": {show(cause.before)} -> {show(cause.after)}" if cause.known else ""
        return f"{cause.field} changed{values}"
    if code == UPSTREAM_CHANGED:
        return f"upstream {cause.node} changed"
    if code == PICK_CHANGED:
        return f"pick changed: {cause.before} -> {cause.after}"
    if code == WAITS_FOR:
        return f"waits for {cause.node}"
    if code == REFETCH_FREE:
        return f"fetched again from {cause.backend} by job id, at no cost"
    return _WORDS.get(code, code.replace("_", " "))


def describe_all(causes: list[Cause], *, text: bool = False) -> list[str]:
    """Every cause in words; for the terminal, the upstreams a node waits for in one phrase."""
    if not text:
        return [describe(c) for c in causes]
    waits = [str(c.node) for c in causes if c.code == WAITS_FOR]
    words = [f"after {', '.join(waits)}"] if waits else []
    return words + [describe(c, text=True) for c in causes if c.code != WAITS_FOR]


_WORDS = {
    NEVER_RENDERED: "never rendered",
    RECIPE_VERSION: "recipe version changed",
    RECIPE_CHANGED: "changed since film.lock was written (a version-1 lock keeps no fields)",
    OUTPUT_MISSING: "output missing from cache",
    LOCKED_ELSEWHERE: "locked output not in any cache",
    RERENDER: "rendered again on request (--rerender)",
}


def show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "none" if value is None else str(value)


def fingerprint(recipe: Mapping[str, Any], node: Node | None = None) -> Fingerprint:
    """One comparable value per recipe field; inputs as `inputs.ROLE` = "NODE@digest" (the
    node id is known when `node` is given: it tells a changed pick from a changed upstream)."""
    out: Fingerprint = {}
    for name, value in recipe.items():
        if name in SKIP or name in ("request", "inputs"):
            continue
        out[name] = _field(name, value)
    for name, value in recipe.get("request", {}).items():
        out.setdefault(name, _field(name, value))
        if out[name] != _field(name, value):  # a request field named like a recipe field
            out[f"request.{name}"] = _field(name, value)
    for role, value in recipe.get("inputs", {}).items():
        digest = value if isinstance(value, str) else key_of(value)
        source = ", ".join(node.after) if node and role == "after" else None
        if node is not None and role in node.inputs:
            source = node.inputs[role]
        out[INPUT + role] = f"{source}@{digest[:16]}" if source else digest[:16]
    return out


def _field(name: str, value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    short = isinstance(value, str) and len(value) <= PLAIN_CHARS and "\n" not in value
    if short and name not in DIGESTED and not value.startswith(DIGEST):
        return value
    return DIGEST + key_of(value)[:16]


def changes(
    node: Node, now: Fingerprint, before: Mapping[str, Any], *, inputs: bool = True
) -> list[Cause]:
    """The fields that differ between two fingerprints of one node, as causes."""
    causes: list[Cause] = []
    if any(now.get(name) != before.get(name) for name in VERSION_FIELDS):
        causes.append(Cause(RECIPE_VERSION))
    for name in sorted((set(now) | set(before)) - VERSION_FIELDS):
        old, new = before.get(name), now.get(name)
        if name.startswith(INPUT):
            if inputs:
                causes += _input_change(node, name[len(INPUT) :], old, new)
        elif old != new:
            plain = not _is_digest(old) and not _is_digest(new)
            causes.append(Cause(FIELD_CHANGED, field=name, before=old, after=new, known=plain))
    return causes


def _input_change(node: Node, role: str, old: Any, new: Any) -> list[Cause]:
    old_source, old_digest = _split(old)
    new_source, new_digest = _split(new)
    if old_digest == new_digest:
        return []
    name = new_source or (", ".join(node.after) if role == "after" else node.inputs.get(role, role))
    if old_source and new_source and old_source != new_source and _same_shot(old, new):
        return [
            Cause(PICK_CHANGED, node=new_source, before=old_source, after=new_source, known=True)
        ]
    return [Cause(UPSTREAM_CHANGED, node=name)]


def _split(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, None
    source, _, digest = value.rpartition("@")
    return source or None, digest


def _same_shot(old: str, new: str) -> bool:
    """Two takes of one shot (`shots.sky.take1`, `shots.sky.take2`)."""
    return old.split(".")[:2] == new.split(".")[:2] and old.startswith("shots.")


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(DIGEST)
