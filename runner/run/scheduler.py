"""One scheduling loop: start as much as the pools allow, reap one finished job, repeat.

The shape of ninja's `Builder::Build`. Pools are per backend: `concurrency` jobs in flight, no
more than `rpm` starts in any window (a minute), and a spend cap counting in-flight jobs as
spent. A provider that answers 429 is paced AIMD-style (TCP's congestion control): the pool's
rate and concurrency are halved on repeated 429s and grow back by about one a window while
creates are accepted. Time and jobs come through the Clock and Jobs protocols, so the loop is
tested with a fake clock and a fake backend.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW = 60.0  # seconds: the window `rpm` counts in, unless a pool says otherwise
GIVE_UP_AFTER = 3600.0  # seconds a node may wait to send while rate-limited before it fails
DECREASE = 0.5  # the learned pace is multiplied by this on a 429


@dataclass
class Retry:
    """A job's answer meaning "rate limited, try again": pause the whole pool."""

    reason: str
    after: float | None = None  # the provider's Retry-After; None: exponential backoff
    limited: bool = True  # False: not a 429 but a paid re-send (expired content): no pause


@dataclass
class Released:
    """A job's interim answer: the provider is done with it, so its pool slot is free."""


RELEASED = Released()


@dataclass
class Pool:
    name: str
    concurrency: int
    rpm: int | None = None
    max_cost_usd: float | None = None
    window: float = WINDOW
    give_up_after: float = GIVE_UP_AFTER
    running: int = 0
    committed_usd: float = 0.0  # spent plus in flight
    starts: deque[float] = field(default_factory=deque)
    refusals: deque[float] = field(default_factory=deque)  # starts answered 429
    paused_until: float = 0.0  # a 429 pauses every start in the pool until then
    pauses: int = 0  # 429s in a row (one per burst), for the backoff
    last_429: float = -math.inf  # when the provider last refused a create
    pace_rpm: float | None = None  # learned from 429s; None: only `rpm` limits
    pace_concurrency: float | None = None  # learned from 429s; None: only `concurrency`

    def rpm_limit(self) -> int | None:
        """Starts allowed per window now: the declared rpm or the learned pace, the lower."""
        learned = None if self.pace_rpm is None else max(1, math.floor(self.pace_rpm))
        limits = [n for n in (self.rpm, learned) if n is not None]
        return min(limits) if limits else None

    def concurrency_limit(self) -> int:
        if self.pace_concurrency is None:
            return self.concurrency
        return max(1, min(self.concurrency, math.floor(self.pace_concurrency)))

    def rate_wait(self, now: float) -> float:
        """Seconds until another start is allowed (0: now)."""
        if now < self.paused_until:
            return self.paused_until - now
        for times in (self.starts, self.refusals):
            while times and times[0] <= now - self.window:
                times.popleft()
        rpm = self.rpm_limit()
        if rpm is None or len(self.starts) < rpm:
            return 0.0
        return self.starts[len(self.starts) - rpm] + self.window - now

    def refused(self, now: float, sent: float, after: float | None, jitter: float) -> bool:
        """A create sent at `sent` got a 429: pause the pool, and on repeated 429s slow it
        down. True when the pace was lowered."""
        self.refusals.append(sent)
        if sent < self.last_429:
            return False  # sent before the last 429 was seen: the same burst, counted once
        self.last_429 = now
        self.pauses += 1
        self.pause(now, after, jitter)
        if self.pauses < 2:
            return False  # one 429 may be a blip: trust its Retry-After once
        # The Retry-After did not clear the provider's window: send slower and fewer at a time.
        self.rate_wait(now)  # forget starts older than the window
        accepted = len(self.starts) - len(self.refusals)  # what it took before saying no
        self.pace_rpm = max(1.0, DECREASE * min(float(accepted), self.pace_rpm or math.inf))
        self.pace_concurrency = max(1.0, DECREASE * self.concurrency_limit())
        return True

    def pause(self, now: float, after: float | None, jitter: float) -> None:
        """Stop starting jobs for 1, 2, 4 ... s (jittered, up to the window), or for the
        provider's Retry-After when that is longer."""
        backoff = min(self.window, 2.0 ** (self.pauses - 1)) * jitter
        self.paused_until = max(self.paused_until, now + max(after or 0.0, backoff))

    def accepted(self, sent: float) -> None:
        """A job sent after the last 429 succeeded: the provider keeps up with this pace, so
        add about one start a window and one in flight a round, up to what is declared."""
        if sent < self.last_429:
            return
        self.pauses = 0
        if self.pace_rpm is not None:
            self.pace_rpm += 1.0 / self.pace_rpm
            if self.rpm is not None:
                self.pace_rpm = min(self.pace_rpm, float(self.rpm))
        if self.pace_concurrency is not None:
            self.pace_concurrency += 1.0 / self.pace_concurrency
            self.pace_concurrency = min(self.pace_concurrency, float(self.concurrency))

    def pace(self) -> str:
        """The pace in words, e.g. "at most 5 a minute, 2 at a time"."""
        rpm = self.rpm_limit()
        rate = f"at most {rpm} {self.per()}" if rpm is not None else "without a rate limit"
        return f"{rate}, {self.concurrency_limit()} at a time"

    def per(self) -> str:
        return "a minute" if self.window == 60.0 else f"per {self.window:g} s"

    def affordable(self, cost: float) -> bool:
        if self.max_cost_usd is None:
            return True
        return self.committed_usd + cost <= self.max_cost_usd + 1e-9


