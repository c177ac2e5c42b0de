"""Every mistake a user can make ends in one clear message, exit code 2 and no traceback.

The cases run in-process through `cli.main` (the same code path as the command, without a
Python start-up each); a few run the real command line for its exit code and stderr.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import cli
from tests.films import MINIMAL, gen, run_cli, runner

Check = Callable[..., str]


@pytest.fixture
def plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    """`runner plan ARGS` in-process, with a cache of this test's own: exit code and stderr."""
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RUNNER_DEBUG", raising=False)  # an internal error must not pass as one

    def run(*args: str | Path) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(["plan", *map(str, args)])
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def check(tmp_path: Path, plan: Callable[..., tuple[int, str]]) -> Check:
    """`runner plan` on a film made of toml (and files): asserts exit code 2, no traceback
    and every expected text in stderr; returns stderr."""

    def run(toml: str, *expected: str, files: dict[str, str | bytes] | None = None) -> str:
        film = gen(tmp_path / "film", {"film.toml": toml, **(files or {})})
        code, err = plan(film / "film.toml")
        assert code == 2, err
        assert "Traceback" not in err
        for text in expected:
            assert text in err, err
        return err

    return run


def test_malformed_toml_names_file_and_line(check: Check) -> None:
    check(MINIMAL + "\n[shots.broken\n", "film.toml: invalid TOML", "line")


def test_unknown_key_suggests_the_right_one(check: Check) -> None:
    bad = MINIMAL.replace("[defaults]\nseconds = 1", "[defaults]\nsecnds = 1")
    check(bad, "defaults.secnds: unknown key", "did you mean `seconds`?")


def test_unknown_key_in_a_shot_names_the_key_path(check: Check) -> None:
    bad = MINIMAL.replace('scene = "The lantern rises."', 'scene = "x"\ncamra = "wide"')
    check(bad, "shots.sky.camra: unknown key", "did you mean `camera`?")


def test_wrong_type_names_the_key_and_value(check: Check) -> None:
    bad = MINIMAL.replace("fps = 24", 'fps = "fast"')
    check(bad, "film.fps:", "'fast'")


def test_cycle_is_reported_as_its_path(check: Check) -> None:
    bad = MINIMAL.replace('cast = ["mara"]', 'cast = ["mara"]\nneeds = ["sky"]')
    err = check(bad, "dependency cycle:")
    assert "river -> sky -> river" in err or "sky -> river -> sky" in err


def test_missing_asset(check: Check) -> None:
    toml = MINIMAL + '\n[assets.ref]\npath = "assets/ref.png"\n'
    check(toml, "assets.ref.path", "no file at")


def test_asset_path_escaping_the_film_folder(check: Check, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"x")
    toml = MINIMAL + '\n[assets.ref]\npath = "../secret.png"\n'
    check(toml, "assets.ref.path", "outside the film's folder")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('size = "321x180"', "must be even"),
        ("seconds = 90", "shots.river.seconds: 90 is longer than previz"),
        ("seconds = 0", "shots.river.seconds"),
    ],
)
def test_size_or_length_the_backend_does_not_support(
    check: Check, setting: str, expected: str
) -> None:
    bad = MINIMAL.replace(
        'scene = "Riverbank at dusk."', f'scene = "Riverbank at dusk."\n{setting}'
    )
    check(bad, expected)


def test_needs_naming_an_unknown_shot(check: Check) -> None:
    bad = MINIMAL.replace('needs = ["river"]', 'needs = ["rivr"]')
    check(bad, "shots.sky.needs[0]: no shot named `rivr`", "did you mean `river`?")


def test_a_shot_needing_an_unknown_name_with_no_close_match_has_no_stray_semicolon(
    check: Check,
) -> None:
    bad = MINIMAL.replace('needs = ["river"]', 'needs = ["b"]')
    check(bad, "shots.sky.needs[0]: no shot named `b` (shots: river, sky)")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("fps = 24", 'fps = "24"', "film.fps: expected a whole number, got the string '24'"),
        ("seconds = 1", 'seconds = "4"', "defaults.seconds: expected a number, got the string"),
    ],
    ids=["fps", "seconds"],
)
def test_a_quoted_number_is_an_error_saying_to_drop_the_quotes(
    check: Check, old: str, new: str, expected: str
) -> None:
    check(MINIMAL.replace(old, new), expected, "without quotes")


