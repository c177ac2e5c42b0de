"""What a render shows while it runs: a live view on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from runner.errors import printable, shown
from runner.film.graph import Graph

if TYPE_CHECKING:
    from runner.backends.base import JobStatus

FINAL = {"done": "done", "cached": "cached", "failed": "FAILED", "skipped": "skipped"}


@dataclass(frozen=True)
class Polled:
    """What a hosted job's last poll said: its state, and how far it is where reported."""

    state: str
    progress: float | None = None  # 0..1 (OpenAI, Runway report it)
    queue_position: int | None = None  # fal


def time_left(
    now: float,
    running: dict[str, float],
    polled: dict[str, Polled],
    durations: list[float],
    waiting: int,
) -> float | None:
    """Seconds until the run ends, roughly; None until something tells (a finished node, or a
    job's reported progress). A running job's rest comes from its progress where the provider
    reports it, else from the mean of what finished; waiting nodes run as many at a time as
    are running now."""
    mean = sum(durations) / len(durations) if durations else None
    longest = 0.0
    for nid, started in running.items():
        elapsed = now - started
        fraction = polled[nid].progress if nid in polled else None
        if fraction is not None and 0.02 <= fraction < 1:
            longest = max(longest, elapsed * (1 - fraction) / fraction)
        elif mean is not None:
            longest = max(longest, mean - elapsed, 0.0)
        else:
            return None
    if waiting and mean is None:
        return None
    return longest + (waiting * (mean or 0.0)) / max(1, len(running))


def clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


class Progress:
    """Receives scheduler events (event, node id, detail) and shows them."""

    def __init__(self, graph: Graph, stream: TextIO | None = None) -> None:
        self.graph = graph
        self.total = 0  # set by the "plan" event: how many nodes this run may make
        self.stream = stream or sys.stderr
        self.finished = 0
        self.spend = 0.0
        self.running: dict[str, float] = {}
        self.polled: dict[str, Polled] = {}  # written by worker threads (job_status)
        self.durations: list[float] = []  # of nodes made in this run, for the time left
        self.live: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                self,
                console=Console(file=self.stream),
                transient=True,
                refresh_per_second=8,
            )

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, event: str, node_id: str, detail: str) -> None:
        if event == "plan":
            self.total = int(detail)
        elif event == "start":
            self.running[node_id] = time.monotonic()
            self.polled.pop(node_id, None)
        elif event == "retry":  # rate limited: the node waits for its pool to resume
            self.running.pop(node_id, None)
            self._print(f"rate limited: {node_id} waits ({detail})")
        elif event == "paid":  # a create the provider accepted in this run
            self.spend += float(detail)
        elif event == "stopping":  # a failure: no new creates; paid jobs are finished
            self._print(f"runner: {node_id} failed; {detail}")
        elif event == "throttled":  # node id is the pool; detail its new pace, said once
            self._print(f"runner: {detail}")
        else:
            started = self.running.pop(node_id, None)
            self.polled.pop(node_id, None)
            self.finished += 1
            if started is not None and event == "done":
                self.durations.append(time.monotonic() - started)
            took = f" {time.monotonic() - started:.1f}s" if started is not None else ""
            line = f"[{self.finished}/{self.total}] {FINAL[event]:7} {node_id}{took}"
            if detail:
                line += f": {detail}"
            self._print(line)

    def job_status(self, node_id: str, status: JobStatus) -> None:
        """A hosted job's poll (from its worker thread): shown on the node's row."""
        position = status.extra.get("queue_position")
        self.polled[node_id] = Polled(
            status.state,
            status.progress,
            position if isinstance(position, int) else None,
        )

    def _print(self, line: str) -> None:
        line = shown(line)  # ids and provider messages: no URL secrets, no terminal controls
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def __rich__(self) -> Any:
        """The live view, rebuilt on every refresh so elapsed times tick."""
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        running = dict(self.running)
        polled = dict(self.polled)
        for nid, started in sorted(running.items()):
            node = self.graph.nodes[nid]
            took = f"{now - started:.1f}s"
            how_far = _how_far(polled.get(nid))
            table.add_row(Text("rendering", "yellow"), printable(nid), node.pool, took, how_far)
        waiting = max(0, self.total - self.finished - len(running))
        left = time_left(now, running, polled, self.durations, waiting)
        table.add_row(
            Text(f"{self.finished}/{self.total}", "bold"),
            "nodes finished",
            "",
            f"spend ${self.spend:.2f}",
            "time left: estimating" if left is None else f"about {clock(left)} left",
        )
        return table


def _how_far(polled: Polled | None) -> str:
    if polled is None:
        return ""
    if polled.queue_position is not None:
        return f"queued, {polled.queue_position} ahead"
    if polled.progress is not None:
        return f"{polled.progress:.0%}"
    return polled.state
