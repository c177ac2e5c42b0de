"""`runner render`: plan, schedule what is stale, remember what was built, publish the film."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.backends.base import JobStatus
from runner.cache.lock import Entry
from runner.errors import NodeFailed, UserError, shown
from runner.film import shard
from runner.film.explain import fingerprint
from runner.film.graph import Node
from runner.film.plan import CACHED, Plan, full_recipe
from runner.run.claim import claims_from_config
from runner.run.credentials import SigningKey
from runner.run.execute import NodeJobs
from runner.run.interrupt import Interrupts
from runner.run.project import Project
from runner.run.ratelimit import SendWindow
from runner.run.scheduler import GIVE_UP_AFTER, WINDOW, Outcome, Pool, Report, Task, schedule

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
    interrupted: bool = False  # Ctrl-C: nothing new started; paid jobs were finished
    signed: Path | None = None  # out/<stem>.signed.mp4: the film with content credentials
    notes: list[str] = field(default_factory=list)  # warnings, each said once


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
            window=rate_window(),
            give_up_after=limits.get("give_up_after", GIVE_UP_AFTER),
        )
    return pools


def rate_window() -> float:
    """Seconds `rpm` counts in: a minute. A test knob shortens it so tests against a loopback
    provider with a short window do not wait real minutes."""
    try:
        seconds = float(os.environ.get("RUNNER_RATE_WINDOW_SECONDS", WINDOW))
    except ValueError:
        return WINDOW
    return seconds if 0 < seconds < float("inf") else WINDOW


def send_window(project: Project, pool: Pool) -> SendWindow:
    """The pool's gate on the wire; its send times live in the cache, shared across runs."""
    path = project.store.state_path(f"sends/{pool.name}")  # state/sends/<pool>.json
    return SendWindow(pool.rpm, pool.window, path=path)


@dataclass(frozen=True)
class Options:
    keep_going: bool = False
    rerender_expired: bool = False
    resend_unconfirmed: bool = False
    rerender: frozenset[str] = frozenset()  # node ids to render again on purpose
    shard: tuple[int, int] | None = None  # (I, N): render only shard I of N, no edit
    targets: frozenset[str] | None = None  # --target: only these nodes and what they need
    sign: bool = False  # --sign: sign the film, and fail before rendering without a key

    @property
    def publishes(self) -> bool:
        """Whether this render ends in the film (out/): not a shard, nor a --target that
        leaves the edit out."""
        return self.shard is None and (self.targets is None or "edit" in self.targets)


def render(
    project: Project,
    options: Options,
    report: Report,
    watch: Callable[[str, JobStatus], None] | None = None,
) -> RenderResult:
    """`watch` hears each hosted job's polls (its state and progress) from worker threads."""
    graph = project.graph
    plan = project.plan(options.rerender)
    todo = [d.id for d in plan.decisions.values() if d.status != CACHED]
    if options.shard is not None:
        share = shard.members(graph, *options.shard)
        todo = [nid for nid in todo if nid in share]
    if options.targets is not None:
        needed = graph.upstream(options.targets)
        todo = [nid for nid in todo if nid in needed]
    todo_set = set(todo) | _pull_needed(project, plan, set(todo), options.publishes)
    todo = [nid for nid in graph.nodes if nid in todo_set]
    tasks = [
        Task(
            nid,
            graph.nodes[nid].pool,
            [dep for dep in graph.nodes[nid].deps if dep in todo_set],
            _budget(plan, graph.nodes[nid]),
        )
        for nid in todo
    ]
    signing, notes = _signing_key(project, options)  # before anything renders or is paid
    problems = project.credential_problems([t.id for t in tasks])
    if problems:  # before the first create, once per backend, not once per node
        raise UserError("\n".join(f"{name}: {problem}" for name, problem in problems.items()))
    report("plan", "", str(len(tasks)))
    pools = pools_for(project, {t.pool for t in tasks})
    jobs = NodeJobs(
        graph,
        plan,
        project.store,
        workers=sum(p.concurrency for p in pools.values()),
        rerender_expired=options.rerender_expired,
        resend_unconfirmed=options.resend_unconfirmed,
        gates={name: send_window(project, pool) for name, pool in pools.items()},
        outputs=project.outputs,
        force=options.rerender,
        remote=project.remote,
        backends=project.backends,
        film_dir=project.film_dir,
        manifest=project.manifest_path,
        claims=claims_from_config(project.remote, project.tool_config(), os.environ),
        watch=watch,
    )
    project.store.sweep_tmp()  # working folders of killed runs
    jobs.tidy_journal()
    jobs.push_pending()
    # Jobs a killed run sent go first: they are paid for and already use provider slots.
    sent = {nid for nid in todo if jobs.journaled(nid)}
    if options.targets is not None:  # resumed only by a render that includes them
        notes += [
            f"{nid}: a create a previous run sent is journaled, outside --target; a render "
            f"that includes it resumes it without paying again"
            for nid in sorted(jobs.journal.nodes() & set(graph.nodes) - todo_set)
        ]
    tasks.sort(key=lambda t: t.id not in sent)
    locker = LockWriter(project, plan, jobs)
    with Interrupts(jobs.stop_sending, jobs.paid_in_flight) as interrupts:
        try:
            outcome = schedule(
                tasks,
                pools,
                jobs,
                MonotonicClock(),
                fresh=jobs.fresh,
                keep_going=options.keep_going,
                report=_money_events(locker.wrap(report), jobs, options.keep_going),
                stop=jobs.stopping.is_set,
            )
        finally:
            jobs.close()
        locker.finish(outcome)
        _pull_records(project, plan)
        _remember(project, plan, jobs, outcome)
        film = prov = signed = None
        if options.publishes and "edit" in jobs.digests and jobs.have("edit"):
            from runner.run import provenance

            try:
                film, prov = provenance.publish(project, jobs.digests)
            except NodeFailed as err:  # a corrupt edit, quarantined: the next render makes it
                outcome.failed["edit"] = str(err)
        if film is not None and prov is not None:
            try:
                signed = _signed(project, film, prov, jobs.digests, signing)
            except NodeFailed as err:  # out/<stem>.mp4 is written; its signed copy is not
                outcome.failed["edit"] = str(err)
    # What this run's accepted creates cost, downloaded yet or not; never what it adopted.
    spend = sum(jobs.spent.values())
    result = RenderResult(plan, outcome, film, prov, round(spend, 4), interrupts.interrupted)
    result.signed, result.notes = signed, notes
    return result


