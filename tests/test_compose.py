"""Prompt composition and the manifest -> graph step, in memory."""

from __future__ import annotations

import tomllib
from pathlib import Path

from runner.backends.registry import Backends
from runner.film import builder, compose
from runner.film.manifest import Manifest
from tests.films import MINIMAL

STRUCTURED = """
[film]
title = "The Lantern"
[style]
look = "35mm film, soft grain; palette: warm amber, slate blue"
avoid = ["on-screen text", "logos"]
[characters.mara]
description = "a girl of ten with short curly black hair and a blue raincoat"
[shots.river]
scene = "Riverbank at dusk; Mara kneels at the water's edge."
camera = "Slow push-in, 50mm"
lighting = "Blue dusk fill, warm lantern key"
actions = ["0-2s: she lights the lantern", "2-4s: she lets it drift"]
dialogue = [{ who = "mara", line = "Go on. Find her." }]
sound = "crickets, water lapping"
cast = ["mara"]
[shots.raw]
prompt = "A paper lantern on black water."
[shots.sky]
scene = "Lanterns fill the sky."
takes = 3
pick = 2
image = { shot = "river", frame = "last" }
[profiles.final]
seconds = 8
size = "1920x1080"
"""


def manifest(text: str = STRUCTURED) -> Manifest:
    return Manifest.model_validate(tomllib.loads(text))


def test_structured_fields_compile_in_the_guides_layout() -> None:
    text = compose.compile_prompt(manifest(), "river", negative_prompt=False)
    assert text == (
        "Riverbank at dusk; Mara kneels at the water's edge.\n"
        "Mara: a girl of ten with short curly black hair and a blue raincoat\n\n"
        "Cinematography:\nCamera shot: Slow push-in, 50mm\n"
        "Lighting: Blue dusk fill, warm lantern key\n\n"
        "Actions:\n- 0-2s: she lights the lantern\n- 2-4s: she lets it drift\n\n"
        'Dialogue:\nMara: "Go on. Find her."\n\n'
        "Sound:\ncrickets, water lapping\n\n"
        "Style:\n35mm film, soft grain; palette: warm amber, slate blue\n\n"
        "Avoid: on-screen text; logos.\n"
    )


def test_avoid_is_left_out_of_the_text_when_the_backend_has_a_negative_prompt() -> None:
    text = compose.compile_prompt(manifest(), "river", negative_prompt=True)
    assert "Avoid" not in text and text.endswith("slate blue\n")


def test_a_raw_prompt_gets_the_style_spine() -> None:
    text = compose.compile_prompt(manifest(), "raw", negative_prompt=False)
    assert text.startswith("A paper lantern on black water.\n\nStyle:\n35mm film")


def test_profile_overrides_defaults_and_the_shot_overrides_the_profile() -> None:
    m = manifest(STRUCTURED.replace("[shots.raw]\n", "[shots.raw]\nseconds = 4\n"))
    assert compose.resolve(m, "river", None).seconds == 4.0
    final = compose.resolve(m, "river", "final")
    assert (final.seconds, final.width, final.height) == (8.0, 1920, 1080)
    assert compose.resolve(m, "raw", "final").seconds == 4.0


def test_takes_make_one_node_each_and_the_chain_uses_the_picked_take(tmp_path: Path) -> None:
    tail = '[shots.tail]\nscene = "x"\nimage = { shot = "sky", frame = "last" }\n'
    m = manifest(STRUCTURED + tail)
    graph = builder.build(m, tmp_path, None, "film.toml", Backends())
    assert [n for n in graph.nodes if n.startswith("shots.sky")] == [
        "shots.sky.take1",
        "shots.sky.take2",
        "shots.sky.take3",
    ]
    assert graph.nodes["frames.sky.last"].inputs == {"video": "shots.sky.take2"}
    requests = [graph.nodes[f"shots.sky.take{i}"].recipe["request"] for i in (1, 2, 3)]
    assert [r["take"] for r in requests] == [1, 2, 3]
    cut = graph.nodes.get("picture") or graph.nodes["edit"]  # the cut, under any sound layers
    assert cut.inputs["clip2"] == "shots.sky.take2"


def test_changing_the_pick_changes_no_shot_recipe(tmp_path: Path) -> None:
    before = builder.build(manifest(), tmp_path, None, "film.toml", Backends())
    after = builder.build(
        manifest(STRUCTURED.replace("pick = 2", "pick = 3")), tmp_path, None, "f", Backends()
    )
    for nid, node in before.nodes.items():
        if node.kind == "shot":
            assert after.nodes[nid].recipe == node.recipe
    cut = after.nodes.get("picture") or after.nodes["edit"]  # the cut, under any sound layers
    assert cut.inputs["clip2"] == "shots.sky.take3"


def test_the_graph_round_trips_through_json(tmp_path: Path) -> None:
    from runner.film.graph import Graph

    graph = builder.build(manifest(MINIMAL), tmp_path, None, "film.toml", Backends())
    assert Graph.from_json(graph.to_json()) == graph
