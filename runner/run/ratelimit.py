"""Requests per minute, counted on the wire: when each create is actually sent.

The scheduler already spaces job starts, but a job's first create can leave a while after its
start (SDK import, client set-up) and a retried create leaves again; the provider counts what
it receives. Every create is sent inside `SendWindow.turn()`: the slot is taken before the
request leaves and dated when its answer comes back, so the provider, whose clock reads
somewhere in between, never sees more than `rpm` creates in any window.

With a `path`, the send times are kept in the cache (`state/sends/<pool>.json`,
`{"version": 1, "sends": [unix time, ...]}`), so a restarted run, or another runner on the
same cache, continues the same window instead of starting a fresh one.
"""

from __future__ import annotations

import fcntl
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.cache.store import read_json, write_json
from runner.run.scheduler import WINDOW

SENDS_VERSION = 1
# A send not yet answered is dated this much later (at most a window): if the runner dies
# before the answer, the next run still counts it from about when the provider saw it.
UNANSWERED = 10.0


class SendWindow:
    """At most `rpm` sends in any `window` seconds; callers block until their turn."""

    def __init__(
        self,
        rpm: int | None,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        path: Path | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.rpm = rpm
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.path = path
        # Sends are timed on `clock` (a clock step within a run does not reopen the window)
        # and kept in the file on the wall clock (monotonic clocks differ between processes).
        self.offset = wall() - clock()
        self.sent: list[float] = []  # send times, when no path keeps them
        self.lock = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self.rpm is None:
            yield
            return
        taken = self._take(self.rpm)
        try:
            yield
        finally:
            self._answered(taken)

    def _take(self, rpm: int) -> float:
        while True:
            with self.lock, self._sends() as sends:
                now = self.clock()
                if len(sends) < rpm:
                    taken = now + min(UNANSWERED, self.window)
                    sends.append(taken)
                    return taken
                delay = sorted(sends)[len(sends) - rpm] + self.window - now
            # Wake at least once a second: an answer may date a send earlier than assumed.
            self.sleep(min(max(delay, 0.001), 1.0))

    def _answered(self, taken: float) -> None:
        """Date the send by its answer, the latest the provider can have seen it."""
        with self.lock, self._sends() as sends:
            # The file's copy went through the wall clock and back: match it within 1 ms.
            mine = min(sends, key=lambda t: abs(t - taken), default=None)
            if mine is not None and abs(mine - taken) < 0.001:
                sends.remove(mine)
            sends.append(self.clock())

    @contextmanager
    def _sends(self) -> Iterator[list[float]]:
        """The send times inside the window, to read and change; kept in the file if any,
        under an flock so concurrent runners never lose each other's sends."""
        now = self.clock()
        if self.path is None:
            self.sent = _recent(self.sent, now, self.window)
            yield self.sent
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                offset = self.offset
                sends = _recent([t - offset for t in _load(self.path)], now, self.window)
                before = list(sends)
                yield sends
                if sends != before:
                    kept = sorted(t + offset for t in sends)
                    write_json(self.path, {"version": SENDS_VERSION, "sends": kept})
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _recent(sends: list[float], now: float, window: float) -> list[float]:
    """Sends that still count; one dated far in the future is garbage and would block."""
    return [t for t in sends if now - window < t <= now + 2 * window]


def _load(path: Path) -> list[float]:
    """The send times in the file; anything unreadable counts as no sends."""
    data: Any = read_json(path)
    if not isinstance(data, dict) or data.get("version") != SENDS_VERSION:
        return []
    sends = data.get("sends")
    if not isinstance(sends, list):
        return []
    return [
        float(t)
        for t in sends
        if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
    ]
