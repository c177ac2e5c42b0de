"""Which nodes render, and why (ninja's `-d explain`, doit's status reasons).

Pure: the cache and the asset files are reached through the two callables passed in, so the
planner is tested with dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.digest import key_of
from runner.film.graph import Graph, Node

CACHED, RENDER, BLOCKED = "cached", "render", "blocked"


@dataclass
class Decision:
    id: str
    kind: str
    status: str  # "cached" | "render" | "blocked"
    reasons: list[str] = field(default_factory=list)
    key: str | None = None  # None while an input is still to be rendered
    output: str | None = None  # the output digest, when cached
    recipe: dict[str, Any] | None = None
    cost_usd: float = 0.0


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
                {"id": d.id, "kind": d.kind, "status": d.status, "reasons": d.reasons}
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
    previous: Mapping[str, dict[str, Any]],
    force: frozenset[str] = frozenset(),
    refetchable: Callable[[Node, str], bool] = lambda node, key: False,
) -> Plan:
    """Decide every node. lookup(node id, key) gives the cached output digest or None;
    previous holds the recipes last built per node id (read only to explain);
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
            reasons = [f"waits for {dep}" for dep in waiting]
            reasons += explain(node.recipe, previous.get(node.id), inputs=False)
            decisions[node.id] = Decision(
                node.id, node.kind, BLOCKED, reasons, cost_usd=node.cost_usd
            )
            continue
        key = node_key(node, digests)
        output = None if node.id in force else lookup(node.id, key)
        if output is not None:
            digests[node.id] = output
            decisions[node.id] = Decision(node.id, node.kind, CACHED, key=key, output=output)
        elif node.id not in force and refetchable(node, key):
            reasons = [f"output in no cache: fetched again from {node.pool} by job id, at no cost"]
            decisions[node.id] = Decision(node.id, node.kind, RENDER, reasons, key)
        else:
            recipe = full_recipe(node, digests)
            if node.id in force:
                reasons = ["rendered again on request (--rerender)"]
            else:
                reasons = explain(recipe, previous.get(node.id), node=node)
            decisions[node.id] = Decision(
                node.id, node.kind, RENDER, reasons, key, recipe=recipe, cost_usd=node.cost_usd
            )
    return Plan(decisions)


def explain(
    recipe: dict[str, Any],
    before: dict[str, Any] | None,
    *,
    node: Node | None = None,
    inputs: bool = True,
) -> list[str]:
    """Why a recipe differs from the one last built for the same node."""
    if before is None:
        return ["never rendered"]
    reasons: list[str] = []
    if recipe.get("v") != before.get("v"):
        reasons.append("recipe version changed")
    if recipe.get("backend") != before.get("backend"):
        reasons.append("backend changed")
    now_req, old_req = recipe.get("request", {}), before.get("request", {})
    for name in sorted(set(now_req) | set(old_req)):
        if now_req.get(name) != old_req.get(name):
            reasons.append(f"{name} changed")
    for name in sorted(set(recipe) - {"v", "backend", "request", "inputs", "kind"}):
        if recipe.get(name) != before.get(name):
            reasons.append(f"{name} changed")
    if inputs:
        now_in, old_in = recipe.get("inputs", {}), before.get("inputs", {})
        for role in sorted(set(now_in) | set(old_in)):
            if now_in.get(role) != old_in.get(role):
                reasons.append(f"upstream {_input_name(node, role)} changed")
    if not reasons and inputs:
        reasons.append("output missing from cache")
    return reasons


def _input_name(node: Node | None, role: str) -> str:
    if node is None:
        return role
    if role == "after":
        return ", ".join(node.after)
    return node.inputs.get(role, role)