def _signing_key(project: Project, options: Options) -> tuple[SigningKey | None, list[str]]:
    """The key to sign the film with, read and checked before anything renders: None (with
    a warning for `[film] sign = true`) when none is configured; --sign without one is an
    error. A shard, or a --target without the edit, publishes no film: it needs no key."""
    if not options.publishes or not (options.sign or project.graph.sign):
        return None, []
    from runner.run import credentials
    from runner.run.project import find_root

    root = find_root(project.film_dir.resolve())
    key = credentials.configured(project.tool_config(), os.environ, root)
    if key is not None:
        return key, []
    if options.sign:
        raise UserError(f"--sign: no signing key is configured; {credentials.HOW}")
    return None, [
        f"{project.manifest_path}: [film] sign = true, but no signing key is configured: "
        f"the film is written unsigned ({credentials.HOW})"
    ]


def _signed(
    project: Project, film: Path, prov: Path, digests: dict[str, str], key: SigningKey | None
) -> Path | None:
    """out/<stem>.signed.mp4 for the published film; without a key, a signed file of an
    older cut is removed instead."""
    from runner.run import credentials

    state = project.store.state_path(project.film_id, ".signed")
    signed = project.out_dir / f"{project.stem}.signed.mp4"
    if key is None:
        credentials.withdraw(state, film, signed)
        return None
    graph = project.graph
    clips: dict[str, credentials.Clip] = {}
    for dep in graph.cut_clips():  # the cut's clips, in order, once each
        if dep in clips:
            continue
        if not project.outputs.have(digests[dep], verify=True):  # pulled from the remote
            raise NodeFailed(
                f"edit: cannot sign {film.name}: the clip of {dep} is in no cache; run "
                "`runner render` again to fetch or make it"
            )
        shot = graph.nodes[dep].shot or {}
        blob = project.store.blob(digests[dep])
        backend = graph.nodes[dep].pool if shot else None
        clips[dep] = credentials.Clip(dep, blob, digests[dep], backend, shot.get("model"))
    claim = credentials.provenance_claim(prov, digests["edit"])
    return credentials.publish(state, film, signed, key, graph.title, claim, list(clips.values()))


def _money_events(report: Report, jobs: NodeJobs, keep_going: bool) -> Report:
    """Say what this run paid per node ("paid"), and after a failure (without --keep-going)
    stop sending creates and say what is still being finished: jobs a provider accepted are
    paid for, and are downloaded and stored."""

    def on_event(event: str, node_id: str, detail: str) -> None:
        report(event, node_id, detail)
        if event in ("done", "failed") and jobs.spent.get(node_id):
            report("paid", node_id, f"{jobs.spent[node_id]:.4f}")  # what this run paid
        if event == "failed" and not keep_going and not jobs.stopping.is_set():
            jobs.stop_sending()
            paid = jobs.paid_in_flight()
            if paid:
                s = "s" if paid != 1 else ""
                report(
                    "stopping", node_id, f"finishing {paid} paid job{s} in flight, then stopping"
                )

    return on_event


def _budget(plan: Plan, node: Node) -> float:
    """What a node may cost: the plan's figure (0 for a free refetch); the node's full price
    when the plan found it cached but no cache could give its output."""
    decision = plan.decisions[node.id]
    return node.cost_usd if decision.status == CACHED else decision.cost_usd


