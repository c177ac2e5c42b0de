"""The submit journal: never pay for the same render twice.

Before a create is sent, the node key is journaled; the moment the provider answers with a
job id, the id is journaled (each write flushed to disk and renamed into place). A run killed at
any point finds the entry on restart: with a job id it polls and downloads that job (free)
instead of submitting; without one (the create was sent but no answer was recorded) it asks the
provider for a job matching the request before sending anything again.

The invariant: an entry outlives the output it stands for. It is removed only
- once the output is stored and its action record written (and, with a team cache, once the
  push is done or journaled as pending: `Store.mark_unpushed`), or
- when the provider refused the create or failed the job (nothing to fetch), or
- by the next run, when the record already exists (a run died between record and clear).
So at every instant, a paid job is named by the journal, by a record, or by both.
"""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from runner.digest import is_sha256
from runner.store import read_json, write_json

JOURNAL_VERSION = 1


class Journal:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        entry = read_json(self._path(key))
        if not isinstance(entry, dict) or entry.get("version") != JOURNAL_VERSION:
            return None
        return entry

    def sending(self, key: str, node: str, backend: str) -> float:
        """Record that a create is about to be sent; returns the time it was recorded."""
        now = time.time()
        write_json(
            self._path(key),
            {"version": JOURNAL_VERSION, "node": node, "backend": backend, "sent_at": now},
        )
        return now

    def submitted(self, key: str, job_id: str) -> None:
        entry = self.get(key) or {"version": JOURNAL_VERSION, "sent_at": time.time()}
        write_json(self._path(key), {**entry, "job_id": job_id})

    def clear(self, key: str) -> None:
        with suppress(FileNotFoundError):
            self._path(key).unlink()

    def job_ids(self) -> list[str]:
        """Provider job ids journaled for any node: not to be adopted by another."""
        ids = []
        for key in self.pending():
            entry = self.get(key)
            if entry and entry.get("job_id"):
                ids.append(str(entry["job_id"]))
        return ids

    def pending(self) -> list[str]:
        """Keys with an entry: jobs a previous run sent and did not finish."""
        if not self.root.is_dir():
            return []
        # A file name is a node key only when it is a digest; anything else is not ours.
        return sorted(p.stem for p in self.root.glob("*.json") if is_sha256(p.stem))
