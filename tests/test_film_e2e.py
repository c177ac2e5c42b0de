"""End to end: the real command line, the real previz backend and the real ffmpeg."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.digest import file_digest
from tests.films import gen, runner

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-DO-NOT-LEAK-4242"

FILM = """\
[film]
title = "Small Lantern"
size = "320x180"
fps = 24

[defaults]
seconds = 1.5

[limits.previz]
concurrency = 2

[style]
look = "35mm film, soft grain"
avoid = ["on-screen text"]

[characters.mara]
description = "a girl of ten in a blue raincoat"

[assets.ref]
path = "assets/ref.png"

[shots.harbor]
scene = "A river town at dusk."

[shots.river]
scene = "Mara kneels at the water's edge."
cast = ["mara"]
image = "assets.ref"

[shots.sky]
needs = ["river"]
image = { shot = "river", frame = "last" }
scene = "The lantern rises."
takes = 2
pick = 2

[shots.end]
scene = "Lanterns fill the sky."

[edit]
sequence = ["harbor", { shot = "river", start = 0.25 }, "sky",
            { shot = "end", transition = { kind = "crossfade", seconds = 0.5 } }]
"""


def png() -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def film(tmp_path: Path) -> Path:
    """The film, never rendered."""
    gen(tmp_path / "film", {"film.toml": FILM, "assets/ref.png": png()})
    return tmp_path / "film" / "film.toml"


@dataclass
class FirstRender:
    """The film rendered once for the whole module, kept pristine, and its first run."""

    root: Path
    result: subprocess.CompletedProcess[str]

    @property
    def out(self) -> Path:
        return self.root / "pristine" / "film" / "out"


# Tests of the module's one render run in one pytest-xdist worker (`--dist loadgroup`), so the
# film is rendered once, not once per worker.
one_render = pytest.mark.xdist_group("film_e2e_first_render")


@pytest.fixture(scope="module")
def first_render(tmp_path_factory: pytest.TempPathFactory) -> FirstRender:
    """Render the film once per module, with an API key in the environment (which no file
    may hold), and keep the film folder and its cache as they were after that run."""
    root = tmp_path_factory.mktemp("rendered")
    manifest = gen(root / "film", {"film.toml": FILM, "assets/ref.png": png()}) / "film.toml"
    result = runner("render", manifest, cache=root / "cache", env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("film", "cache"):
        shutil.copytree(root / name, root / "pristine" / name)
    return FirstRender(root, result)


@pytest.fixture
def rendered_film(first_render: FirstRender) -> Path:
    """The film as the module's first render left it, for this test to change: the folder and
    cache are restored from the pristine copy at the same path (the cache keys a film's own
    state by its path, as on a user's machine)."""
    for name in ("film", "cache"):
        shutil.rmtree(first_render.root / name, ignore_errors=True)
        shutil.copytree(first_render.root / "pristine" / name, first_render.root / name)
    return first_render.root / "film" / "film.toml"


def render(manifest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = runner("render", manifest, *args, cache=manifest.parent.parent / "cache")
    assert "Traceback" not in result.stderr
    return result


def rendered(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Node ids the run made (not taken from the cache), from its plain progress lines."""
    return sorted(re.findall(r"\] done\s+(\S+)", result.stderr))


def plan_json(manifest: Path) -> dict[str, object]:
    result = runner("plan", manifest, "--json", cache=manifest.parent.parent / "cache")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@one_render
def test_render_then_rerender_nothing_and_identical_bytes(
    first_render: FirstRender, rendered_film: Path
) -> None:
    film = rendered_film
    assert rendered(first_render.result) == [
        "edit",
        "frames.river.last",
        "shots.end",
        "shots.harbor",
        "shots.river",
        "shots.sky.take1",
        "shots.sky.take2",
    ]
    movie = (first_render.out / "film.mp4").read_bytes()
    second = render(film)
    assert second.returncode == 0, second.stderr
    assert rendered(second) == []
    assert (film.parent / "out" / "film.mp4").read_bytes() == movie
    assert plan_json(film)["to_render"] == 0


@one_render
def test_editing_one_prompt_rerenders_that_shot_its_dependents_and_the_edit(
    rendered_film: Path,
) -> None:
    film = rendered_film
    film.write_text(FILM.replace("Mara kneels at the water's edge.", "Mara stands on the bridge."))
    plan = plan_json(film)
    statuses = {n["id"]: n["status"] for n in plan["nodes"]}  # type: ignore[attr-defined]
    assert {k for k, v in statuses.items() if v != "cached"} == {
        "shots.river",
        "frames.river.last",
        "shots.sky.take1",
        "shots.sky.take2",
        "edit",
    }
    river = next(n for n in plan["nodes"] if n["id"] == "shots.river")  # type: ignore[attr-defined]
    assert river["reasons"] == ["prompt changed"]
    again = render(film)
    assert again.returncode == 0, again.stderr
    assert rendered(again) == [
        "edit",
        "frames.river.last",
        "shots.river",
        "shots.sky.take1",
        "shots.sky.take2",
    ]


@one_render
def test_changing_pick_renders_no_shot(rendered_film: Path) -> None:
    film = rendered_film
    film.write_text(FILM.replace("pick = 2", "pick = 1"))
    assert rendered(render(film)) == ["edit"]


@one_render
def test_deleted_out_is_reassembled_byte_identical_from_the_cache(rendered_film: Path) -> None:
    out = rendered_film.parent / "out"
    movie = (out / "film.mp4").read_bytes()
    record = (out / "film.provenance.json").read_bytes()
    shutil.rmtree(out)
    again = render(rendered_film)
    assert again.returncode == 0
    assert rendered(again) == []
    assert (out / "film.mp4").read_bytes() == movie
    assert (out / "film.provenance.json").read_bytes() == record


@one_render
def test_another_machine_with_an_empty_cache_makes_the_same_bytes(
    first_render: FirstRender, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(first_render.out.parent, clone, ignore=shutil.ignore_patterns("out"))
    again = runner("render", clone / "film.toml", cache=tmp_path / "other-cache")
    assert again.returncode == 0, again.stderr
    for name in ("film.mp4", "film.provenance.json"):
        assert (clone / "out" / name).read_bytes() == (first_render.out / name).read_bytes()


@one_render
def test_provenance_is_complete_tagged_into_the_film_and_holds_no_secret(
    first_render: FirstRender,
) -> None:
    # The module's render ran with OPENAI_API_KEY=SECRET in its environment.
    out = first_render.out
    cache = first_render.root / "pristine" / "cache"
    record = json.loads((out / "film.provenance.json").read_text())
    assert record["version"] == 1
    nodes = {n["id"]: n for n in record["nodes"]}
    river = nodes["shots.river"]
    assert river["backend"] == "previz"
    assert river["prompt"].startswith("Mara kneels at the water's edge.")
    assert river["inputs"]["image"]["node"] == "assets.ref"
    assert river["output_sha256"] == file_digest(
        cache / "cas" / river["output_sha256"][:2] / river["output_sha256"]
    )
    assert record["assembly"]["ffmpeg"]
    # Per cut, how its video got into the film: previz cards are H.264 High at the film's
    # size and rate, so whole clips are copied; the river's trim starts off its keyframe.
    decisions = record["assembly"]["clips"]
    assert len(decisions) == len(record["assembly"]["cuts"])
    assert decisions[0] == {"video": "copy", "copied_frames": 36}, decisions
    # The record's digest is in the MP4's metadata.
    from runner.media import ffmpeg

    digest = file_digest(out / "film.provenance.json")
    meta = subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-hide_banner", "-i", str(out / "film.mp4"), "-f", "ffmetadata", "-"],
        capture_output=True,
        text=True,
    ).stdout
    assert f"runner-provenance-sha256:{digest}" in meta
    # The API key is in the environment, and in no file the runner wrote.
    for path in [*out.rglob("*"), *cache.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_killed_mid_render_resumes_without_redoing_finished_shots(tmp_path: Path) -> None:
    shots = "".join(f'[shots.s{i}]\nscene = "Shot {i}."\n' for i in range(8))
    toml = FILM.split("[shots.harbor]")[0].replace("concurrency = 2", "concurrency = 1") + shots
    manifest = gen(tmp_path / "film", {"film.toml": toml, "assets/ref.png": png()}) / "film.toml"
    cache = tmp_path / "cache"
    env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "render", str(manifest)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    finished: list[str] = []
    for line in proc.stderr:
        finished += re.findall(r"\] done\s+(\S+)", line)
        if len(finished) == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    time.sleep(0.1)
    # Nothing half-written looks finished: every blob's name is its content's digest.
    for blob in (cache / "cas").rglob("*"):
        if blob.is_file():
            assert file_digest(blob) == blob.name
    again = render(manifest)
    assert again.returncode == 0, again.stderr
    redone = set(rendered(again)) & set(finished)
    assert redone == set(), f"rendered twice: {redone}"
    assert len(rendered(again)) == 8 + 1 - len(finished)


@one_render
def test_status_graph_and_show(film: Path, rendered_film: Path) -> None:
    status = runner("status", film, cache=film.parent.parent / "cache")
    assert "missing  shots.river" in status.stdout
    film = rendered_film  # the same film, rendered
    cache = film.parent.parent / "cache"
    film.write_text(FILM.replace("A river town at dusk.", "A river town at night."))
    status = runner("status", film, cache=cache)
    assert re.search(r"stale\s+shots.harbor\s+prompt changed", status.stdout), status.stdout
    graph = runner("graph", film, "--format", "dot", cache=cache)
    assert '"frames.river.last" -> "shots.sky.take2";' in graph.stdout
    show = runner("show", film, "river", cache=cache)
    assert show.stdout.startswith("Mara kneels at the water's edge.\nMara: a girl of ten")
    assert show.stdout.endswith("Avoid: on-screen text.\n")


def test_example_film_renders(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "films" / "lantern", tmp_path / "lantern", ignore=shutil.ignore_patterns("out")
    )
    manifest = tmp_path / "lantern" / "film.toml"
    result = runner("render", manifest, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    from runner.media import ffmpeg

    info = ffmpeg.probe(tmp_path / "lantern" / "out" / "film.mp4")
    assert (info.width, info.height) == (1280, 720)
    assert info.has_audio
    # 6 clips of 4 s, minus the river trim (0.25), the together trim (0.25), two crossfades.
    assert abs(info.duration - (24 - 0.25 - 0.25 - 0.5 - 0.75)) < 0.1
    out = tmp_path / "lantern" / "out"
    report = ffmpeg._capture([ffmpeg.ffmpeg_exe(), "-hide_banner", "-i", str(out / "film.mp4")])
    assert re.search(r"\(eng\): Subtitle: mov_text", report), report
    # river starts 4 s in, trimmed 0.25 s: its 3-4 s line plays 6.75-7.75; balcony starts at
    # 4 + 3.75 + 4 - 0.5 + 4 = 15.25, its 2.5-4 s line 17.75-19.25 (then the crossfade out).
    assert (out / "film.srt").read_text() == (
        "1\n00:00:06,750 --> 00:00:07,750\nGo on. Find her.\n\n"
        "2\n00:00:17,750 --> 00:00:19,250\nThere you are.\n"
    )
    assert "00:00:17.750 --> 00:00:19.250\n<v Nana>There you are." in (out / "film.vtt").read_text()
    integrated, peak = ffmpeg.loudness(out / "film.mp4")
    assert abs(integrated - -16) <= 1 and peak <= -1, (integrated, peak)
    provenance = json.loads((out / "film.provenance.json").read_text())
    stem = next(n for n in provenance["nodes"] if n["id"] == "audio.music")["output_sha256"]
    blob = tmp_path / "cache" / "cas" / stem[:2] / stem
    ducked = ebur128(blob, 6.95, 7.55)
    around = min(ebur128(blob, 5.6, 6.4), ebur128(blob, 8.1, 8.9))
    assert around - ducked >= 8 - 1, (around, ducked)
    # A louder score re-mixes and re-muxes; no shot renders and the picture is not cut again.
    manifest.write_text(manifest.read_text().replace("gain_db = -14", "gain_db = -10"))
    plan = runner("plan", manifest, "--json", cache=tmp_path / "cache")
    nodes = json.loads(plan.stdout)["nodes"]
    assert {n["id"] for n in nodes if n["status"] != "cached"} == {
        "audio.music",
        "audio.mix",
        "edit",
    }


def ebur128(path: Path, start: float, end: float) -> float:
    """Integrated loudness (LUFS) of a file's audio between two times, by ffmpeg's ebur128."""
    from runner.media import ffmpeg

    argv = [ffmpeg.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    argv += ["-af", f"atrim={start}:{end},ebur128", "-f", "null", "-"]
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", ffmpeg._capture(argv))[-1])


def test_a_target_renders_that_shot_with_what_it_needs_and_nothing_else(film: Path) -> None:
    first = render(film, "--target", "sky")  # every take, after the shot it starts from
    assert first.returncode == 0, first.stderr
    assert rendered(first) == [
        "frames.river.last",
        "shots.river",
        "shots.sky.take1",
        "shots.sky.take2",
    ]
    assert not (film.parent / "out" / "film.mp4").exists()
    assert (film.parent / "out" / "review" / "index.html").is_file()  # the takes it made
    rest = render(film)
    assert rest.returncode == 0, rest.stderr
    assert not set(rendered(rest)) & set(rendered(first))  # made once, then cached
    assert {"shots.harbor", "shots.end", "edit"} <= set(rendered(rest))
    assert (film.parent / "out" / "film.mp4").is_file()


def test_a_target_named_like_both_a_shot_and_a_node_asks_which(tmp_path: Path) -> None:
    toml = FILM.replace("[shots.end]", '[shots.edit]\nscene = "A shot named edit."\n\n[shots.end]')
    manifest = gen(tmp_path / "film", {"film.toml": toml, "assets/ref.png": png()}) / "film.toml"
    both = render(manifest, "--target", "edit")
    assert both.returncode == 2
    assert "--target edit: both a shot and a node are named so; write shots.edit" in both.stderr
    shot = render(manifest, "--target", "shots.edit")
    assert shot.returncode == 0, shot.stderr
    assert rendered(shot) == ["shots.edit"]
