"""Which nodes render, and why (ninja's `-d explain`, doit's status reasons).

Pure: the cache and the asset files are reached through the two callables passed in, so the
planner is tested with dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.digest import key_of
from runner.film.explain import (
    LOCKED_ELSEWHERE,
    NEVER_RENDERED,
    OUTPUT_MISSING,
    RECIPE_CHANGED,
    REFETCH_FREE,
    RERENDER,
    WAITS_FOR,
    Before,
    Cause,
    changes,
    describe_all,
    fingerprint,
)
from runner.film.graph import Graph, Node

CACHED, RENDER, BLOCKED = "cached", "render", "blocked"


@dataclass
class Decision:
    id: str
    kind: str
    status: str  # "cached" | "render" | "blocked"
    causes: list[Cause] = field(default_factory=list)
    key: str | None = None  # None while an input is still to be rendered
    output: str | None = None  # the output digest, when cached
    recipe: dict[str, Any] | None = None
    cost_usd: float = 0.0

    @property
    def reasons(self) -> list[str]:
        """The causes in words (made in one place: `explain.describe`)."""
        return describe_all(self.causes)


@dataclass
class Plan:
    decisions: dict[str, Decision]

    @property
    def to_render(self) -> list[Decision]:
        return [d for d in self.decisions.values() if d.status != CACHED]

    @property
    def estimated_cost_usd(self) -> float:
        return round(sum(d.cost_usd for d in self.to_render), 4)

    def to_json(self) -> dict[str, Any]:
        """The `runner plan --json` contract (documented in README.md; keep it stable)."""
        return {
            "version": 1,
            "nodes": [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "status": d.status,
                    "reasons": d.reasons,
                    "causes": [c.to_json() for c in d.causes],
                }
                for d in self.decisions.values()
            ],
            "to_render": len(self.to_render),
            "estimated_cost_usd": self.estimated_cost_usd,
        }


def input_digests(node: Node, digests: dict[str, str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {role: digests[dep] for role, dep in node.inputs.items()}
    if node.after:
        inputs["after"] = [digests[dep] for dep in node.after]
    return inputs


def full_recipe(node: Node, digests: dict[str, str]) -> dict[str, Any]:
    """The node's recipe with its inputs' content digests, as recorded and explained."""
    return {**node.recipe, "inputs": input_digests(node, digests)}


def node_key(node: Node, digests: dict[str, str]) -> str:
    """The node key: a hash over the recipe (hashed once, when compiled) and its inputs."""
    return key_of({"recipe": node.recipe_digest, "inputs": input_digests(node, digests)})


def make_plan(
    graph: Graph,
    *,
    lookup: Callable[[str, str], str | None],
    asset_digest: Callable[[Node], str],
    previous: Mapping[str, Before],
    force: frozenset[str] = frozenset(),
    refetchable: Callable[[Node, str], bool] = lambda node, key: False,
) -> Plan:
    """Decide every node: the one place that says cached / render / why. lookup(node id,
    key) gives the cached output digest or None; previous holds what each node was last
    made from (film.lock's fields, else this machine's history; read only to explain);
    refetchable(node, key) says a paid output no cache has can be downloaded again by its
    recorded job id (free)."""
    digests: dict[str, str] = {}
    decisions: dict[str, Decision] = {}
    for node in graph.nodes.values():
        if node.kind == "asset":
            digests[node.id] = asset_digest(node)
            decisions[node.id] = Decision(node.id, node.kind, CACHED, output=digests[node.id])
            continue
        waiting = [dep for dep in node.deps if dep not in digests]
        if waiting:
            causes = [Cause(WAITS_FOR, node=dep) for dep in waiting]
            causes += explain(node, node.recipe, previous.get(node.id), inputs=False)
            decisions[node.id] = Decision(
                node.id, node.kind, BLOCKED, causes, cost_usd=node.cost_usd
            )
            continue
        key = node_key(node, digests)
        output = None if node.id in force else lookup(node.id, key)
        if output is not None:
            digests[node.id] = output
            decisions[node.id] = Decision(node.id, node.kind, CACHED, key=key, output=output)
            continue
        recipe = full_recipe(node, digests)
        before = previous.get(node.id)  # read only to explain: a no-op plan never does
        locked = before is not None and before.key == key
        if node.id in force:
            causes, cost = [Cause(RERENDER)], node.cost_usd
        elif refetchable(node, key):
            missing = Cause(LOCKED_ELSEWHERE if locked else OUTPUT_MISSING)
            causes, cost = [missing, Cause(REFETCH_FREE, backend=node.pool)], 0.0
        elif locked:
            causes, cost = [Cause(LOCKED_ELSEWHERE)], node.cost_usd
        else:
            causes, cost = explain(node, recipe, before), node.cost_usd
        decisions[node.id] = Decision(
            node.id, node.kind, RENDER, causes, key, recipe=recipe, cost_usd=cost
        )
    return Plan(decisions)


def explain(
    node: Node, recipe: dict[str, Any], before: Before | None, *, inputs: bool = True
) -> list[Cause]:
    """Why a recipe differs from what the node was last made from."""
    if before is None:
        return [Cause(NEVER_RENDERED)]
    if before.fields is None:
        return [Cause(RECIPE_CHANGED)] if inputs else []
    causes = changes(node, fingerprint(recipe, node), before.fields, inputs=inputs)
    if not causes and inputs:
        causes.append(Cause(OUTPUT_MISSING))
    return causes
