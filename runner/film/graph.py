"""The film's DAG: asset, shot (one node per take), frame and edit nodes, as plain data.

A Graph is plain data (it round-trips through JSON) so a compiled manifest can be reused
without re-validating it; see `compiled.py`. Topological order and cycle reports come from the
standard library's graphlib: networkx alone takes longer to import than the whole no-op plan
is allowed to take.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.digest import key_of
from runner.errors import UserError, printable
from runner.film.request import ShotRequest

RECIPE_VERSION = 1  # bump when the meaning of a recipe field changes: every key changes


@dataclass
class Node:
    id: str
    kind: str  # "asset" | "shot" | "frame" | "edit"
    pool: str  # the backend for shots; "local" for work done on this machine
    recipe: dict[str, Any]  # what the node is made from, apart from its inputs' digests
    inputs: dict[str, str] = field(default_factory=dict)  # role -> upstream node id
    after: list[str] = field(default_factory=list)  # order-only: the whole upstream shot
    cost_usd: float = 0.0
    shot: dict[str, Any] | None = None  # ShotRequest fields, for shots
    path: str | None = None  # the file, for assets
    digest: str = ""  # sha256 of the canonical recipe, set once when compiled (see seal)

    @property
    def reproducible(self) -> bool:
        """Made on this machine, deterministically (ffmpeg work, previz): making it again
        gives the same bytes, so it is never worth a lock's refusal or a timestamp."""
        return self.pool in ("local", "previz")

    @property
    def recipe_digest(self) -> str:
        """The digest set at compile time, else computed: reading never writes the node, so
        planning a graph leaves it as it was."""
        return self.digest or key_of(self.recipe)

    def seal(self) -> None:
        """Hash the recipe once, when the graph is compiled, not on every plan."""
        self.digest = key_of(self.recipe)

    @property
    def deps(self) -> list[str]:
        return sorted(set(self.inputs.values()) | set(self.after))

    def request(
        self, image: Path | None, references: tuple[Path, ...] = (), **inputs: Any
    ) -> ShotRequest:
        """The shot's request with its input files (and extend's job) now that they exist."""
        assert self.shot is not None
        fields = dict(self.shot, avoid=tuple(self.shot["avoid"]))
        return ShotRequest(**fields, image=image, references=references, **inputs)


@dataclass
class Graph:
    title: str
    width: int
    height: int
    fps: int
    nodes: dict[str, Node]  # in topological order
    limits: dict[str, dict[str, Any]]
    budget_usd: float | None = None  # [film] budget_usd: what the film may spend in all
    sign: bool = False  # [film] sign: publish a signed copy too (when a key is configured)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": [asdict(n) for n in self.nodes.values()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Graph:
        nodes = {n["id"]: Node(**n) for n in data["nodes"]}
        return cls(**{**data, "nodes": nodes})

    @property
    def cut(self) -> Node:
        """The node that cuts the clips together: "edit", or "picture" under the sound layers
        (then "edit" is the mux of picture, mix and subtitles)."""
        return self.nodes["picture"] if "picture" in self.nodes else self.nodes["edit"]

    def cut_clips(self) -> list[str]:
        """The node ids of the cut's clips, in film order (a clip cut in twice is twice)."""
        cut = self.cut
        return [cut.inputs[c["clip"]] for c in cut.recipe["cuts"]]

    def targets(self, names: Iterable[str]) -> frozenset[str]:
        """`--target`'s node ids: a node id as `runner status` lists it (`shots.river.take2`,
        `edit`), or a shot, `river` or `shots.river`, for every take of it."""
        takes: dict[str, set[str]] = {}
        for node in self.nodes.values():
            if node.shot:
                takes.setdefault(node.shot["shot"], set()).add(node.id)
        found: set[str] = set()
        for name in names:
            shot = name.removeprefix("shots.")
            if name in self.nodes and name in takes:
                raise UserError(
                    f"--target {printable(name)}: both a shot and a node are named so; write "
                    f"shots.{printable(name)} for the shot"
                )
            if name in self.nodes:
                found.add(name)
            elif name in takes or (name.startswith("shots.") and shot in takes):
                found |= takes[shot]
            else:
                raise UserError(
                    f"--target {printable(name)}: no shot or node of that name; "
                    "`runner status` lists the film's nodes"
                )
        return frozenset(found)

    def upstream(self, ids: Iterable[str]) -> set[str]:
        """The nodes `ids` and every node they need, however indirectly."""
        found: set[str] = set()
        wanted = list(ids)
        while wanted:
            nid = wanted.pop()
            if nid not in found:
                found.add(nid)
                wanted += self.nodes[nid].deps
        return found

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {nid: [] for nid in self.nodes}
        for node in self.nodes.values():
            for dep in node.deps:
                out[dep].append(node.id)
        return out


def toposort(nodes: dict[str, Node], source: str) -> dict[str, Node]:
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for node in nodes.values():
        sorter.add(node.id, *node.deps)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as err:
        # graphlib lists the cycle backwards (each node needs the one before it); a shot's
        # takes and frames collapse to the shot's name.
        cycle: list[str] = []
        for name in reversed([shot_name(n) for n in err.args[1]]):
            if not cycle or cycle[-1] != name:
                cycle.append(name)
        path = " -> ".join(cycle)
        raise UserError(
            f"{source}: dependency cycle: {path}; remove one of these `needs`, `image`, "
            "`end_image`, `remix` or `extend` links (a shot that ends on another's first "
            "frame renders after that shot)"
        ) from None
    return {nid: nodes[nid] for nid in order}


def shot_name(node_id: str) -> str:
    parts = node_id.split(".")
    return parts[1] if parts[0] in ("shots", "frames") else node_id
