"""`runner plan`: what would render, why, and what it costs, read by a person before paying.

Like `terraform plan`: one line per node that renders (backend, model, seconds, cost, why), a
total per backend and for the run, the film's spend so far from film.lock and what is left of
`[film] budget_usd`. `--diff` shows, per changed shot, the recorded request against the new one.
`--shard I/N` plans only shard I's nodes and shows how the film splits over N CI jobs;
`--target` only what `render --target` would make.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from runner.errors import shown
from runner.film import shard
from runner.film.explain import FIELD_CHANGED, describe_all, show
from runner.film.graph import Node
from runner.film.plan import CACHED, Decision, Plan
from runner.run.project import Project

QUIET = frozenset({"prompt", "take", "backend", "version"})  # not shown as a parameter change


def cmd_plan(project: Project, args: argparse.Namespace) -> int:
    plan = project.plan()
    shares: list[shard.Share] = []
    if args.shard:
        index, count = shard.parse(args.shard)
        shares = shard.split(project.graph, count)
        mine = set(shares[index - 1].nodes)
        plan = Plan({nid: d for nid, d in plan.decisions.items() if nid in mine})
    if args.target:
        wanted = project.graph.upstream(project.graph.targets(args.target))
        plan = Plan({nid: d for nid, d in plan.decisions.items() if nid in wanted})
    # A pull request's CI job plans without secrets: say what render will need, never fail.
    for name, problem in project.credential_problems([d.id for d in plan.to_render]).items():
        print(f"runner: warning: {name}: {shown(problem)}; `render` will need it", file=sys.stderr)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    # User text (ids, prompts, reasons) is shown, never obeyed: no escape sequence gets through.
    print(shown("\n".join(text_plan(project, plan))))
    if shares:
        print("\n" + shown("\n".join(shard_table(project, shares, index))))
    if args.diff:
        for lines in (diff(project, d) for d in plan.to_render):
            if lines:
                print("\n" + shown("\n".join(lines)))
    return 0


def text_plan(project: Project, plan: Plan) -> list[str]:
    """One line per node that renders, then totals, the spend so far and the budget."""
    rows: list[tuple[str, ...]] = []
    totals: dict[str, list[float]] = {}  # backend -> [nodes, seconds, cost]
    for d in plan.to_render:
        node = project.graph.nodes[d.id]
        shot = node.shot or {}
        seconds = shot.get("seconds")
        why = "; ".join(describe_all(d.causes, text=True))
        rows.append(
            (
                d.status,
                d.id,
                node.pool,
                str(shot.get("model") or _what(node)),
                f"{seconds:g}s" if seconds is not None else "",
                f"${d.cost_usd:.2f}",
                why,
            )
        )
        total = totals.setdefault(node.pool, [0, 0.0, 0.0])
        total[0] += 1
        total[1] += seconds or 0.0
        total[2] += d.cost_usd
    lines = _columns(rows)
    if totals:
        lines.append("")
    for pool, (count, seconds, cost) in sorted(totals.items()):
        length = f"{seconds:g} s" if seconds else ""
        lines.append(f"  {pool:8} {int(count):4} to render {length:>8}  ${cost:.2f}")
    cached = sum(1 for d in plan.decisions.values() if d.status == CACHED)
    lines.append(
        f"{len(plan.to_render)} to render, {cached} cached, "
        f"estimated cost ${plan.estimated_cost_usd:.2f}"
    )
    spent = project.lock.spent_usd()
    money = f"spent so far on this film: ${spent:.2f} (film.lock)"
    budget = project.graph.budget_usd
    if budget is not None:
        left = budget - spent
        after = left - plan.estimated_cost_usd
        money += f"; budget ${budget:.2f}: ${left:.2f} left, ${after:.2f} after this plan"
        if after < 0:
            money += " (OVER BUDGET)"
    lines.append(money)
    return lines


def _what(node: Node) -> str:
    """What a layer over the cut does, in the plan's model column: a burn re-encodes the
    picture, a mux copies it."""
    kind = node.recipe.get("kind")
    if kind == "mux":
        burn = node.recipe.get("subtitles") == "burn"
        return "mux, subtitles burned in: video re-encoded" if burn else "mux: video copied"
    return {"music": "music stem", "mix": "audio mix", "subtitles": "cues", "picture": "cut"}.get(
        str(kind), ""
    )


def shard_table(project: Project, shares: list[shard.Share], index: int) -> list[str]:
    """Each shard's estimated provider seconds and cost, then its chains' nodes; a film whose
    work one chain holds says it cannot be balanced (a chain never spans two shards)."""
    count = len(shares)
    lines = [f"shard {index}/{count} of this film; the split (chains stay whole):"]
    for share in shares:
        mark = ">" if share.index == index else " "
        lines.append(
            f"{mark} {share.index}/{count}  {len(share.nodes):4} nodes  "
            f"{share.seconds:8g} s  ${share.cost_usd:.2f}"
        )
        for chain in share.chains:
            lines.append(f"      {', '.join(chain.nodes)}")
    spread = shard.spread(shares)
    if spread > 1.2:
        every = [c for s in shares for c in s.chains]
        longest = min(every, key=lambda c: (-c.seconds, c.name))
        total = sum(c.seconds for c in every)
        lines.append(
            f"cannot be balanced over {count} shards: the longest chain ({len(longest.nodes)} "
            f"nodes, {longest.nodes[0]} first) holds {longest.seconds:g} s of {total:g} s, "
            f"and {len(every)} chains in all"
        )
    return lines


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in (4, 5) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        out.append(("  ".join(cells) + "  " + row[-1]).rstrip())
    return out


def diff(project: Project, d: Decision) -> list[str]:
    """The recorded request against the new one, for a node whose fields changed: a unified
    diff of the prompt (with the changed words) and the changed parameters. The recorded
    request comes from its action record (this cache, else the team's); without one, the
    names of the fields film.lock's digests say changed."""
    changed = [c for c in d.causes if c.code == FIELD_CHANGED]
    if not changed:
        return []
    node = project.graph.nodes[d.id]
    now: dict[str, Any] = node.recipe.get("request", node.recipe)
    old = _recorded_request(project, d.id)
    lines = [f"--- {d.id} (recorded)", f"+++ {d.id} (now)"]
    if old is None:
        names = ", ".join(str(c.field) for c in changed)
        lines.append(
            f"  {names} changed: film.lock keeps only digests, and no cache here or on the "
            "team's remote has the recorded request"
        )
        return lines
    before, after = str(old.get("prompt", "")), str(now.get("prompt", ""))
    if before != after:
        lines += prompt_diff(before, after)
    for name in sorted((set(old) | set(now)) - QUIET):
        if old.get(name) != now.get(name):
            lines.append(f"  {name}: {show(old.get(name))} -> {show(now.get(name))}")
    return lines


def prompt_diff(before: str, after: str) -> list[str]:
    """A unified diff of the prompt's lines; each replaced line is followed by its words
    (`[-removed-]{+added+}`, like `git diff --word-diff`)."""
    old, new = before.splitlines(), after.splitlines()
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for group in matcher.get_grouped_opcodes(1):
        a0, a1, b0, b1 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{a0 + 1},{a1 - a0} +{b0 + 1},{b1 - b0} @@")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [f" {line}" for line in old[i1:i2]]
                continue
            out += [f"-{line}" for line in old[i1:i2]]
            out += [f"+{line}" for line in new[j1:j2]]
            if tag == "replace" and i2 - i1 == j2 - j1:
                for a, b in zip(old[i1:i2], new[j1:j2], strict=True):
                    out.append(f"~{word_diff(a, b)}")
    return out


def word_diff(before: str, after: str) -> str:
    old, new = before.split(" "), after.split(" ")
    parts: list[str] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            parts.append(" ".join(old[i1:i2]))
            continue
        if i2 > i1:
            parts.append(f"[-{' '.join(old[i1:i2])}-]")
        if j2 > j1:
            parts.append(f"{{+{' '.join(new[j1:j2])}+}}")
    return " ".join(parts)


def _recorded_request(project: Project, node_id: str) -> dict[str, Any] | None:
    """The request the node was last rendered with: the action record of the key film.lock
    names (this cache, else the team's), else this machine's last recipe."""
    entry = project.lock.entries.get(node_id)
    recipe: Any = None
    if entry is not None:
        record = project.outputs.record(entry.key)
        recipe = (record or {}).get("recipe")
    if recipe is None:
        recipe = project.recipes().get(node_id)
    if not isinstance(recipe, dict):
        return None
    request = recipe.get("request", recipe)
    return request if isinstance(request, dict) else None
