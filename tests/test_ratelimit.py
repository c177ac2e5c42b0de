"""The requests-per-minute gate, on a fake clock, and its send times kept in the cache."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from runner.run.ratelimit import SendWindow


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_no_more_than_rpm_sends_in_any_window_dated_by_their_answers() -> None:
    clock = Clock()
    gate = SendWindow(2, clock=clock.now, sleep=clock.sleep)
    sends = []
    with gate.turn():
        sends.append(clock.t)
        clock.t += 1.5  # the first create is slow to answer: the provider saw it late
    with gate.turn():
        sends.append(clock.t)
    with gate.turn():
        sends.append(clock.t)
    assert sends == [0.0, 1.5, 61.5]  # 60 s after the first create's answer


def test_no_limit_never_waits() -> None:
    clock = Clock()
    gate = SendWindow(None, clock=clock.now, sleep=clock.sleep)
    for _ in range(100):
        with gate.turn():
            pass
    assert clock.t == 0.0


def test_a_restarted_run_continues_the_window_kept_in_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sends" / "openai.json"
    first = Clock()
    gate = SendWindow(2, 60.0, first.now, first.sleep, path=path, wall=lambda: 1000 + first.t)
    for _ in range(2):
        with gate.turn():
            first.t += 1.0  # answered a second later: dated 1001 and 1002
    # The next run's monotonic clock reads something else entirely; the wall clock reads 1010.
    again = Clock()
    again.t = 500.0
    gate = SendWindow(2, 60.0, again.now, again.sleep, path=path, wall=lambda: 510 + again.t)
    with gate.turn():
        pass
    assert again.t == 551.0  # wall 1061: 60 s after the first send's answer
    assert json.loads(path.read_text())["version"] == 1


def test_garbage_in_the_send_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "openai.json"
    clock = Clock()
    for junk in [b"{not json", b'{"version": 1, "sends": "many"}', b"[1, 2]"]:
        path.write_bytes(junk)
        gate = SendWindow(1, 60.0, clock.now, clock.sleep, path=path, wall=clock.now)
        with gate.turn():
            pass
        clock.t += 60.0
    path.write_text(json.dumps({"version": 1, "sends": ["x", None, True, 1e300, 130.0]}))
    with gate.turn():  # only 130.0 counts: wait until 190
        pass
    assert clock.t == 190.0
    assert json.loads(path.read_text())["sends"] == [190.0]  # 130 has left the window


def test_runners_sharing_a_cache_never_lose_each_others_sends(tmp_path: Path) -> None:
    path = tmp_path / "openai.json"

    def runner() -> None:
        gate = SendWindow(1000, 3600.0, path=path)  # each its own gate, as in its own process
        for _ in range(20):
            with gate.turn():
                pass

    threads = [threading.Thread(target=runner) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads(path.read_text())["sends"]) == 80