class Clock(Protocol):
    def now(self) -> float: ...


class Jobs(Protocol):
    """Runs nodes; completions come back one at a time through wait()."""

    def start(self, node_id: str) -> None: ...

    def wait(self, timeout: float | None) -> tuple[str, str | Retry | Released | None] | None:
        """(node id, None on success, an error message, Retry, or Released before the final
        answer) for one job; None after timeout."""
        ...


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


Report = Callable[[str, str, str], None]  # (event, node id or pool for "throttled", detail)


@dataclass
class Task:
    id: str
    pool: str
    deps: list[str]  # only the deps that are themselves tasks in this run
    cost_usd: float = 0.0


def schedule(
    tasks: list[Task],
    pools: dict[str, Pool],
    jobs: Jobs,
    clock: Clock,
    *,
    fresh: Callable[[str], bool] = lambda _: False,
    keep_going: bool = False,
    report: Report = lambda *_: None,
    jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
    stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run tasks (given in topological order) respecting deps and pools. Once stop() is
    true (Ctrl-C; `jobs.wait` then returns early) nothing more starts; what runs is reaped."""
    out = Outcome()
    by_id = {t.id: t for t in tasks}
    rank = {t.id: i for i, t in enumerate(tasks)}
    missing = {t.id: len(t.deps) for t in tasks}
    dependents: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for dep in t.deps:
            dependents[dep].append(t.id)
    ready: list[int] = [rank[t.id] for t in tasks if not t.deps]
    heapq.heapify(ready)
    running = 0
    stopping = False
    released: set[str] = set()
    sent_at: dict[str, float] = {}  # when each running job started
    waited: dict[str, float] = {}  # seconds each rate-limited node has waited to send
    held_since: dict[str, float] = {}  # rate-limited nodes the pool's rate holds back now
    throttled: set[str] = set()  # pools whose new pace was said
    looked: set[str] = set()  # tasks `fresh` found not cached

    def rate_held(node_id: str, now: float, held: bool) -> None:
        """Count a 429'd node's time held back by its pool's rate, not behind full slots."""
        if node_id not in waited:
            return
        if held:
            held_since.setdefault(node_id, now)
        elif node_id in held_since:
            waited[node_id] += now - held_since.pop(node_id)

    def skip_dependents(node_id: str, why: str) -> None:
        stack = list(dependents[node_id])
        while stack:
            nid = stack.pop()
            if nid not in out.skipped:
                out.skipped[nid] = why
                report("skipped", nid, why)
                stack.extend(dependents[nid])

    def finished(node_id: str) -> None:
        for nid in dependents[node_id]:
            missing[nid] -= 1
            if missing[nid] == 0 and nid not in out.skipped:
                heapq.heappush(ready, rank[nid])

    while True:
        wake: float | None = None
        held: list[int] = []
        stopping = stopping or stop()
        while ready and not stopping:
            idx = heapq.heappop(ready)
            task = tasks[idx]
            # Asked once per task, not each time a full pool holds it back: making the node
            # looks again, under its lock. (Asking every time cost 3 ms a shot at 150 shots.)
            if task.id not in looked and fresh(task.id):
                out.cached.append(task.id)
                report("cached", task.id, "")
                finished(task.id)
                continue
            looked.add(task.id)
            pool = pools[task.pool]
            now = clock.now()
            if pool.running >= pool.concurrency_limit():
                rate_held(task.id, now, False)
                held.append(idx)
                continue
            wait = pool.rate_wait(now)
            rate_held(task.id, now, wait > 0)
            if wait > 0:
                wake = wait if wake is None else min(wake, wait)
                held.append(idx)
                continue
            if not pool.affordable(task.cost_usd):
                why = (
                    f"the {pool.name} budget max_cost_usd = {pool.max_cost_usd:g} would be crossed"
                )
                out.skipped[task.id] = why
                report("skipped", task.id, why)
                skip_dependents(task.id, f"{task.id} was not rendered")
                continue
            pool.running += 1
            pool.starts.append(now)
            sent_at[task.id] = now
            pool.committed_usd += task.cost_usd
            running += 1
            report("start", task.id, "")
            jobs.start(task.id)
        for idx in held:
            heapq.heappush(ready, idx)
        if running == 0 and (stopping or not ready):
            break
        result = jobs.wait(wake)
        if result is None:
            continue
        node_id, error = result
        task = by_id[node_id]
        pool = pools[task.pool]
        if isinstance(error, Released):
            # The provider finished the job: its slot is free while we download and verify.
            pool.running -= 1
            released.add(node_id)
            continue
        if node_id not in released:
            pool.running -= 1
        running -= 1
        released.discard(node_id)  # a node sent again takes a slot again
        if isinstance(error, Retry) and not error.limited:
            # Its first create was paid (its content expired); the next one is sent by the
            # pool like any create, so concurrency, rpm and budget hold.
            report("retry", node_id, error.reason)
            heapq.heappush(ready, rank[node_id])
            continue
        if isinstance(error, Retry):
            # A 429 created nothing and cost nothing: the node waits for a slower pace.
            pool.committed_usd -= task.cost_usd
            now = clock.now()
            if pool.refused(now, sent_at[node_id], error.after, jitter()) and (
                pool.name not in throttled
            ):
                throttled.add(pool.name)
                report("throttled", pool.name, _throttled(pool))
            if waited.setdefault(node_id, 0.0) <= pool.give_up_after:
                report("retry", node_id, error.reason)
                heapq.heappush(ready, rank[node_id])
                continue
            out.failed[node_id] = _given_up(pool, waited[node_id], error.reason)
            report("failed", node_id, out.failed[node_id])
            skip_dependents(node_id, f"{node_id} failed")
            stopping = stopping or not keep_going
            continue
        if error is None:
            pool.accepted(sent_at[node_id])
            out.done.append(node_id)
            report("done", node_id, "")
            finished(node_id)
        else:
            if node_id not in released:  # a job the provider finished was paid for
                pool.committed_usd -= task.cost_usd
            out.failed[node_id] = error
            report("failed", node_id, error)
            skip_dependents(node_id, f"{node_id} failed")
            stopping = stopping or not keep_going
    if stopping:
        for idx in ready:
            nid = tasks[idx].id
            out.skipped.setdefault(nid, "stopped after a failure (use --keep-going)")
    for t in tasks:
        done = t.id in out.done or t.id in out.cached or t.id in out.failed
        if not done and t.id not in out.skipped:
            out.skipped[t.id] = "stopped after a failure (use --keep-going)"
    return out


def _throttled(pool: Pool) -> str:
    if pool.rpm is None:
        fix = f"declare `rpm` in [limits.{pool.name}] to avoid this"
    else:
        fix = f"lower `rpm` in [limits.{pool.name}] to avoid this"
    return f"{pool.name} is rate-limiting creates (HTTP 429): now sending {pool.pace()}; {fix}"


def _given_up(pool: Pool, waited: float, reason: str) -> str:
    rpm = pool.rpm_limit() or max(1, len(pool.starts) // 2)  # the pace it learned
    return (
        f"{pool.name} kept rate-limiting creates (HTTP 429) for {waited:.0f} s of waiting to "
        f"send (give_up_after = {pool.give_up_after:g}): {reason}; it accepted about {rpm} "
        f"{pool.per()}: declare `rpm = {rpm}` in [limits.{pool.name}] and run again"
    )
