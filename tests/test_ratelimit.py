"""The requests-per-minute gate, on a fake clock."""

from __future__ import annotations

from runner.ratelimit import SendWindow


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