@pytest.mark.parametrize(
    "dialogue",
    ['["Go on."]', '[{ speaker = "mara", text = "Go on." }]'],
    ids=["a-string", "wrong-keys"],
)
def test_a_wrong_dialogue_shape_shows_how_to_write_it(check: Check, dialogue: str) -> None:
    bad = MINIMAL.replace('cast = ["mara"]', f'cast = ["mara"]\ndialogue = {dialogue}')
    err = check(bad, "shots.river.dialogue[0]", 'dialogue = [{ who = "mara", line = ')
    assert "valid dictionary or instance of Line" not in err


def test_show_suggests_the_shot_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    film = gen(tmp_path / "film", {"film.toml": MINIMAL})
    assert cli.main(["show", str(film / "film.toml"), "skyy"]) == 2
    assert (
        "no shot named `skyy`; did you mean `sky`? (shots: river, sky)" in capsys.readouterr().err
    )


def test_pick_beyond_takes(check: Check) -> None:
    bad = MINIMAL.replace('scene = "The lantern rises."', 'scene = "x"\ntakes = 3\npick = 4')
    check(bad, "shots.sky.pick: take 4 does not exist", "from 1 to 3")


def test_unknown_backend_lists_the_known_ones(check: Check) -> None:
    bad = MINIMAL.replace("[defaults]", '[defaults]\nbackend = "sora"')
    check(bad, "unknown backend 'sora'", "previz")


def test_unknown_character_in_cast(check: Check) -> None:
    bad = MINIMAL.replace('cast = ["mara"]', 'cast = ["nana"]')
    check(bad, "shots.river.cast[0]: no character named `nana`")


def test_missing_manifest_file(tmp_path: Path, plan: Callable[..., tuple[int, str]]) -> None:
    code, err = plan(tmp_path / "nope.toml")
    assert code == 2
    assert "no such file" in err and "Traceback" not in err


def test_unknown_profile(tmp_path: Path, plan: Callable[..., tuple[int, str]]) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL})
    code, err = plan(film / "film.toml", "--profile", "final")
    assert code == 2
    assert "no [profiles.final]" in err


def test_limits_for_an_unknown_backend(check: Check) -> None:
    check(MINIMAL + "\n[limits.previs]\nconcurrency = 2\n", "limits.previs", "previz")


def test_more_reference_images_than_the_model_takes(check: Check) -> None:
    toml = MINIMAL + "".join(f'[assets.r{i}]\npath = "r{i}.png"\n' for i in range(4))
    toml = toml.replace(
        'cast = ["mara"]',
        'cast = ["mara"]\nreferences = ["assets.r0", "assets.r1", "assets.r2", "assets.r3"]',
    )
    files: dict[str, str | bytes] = {f"r{i}.png": b"png" for i in range(4)}
    check(toml, "shots.river.references: previz model previz takes 3", files=files)


def test_remix_of_an_unknown_shot(check: Check) -> None:
    bad = MINIMAL + '[shots.blue]\nremix = { shot = "rivr", prompt = "blue" }\n'
    check(bad, "shots.blue.remix.shot: no shot named `rivr`")


def test_remix_on_a_backend_that_cannot(check: Check) -> None:
    # Both shots on Veo, at a size and length it renders: the remix is all that is wrong.
    veo = 'backend = "veo"\nsize = "1280x720"\nseconds = 4\n'
    bad = MINIMAL + f'[shots.green]\n{veo}scene = "Green."\n'
    bad += f'[shots.blue]\n{veo}remix = {{ shot = "green", prompt = "blue" }}\n'
    check(bad, "shots.blue.remix: veo model veo-3.1-generate-preview cannot remix a video")


