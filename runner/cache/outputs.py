"""Where a node's output comes from: the one place that knows the order.

film.lock decides which bytes a node's key stands for (matched by node and key together); then
this machine's build log and action cache; then the team's remote. A provider's job id, kept in
the lock or a record, is the last source: a paid render lost from every cache is downloaded
again, never bought again (execution does that; this module says whether it is possible).

The planner gets `locate` as its lookup (pure: it only asks whether bytes exist somewhere);
execution, render and the cache commands call `have` to make bytes local, verified.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.cache.lock import Lock
from runner.cache.remote import Remote, RemoteCorrupt
from runner.cache.store import Store
from runner.digest import is_sha256


@dataclass
class Known:
    """An output some source names for a node's key, and the job that made it, if known."""

    output: str
    job_id: str | None


class Outputs:
    def __init__(
        self,
        store: Store,
        lock: Lock,
        remote: Remote | None,
        built: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.lock = lock
        self.remote = remote
        self.built = dict(built or {})  # the build log: key -> output, this machine's history

    def locate(self, node_id: str, key: str) -> str | None:
        """The output digest of node at key, when this cache or the team's has its bytes.

        A locked output found nowhere gives None: it is not re-rendered silently (execution
        fetches it again by job id, or stops and says so)."""
        locked = self.lock.output_for(node_id, key)
        if locked is not None:
            return locked if self.available(locked) else None
        built = self.built.get(key)
        if built is not None and self.store.has_blob(built):
            return built
        record = self.store.lookup(key)
        if record is not None:
            return str(record["output"])
        record = self.record(key)
        if record is not None and self.available(str(record["output"])):
            return str(record["output"])
        return None

    def known(self, node_id: str, key: str) -> Known | None:
        """The output the lock or a record (here, else the team's) names for key, whether or
        not any cache has its bytes, with the provider's job id when one was kept."""
        record = self.store.read_record(key)
        locked = self.lock.entries.get(node_id)
        if locked is not None and locked.key == key:
            job_id = locked.job_id or (record or {}).get("job_id")
            return Known(locked.output, str(job_id) if job_id else None)
        if record is None and self.remote is not None:  # not read here twice
            record = self.remote.pull_record(key, self.store)
        if record is None:
            return None
        job_id = record.get("job_id")
        return Known(str(record["output"]), str(job_id) if job_id else None)

    def record(self, key: str) -> dict[str, Any] | None:
        """The action record of key: this cache's, else the team's (saved here when pulled)."""
        record = self.store.read_record(key)
        if record is None and self.remote is not None:
            record = self.remote.pull_record(key, self.store)
        return record

    def available(self, digest: str) -> bool:
        """The bytes are here or on the team's remote (nothing is downloaded)."""
        if self.store.has_blob(digest):
            return True
        return self.remote is not None and self.remote.has(digest)

    def have(self, digest: str, *, verify: bool = False) -> bool:
        """The bytes are here, or have just been pulled from the team's remote and verified.
        A remote blob that does not hash to its name is refused, reported and never used.

        verify: the bytes are about to be read (an input to local work, a file sent to a
        provider): hash the local blob too; a corrupt one goes to quarantine/ and is pulled
        again from the team's remote when it has it."""
        if self.store.has_blob(digest):
            if not verify or self.store.verify_blob(digest):
                return True
            print(
                f"runner: warning: cached blob {digest} does not hash to its name; moved to "
                f"{self.store.root / 'quarantine'}, getting it again",
                file=sys.stderr,
            )
        if self.remote is None or not is_sha256(digest):
            return False
        try:
            return self.remote.pull_blob(digest, self.store)
        except RemoteCorrupt as err:
            print(f"runner: warning: {err}", file=sys.stderr)
            return False

    def full_record(
        self,
        node_id: str,
        key: str,
        kind: str,
        *,
        output: str | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """The action record of key, whatever happened to the local file: a truncated or
        missing one is taken from the team's remote, else rebuilt from film.lock (job id,
        backend, model, cost) or from `output` and the journal's `job_id`, so a paid render
        never loses its job id. {} when nothing knows it. A damaged local file is replaced by
        what was found."""
        record = self.store.read_record(key)
        if record is not None:
            return record
        damaged = self.store.record_damaged(key)
        if self.remote is not None:
            record = self.remote.pull_record(key, self.store)  # saved here when found
            if record is not None:
                return record
        entry = self.lock.entries.get(node_id)
        if entry is not None and entry.key == key:
            rebuilt: dict[str, Any] = {
                "output": entry.output,
                "job_id": entry.job_id or job_id,
                "backend": entry.backend,
                "model": entry.model,
                "cost_usd": entry.cost_usd,
                "repaired_from": "film.lock",
            }
        elif output is not None and job_id is not None:
            rebuilt = {"output": output, "job_id": job_id, "repaired_from": "journal"}
        else:
            return {}
        rebuilt = {"node": node_id, "kind": kind, **rebuilt}
        rebuilt = {k: v for k, v in rebuilt.items() if v is not None}
        if damaged:
            self.store.record(key, rebuilt)
        return {**rebuilt, "key": key}

    def blob(self, digest: str) -> Path:
        return self.store.blob(digest)
