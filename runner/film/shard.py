"""`--shard I/N`: a deterministic share of a film's renders, for CI matrix jobs.

Shots that feed each other (needs, frame chains, remixes) form a group, and a group goes to one
shard whole, so no shard waits on another. Groups are dealt by a hash of their first node id:
the same film splits the same way on every machine, and every node is in exactly one shard.
"""

from __future__ import annotations

import hashlib

from runner.errors import UserError
from runner.film.graph import Graph

SHARDED_KINDS = ("shot", "frame")  # the edit is assembled by the final, unsharded render


def parse(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4), checked."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 1 <= int(index) <= int(count):
        raise UserError(f"--shard {text}: write I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(index), int(count)


def members(graph: Graph, index: int, count: int) -> set[str]:
    """The node ids shard `index` (1-based) of `count` renders."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    nodes = [n for n in graph.nodes.values() if n.kind in SHARDED_KINDS]
    for node in nodes:
        parent[node.id] = node.id
    for node in nodes:
        for dep in node.deps:
            if dep in parent:
                a, b = root(node.id), root(dep)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the smaller id names the group
    return {
        node.id
        for node in nodes
        if int(hashlib.sha256(root(node.id).encode()).hexdigest()[:8], 16) % count == index - 1
    }
