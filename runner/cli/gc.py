"""`runner cache gc`: delete blobs nothing may need again, never a paid render.

Kept (like `dvc gc --all-commits`): every output any profile of any film.lock names, in the
working tree and in every commit on any local branch (with `--remote`: every ref the
repository knows); the outputs of action records younger than the grace period; every blob
younger than it; and whatever the journal or the pending-push list names. A lock that cannot
be parsed keeps every digest its text holds. quarantine/ is emptied only past the grace period.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.cache.lock import HEADER, Lock
from runner.cache.store import Store
from runner.errors import UserError

GRACE_DAYS = 7.0
_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_MARKER = HEADER.split("{", 1)[0].encode()


@dataclass
class Doomed:
    """What gc deletes (or would) in one cache."""

    blobs: list[str] = field(default_factory=list)
    bytes: int = 0
    paid: int = 0  # blobs whose action record names a cost
    cost_usd: float = 0.0


def lock_outputs(name: str, raw: bytes) -> set[str]:
    """Every output any profile of a lock file names; every digest in its text when it
    cannot be parsed (a newer or damaged lock may still name a paid render)."""
    try:
        _, profiles = Lock.parse(Path(name), raw)
    except UserError:
        return set(_HEX.findall(raw.decode("utf-8", "replace")))
    return {e.output for section in profiles.values() for e in section.values()}


def working_tree(root: Path) -> set[str]:
    keep: set[str] = set()
    for path in root.rglob("*.lock"):
        if ".cache" in path.parts or ".venv" in path.parts or ".git" in path.parts:
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if raw.startswith(_MARKER):
            keep |= lock_outputs(str(path), raw)
    return keep


def history(root: Path, *, every_ref: bool) -> set[str]:
    """Outputs named by film.lock in any commit of the local branches (every_ref: of every
    ref, remote-tracking branches and tags too). Read with git; none outside a repository."""
    if not (root / ".git").exists():
        return set()
    patterns = [] if every_ref else ["refs/heads"]
    refs = _git(root, "for-each-ref", "--format=%(objectname)", *patterns).split()
    if not refs:
        return set()
    log = _git(
        root, "log", "-m", "--format=C %H", "--name-only", "--diff-filter=d", *refs, "--", "*.lock"
    )
    wanted, rev = [], ""
    for line in log.splitlines():
        if line.startswith("C "):
            rev = line[2:]
        elif line.strip():
            wanted.append(f"{rev}:{line}")
    keep: set[str] = set()
    if not wanted:
        return keep
    out = subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=root,
        input="\n".join(dict.fromkeys(wanted)).encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout
    pos = 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        head = out[pos:end].split()
        pos = end + 1
        if len(head) == 3 and head[1] == b"blob":
            size = int(head[2])
            raw = out[pos : pos + size]
            pos += size + 1
            if raw.startswith(_MARKER):
                keep |= lock_outputs(f"{head[0].decode()} (git)", raw)
    return keep


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise UserError(
            f"cache gc: cannot read the history of {root} with git ({err}); gc keeps what any "
            "branch's film.lock names, so it stops rather than guess"
        ) from None
    return done.stdout


def in_use(store: Store, grace_s: float, now: float) -> set[str]:
    """What this cache's own bookkeeping needs: outputs of records younger than the grace
    period, and whatever the journal and the pending-push list name."""
    keep: set[str] = set()
    for path in (store.root / "actions").glob("*/*.json"):
        if now - _mtime(path) < grace_s:
            keep |= set(_HEX.findall(path.read_text(errors="replace")))
    named = [*store.journal_dir.glob("*.json"), *(store.root / "pending-push").glob("*.json")]
    for path in named:
        keep |= set(_HEX.findall(path.read_text(errors="replace")))
        record = store.read_record(path.stem)
        if record is not None:
            keep.add(str(record.get("output")))
    return keep


def costs(store: Store) -> dict[str, float]:
    """output digest -> what its render cost, from this cache's action records."""
    found: dict[str, float] = {}
    for key in store.record_keys():
        record = store.read_record(key) or {}
        cost = record.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0 and "output" in record:
            found[str(record["output"])] = float(cost)
    return found


def doomed(
    candidates: dict[str, tuple[int, float | None]],
    keep: set[str],
    paid: dict[str, float],
    grace_s: float,
    now: float,
) -> Doomed:
    """Of blobs (digest -> size, modified time), those not kept and older than the grace
    period (an unknown time counts as young)."""
    out = Doomed()
    for digest in sorted(candidates):
        size, mtime = candidates[digest]
        if digest in keep or mtime is None or now - mtime < grace_s:
            continue
        out.blobs.append(digest)
        out.bytes += size
        if digest in paid:
            out.paid += 1
            out.cost_usd += paid[digest]
    out.cost_usd = round(out.cost_usd, 4)
    return out


def local_blobs(store: Store) -> dict[str, tuple[int, float | None]]:
    found: dict[str, tuple[int, float | None]] = {}
    for digest in store.blob_digests():
        st = store.blob(digest).stat()
        found[digest] = (st.st_size, st.st_mtime)
    return found


def old_quarantine(store: Store, grace_s: float, now: float) -> list[Path]:
    """quarantine/ entries past the grace period (named NAME.TIME_NS when moved there)."""
    old = []
    for path in store.quarantined():
        suffix = path.name.rsplit(".", 1)[-1]
        moved = int(suffix) / 1e9 if suffix.isdigit() else _mtime(path)
        if now - moved >= grace_s:
            old.append(path)
    return old


def remote_time(info: dict[str, Any]) -> float | None:
    """An fsspec listing's modified time, as seconds since the epoch; None when unknown."""
    for name in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def delete_local(store: Store, digests: list[str]) -> None:
    for digest in digests:
        store.blob(digest).unlink(missing_ok=True)
