"""`runner lint`: the prompting guides' craft as warnings that say where and how to fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from runner.cli.main import main
from runner.film.lint import beat_end, lint
from runner.film.manifest import Manifest
from tests.films import gen

ROOT = Path(__file__).resolve().parent.parent
CLEAN = """\
[film]
title = "Lint"
size = "160x90"

[defaults]
seconds = 4

[characters.mara]
description = "a girl of ten in a blue raincoat"

[shots.river]
scene = "Riverbank at dusk."
camera = "Medium close-up, 50mm"
lighting = "Blue dusk fill"
cast = ["mara"]
actions = ["0-2s: she lights the lantern", "2-4s: she lets it go"]
dialogue = [{ who = "mara", line = "Go on. Find her." }]
"""


def findings(text: str, rendered: dict[str, int] | None = None) -> list[str]:
    return [str(f) for f in lint(Manifest.model_validate(tomllib.loads(text)), None, rendered)]


def test_a_shot_written_as_the_guides_say_has_no_warning() -> None:
    assert findings(CLEAN) == []


@pytest.mark.parametrize(
    ("action", "end"),
    [
        ("0-2s: she lights it", 2.0),
        ("1.5–3 s: it glows", 3.0),
        ("at 3s she looks up", 3.0),
        ("00:02-00:06: the tilt settles", 6.0),
        ("3 birds take off", None),
        ("she smiles", None),
    ],
)
def test_beat_timings_are_read_in_the_guides_notations(action: str, end: float | None) -> None:
    assert beat_end(action) == end


def test_timed_beats_that_outrun_the_shot_say_which_and_how_to_fix() -> None:
    text = CLEAN.replace('"2-4s: she lets it go"', '"2-6s: she lets it go"')
    assert findings(text) == [
        "shots.river.actions[1]: the beat ends at 6 s, past the shot's 4 s; retime the beats "
        "to fit in 4 s, or set seconds = 6 (or split the shot in two)"
    ]


def test_dialogue_too_long_to_speak_in_the_shot() -> None:
    line = "I have waited all night by this river for you, and now the lantern is finally lit."
    [found] = findings(CLEAN.replace("Go on. Find her.", line))
    assert found.startswith("shots.river.dialogue: 17 words take about 6.8 s to say")
    assert "cut the lines to 10 words or fewer, or set seconds = 7" in found


def test_a_speaker_never_described_and_a_raw_prompt_without_the_anchor() -> None:
    text = CLEAN.replace('cast = ["mara"]', "cast = []").replace(
        "[shots.river]",
        '[shots.open]\nprompt = "A wide harbour at dusk."\ncast = ["mara"]\n\n[shots.river]',
    )
    text = text.replace(
        '{ who = "mara", line = "Go on. Find her." }',
        '{ who = "mara", line = "Go." }, { who = "nana", line = "Come." }',
    )
    got = findings(text)
    assert got[0].startswith("shots.open.cast[0]: `mara` is cast, but a raw prompt gets no")
    assert got[1] == (
        "shots.river.dialogue[0].who: `mara` speaks but is not cast, so the shot never "
        'describes them; add them: cast = ["mara"]'
    )
    assert got[2].startswith("shots.river.dialogue[1].who: `nana` speaks but is never described")
    assert len(got) == 3


def test_a_shot_without_camera_or_lighting_line() -> None:
    text = CLEAN.replace('camera = "Medium close-up, 50mm"\n', "").replace(
        'lighting = "Blue dusk fill"\n', ""
    )
    got = findings(text)
    assert [f.split(":")[0] for f in got] == ["shots.river.camera", "shots.river.lighting"]
    assert 'camera = "' in got[0] and 'lighting = "' in got[1]


def test_takes_rendered_but_pick_never_set() -> None:
    text = CLEAN + "takes = 3\n"
    assert findings(text, {"river": 1}) == []  # nothing to choose between yet
    [found] = findings(text, {"river": 3})
    assert found.startswith("shots.river.pick: 3 of 3 takes are rendered but pick is not set")
    assert findings(text + "pick = 1\n", {"river": 3}) == []  # chosen, even if take 1


def test_lint_exits_0_with_warnings_and_1_with_strict_and_counts_rendered_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CLEAN.replace("seconds = 4", "seconds = 1").replace(
        '"2-4s: she lets it go"', '"0.5-1s: she lets it go"'
    )
    text = text.replace('line = "Go on. Find her."', 'line = "Go."') + "takes = 2\n"
    manifest = gen(tmp_path / "film", {"film.toml": text}) / "film.toml"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["lint", str(manifest), *cache]) == 0
    out = capsys.readouterr().out
    assert "warning: shots.river.actions[0]: the beat ends at 2 s" in out
    assert "pick" not in out  # nothing rendered yet
    assert main(["lint", str(manifest), "--strict", *cache]) == 1
    assert main(["render", str(manifest), *cache]) == 0
    capsys.readouterr()
    assert main(["lint", str(manifest), *cache]) == 0
    assert "shots.river.pick: 2 of 2 takes are rendered" in capsys.readouterr().out


def test_the_example_films_lint_clean() -> None:
    for film in sorted((ROOT / "films").glob("*/film.toml")):
        assert lint(Manifest.model_validate(tomllib.loads(film.read_text()))) == [], film