# The real command line, in a child process: its exit code and a stderr with no traceback.
@pytest.mark.parametrize(
    ("toml", "args", "expected"),
    [
        (MINIMAL + "\n[shots.broken\n", [], "film.toml: invalid TOML"),
        (MINIMAL.replace('needs = ["river"]', 'needs = ["rivr"]'), [], "no shot named `rivr`"),
        (MINIMAL, ["--profile", "final"], "no [profiles.final]"),
        (None, [], "no such file"),
    ],
    ids=["malformed-toml", "unknown-shot", "unknown-profile", "missing-manifest"],
)
def test_the_command_line_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, toml: str | None, args: list[str], expected: str
) -> None:
    manifest = tmp_path / "film" / "film.toml"
    if toml is not None:
        gen(manifest.parent, {"film.toml": toml})
    result = runner("plan", manifest, *args, cache=tmp_path / "cache", child=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("runner: error: "), result.stderr
    assert expected in result.stderr and result.stderr.count("\n") == 1, result.stderr


# Hostile and unlucky input: each ends in one clear message, never "internal error".
def test_toml_nested_hundreds_deep_is_invalid_toml_not_a_crash(check: Check) -> None:
    check(MINIMAL + f"deep = {'[' * 600}{']' * 600}\n", "film.toml: invalid TOML", "nested")


def test_a_lock_nested_hundreds_deep_is_named(check: Check) -> None:
    lock = f"version = 1\nnodes = {'[' * 600}{']' * 600}\n"
    check(MINIMAL, "film.lock: not a readable lock file", "nested", files={"film.lock": lock})


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ('sequence = [{ shot = "river", end = inf }, "sky"]', "edit.sequence[0].end"),
        ('sequence = [{ shot = "river", start = 1e308 }]', "edit.sequence[0].start"),
        (
            'sequence = ["river", { shot = "sky", transition = { kind = "crossfade", '
            "seconds = inf } }]",
            "edit.sequence[1].transition.seconds",
        ),
        ('transition = { kind = "crossfade", seconds = nan }', "edit.transition.seconds"),
    ],
)
def test_infinite_or_huge_times_in_the_edit_name_the_key(
    check: Check, edit: str, where: str
) -> None:
    err = check(MINIMAL + f"\n[edit]\n{edit}\n", where)
    assert "valid string" not in err  # the union's other member is not the problem


@pytest.mark.parametrize(
    ("edit", "where", "why"),
    [
        ('sequence = [{ shot = "river", start = 2 }]', "edit.sequence[0].start", "not before"),
        ('sequence = [{ shot = "river", end = 5 }]', "edit.sequence[0].end", "past the end"),
        (
            'sequence = ["river", { shot = "sky", transition = { kind = "crossfade", '
            "seconds = 3 } }]",
            "edit.sequence[1].transition.seconds",
            "longer than clip",
        ),
    ],
)
def test_trims_and_crossfades_beyond_the_shot_fail_the_plan_at_the_key(
    check: Check, edit: str, where: str, why: str
) -> None:
    check(MINIMAL + f"\n[edit]\n{edit}\n", where, why, "1 s")


def test_a_prompt_longer_than_previz_takes_names_the_limit_and_the_length(check: Check) -> None:
    bad = MINIMAL.replace('scene = "Riverbank at dusk."', f'prompt = "{"x" * 150_000}"')
    check(bad, "shots.river", "100000", "characters")


def test_a_cache_dir_that_is_a_file_is_named(
    tmp_path: Path, plan: Callable[..., tuple[int, str]]
) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL, "cachefile": "not a folder"})
    for cache in (film / "cachefile", film / "cachefile" / "inner"):
        code, err = plan(film / "film.toml", "--cache-dir", cache)
        assert code == 2, err
        assert f"{cache} (--cache-dir): is a file" in err and "internal" not in err


