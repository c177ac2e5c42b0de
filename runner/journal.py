"""The submit journal: never pay for the same render twice.

Before a create is sent, the node key is journaled; the moment the provider answers with a
job id, the id is journaled (each write flushed to disk and renamed into place). A run killed at
any point finds the entry on restart: with a job id it polls that job instead of submitting;
without one (the create was sent but no answer was recorded) it asks the provider for a job
matching the request before sending anything again. The entry is removed once the output is
stored, or when the provider refused the job.
"""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import Any

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
        return sorted(p.stem for p in self.root.glob("*.json"))
