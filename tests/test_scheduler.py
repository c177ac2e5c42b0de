"""The scheduling loop with a fake clock and a fake backend: limits, order, failures, budget."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from runner.run.scheduler import (
    RELEASED,
    WINDOW,
    Outcome,
    Pool,
    Released,
    Retry,
    Task,
    schedule,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class FakeJobs:
    """Jobs that take a fixed time on the fake clock; records what ran when."""

    def __init__(
        self,
        clock: FakeClock,
        pool_of: dict[str, str],
        seconds: float = 10.0,
        fail: frozenset[str] = frozenset(),
        limited: dict[str, list[float | None]] | None = None,
        local_seconds: float = 0.0,
        provider_rpm: tuple[int, float, float | None] | None = None,
        pools: dict[str, Pool] | None = None,
    ) -> None:
        self.clock = clock
        self.pool_of = pool_of
        self.seconds = seconds
        self.fail = fail
        self.heap: list[tuple[float, str]] = []
        self.starts: list[tuple[float, str]] = []
        self.ends: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.events: list[tuple[str, str]] = []
        self.details: list[tuple[str, str, str]] = []  # events with their detail
        self.limited = limited or {}  # node -> Retry-After of each 429 its creates get
        self.local_seconds = local_seconds  # download and verify after the provider is done
        # (creates, window, Retry-After): the provider refuses creates over its rate.
        self.provider_rpm = provider_rpm
        self.accepted: list[float] = []
        self.refusals = 0
        self.pools = pools or {}
        self.paces: list[tuple[float, int | None, int]] = []  # (t, rpm, concurrency) per start

    def start(self, node_id: str) -> None:
        pool = self.pool_of[node_id]
        if pool in self.pools:
            p = self.pools[pool]
            self.paces.append((self.clock.t, p.rpm_limit(), p.concurrency_limit()))
        if self.provider_rpm is not None:
            limit, window, after = self.provider_rpm
            if len([t for t in self.accepted if t > self.clock.t - window]) >= limit:
                self.limited.setdefault(node_id, []).append(after)
            else:
                self.accepted.append(self.clock.t)
        if self.limited.get(node_id):  # the provider answers 429 at once
            self.refusals += 1
            after = self.limited[node_id].pop(0)
            self.starts.append((self.clock.t, node_id))
            self.in_flight[pool] = self.in_flight.get(pool, 0) + 1
            heapq.heappush(self.heap, (self.clock.t, f"429:{after}:{node_id}"))
            return
        self.in_flight[pool] = self.in_flight.get(pool, 0) + 1
        self.max_in_flight[pool] = max(self.max_in_flight.get(pool, 0), self.in_flight[pool])
        self.starts.append((self.clock.t, node_id))
        if self.local_seconds:
            heapq.heappush(self.heap, (self.clock.t + self.seconds, f"released:{node_id}"))
        heapq.heappush(self.heap, (self.clock.t + self.seconds + self.local_seconds, node_id))

    def report(self, event: str, node_id: str, detail: str) -> None:
        self.events.append((event, node_id))
        self.details.append((event, node_id, detail))

    def wait(self, timeout: float | None) -> tuple[str, str | Retry | Released | None] | None:
        if not self.heap:
            assert timeout is not None, "the loop waited forever with nothing running"
            self.clock.t += timeout
            return None
        finish, node_id = self.heap[0]
        if timeout is not None and self.clock.t + timeout < finish:
            self.clock.t += timeout
            return None
        heapq.heappop(self.heap)
        self.clock.t = max(self.clock.t, finish)
        released = self.local_seconds and not node_id.startswith(("429:", "released:"))
        if node_id.startswith("released:"):
            node_id = node_id.split(":", 1)[1]
            self.in_flight[self.pool_of[node_id]] -= 1
            return node_id, RELEASED
        if node_id.startswith("429:"):
            _, after, node_id = node_id.split(":", 2)
            self.in_flight[self.pool_of[node_id]] -= 1
            return node_id, Retry(
                "429 Too Many Requests", None if after == "None" else float(after)
            )
        if not released:
            self.in_flight[self.pool_of[node_id]] -= 1
        self.ends[node_id] = self.clock.t
        return node_id, ("moderation: refused" if node_id in self.fail else None)


def run(
    tasks: list[Task],
    pools: dict[str, Pool],
    fail: frozenset[str] = frozenset(),
    keep_going: bool = False,
    fresh: Callable[[str], bool] = lambda _: False,
    limited: dict[str, list[float | None]] | None = None,
    local_seconds: float = 0.0,
    provider_rpm: tuple[int, float, float | None] | None = None,
) -> tuple[Outcome, FakeJobs]:
    clock = FakeClock()
    jobs = FakeJobs(
        clock,
        {t.id: t.pool for t in tasks},
        fail=fail,
        limited=limited,
        local_seconds=local_seconds,
        provider_rpm=provider_rpm,
        pools=pools,
    )
    outcome = schedule(
        tasks,
        pools,
        jobs,
        clock,
        fresh=fresh,
        keep_going=keep_going,
        report=jobs.report,
        jitter=lambda: 1.0,
    )
    return outcome, jobs


def test_concurrency_and_rpm_are_never_exceeded() -> None:
    tasks = [Task(f"s{i}", "openai", []) for i in range(30)]
    outcome, jobs = run(tasks, {"openai": Pool("openai", concurrency=3, rpm=5)})
    assert sorted(outcome.done) == sorted(t.id for t in tasks)
    assert jobs.max_in_flight["openai"] == 3
    times = sorted(t for t, _ in jobs.starts)
    for i, t in enumerate(times):
        in_window = [u for u in times[i:] if u < t + WINDOW]
        assert len(in_window) <= 5, f"{len(in_window)} starts in the 60 s after t={t}"
    # 30 starts at 5 per minute cannot finish before 5 full windows have passed.
    assert times[-1] >= 5 * WINDOW


def test_pools_are_independent() -> None:
    tasks = [Task(f"a{i}", "slow", []) for i in range(4)] + [
        Task(f"b{i}", "fast", []) for i in range(4)
    ]
    _outcome, jobs = run(tasks, {"slow": Pool("slow", 1), "fast": Pool("fast", 4)})
    assert jobs.max_in_flight == {"slow": 1, "fast": 4}
    assert all(t == 0.0 for t, n in jobs.starts if n.startswith("b"))


def test_needs_order_is_respected() -> None:
    tasks = [
        Task("river", "p", []),
        Task("sky", "p", ["river"]),
        Task("edit", "p", ["sky", "river"]),
    ]
    _outcome, jobs = run(tasks, {"p": Pool("p", 8)})
    started = {n: t for t, n in jobs.starts}
    assert started["sky"] >= jobs.ends["river"]
    assert started["edit"] >= jobs.ends["sky"]


def test_failure_skips_dependents_and_stops_without_keep_going() -> None:
    tasks = [Task("a", "p", []), Task("b", "p", ["a"]), Task("c", "p", ["b"]), Task("x", "p", [])]
    outcome, jobs = run(tasks, {"p": Pool("p", 1)}, fail=frozenset({"a"}))
    assert outcome.failed == {"a": "moderation: refused"}
    assert set(outcome.skipped) == {"b", "c", "x"}
    assert [n for _, n in jobs.starts] == ["a"]


def test_keep_going_finishes_independent_branches() -> None:
    tasks = [Task("a", "p", []), Task("b", "p", ["a"]), Task("x", "p", []), Task("y", "p", ["x"])]
    outcome, jobs = run(tasks, {"p": Pool("p", 1)}, fail=frozenset({"a"}), keep_going=True)
    assert outcome.done == ["x", "y"]
    assert outcome.skipped == {"b": "a failed"}
    assert ("skipped", "b") in jobs.events


def test_budget_cap_stops_before_the_submit_that_would_cross_it() -> None:
    tasks = [Task(f"s{i}", "veo", [], cost_usd=0.4) for i in range(5)]
    outcome, jobs = run(tasks, {"veo": Pool("veo", 10, max_cost_usd=1.0)})
    assert len(jobs.starts) == 2  # 0.8 committed; a third would make 1.2
    assert len(outcome.skipped) == 3
    assert all("max_cost_usd" in why for why in outcome.skipped.values())


def test_fresh_nodes_are_not_started() -> None:
    tasks = [Task("a", "p", []), Task("b", "p", ["a"])]
    outcome, jobs = run(tasks, {"p": Pool("p", 1)}, fresh=lambda nid: nid == "b")
    assert outcome.cached == ["b"]
    assert [n for _, n in jobs.starts] == ["a"]


def test_a_429_pauses_the_whole_pool_for_retry_after() -> None:
    tasks = [Task(f"s{i}", "openai", []) for i in range(4)]
    outcome, jobs = run(tasks, {"openai": Pool("openai", 1)}, limited={"s1": [30.0]})
    assert sorted(outcome.done) == ["s0", "s1", "s2", "s3"]
    starts = [(t, n) for t, n in jobs.starts]
    # s0 runs 0-10; s1 is refused at 10; nothing starts until 40; then s1 again.
    assert starts[:3] == [(0.0, "s0"), (10.0, "s1"), (40.0, "s1")]
    assert ("retry", "s1") in jobs.events


def test_the_pause_backs_off_exponentially_up_to_the_window_or_a_longer_retry_after() -> None:
    pool = Pool("veo", 4, window=10.0)
    pauses = []
    for n in range(1, 7):
        pool.pauses, pool.paused_until = n, 0.0
        pool.pause(0.0, None, 1.0)
        pauses.append(pool.paused_until)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    pool.pauses, pool.paused_until = 3, 0.0
    pool.pause(0.0, 0.5, 1.0)  # a Retry-After shorter than the backoff does not shorten it
    assert pool.paused_until == 4.0
    pool.pause(0.0, 30.0, 1.0)  # a longer one is honoured
    assert pool.paused_until == 30.0


def test_a_429_never_fails_a_node_before_give_up_after() -> None:
    tasks = [Task("s0", "veo", [])]
    outcome, jobs = run(tasks, {"veo": Pool("veo", 1)}, limited={"s0": [1.0] * 40})
    assert outcome.done == ["s0"] and outcome.failed == {}
    assert len(jobs.starts) == 41


def test_a_node_gives_up_after_waiting_give_up_after_to_send_and_names_an_rpm() -> None:
    tasks = [Task("s0", "veo", []), Task("s1", "veo", ["s0"])]
    pools = {"veo": Pool("veo", 1, give_up_after=600.0)}
    outcome, jobs = run(tasks, pools, limited={"s0": [1.0] * 1000})
    why = outcome.failed["s0"]
    assert "give_up_after = 600" in why and "declare `rpm = 1` in [limits.veo]" in why
    assert outcome.skipped == {"s1": "s0 failed"}
    # It waited (the pool learned 1 a minute) for more than 600 s, and no longer than a window.
    last_start = jobs.starts[-1][0]
    assert 600.0 < last_start < 600.0 + 2 * 60.0
    assert jobs.events.count(("failed", "s0")) == 1


def test_waiting_behind_full_slots_is_not_waiting_to_send() -> None:
    # s1 is refused twice (the pool drops to 1 slot), waits 5000 s behind s0's render, is
    # refused again: it waited 3 s to send, not 5000.
    tasks = [Task("s0", "veo", []), Task("s1", "veo", [])]
    pools = {"veo": Pool("veo", 2, give_up_after=100.0)}
    clock = FakeClock()
    jobs = FakeJobs(clock, {"s0": "veo", "s1": "veo"}, seconds=5000.0)
    jobs.limited = {"s1": [None, None, None]}
    outcome = schedule(tasks, pools, jobs, clock, jitter=lambda: 1.0)
    assert sorted(outcome.done) == ["s0", "s1"], outcome.failed
    assert [t for t, n in jobs.starts if n == "s1"][:3] == [0.0, 1.0, 5000.0]
    assert len(jobs.starts) == 5  # s0 once, s1 three times refused and once accepted


def test_aimd_lowers_the_pace_on_429s_and_restores_it_within_the_declared_limits() -> None:
    # The provider takes 10 creates a minute and says "retry after 1 s" when it will not.
    tasks = [Task(f"s{i}", "openai", []) for i in range(80)]
    pools = {"openai": Pool("openai", concurrency=4, rpm=12)}
    outcome, jobs = run(tasks, pools, provider_rpm=(10, 60.0, 1.0))
    assert sorted(outcome.done) == sorted(t.id for t in tasks) and outcome.failed == {}
    throttled = [d for e, _, d in jobs.details if e == "throttled"]
    assert len(throttled) == 1
    assert throttled[0].startswith("openai is rate-limiting creates (HTTP 429): now sending at")
    assert "lower `rpm` in [limits.openai]" in throttled[0]
    rpms = [rpm or 0 for _, rpm, _ in jobs.paces]
    slots = [c for _, _, c in jobs.paces]
    lowest = rpms.index(min(rpms))
    assert min(rpms) <= 6 and max(rpms[lowest:]) >= 10  # halved, then grew back
    assert min(slots) <= 2 and max(slots[slots.index(min(slots)) :]) == 4
    assert max(rpms) <= 12 and max(slots) <= 4  # never above [limits.openai]
    assert jobs.refusals < 20  # it learned: the old loop sent hundreds of refused creates


def test_a_slot_is_free_once_the_provider_is_done_while_the_download_runs() -> None:
    tasks = [Task(f"s{i}", "openai", []) for i in range(3)]
    outcome, jobs = run(tasks, {"openai": Pool("openai", 1)}, local_seconds=4.0)
    assert sorted(outcome.done) == ["s0", "s1", "s2"]
    assert [t for t, _ in jobs.starts] == [0.0, 10.0, 20.0]  # not 14 and 28
    assert jobs.max_in_flight["openai"] == 1


class ExpiringJobs:
    """Provider jobs of 10 s; node "a"'s first download finds its content expired, so the
    runner hands it back (--rerender-expired) to be sent again."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.heap: list[tuple[float, int, str, str]] = []
        self.starts: list[tuple[float, str]] = []
        self.on_provider: set[str] = set()
        self.max_on_provider = 0
        self.n = 0

    def start(self, node_id: str) -> None:
        self.starts.append((self.clock.t, node_id))
        self.on_provider.add(node_id)
        self.max_on_provider = max(self.max_on_provider, len(self.on_provider))
        first = sum(1 for _, n in self.starts if n == node_id) == 1
        end = "expired" if node_id == "a" and first else "done"
        for delay, what in ((10.0, "released"), (10.0, end)):
            self.n += 1
            heapq.heappush(self.heap, (self.clock.t + delay, self.n, what, node_id))

    def wait(self, timeout: float | None) -> tuple[str, str | Retry | Released | None] | None:
        t, _, what, node_id = heapq.heappop(self.heap)
        self.clock.t = max(self.clock.t, t)
        if what == "released":
            self.on_provider.discard(node_id)
            return node_id, RELEASED
        if what == "expired":
            return node_id, Retry("content expired; sending again", limited=False)
        return node_id, None


def test_an_expired_job_sent_again_waits_for_a_pool_slot_and_pauses_nothing() -> None:
    clock = FakeClock()
    jobs = ExpiringJobs(clock)
    pool = Pool("hosted", concurrency=1, rpm=None)
    tasks = [Task(n, "hosted", []) for n in ("a", "b", "c")]
    out = schedule(tasks, {"hosted": pool}, jobs, clock)
    assert out.ok and sorted(out.done) == ["a", "b", "c"]
    assert [n for _, n in jobs.starts].count("a") == 2
    assert jobs.max_on_provider == 1  # the new create of "a" took the one slot in turn
    assert pool.paused_until == 0.0 and pool.pace_rpm is None  # not a 429: no pause, no pace
