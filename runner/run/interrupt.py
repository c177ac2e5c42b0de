"""Ctrl-C during a render: the first stops new creates and lets paid jobs finish; the second
exits at once, leaving those jobs journaled for the next run. Never a traceback.

Paid jobs cannot be cancelled for a refund once they run, so the first Ctrl-C does not throw
them away: it stops sending, then polls, downloads and stores what the provider is making.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType, TracebackType
from typing import Any

EXIT_INTERRUPTED = 130


class Interrupts:
    """Installs the two-step SIGINT handler while a render runs (main thread only)."""

    def __init__(self, stop: Callable[[], None], in_flight: Callable[[], int]) -> None:
        self.stop = stop
        self.in_flight = in_flight
        self.count = 0
        self._previous: Any = None

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        paid = self.in_flight()
        jobs = f"{paid} paid job{'s' if paid != 1 else ''}"
        if self.count == 1:
            self.stop()
            _say(
                f"runner: stopping: no new creates; finishing {jobs} in flight. Press Ctrl-C "
                "again to exit now: they stay journaled and the next render resumes them "
                "without paying again"
            )
            return
        from runner.media import ffmpeg

        ffmpeg.kill_children()  # no ffmpeg outlives the runner
        _say(f"runner: interrupted; {jobs} journaled: `runner render` resumes them for free")
        os._exit(EXIT_INTERRUPTED)  # at once: no thread joins, no interpreter shutdown noise


def _say(line: str) -> None:
    # os.write, not sys.stderr: the handler may run while the main thread is inside a write.
    with suppress(OSError):
        os.write(2, (line + "\n").encode())