class LockWriter:
    """Keeps film.lock up to date: after each rendered node (at most twice a second, and at
    once for a paid one), and once at the end for everything the run used."""

    def __init__(self, project: Project, plan: Plan, jobs: NodeJobs) -> None:
        self.project = project
        self.plan = plan
        self.jobs = jobs
        self.lock = project.lock
        self.written = 0.0
        self.dirty = False

    def wrap(self, report: Report) -> Report:
        def on_event(event: str, node_id: str, detail: str) -> None:
            if event in ("done", "cached"):
                self.put(node_id)
                paid = self.project.graph.nodes[node_id].cost_usd > 0
                if self.dirty and (paid or time.monotonic() - self.written > 0.5):
                    self.write()
            report(event, node_id, detail)

        return on_event

    def put(self, node_id: str) -> None:
        node = self.project.graph.nodes[node_id]
        record = self.jobs.records.get(node_id)
        if node.kind == "asset" or record is None:
            return
        shot = node.shot or {}
        recipe = self.jobs.recipes.get(node_id) or full_recipe(node, self.jobs.digests)
        entry = Entry(
            key=record["key"],
            output=record["output"],
            kind=node.kind,
            job_id=record.get("job_id"),
            backend=record.get("backend"),
            model=record.get("model"),
            seconds=shot.get("seconds"),
            cost_usd=record.get("cost_usd"),
            fields=fingerprint(recipe, node),
        )
        self.dirty |= self.lock.put(node_id, entry)

    def write(self) -> None:
        self.lock.write()
        self.written = time.monotonic()
        self.dirty = False

    def finish(self, outcome: Outcome) -> None:
        """Lock what the plan found cached too, and forget nodes the film no longer has."""
        for d in self.plan.decisions.values():
            if d.status != CACHED or d.key is None or d.kind == "asset":
                continue
            entry = self.lock.entries.get(d.id)
            if self.lock.output_for(d.id, d.key) is None or (entry and entry.fields is None):
                record = self.project.outputs.full_record(d.id, d.key, d.kind)
                self.jobs.records.setdefault(d.id, {**record, "key": d.key, "output": d.output})
                self.put(d.id)
        nodes = {n.id for n in self.project.graph.nodes.values() if n.kind != "asset"}
        self.dirty |= self.lock.keep_only(nodes)
        missing = not self.lock.path.exists() and self.lock.entries
        if self.dirty or missing or self.lock.outdated:
            self.write()


def _pull_needed(project: Project, plan: Plan, todo: set[str], publish: bool) -> set[str]:
    """Pull the cached outputs this run needs (inputs of what renders, and the edit to
    publish) before it starts; returns cached nodes whose output no cache could give (a
    refused corrupt blob, say): they are made again, or fetched again by job id."""
    graph, outputs, redo = project.graph, project.outputs, set[str]()
    wanted = {dep for nid in todo for dep in graph.nodes[nid].deps}
    read = set(wanted)  # inputs of local work: their bytes are hashed before use
    if publish:
        wanted.add("edit")  # a no-op render reads nothing: publishing checks what it copies
        if "subtitles" in graph.nodes:
            wanted.add("subtitles")  # published as out/<film>.srt and .vtt
    while wanted:
        nid = wanted.pop()
        d = plan.decisions[nid]
        if d.status != CACHED or d.kind == "asset" or d.output is None or nid in redo:
            continue
        if outputs.have(d.output, verify=nid in read):
            continue
        redo.add(nid)
        wanted |= set(graph.nodes[nid].deps)
        read |= set(graph.nodes[nid].deps)
    return redo


def _pull_records(project: Project, plan: Plan) -> None:
    """Records of nodes the team made (job ids, costs, times) for provenance: a teammate's
    record then matches the one who rendered. Nodes in the build log were recorded here."""
    if project.remote is None:
        return
    logged = {e["key"] for e in project.state()["built"].values()}
    for d in plan.decisions.values():
        cached = d.status == CACHED and d.key is not None and d.key not in logged
        if cached and d.key is not None and project.store.read_record(d.key) is None:
            project.remote.pull_record(d.key, project.store)


def _last_run(project: Project, jobs: NodeJobs, outcome: Outcome) -> dict[str, Any]:
    """What this run changed, for `runner review` after it: when, what it rendered, what
    failed (the messages are in "failed"), what it did not reach, and what it spent."""
    by_backend: dict[str, float] = {}
    for nid, usd in jobs.spent.items():
        pool = project.graph.nodes[nid].pool
        by_backend[pool] = round(by_backend.get(pool, 0.0) + usd, 4)
    return {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "rendered": sorted(outcome.done),
        "failed": sorted(outcome.failed),
        "skipped": sorted(outcome.skipped),
        "spend_usd": round(sum(jobs.spent.values()), 4),
        "spend_by_backend": by_backend,
    }


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
    failed.update({nid: shown(why) for nid, why in outcome.failed.items()})  # no URL secrets
    if outcome.done or outcome.failed or outcome.skipped:  # a no-op run keeps the last one's
        state["last_run"] = _last_run(project, jobs, outcome)
    if json.dumps(state, sort_keys=True) != before:
        project.save_state(state)
    recipes.save(changed)
