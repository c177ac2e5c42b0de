"""One scheduling loop: start as much as the pools allow, reap one finished job, repeat.

The shape of ninja's `Builder::Build`. Pools are per backend: `concurrency` jobs in flight, no
more than `rpm` starts in any 60-second window, and a spend cap counting in-flight jobs as
spent. Time and jobs come through the Clock and Jobs protocols, so the loop is tested with a
fake clock and a fake backend.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW = 60.0  # seconds: the window `rpm` counts in
MAX_RETRIES = 20  # rate-limit pauses of one node before it fails


@dataclass
class Retry:
    """A job's answer meaning "rate limited, try again": pause the whole pool."""

    reason: str
    after: float | None = None  # the provider's Retry-After; None: exponential backoff


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
    running: int = 0
    committed_usd: float = 0.0  # spent plus in flight
    starts: deque[float] = field(default_factory=deque)
    paused_until: float = 0.0  # a 429 pauses every start in the pool until then
    pauses: int = 0  # rate-limit pauses in a row, for the backoff

    def rate_wait(self, now: float) -> float:
        """Seconds until another start is allowed (0: now)."""
        if now < self.paused_until:
            return self.paused_until - now
        while self.starts and self.starts[0] <= now - WINDOW:
            self.starts.popleft()
        if self.rpm is None or len(self.starts) < self.rpm:
            return 0.0
        return self.starts[0] + WINDOW - now

    def pause(self, now: float, after: float | None, jitter: float) -> None:
        """Stop starting jobs for Retry-After seconds, else back off 1, 2, 4 ... 60 s."""
        self.pauses += 1
        delay = after if after is not None else min(60.0, 2.0 ** (self.pauses - 1)) * jitter
        self.paused_until = max(self.paused_until, now + delay)

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


Report = Callable[[str, str, str], None]  # (event, node id, detail)


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
    retries: dict[str, int] = {}
    released: set[str] = set()

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
            if fresh(task.id):
                out.cached.append(task.id)
                report("cached", task.id, "")
                finished(task.id)
                continue
            pool = pools[task.pool]
            if pool.running >= pool.concurrency:
                held.append(idx)
                continue
            wait = pool.rate_wait(clock.now())
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
            pool.starts.append(clock.now())
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
        if isinstance(error, Retry):
            pool.committed_usd -= task.cost_usd
            retries[node_id] = retries.get(node_id, 0) + 1
            if retries[node_id] <= MAX_RETRIES:
                pool.pause(clock.now(), error.after, jitter())
                report("retry", node_id, error.reason)
                heapq.heappush(ready, rank[node_id])
                continue
            error = f"rate limited {MAX_RETRIES} times: {error.reason}"
        if error is None:
            pool.pauses = 0
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
