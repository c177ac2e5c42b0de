"""Shards cover every renderable node exactly once and keep chains together."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli.main import main
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


def film_of_chains(lengths: list[int], seconds: list[float]) -> Graph:
    """Independent chains of the given lengths; shot k lasts seconds[k % len(seconds)]."""
    nodes: dict[str, Node] = {}
    k = 0
    for c, length in enumerate(lengths):
        for i in range(length):
            shot = {"seconds": seconds[k % len(seconds)]}
            k += 1
            inputs = {"image": f"frames.c{c}s{i - 1}.last"} if i else {}
            sid, fid = f"shots.c{c}s{i}", f"frames.c{c}s{i}.last"
            nodes[sid] = Node(sid, "shot", "veo", {}, inputs=inputs, shot=shot, cost_usd=0.5)
            nodes[fid] = Node(fid, "frame", "local", {}, inputs={"video": sid})
    return Graph("T", 64, 64, 24, nodes, {})


@pytest.mark.parametrize("count", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shards_of_a_100_shot_film_are_within_1_2x_of_each_others_work(
    count: int, seed: int
) -> None:
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < 100:
        lengths.append(min(rng.randint(1, 5), 100 - sum(lengths)))
    graph = film_of_chains(lengths, [rng.choice([4.0, 5.0, 6.0, 8.0]) for _ in range(100)])
    assert sum(1 for n in graph.nodes.values() if n.kind == "shot") == 100
    shares = shard.split(graph, count)
    loads = [s.seconds for s in shares]
    assert max(loads) <= 1.2 * min(loads), loads
    assert shard.spread(shares) <= 1.2
    for share in shares:
        assert set(share.nodes) == shard.members(graph, share.index, count)


def test_the_longest_chain_goes_first_and_ties_go_to_the_smaller_id() -> None:
    # A chain of 5 shots and five single shots, all 4 s, over 2 shards: the chain alone first.
    graph = film_of_chains([1, 5, 1, 1, 1, 1], [4.0])
    first, second = shard.split(graph, 2)
    assert first.seconds == second.seconds == 20.0
    assert "shots.c1s0" in first.nodes
    assert [c.name for c in second.chains] == [
        "frames.c0s0.last",
        "frames.c2s0.last",
        "frames.c3s0.last",
        "frames.c4s0.last",
        "frames.c5s0.last",
    ]


def test_one_long_chain_cannot_be_balanced_and_spread_says_so() -> None:
    graph = film_of_chains([5, 1], [4.0])
    shares = shard.split(graph, 4)
    assert [s.seconds for s in shares] == [20.0, 4.0, 0.0, 0.0]
    assert shard.spread(shares) == float("inf")


def _members_in_a_process_with_hash_seed(seed: str) -> list[set[str]]:
    script = (
        "import json; from runner.film import shard; from tests.test_shard import film\n"
        "print(json.dumps(sorted(shard.members(film(8, 2), 2, 3))))\n"
        "from tests.test_shard import film_of_chains as f\n"
        "print(json.dumps(sorted(shard.members(f([3, 1, 2, 2, 5, 1, 4], [4, 8, 5]), 2, 3))))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [set(json.loads(line)) for line in out.stdout.splitlines()]


def test_the_split_is_the_same_on_every_machine() -> None:
    # Another machine is another process with another str hash seed: a split keyed on
    # Python's hash() would differ between them and two CI jobs would render one shot twice.
    here = [
        shard.members(film(8, 2), 2, 3),
        shard.members(film_of_chains([3, 1, 2, 2, 5, 1, 4], [4, 8, 5]), 2, 3),
    ]
    assert all(here)
    assert _members_in_a_process_with_hash_seed("1") == here
    assert _members_in_a_process_with_hash_seed("2") == here


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "2/0"])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UserError, match="--shard"):
        shard.parse(text)


def test_plan_shard_shows_each_shards_nodes_seconds_and_that_the_example_cannot_balance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The example film is one long chain (river -> release -> sky -> together <- balcony) and
    # the harbor shot: two chains cannot fill four shards, and the plan says so.
    example = Path(__file__).resolve().parents[1] / "films" / "lantern"
    shutil.copytree(example, tmp_path / "lantern", ignore=shutil.ignore_patterns("out"))
    film_toml = str(tmp_path / "lantern" / "film.toml")
    cache = str(tmp_path / "cache")
    assert main(["plan", "--cache-dir", cache, "--shard", "2/4", film_toml]) == 0
    out = capsys.readouterr().out
    assert "> 2/4     1 nodes         4 s  $0.00\n      shots.harbor\n" in out
    assert "  1/4     8 nodes        28 s" in out
    assert "  4/4     0 nodes         0 s" in out
    assert "cannot be balanced over 4 shards" in out
    assert "shots.river" not in out.split("\n\n")[0], "the plan above the split is shard 2's"
