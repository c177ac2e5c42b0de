"""Requests per minute, counted on the wire: when each create is actually sent.

The scheduler already spaces job starts, but a job's first create can leave a while after its
start (SDK import, client set-up) and a retried create leaves again; the provider counts what
it receives. Every create is sent inside `SendWindow.turn()`: the slot is taken before the
request leaves and dated when its answer comes back, so the provider, whose clock reads
somewhere in between, never sees more than `rpm` creates in any window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from runner.scheduler import WINDOW


class SendWindow:
    """At most `rpm` sends in any WINDOW seconds; callers block until their turn."""

    def __init__(
        self,
        rpm: int | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rpm = rpm
        self.clock = clock
        self.sleep = sleep
        self.sent: list[list[float]] = []  # one [time] per send, updated when it is answered
        self.lock = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self.rpm is None:
            yield
            return
        entry = self._take(self.rpm)
        try:
            yield
        finally:
            with self.lock:
                entry[0] = self.clock()

    def _take(self, rpm: int) -> list[float]:
        while True:
            with self.lock:
                now = self.clock()
                self.sent = [e for e in self.sent if e[0] > now - WINDOW]
                if len(self.sent) < rpm:
                    entry = [now]
                    self.sent.append(entry)
                    return entry
                times = sorted(e[0] for e in self.sent)
                delay = times[len(times) - rpm] + WINDOW - now
            self.sleep(max(delay, 0.001))
