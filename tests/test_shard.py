"""Shards cover every renderable node exactly once and keep chains together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.film import shard
from runner.film.graph import Graph, Node


def film(chains: int, length: int) -> Graph:
    nodes: dict[str, Node] = {}
    for c in range(chains):
        for i in range(length):
            inputs = {"image": f"frames.c{c}s{i - 1}.last"} if i else {}
            nodes[f"shots.c{c}s{i}"] = Node(f"shots.c{c}s{i}", "shot", "previz", {}, inputs=inputs)
            nodes[f"frames.c{c}s{i}.last"] = Node(
                f"frames.c{c}s{i}.last", "frame", "local", {}, inputs={"video": f"shots.c{c}s{i}"}
            )
    nodes["edit"] = Node("edit", "edit", "local", {}, inputs={"clip0": "shots.c0s0"})
    return Graph("T", 64, 64, 24, nodes, {})


def test_shards_cover_every_node_exactly_once_and_never_the_edit() -> None:
    graph = film(chains=30, length=3)
    shares = [shard.members(graph, i, 4) for i in range(1, 5)]
    everything = {n for n in graph.nodes if n != "edit"}
    assert set().union(*shares) == everything
    assert sum(len(s) for s in shares) == len(everything)
    assert all(shares), "30 chains over 4 shards leave no shard empty"


def test_a_chain_stays_in_one_shard() -> None:
    graph = film(chains=10, length=4)
    for i in range(1, 4):
        share = shard.members(graph, i, 3)
        for c in range(10):
            chain = {n for n in graph.nodes if n != "edit" and n.split(".")[1].startswith(f"c{c}s")}
            assert chain <= share or not (chain & share)


def _members_in_a_process_with_hash_seed(seed: str) -> set[str]:
    script = (
        "import json; from runner.film import shard; from tests.test_shard import film\n"
        "print(json.dumps(sorted(shard.members(film(8, 2), 2, 3))))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_the_split_is_the_same_on_every_machine() -> None:
    # Another machine is another process with another str hash seed: a split keyed on
    # Python's hash() would differ between them and two CI jobs would render one shot twice.
    here = shard.members(film(8, 2), 2, 3)
    assert here
    assert _members_in_a_process_with_hash_seed("1") == here
    assert _members_in_a_process_with_hash_seed("2") == here


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "2/0"])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UserError, match="--shard"):
        shard.parse(text)
