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

import json
import math
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from runner.cache.store import keys_in, write_json
from runner.errors import NodeFailed

JOURNAL_VERSION = 1


class JournalError(NodeFailed):
    """An entry that cannot be read: its node stops instead of paying again."""


class Journal:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry for key; None when there is none. An entry this runner cannot read
        (garbage, a newer format) may name a paid job: it is never taken for "no entry"
        (that would send the create again); JournalError says what to do instead."""
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:  # a directory in its place, no permission
            raise JournalError(self._unreadable(path, f"cannot be read ({err.strerror})")) from None
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), int):
            raise JournalError(self._unreadable(path, "is not a journal entry"))
        if entry["version"] > JOURNAL_VERSION:
            raise JournalError(
                f"the journal entry {path} was written by a newer runner (format "
                f"{entry['version']}; this one reads {JOURNAL_VERSION}): upgrade runner to "
                "resume the job it names without paying again"
            )
        sent_at = entry.get("sent_at")
        if not isinstance(sent_at, int | float) or isinstance(sent_at, bool):
            sent_at = None
        if sent_at is None or not math.isfinite(sent_at):
            # Repaired, not refused: the file was written when the create was about to leave.
            entry["sent_at"] = path.stat().st_mtime
        job_id = entry.get("job_id")
        if job_id is not None and not isinstance(job_id, str):
            raise JournalError(self._unreadable(path, "names a job id that is not text"))
        return entry

    @staticmethod
    def _unreadable(path: Path, why: str) -> str:
        return (
            f"the journal entry {path} {why}; a create for this shot may have been paid for: "
            "check the provider's console, then delete the file to send the shot again"
        )

    def sending(self, key: str, node: str, backend: str, sent_at: float | None = None) -> float:
        """Record that a create is about to be sent; returns the time it was recorded.
        sent_at: when another runner, now dead, may have sent it (a claim taken over)."""
        now = time.time() if sent_at is None else sent_at
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
            with suppress(JournalError):  # its own node reports it
                entry = self.get(key)
                if entry and entry.get("job_id"):
                    ids.append(str(entry["job_id"]))
        return ids

    def nodes(self) -> set[str]:
        """The nodes journaled entries name: creates a previous run sent and did not finish."""
        found = set()
        for key in self.pending():
            with suppress(JournalError):  # its own node reports it
                entry = self.get(key)
                if entry and isinstance(entry.get("node"), str):
                    found.add(entry["node"])
        return found

    def pending(self) -> list[str]:
        """Keys with an entry: jobs a previous run sent and did not finish."""
        return keys_in(self.root)