def test_a_full_disk_names_the_folder_and_the_free_space_and_leaves_nothing_half_written(
    tmp_path: Path, plan: Callable[..., tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    film = gen(tmp_path / "film", {"film.toml": MINIMAL})
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the store's write: the first byte that must land
    code, err = plan(film / "film.toml")
    assert code == 1, err
    assert err.count("\n") == 1 and "internal" not in err, err
    assert "no space left on the device" in err and " free)" in err
    assert str(tmp_path / "cache") in err  # the folder that is full
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the next run just works
    assert plan(film / "film.toml")[0] == 0


def test_problems_in_several_shots_are_reported_together(check: Check) -> None:
    bad = MINIMAL.replace('scene = "Riverbank at dusk."', 'scene = "Dusk."\nseconds = 90')
    bad = bad.replace('scene = "The lantern rises."', 'scene = "Rises."\nseconds = 120')
    check(bad, "shots.river.seconds: 90 is longer than previz", "shots.sky.seconds: 120")


RIVER = 'cast = ["mara"]'


@pytest.mark.parametrize(
    ("old", "new", "where", "why"),
    [
        (
            "[style]",
            '[edit]\nmusic = { asset = "assets.score" }\n\n[style]',
            "edit.music.asset",
            "`assets.score` is not a declared asset",
        ),
        (
            "[style]",
            '[assets.score]\npath = "score.wav"\n\n[edit]\nmusic = { asset = "score" }\n\n[style]',
            "edit.music.asset",
            'write "assets.NAME" for an [assets.NAME] table holding an audio file',
        ),
        (
            RIVER,
            RIVER + '\nvoiceover = { asset = "assets.vo_river", at = 0.5 }',
            "shots.river.voiceover.asset",
            "`assets.vo_river` is not a declared asset",
        ),
        (
            RIVER,
            RIVER + '\ndialogue = [{ who = "mara", line = "Go on.", at = 0.75, until = 0.5 }]',
            "shots.river.dialogue[0].until",
            "0.5 s is not after at = 0.75 s",
        ),
        (
            RIVER,
            RIVER + '\ndialogue = [{ who = "mara", line = "Go on.", at = 0.5, until = 0.5 }]',
            "shots.river.dialogue[0].until",
            "0.5 s is not after at = 0.5 s",
        ),
        (
            "[style]",
            '[edit]\nsubtitles = "hard"\n\n[style]',
            "edit.subtitles",
            "'soft', 'burn' or 'off' (got 'hard')",
        ),
        (
            "[style]",
            "[edit]\nsubtitles = true\n\n[style]",
            "edit.subtitles",
            "'soft', 'burn' or 'off' (got True)",
        ),
        (
            "fps = 24",
            'fps = 24\nlanguage = "English"',
            "film.language",
            "'English' is not a language code: ISO 639 in lower case, e.g. \"en\"",
        ),
    ],
    ids=[
        "music-unknown-asset",
        "music-not-an-asset-reference",
        "voiceover-unknown-asset",
        "until-before-at",
        "until-at-at",
        "subtitles-unknown-mode",
        "subtitles-not-a-string",
        "language-not-a-code",
    ],
)
def test_a_bad_sound_or_subtitle_setting_is_one_line_at_its_key(
    check: Check, old: str, new: str, where: str, why: str
) -> None:
    assert old in MINIMAL
    err = check(MINIMAL.replace(old, new, 1), f"film.toml: {where}: ", why)
    assert err.count("\n") == 1, err  # one problem, one line


def test_a_relative_cache_dir_renders_like_an_absolute_one(tmp_path: Path) -> None:
    """Reproduced: `--cache-dir c` failed the edit ("Error opening input file c/cas/..."):
    ffmpeg runs in a scratch folder, where the relative path names nothing."""
    gen(tmp_path / "film", {"film.toml": MINIMAL})
    result = run_cli(
        ["render", "film/film.toml", "--cache-dir", "c"],
        {k: v for k, v in os.environ.items() if k != "RUNNER_CACHE_DIR"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "film" / "out" / "film.mp4").is_file() and (tmp_path / "c" / "cas").is_dir()
