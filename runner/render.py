"""`runner render`: plan, schedule what is stale, remember what was built, publish the film."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.execute import NodeJobs
from runner.plan import CACHED, Plan, full_recipe
from runner.project import Project
from runner.ratelimit import SendWindow
from runner.scheduler import Outcome, Pool, Report, Task, schedule

# In-flight jobs per pool when [limits.<backend>] does not say: local work is CPU-bound.
LOCAL_CONCURRENCY = os.cpu_count() or 2
HOSTED_CONCURRENCY = 4
LOCAL_POOLS = {"local", "previz"}


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


@dataclass
class RenderResult:
    plan: Plan
    outcome: Outcome
    film: Path | None
    provenance: Path | None
    spend_usd: float


def pools_for(project: Project, names: set[str]) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    for name in sorted(names):
        limits = project.graph.limits.get(name, {})
        default = LOCAL_CONCURRENCY if name in LOCAL_POOLS else HOSTED_CONCURRENCY
        pools[name] = Pool(
            name,
            concurrency=limits.get("concurrency", default),
            rpm=limits.get("rpm"),
            max_cost_usd=limits.get("max_cost_usd"),
        )
    return pools


def render(
    project: Project,
    *,
    keep_going: bool,
    report: Report,
    rerender_expired: bool = False,
    resend_unconfirmed: bool = False,
) -> RenderResult:
    graph = project.graph
    plan = project.plan()
    todo = [d.id for d in plan.decisions.values() if d.status != CACHED]
    todo_set = set(todo)
    tasks = [
        Task(
            nid,
            graph.nodes[nid].pool,
            [dep for dep in graph.nodes[nid].deps if dep in todo_set],
            graph.nodes[nid].cost_usd,
        )
        for nid in todo
    ]
    report("plan", "", str(len(tasks)))
    pools = pools_for(project, {t.pool for t in tasks})
    jobs = NodeJobs(
        graph,
        plan,
        project.store,
        workers=sum(p.concurrency for p in pools.values()),
        rerender_expired=rerender_expired,
        resend_unconfirmed=resend_unconfirmed,
        gates={name: SendWindow(pool.rpm) for name, pool in pools.items()},
    )
    # Jobs a killed run sent go first: they are paid for and already use provider slots.
    sent = {nid for nid in todo if jobs.journaled(nid)}
    tasks.sort(key=lambda t: t.id not in sent)
    try:
        outcome = schedule(
            tasks,
            pools,
            jobs,
            MonotonicClock(),
            fresh=jobs.fresh,
            keep_going=keep_going,
            report=report,
        )
    finally:
        jobs.close()

    _remember(project, plan, jobs, outcome)
    film = prov = None
    if "edit" in jobs.digests:
        from runner import provenance

        film, prov = provenance.publish(project, jobs.digests)
    spend = sum(
        float(r.get("cost_usd") or 0.0) for nid, r in jobs.records.items() if nid in outcome.done
    )
    return RenderResult(plan, outcome, film, prov, round(spend, 4))


def _remember(project: Project, plan: Plan, jobs: NodeJobs, outcome: Outcome) -> None:
    """Update the build log (key and output per node) and the recipes that explain it."""
    state = project.state()
    before = json.dumps(state, sort_keys=True)
    built, failed = state["built"], state["failed"]
    recipes = project.recipes()
    changed: dict[str, dict[str, Any]] = {}
    for d in plan.decisions.values():
        if d.status == CACHED and d.key is not None:
            if built.get(d.id, {}).get("key") != d.key:
                changed[d.id] = full_recipe(project.graph.nodes[d.id], jobs.digests)
            built[d.id] = {"key": d.key, "output": d.output}
            failed.pop(d.id, None)
    for nid in [*outcome.done, *outcome.cached]:
        record = jobs.records[nid]
        built[nid] = {"key": record["key"], "output": record["output"]}
        changed[nid] = jobs.recipes[nid]
        failed.pop(nid, None)
    failed.update(outcome.failed)
    if json.dumps(state, sort_keys=True) != before:
        project.save_state(state)
    recipes.save(changed)
