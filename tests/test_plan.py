"""The planner by hand: no disk, no ffmpeg; the cache is a dictionary."""

from __future__ import annotations

import json

from runner.film.explain import Before, fingerprint
from runner.film.graph import Graph, Node
from runner.film.plan import Plan, full_recipe, make_plan, node_key


def shot(nid: str, prompt: str, **inputs: str) -> Node:
    take = int(nid[-1]) if "take" in nid else 1
    request = {"prompt": prompt, "seconds": 4, "take": take}
    recipe = {"kind": "shot", "v": 1, "backend": "previz", "request": request}
    return Node(nid, "shot", "previz", recipe, inputs=dict(inputs), cost_usd=0.4)


def film() -> Graph:
    nodes = [
        Node("assets.ref", "asset", "local", {"kind": "asset"}, path="ref.png"),
        shot("shots.river", "a river", image="assets.ref"),
        Node(
            "frames.river.last",
            "frame",
            "local",
            {"kind": "frame"},
            inputs={"video": "shots.river"},
        ),
        shot("shots.sky.take1", "the sky", image="frames.river.last"),
        shot("shots.sky.take2", "the sky", image="frames.river.last"),
        Node(
            "edit",
            "edit",
            "local",
            {"kind": "edit", "cuts": ["clip0", "clip1"]},
            inputs={"clip0": "shots.river", "clip1": "shots.sky.take2"},
        ),
    ]
    return Graph("T", 320, 180, 24, {n.id: n for n in nodes}, {})


class World:
    """What the runner would find on disk: cached outputs by key, the last recipes."""

    def __init__(self) -> None:
        self.cache: dict[str, str] = {}
        self.previous: dict[str, Before] = {}  # this machine's history: no lock key

    def plan(self, graph: Graph) -> Plan:
        return make_plan(
            graph,
            lookup=lambda _node, key: self.cache.get(key),
            asset_digest=lambda n: "ref-digest",
            previous=self.previous,
        )

    def build_all(self, graph: Graph) -> None:
        """Render everything: each output's digest is a function of its key."""
        digests: dict[str, str] = {}
        for node in graph.nodes.values():
            if node.kind == "asset":
                digests[node.id] = "ref-digest"
                continue
            key = node_key(node, digests)
            digests[node.id] = self.cache.setdefault(key, f"out-{key[:8]}")
            self.previous[node.id] = Before(fingerprint(full_recipe(node, digests)))


def statuses(plan: Plan) -> dict[str, str]:
    return {d.id: d.status for d in plan.decisions.values()}


def test_a_new_film_renders_roots_and_blocks_what_waits_on_them() -> None:
    plan = World().plan(film())
    assert statuses(plan) == {
        "assets.ref": "cached",
        "shots.river": "render",
        "frames.river.last": "blocked",
        "shots.sky.take1": "blocked",
        "shots.sky.take2": "blocked",
        "edit": "blocked",
    }
    assert plan.decisions["shots.river"].reasons == ["never rendered"]
    assert plan.decisions["frames.river.last"].reasons[0] == "waits for shots.river"
    assert plan.to_json()["to_render"] == 5
    assert plan.to_json()["estimated_cost_usd"] == 1.2  # three shots at $0.40


def test_a_built_film_is_all_cached() -> None:
    world = World()
    world.build_all(film())
    plan = world.plan(film())
    assert set(statuses(plan).values()) == {"cached"}
    assert plan.to_json()["to_render"] == 0


def test_changing_one_prompt_renders_that_shot_and_only_what_depends_on_it() -> None:
    world = World()
    world.build_all(film())
    graph = film()
    graph.nodes["shots.sky.take1"].recipe["request"]["prompt"] = "the night sky"
    plan = world.plan(graph)
    assert statuses(plan) == {
        "assets.ref": "cached",
        "shots.river": "cached",
        "frames.river.last": "cached",
        "shots.sky.take1": "render",
        "shots.sky.take2": "cached",
        "edit": "cached",  # take 1 is not the picked take: the cut does not change
    }
    assert plan.decisions["shots.sky.take1"].reasons == ["prompt changed"]


