"""Named crash points for tests: `RUNNER_KILL_AT=NAME` (or `NAME:N`, the Nth pass) makes the
runner SIGKILL itself where a real crash would hurt most, instead of at a random wall time.

Unset (always, outside tests), `point` is one global read and a return. The points a shot
passes, in order:
    create-journaled   the journal holds the key; the create has not left
    create-answered    the provider accepted the create; its job id is not journaled yet
    job-journaled      the job id is journaled
    mid-download       the first bytes of a download are written, the rest not (OpenAI backend)
    downloaded         the video is downloaded and verified, not stored
    stored             the blob is in the cache, no record names it
    recorded           the action record is written; the journal entry is not cleared
    cleared            the journal entry is cleared (a push to the team's cache may follow)
Elsewhere:
    mid-push           a blob is on the team's cache, its action record not yet
    mid-assembly       the edit's first segment is conformed and cached, the others not
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = (
    "create-journaled",
    "create-answered",
    "job-journaled",
    "mid-download",
    "downloaded",
    "stored",
    "recorded",
    "cleared",
    "mid-push",
    "mid-assembly",
)

_SPEC = os.environ.get("RUNNER_KILL_AT") or None
_lock = threading.Lock()
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Kill this process at once when RUNNER_KILL_AT names this point (and pass)."""
    if _SPEC is None:
        return
    target, _, nth = _SPEC.partition(":")
    if target != name:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
