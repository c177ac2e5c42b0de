"""The progress view: plain lines when not a terminal, a live rich view on one."""

from __future__ import annotations

import io

from runner.cli.progress import Progress
from runner.film.graph import Graph, Node


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def graph() -> Graph:
    nodes = {n: Node(n, "shot", "veo", {}, cost_usd=0.8) for n in ("shots.a", "shots.b")}
    return Graph("T", 64, 64, 24, nodes, {})


def run(stream: io.StringIO) -> str:
    with Progress(graph(), stream) as progress:
        progress("plan", "", "2")
        progress("start", "shots.a", "")
        progress("start", "shots.b", "")
        progress("done", "shots.a", "")
        progress("paid", "shots.a", "0.8000")
        progress("failed", "shots.b", "moderation: refused")
        progress("paid", "shots.b", "0.8000")  # refused after the create: still paid
    return stream.getvalue()


def test_plain_lines_when_not_a_terminal() -> None:
    lines = run(io.StringIO()).splitlines()
    assert lines[0].startswith("[1/2] done    shots.a")
    assert lines[1].startswith("[2/2] FAILED  shots.b") and lines[1].endswith(
        ": moderation: refused"
    )


def test_live_view_on_a_terminal_shows_state_counts_and_spend() -> None:
    text = run(Terminal())
    assert "rendering" in text and "shots.b" in text
    assert "spend $1.60" in text  # what the run paid, not what it finished
    assert "[2/2] FAILED  shots.b" in text
    assert "[bold]" not in text and "[yellow]" not in text  # markup rendered, not printed