def test_an_upstream_change_propagates_with_reasons() -> None:
    world = World()
    world.build_all(film())
    graph = film()
    graph.nodes["shots.river"].recipe["request"]["seconds"] = 8
    plan = world.plan(graph)
    assert plan.decisions["shots.river"].reasons == ["seconds changed: 4 -> 8"]
    for nid in ("frames.river.last", "shots.sky.take1", "shots.sky.take2", "edit"):
        assert plan.decisions[nid].status == "blocked"
    assert plan.decisions["edit"].reasons == ["waits for shots.river", "waits for shots.sky.take2"]


def test_changing_the_pick_only_re_edits() -> None:
    world = World()
    world.build_all(film())
    graph = film()
    graph.nodes["edit"].inputs["clip1"] = "shots.sky.take1"
    plan = world.plan(graph)
    assert [d.id for d in plan.to_render] == ["edit"]
    assert plan.decisions["edit"].reasons == ["upstream shots.sky.take1 changed"]


def test_a_lost_output_is_rendered_again_and_says_so() -> None:
    world = World()
    world.build_all(film())
    graph = film()
    river_key = node_key(graph.nodes["shots.river"], {"assets.ref": "ref-digest"})
    del world.cache[river_key]
    plan = world.plan(graph)
    assert plan.decisions["shots.river"].reasons == ["output missing from cache"]


def test_plan_is_pure() -> None:
    world = World()
    world.build_all(film())
    graph = film()
    graph.nodes["shots.river"].recipe["request"]["seconds"] = 8  # some cached, some not
    before = json.dumps(graph.to_json(), sort_keys=True)  # every field of every node
    world.plan(graph)
    world.plan(graph)
    assert json.dumps(graph.to_json(), sort_keys=True) == before


def locked(world: World, graph: Graph) -> dict[str, Before]:
    """film.lock as a teammate's clone sees it: each node's key and fields, no cache."""
    digests: dict[str, str] = {}
    out: dict[str, Before] = {}
    for node in graph.nodes.values():
        if node.kind == "asset":
            digests[node.id] = "ref-digest"
            continue
        key = node_key(node, digests)
        digests[node.id] = world.cache[key]
        out[node.id] = Before(fingerprint(full_recipe(node, digests), node), key)
    return out


def test_a_clone_with_only_the_lock_explains_each_node_from_its_fields() -> None:
    world = World()
    world.build_all(film())
    lock = locked(world, film())
    graph = film()
    graph.nodes["shots.river"].recipe["request"]["seconds"] = 8
    plan = make_plan(
        graph, lookup=lambda n, k: None, asset_digest=lambda n: "ref-digest", previous=lock
    )
    river = plan.decisions["shots.river"]
    assert [c.to_json() for c in river.causes] == [
        {"code": "field_changed", "field": "seconds", "before": 4, "after": 8}
    ]
    assert river.reasons == ["seconds changed: 4 -> 8"]
    assert all("never rendered" not in d.reasons for d in plan.decisions.values())

    unchanged = make_plan(
        film(), lookup=lambda n, k: None, asset_digest=lambda n: "ref-digest", previous=lock
    )
    assert unchanged.decisions["shots.river"].reasons == ["locked output not in any cache"]


def test_a_changed_pick_is_named_as_such_from_the_lock() -> None:
    world = World()
    world.build_all(film())
    lock = locked(world, film())
    graph = film()
    graph.nodes["edit"].inputs["clip1"] = "shots.sky.take1"
    plan = make_plan(
        graph,
        lookup=lambda n, k: world.cache.get(k),
        asset_digest=lambda n: "ref-digest",
        previous=lock,
    )
    assert [c.to_json() for c in plan.decisions["edit"].causes] == [
        {
            "code": "pick_changed",
            "node": "shots.sky.take1",
            "before": "shots.sky.take2",
            "after": "shots.sky.take1",
        }
    ]
