"""Every mistake a user can make ends in one clear message, exit code 2 and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.films import MINIMAL, gen, runner


def check(
    tmp_path: Path, toml: str, *expected: str, files: dict[str, str | bytes] | None = None
) -> str:
    film = gen(tmp_path / "film", {"film.toml": toml, **(files or {})})
    result = runner("plan", film / "film.toml", cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    check(tmp_path, MINIMAL + "\n[shots.broken\n", "film.toml: invalid TOML", "line")


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    bad = MINIMAL.replace("[defaults]\nseconds = 1", "[defaults]\nsecnds = 1")
    check(tmp_path, bad, "defaults.secnds: unknown key", "did you mean `seconds`?")


def test_unknown_key_in_a_shot_names_the_key_path(tmp_path: Path) -> None:
    bad = MINIMAL.replace('scene = "The lantern rises."', 'scene = "x"\ncamra = "wide"')
    check(tmp_path, bad, "shots.sky.camra: unknown key", "did you mean `camera`?")


def test_wrong_type_names_the_key_and_value(tmp_path: Path) -> None:
    bad = MINIMAL.replace("fps = 24", 'fps = "fast"')
    check(tmp_path, bad, "film.fps:", "'fast'")


def test_cycle_is_reported_as_its_path(tmp_path: Path) -> None:
    bad = MINIMAL.replace('cast = ["mara"]', 'cast = ["mara"]\nneeds = ["sky"]')
    err = check(tmp_path, bad, "dependency cycle:")
    assert "river -> sky -> river" in err or "sky -> river -> sky" in err


def test_missing_asset(tmp_path: Path) -> None:
    toml = MINIMAL + '\n[assets.ref]\npath = "assets/ref.png"\n'
    check(tmp_path, toml, "assets.ref.path", "no file at")


def test_asset_path_escaping_the_film_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"x")
    toml = MINIMAL + '\n[assets.ref]\npath = "../secret.png"\n'
    check(tmp_path, toml, "assets.ref.path", "outside the film's folder")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('size = "321x180"', "must be even"),
        ("seconds = 90", "shots.river.seconds: 90 is longer than previz"),
        ("seconds = 0", "shots.river.seconds"),
    ],
)
def test_size_or_length_the_backend_does_not_support(
    tmp_path: Path, setting: str, expected: str
) -> None:
    bad = MINIMAL.replace(
        'scene = "Riverbank at dusk."', f'scene = "Riverbank at dusk."\n{setting}'
    )
    check(tmp_path, bad, expected)


def test_needs_naming_an_unknown_shot(tmp_path: Path) -> None:
    bad = MINIMAL.replace('needs = ["river"]', 'needs = ["rivr"]')
    check(tmp_path, bad, "shots.sky.needs[0]: no shot named `rivr`", "did you mean `river`?")


def test_pick_beyond_takes(tmp_path: Path) -> None:
    bad = MINIMAL.replace('scene = "The lantern rises."', 'scene = "x"\ntakes = 3\npick = 4')
    check(tmp_path, bad, "shots.sky.pick: take 4 does not exist", "from 1 to 3")


def test_unknown_backend_lists_the_known_ones(tmp_path: Path) -> None:
    bad = MINIMAL.replace("[defaults]", '[defaults]\nbackend = "sora"')
    check(tmp_path, bad, "unknown backend 'sora'", "previz")


def test_unknown_character_in_cast(tmp_path: Path) -> None:
    bad = MINIMAL.replace('cast = ["mara"]', 'cast = ["nana"]')
    check(tmp_path, bad, "shots.river.cast[0]: no character named `nana`")


def test_missing_manifest_file(tmp_path: Path) -> None:
    result = runner("plan", tmp_path / "nope.toml", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_unknown_profile(tmp_path: Path) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL})
    result = runner("plan", film / "film.toml", "--profile", "final", cache=tmp_path / "c")
    assert result.returncode == 2
    assert "no [profiles.final]" in result.stderr


def test_limits_for_an_unknown_backend(tmp_path: Path) -> None:
    check(tmp_path, MINIMAL + "\n[limits.previs]\nconcurrency = 2\n", "limits.previs", "previz")


def test_more_reference_images_than_the_model_takes(tmp_path: Path) -> None:
    toml = MINIMAL + "".join(f'[assets.r{i}]\npath = "r{i}.png"\n' for i in range(4))
    toml = toml.replace(
        'cast = ["mara"]',
        'cast = ["mara"]\nreferences = ["assets.r0", "assets.r1", "assets.r2", "assets.r3"]',
    )
    files: dict[str, str | bytes] = {f"r{i}.png": b"png" for i in range(4)}
    check(tmp_path, toml, "shots.river.references: previz model previz takes 3", files=files)


def test_remix_of_an_unknown_shot(tmp_path: Path) -> None:
    bad = MINIMAL + '[shots.blue]\nremix = { shot = "rivr", prompt = "blue" }\n'
    check(tmp_path, bad, "shots.blue.remix.shot: no shot named `rivr`")


def test_remix_on_a_backend_that_cannot(tmp_path: Path) -> None:
    bad = MINIMAL + ('[shots.blue]\nbackend = "veo"\nremix = { shot = "river", prompt = "blue" }\n')
    check(tmp_path, bad, "shots.blue")
