"""The runner against a loopback server speaking the OpenAI videos protocol, driven by the real
`openai` SDK over real HTTP: limits, retries, budget, crashes, and never paying twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.films import Checkout, gen
from tests.servers.openai_server import OpenAIServer

KEY = "sk-loopback-SECRET-9e1c"
WINDOW = 2.0  # seconds: the rpm window of runner and server here, instead of a real minute


def film(shots: int, *, limits: str = "concurrency = 2", takes: int = 1, extra: str = "") -> str:
    lines = [
        "[film]",
        'title = "Hosted"',
        'size = "160x90"',  # the served clips' size: the cut copies them; shots ask 1280x720
        "fps = 24",
        "[defaults]",
        'backend = "openai"',
        'model = "sora-2"',
        'size = "1280x720"',
        "seconds = 4",
        "[limits.openai]",
        limits,
        extra,
    ]
    if "[edit]" not in extra:
        # Every shot renders; the cut is one clip, so each render's audio encode stays short
        # (these tests are about creates, not about the cut).
        lines += ["[edit]", 'sequence = ["s0"]']
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Shot number {i}: a lantern on the river."']
        if takes > 1 and i == 0:
            lines += [f"takes = {takes}", "pick = 1"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(job_seconds=0.3, poll_after_ms=50) as s:
        yield s


class Project(Checkout):
    def __init__(self, root: Path, server: OpenAIServer, toml: str, window: float = WINDOW) -> None:
        manifest = gen(root / "film", {"film.toml": toml}) / "film.toml"
        env = {
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": KEY,
            "RUNNER_RATE_WINDOW_SECONDS": str(window),
        }
        super().__init__(manifest, root / "cache", env)
        self.root = root


def prompts(server: OpenAIServer) -> Counter[str]:
    return Counter(c["prompt"].split("\n")[0] for c in server.creates)


def test_n_shots_make_exactly_n_creates_within_the_concurrency_limit(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(6, limits="concurrency = 2"))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 6
    assert server.in_flight_max <= 2
    assert (p.manifest.parent / "out" / "film.mp4").is_file()
    again = p.run("render")
    assert again.returncode == 0 and len(server.creates) == 6


def test_jobs_waiting_on_their_provider_hold_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More jobs in flight than the runner has threads: each waits parked, not in a thread."""
    from runner.run import execute
    from runner.run.project import Project as Opened
    from runner.run.render import Options, render

    shots = execute.MAX_THREADS + 8
    manifest = gen(tmp_path / "film", {"film.toml": film(shots, limits=f"concurrency = {shots}")})
    most = 0
    done = threading.Event()

    def count() -> None:
        nonlocal most
        while not done.wait(0.01):
            names = [t.name for t in threading.enumerate()]
            most = max(most, sum(n.startswith("node") for n in names))

    with OpenAIServer(job_seconds=1.5, poll_after_ms=100) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        counter = threading.Thread(target=count)
        counter.start()
        try:
            project = Opened.open(manifest / "film.toml", tmp_path / "cache", None)
            result = render(project, Options(shard=(1, 1)), lambda *_: None)
        finally:
            done.set()
            counter.join()
    assert result.outcome.ok, result.outcome.failed
    assert server.in_flight_max == shots  # every job in flight at once ...
    assert 0 < most <= execute.MAX_THREADS  # ... on no more threads than the cap


def test_plan_estimates_cost_from_the_price_table(tmp_path: Path, server: OpenAIServer) -> None:
    p = Project(tmp_path, server, film(3))
    plan = json.loads(p.run("plan", "--json").stdout)
    assert plan["estimated_cost_usd"] == pytest.approx(3 * 4 * 0.10)
    assert server.creates == []


