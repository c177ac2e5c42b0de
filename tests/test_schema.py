"""film.toml's JSON Schema: generated from the manifest's models, committed, used by editors;
it accepts every example film and refuses what the runner refuses."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from runner.cli.main import main
from runner.cli.schema import schema_text
from runner.errors import UserError
from runner.film import manifest
from tests.films import MINIMAL

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schema" / "film.schema.json"
EXAMPLES = sorted((ROOT / "films").glob("*/film.toml"))


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_committed_schema_is_what_runner_schema_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fresh = schema_text()
    if COMMITTED.read_text() != fresh:
        COMMITTED.write_text(fresh)  # regenerated: commit it
        pytest.fail(f"{COMMITTED} was stale and has been regenerated; commit it")
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == fresh


@pytest.mark.parametrize("film", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_film_names_the_schema_and_validates(film: Path) -> None:
    first = film.read_text().splitlines()[0]
    assert first.startswith("#:schema ")
    assert (film.parent / first.split(maxsplit=1)[1]).resolve() == COMMITTED
    assert list(validator().iter_errors(tomllib.loads(film.read_text()))) == []


def errors(text: str, tmp_path: Path) -> tuple[list[str], str]:
    """What the schema says about a manifest (error paths), and what the runner says."""
    data: dict[str, Any] = tomllib.loads(text)
    found = [
        ".".join(map(str, e.absolute_path)) + ": " + e.validator
        for e in validator().iter_errors(data)
    ]
    path = tmp_path / "film.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        manifest.load(path)
    return found, str(err.value)


def test_a_typod_key_is_refused_by_the_schema_as_by_the_runner(tmp_path: Path) -> None:
    bad = MINIMAL.replace('scene = "The lantern rises."', 'scene = "x"\ncamra = "wide"')
    schema_says, runner_says = errors(bad, tmp_path)
    assert schema_says == ["shots.sky: additionalProperties"]
    assert "shots.sky.camra: unknown key; did you mean `camera`?" in runner_says


def test_a_wrong_type_is_refused_by_the_schema_as_by_the_runner(tmp_path: Path) -> None:
    bad = MINIMAL.replace("fps = 24", 'fps = "24"')
    schema_says, runner_says = errors(bad, tmp_path)
    assert schema_says == ["film.fps: type"]
    assert "film.fps: expected a whole number" in runner_says


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (('kind = "crossfade"', 'kind = "wipe"'), "edit.transition.kind: enum"),
        (('backend = "previz"', 'backend = "sora"'), "defaults.backend: enum"),
        (('size = "320x180"', 'size = "wide"'), "film.size: pattern"),
        (("[shots.river]", '[shots."river bank"]'), "shots: pattern"),  # a key of [shots]
    ],
)
def test_allowed_values_are_enums_and_patterns(
    change: tuple[str, str], where: str, tmp_path: Path
) -> None:
    good = MINIMAL.replace("[defaults]", '[defaults]\nbackend = "previz"') + (
        '\n[edit]\ntransition = { kind = "crossfade", seconds = 0.25 }\n'
    )
    assert list(validator().iter_errors(tomllib.loads(good))) == []
    bad = good.replace(*change)
    schema_says = [
        ".".join(map(str, e.absolute_path)) + ": " + e.validator
        for e in validator().iter_errors(tomllib.loads(bad))
    ]
    assert where in schema_says


def test_every_field_has_a_description() -> None:
    schema = json.loads(COMMITTED.read_text())
    missing = [
        f"{name}.{prop}"
        for name, model in schema["definitions"].items()
        for prop, spec in model.get("properties", {}).items()
        if not spec.get("description")
    ]
    missing += [p for p, spec in schema["properties"].items() if not spec.get("description")]
    assert missing == []
