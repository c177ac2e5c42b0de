"""What a render shows while it runs: a live view on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from runner.errors import printable, shown
from runner.film.graph import Graph

FINAL = {"done": "done", "cached": "cached", "failed": "FAILED", "skipped": "skipped"}


class Progress:
    """Receives scheduler events (event, node id, detail) and shows them."""

    def __init__(self, graph: Graph, stream: TextIO | None = None) -> None:
        self.graph = graph
        self.total = 0  # set by the "plan" event: how many nodes this run may make
        self.stream = stream or sys.stderr
        self.finished = 0
        self.spend = 0.0
        self.running: dict[str, float] = {}
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
            self.finished += 1
            took = f" {time.monotonic() - started:.1f}s" if started is not None else ""
            line = f"[{self.finished}/{self.total}] {FINAL[event]:7} {node_id}{took}"
            if detail:
                line += f": {detail}"
            self._print(line)

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
        for nid, started in sorted(self.running.items()):
            node = self.graph.nodes[nid]
            table.add_row(
                Text("rendering", "yellow"), printable(nid), node.pool, f"{now - started:.1f}s"
            )
        table.add_row(
            Text(f"{self.finished}/{self.total}", "bold"),
            "nodes finished",
            "",
            f"spend ${self.spend:.2f}",
        )
        return table