def test_a_429_pauses_the_pool_and_every_shot_is_still_created_once(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.rate_limit_next(3, retry_after=1.0)
    p = Project(tmp_path, server, film(4, limits="concurrency = 4"))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert prompts(server) == {f"Shot number {i}: a lantern on the river.": 1 for i in range(4)}
    assert "rate limited" in result.stderr


def test_a_dropped_create_answer_is_reconciled_not_paid_twice(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.drop_next_creates(2)
    p = Project(tmp_path, server, film(3))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 3


def test_a_dropped_create_is_found_on_a_server_that_normalises_prompts(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.normalise_prompts = True  # the compiled prompt's final newline is not echoed
    server.drop_next_creates(3)
    p = Project(tmp_path, server, film(4, limits="concurrency = 4"))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 4
    assert all(server.jobs[c["job_id"]].prompt != c["prompt"] for c in server.creates)


def test_downloads_cut_short_again_and_again_finish_in_one_run_without_buying_again(
    tmp_path: Path, server: OpenAIServer
) -> None:
    # 25 cuts over 12 shots: some shot's download is cut three times or more.
    for i in range(25):
        server.truncate_next_downloads(1, declare_length=i % 2 == 1)
    p = Project(tmp_path, server, film(12, limits="concurrency = 12"))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 12
    downloads = server.downloads
    assert any(start > 0 for _, start, _ in downloads)  # a cut transfer was resumed
    assert len(downloads) >= 25 + 12


def test_budget_cap_stops_before_the_submit_that_would_cross_it(
    tmp_path: Path, server: OpenAIServer
) -> None:
    # $0.40 a shot: two fit under $1.00, a third would cross it.
    p = Project(tmp_path, server, film(4, limits="concurrency = 1\nmax_cost_usd = 1.0"))
    result = p.run("render")
    assert result.returncode == 1
    assert len(server.creates) == 2
    assert "max_cost_usd" in result.stderr and "not rendered: shots.s2" in result.stderr


def test_a_moderated_shot_fails_with_the_providers_message_and_is_not_retried(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.moderate("number 1:")
    p = Project(tmp_path, server, film(3))
    result = p.run("render", "--keep-going")
    assert result.returncode == 1
    assert "shots.s1" in result.stderr and "moderation" in result.stderr.lower()
    assert prompts(server)["Shot number 1: a lantern on the river."] == 1
    assert len(server.creates) == 3


def test_takes_render_in_parallel_and_changing_pick_renders_nothing(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(1, takes=3, limits="concurrency = 3"))
    assert p.run("render").returncode == 0
    assert len(server.creates) == 3 and server.in_flight_max == 3
    p.manifest.write_text(p.manifest.read_text().replace("pick = 1", "pick = 3"))
    assert p.run("render").returncode == 0
    assert len(server.creates) == 3


# Each restart is killed at a named point, at a later pass than the first, so the kill lands
# with other shots journaled, answered or downloaded around it; the passes are chosen so that
# each run still has that many shots to take past its point (two at a time).
RESTARTS = (
    "create-answered:2",
    "downloaded:2",
    "create-answered:2",
    "job-journaled:1",
    "downloaded:2",
    "stored:1",
)


def test_killed_at_named_points_across_restarts_never_creates_twice(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.job_seconds = 0.5
    p = Project(tmp_path, server, film(8, limits="concurrency = 2"))
    for spec in RESTARTS:
        p.env["RUNNER_KILL_AT"] = spec
        killed = p.run("render")
        if killed.returncode == 0:
            break  # the film was done before this point came round (a slow, loaded machine)
        assert killed.returncode == -signal.SIGKILL, (spec, killed.stderr)
    del p.env["RUNNER_KILL_AT"]
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert prompts(server) == {f"Shot number {i}: a lantern on the river.": 1 for i in range(8)}
    assert len(server.creates) == 8


def test_the_api_key_is_in_no_file_the_runner_writes(tmp_path: Path, server: OpenAIServer) -> None:
    p = Project(tmp_path, server, film(2))
    assert p.run("render").returncode == 0
    assert f"Bearer {KEY}" in server.authorizations
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_submits_per_window_never_exceed_rpm(tmp_path: Path, server: OpenAIServer) -> None:
    p = Project(tmp_path, server, film(3, limits="concurrency = 3\nrpm = 2"))
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 3
    assert server.max_creates_in_window(WINDOW) <= 2
    times = server.create_times
    assert WINDOW <= times[2] - times[0] < 30  # the third waited for the short window


def test_a_film_without_rpm_learns_the_providers_pace_and_finishes(tmp_path: Path) -> None:
    # 5 creates per window, and a Retry-After far shorter than the window (1 s of 60 s). The
    # first 8 creates leave at once, so 429s come whatever the machine's speed.
    window = 3.0
    throttling = OpenAIServer(job_seconds=0.3, rpm=5, rpm_window=window, retry_after=window / 60)
    with throttling as server:
        p = Project(tmp_path, server, film(12, limits="concurrency = 8"), window)
        result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 12
    assert any(c["status"] == 429 for c in server.create_attempts)
    assert "openai is rate-limiting creates (HTTP 429)" in result.stderr
    assert "declare `rpm` in [limits.openai]" in result.stderr


def test_a_restarted_run_continues_the_providers_window(tmp_path: Path) -> None:
    window = 4.0  # long enough that the restarted run starts inside the killed run's window
    with OpenAIServer(job_seconds=0.3, rpm=3, rpm_window=window) as server:
        p = Project(tmp_path, server, film(6, limits="concurrency = 3\nrpm = 3"), window)
        proc = p.start()
        # Killed once 3 shots are made: the restarted run has nothing to resume, only 3 to send.
        deadline = time.monotonic() + 30
        while len(list(p.root.glob("cache/actions/*/*.json"))) < 3:
            assert time.monotonic() < deadline, "the first run made no shots"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 6
    assert [c for c in server.create_attempts if c["status"] == 429] == []
    assert server.max_creates_in_window(window) <= 3


def test_a_remix_edits_the_source_job_and_follows_it(tmp_path: Path, server: OpenAIServer) -> None:
    remix = '[shots.blue]\nremix = { shot = "s0", prompt = "Same shot, the lantern glows blue." }\n'
    server.unique_videos = True  # each render differs, as a hosted model's do
    p = Project(tmp_path, server, film(1) + remix)
    assert p.run("render").returncode == 0
    source = next(c for c in server.creates if c["remix_of"] is None)
    remixed = next(c for c in server.creates if c["remix_of"] is not None)
    assert remixed["remix_of"] == source["job_id"]
    assert remixed["prompt"] == "Same shot, the lantern glows blue.\n"
    assert p.run("render").returncode == 0 and len(server.creates) == 2
    # A new source video means a new remix of it.
    p.manifest.write_text(p.manifest.read_text().replace("Shot number 0:", "Shot zero:"))
    plan = json.loads(p.run("plan", "--json").stdout)
    assert {n["id"]: n["status"] for n in plan["nodes"]}["shots.blue"] == "blocked"
    assert p.run("render").returncode == 0
    assert len(server.creates) == 4
    assert server.creates[3]["remix_of"] == server.creates[2]["job_id"]


class CutRelay:
    """A TCP relay between the runner and the server that does to one create what a kill -9
    mid-send does: once the create's bytes up to the end of `cut_after` have gone through, it
    SIGKILLs the runner (`victim`) and closes the server's side, the rest never sent."""

    def __init__(self, upstream_port: int, cut_after: bytes) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.victim = 0  # the runner's pid: set it (then `known`) once the runner is started
        self.known = threading.Event()
        self.cut = threading.Event()  # the create was cut and the runner killed
        self.server_done = threading.Event()  # the server closed the cut connection
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = self._listen.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listen.close()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listen.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()
                threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        with suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
        if self.cut.is_set():
            self.server_done.set()
        with suppress(OSError):
            client.close()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        seen = b""
        with suppress(OSError):
            while data := client.recv(65536):
                if not self.cut.is_set():
                    seen += data
                    at = seen.find(self.cut_after)
                    if at >= 0:
                        end = len(data) - (len(seen) - at - len(self.cut_after))
                        upstream.sendall(data[:end])
                        self.known.wait()
                        os.kill(self.victim, signal.SIGKILL)
                        self.cut.set()
                        upstream.shutdown(socket.SHUT_WR)  # the rest never comes
                        return
                upstream.sendall(data)
        with suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)


def test_a_create_cut_short_by_a_kill_mid_send_bills_nothing_and_the_rerun_creates_once(
    tmp_path: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a loaded full-suite run (2 creates for one shot): a runner killed while its
    create's body was half written left the server a request shorter than its Content-Length.
    An HTTP server drops such a request; the loopback server made a job of the fields it had
    (the size missing: its default 720x1280), which `find` rightly did not take for the shot's
    1280x720 create, so the rerun sent it again."""
    from runner.run import job

    p = Project(tmp_path, server, film(2, limits="concurrency = 1"))
    relay = CutRelay(server.port, b"Shot number 0: a lantern on the river.\n")
    try:
        p.env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{relay.port}/v1"
        killed = p.start()
        relay.victim = killed.pid
        relay.known.set()
        assert killed.wait(timeout=120) == -signal.SIGKILL
        assert relay.cut.is_set()
        assert relay.server_done.wait(timeout=30)  # the server is done with the cut create
    finally:
        relay.close()
    p.env["OPENAI_BASE_URL"] = server.base_url
    # Nothing can still be on its way (the server closed the cut connection): no settle wait.
    monkeypatch.setattr(job, "ARRIVAL_SETTLE", 0.0)
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert prompts(server) == {f"Shot number {i}: a lantern on the river.": 1 for i in range(2)}


def test_a_target_pays_for_that_shot_alone_and_assembles_nothing(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(3))
    plan = json.loads(p.run("plan", "--json", "--target", "s1").stdout)
    assert [n["id"] for n in plan["nodes"]] == ["shots.s1"]  # what that render would make
    frozen = p.run("render", "--target", "s1", "--frozen")
    assert frozen.returncode == 1  # s1 would cost money: --frozen counts only the target's
    assert "would pay for shots.s1" in frozen.stderr and "shots.s0" not in frozen.stderr
    result = p.run("render", "--target", "s1")
    assert result.returncode == 0, result.stderr
    assert prompts(server) == {"Shot number 1: a lantern on the river.": 1}
    assert not (p.root / "film" / "out" / "film.mp4").exists()  # no film is assembled
    assert (p.root / "film" / "out" / "review" / "index.html").is_file()  # the take to look at
    elsewhere = p.run("render", "--target", "s1", "--rerender", "s2")
    assert elsewhere.returncode == 2
    assert "not among what --target renders; add --target shots.s2" in elsewhere.stderr
    unknown = p.run("render", "--target", "s9")
    assert unknown.returncode == 2
    assert "--target s9: no shot or node of that name" in unknown.stderr
    assert p.run("render").returncode == 0  # the rest; s1 is not bought again
    assert prompts(server) == {f"Shot number {i}: a lantern on the river.": 1 for i in range(3)}
    assert (p.root / "film" / "out" / "film.mp4").is_file()


def test_a_paid_job_outside_the_target_is_named_and_resumed_later_not_bought_again(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(2, limits="concurrency = 1"))
    p.env["RUNNER_KILL_AT"] = "job-journaled:1"  # s0 paid for and journaled, then killed
    assert p.run("render").returncode == -signal.SIGKILL
    del p.env["RUNNER_KILL_AT"]
    assert prompts(server) == {"Shot number 0: a lantern on the river.": 1}
    targeted = p.run("render", "--target", "s1")
    assert targeted.returncode == 0, targeted.stderr
    assert "shots.s0: a create a previous run sent is journaled, outside --target" in (
        targeted.stderr
    )
    assert p.run("render").returncode == 0
    assert prompts(server) == {f"Shot number {i}: a lantern on the river.": 1 for i in range(2)}
