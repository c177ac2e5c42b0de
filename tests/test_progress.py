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


def test_time_left_comes_from_reported_progress_else_from_what_finished() -> None:
    from runner.cli.progress import Polled, time_left

    # Nothing finished, no progress reported: no guess.
    assert time_left(100.0, {"a": 90.0}, {}, [], waiting=3) is None
    # 25% done after 10 s: 30 s more; nothing waits.
    assert time_left(100.0, {"a": 90.0}, {"a": Polled("running", 0.25)}, [], 0) == 30.0
    # Two running from the mean (20 s) of what finished, four waiting two at a time.
    left = time_left(100.0, {"a": 95.0, "b": 90.0}, {}, [20.0, 20.0], waiting=4)
    assert left == 15.0 + 4 * 20.0 / 2


def test_live_view_shows_each_hosted_jobs_progress_and_the_time_left() -> None:
    from runner.backends.base import JobStatus

    stream = Terminal()
    with Progress(graph(), stream) as progress:
        progress("plan", "", "2")
        progress("start", "shots.a", "")
        progress("start", "shots.b", "")
        progress.job_status("shots.a", JobStatus("running", progress=0.42))
        progress.job_status("shots.b", JobStatus("queued", extra={"queue_position": 3}))
        progress.live.refresh()
        text = stream.getvalue()
        assert "42%" in text and "queued, 3 ahead" in text and "left" in text
