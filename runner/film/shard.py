"""`--shard I/N`: a deterministic, balanced share of a film's renders, for CI matrix jobs.

Shots that feed each other (needs, frame chains, remixes) form a chain, and a chain goes to one
shard whole, so no shard waits on another. Chains are dealt by estimated work (provider seconds),
longest first onto the least loaded shard (LPT scheduling), ties broken by ids: the same film
splits the same way on every machine, and every node is in exactly one shard. The split depends
only on the film, never on what is cached, so shards started at different times agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import UserError
from runner.film.graph import Graph, Node

SHARDED_KINDS = ("shot", "frame")  # the edit is assembled by the final, unsharded render


@dataclass(frozen=True)
class Chain:
    """Nodes that must render on one machine, and the work they hold."""

    nodes: tuple[str, ...]  # in the graph's order; nodes[0] is not necessarily the smallest id
    seconds: float
    cost_usd: float

    @property
    def name(self) -> str:
        return min(self.nodes)


@dataclass(frozen=True)
class Share:
    """What shard `index` (1-based) of a split renders."""

    index: int
    chains: tuple[Chain, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for chain in self.chains for n in chain.nodes)

    @property
    def seconds(self) -> float:
        return sum(chain.seconds for chain in self.chains)

    @property
    def cost_usd(self) -> float:
        return round(sum(chain.cost_usd for chain in self.chains), 4)


def parse(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4), checked."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 1 <= int(index) <= int(count):
        raise UserError(f"--shard {text}: write I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(index), int(count)


def work(node: Node) -> float:
    """A node's estimated provider seconds: a shot's length; frames are local and cheap."""
    return float((node.shot or {}).get("seconds") or 0.0)


def chains(graph: Graph) -> list[Chain]:
    """The film's renderable nodes grouped into chains (connected through their deps)."""
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
                    parent[max(a, b)] = min(a, b)
    grouped: dict[str, list[Node]] = {}
    for node in nodes:
        grouped.setdefault(root(node.id), []).append(node)
    return [
        Chain(
            tuple(n.id for n in group),
            sum(work(n) for n in group),
            round(sum(n.cost_usd for n in group), 4),
        )
        for group in grouped.values()
    ]


def split(graph: Graph, count: int) -> list[Share]:
    """Every chain onto one of `count` shards: longest first onto the least loaded shard.

    Ties are broken by stable names (the chain's smallest id, then the shard's index) and
    never by dict or hash order, so every machine computes the same split.
    """
    loads: list[list[Chain]] = [[] for _ in range(count)]
    seconds = [0.0] * count
    sizes = [0] * count
    for chain in sorted(chains(graph), key=lambda c: (-c.seconds, -len(c.nodes), c.name)):
        # Equal loads (zero-second chains, the first chains dealt): the shard with fewer nodes.
        best = min(range(count), key=lambda i: (seconds[i], sizes[i], i))
        loads[best].append(chain)
        seconds[best] += chain.seconds
        sizes[best] += len(chain.nodes)
    return [Share(i + 1, tuple(load)) for i, load in enumerate(loads)]


def members(graph: Graph, index: int, count: int) -> set[str]:
    """The node ids shard `index` (1-based) of `count` renders."""
    return set(split(graph, count)[index - 1].nodes)


def spread(shares: list[Share]) -> float:
    """The most loaded shard's estimated seconds over the least loaded's (1.0: even)."""
    loads = [share.seconds for share in shares]
    if max(loads, default=0.0) == 0:
        return 1.0
    return max(loads) / min(loads) if min(loads) > 0 else float("inf")
