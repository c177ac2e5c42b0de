"""`runner export`: the cut read back with the real opentimelineio and its adapters matches the
manifest's edit and the assembled film, to the frame."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import opentimelineio as otio
import pytest

from runner.cli.main import main
from tests.conftest_media import video_frames
from tests.films import gen, runner

# 1 s shots at 24 fps: river trimmed in by 6 frames; sky's take 2, trimmed out at frame 21,
# dissolving in over 6 frames; town cut in whole.
FILM = """\
[film]
title = "Export Film"
size = "160x90"
fps = 24

[defaults]
seconds = 1

[characters.mara]
description = "a girl of ten in a blue raincoat"

[shots.river]
scene = "Riverbank at dusk."
cast = ["mara"]
dialogue = [{ who = "mara", line = "Go on." }]

[shots.sky]
scene = "The lantern rises."
takes = 2
pick = 2

[shots.town]
scene = "The town."

[edit]
sequence = [
  { shot = "river", start = 0.25 },
  { shot = "sky", end = 0.875, transition = { kind = "crossfade", seconds = 0.25 } },
  "town",
]
"""
# (clip name, source in, source out) as an editor sees them, and the dissolve into sky: the
# outgoing clip stops 6 frames early and plays those frames as its handle under the dissolve.
CUT = [("river", 6, 18), ("sky take 2", 0, 21), ("town", 0, 24)]
FILM_FRAMES = (24 - 6) + 21 + 24 - 6


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    manifest = gen(root / "film", {"film.toml": FILM}) / "film.toml"
    cache = root / "cache"
    result = runner("render", manifest, cache=cache)
    assert result.returncode == 0, result.stderr
    # The dialogue puts the sound layers over the cut ("picture", then the mux "edit"); the
    # review page, like the export, reads the cut from the node that holds it.
    assert "warning" not in result.stderr, result.stderr
    assert (manifest.parent / "out" / "review" / "index.html").is_file()
    return manifest, cache


def export(
    manifest: Path, cache: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str]:
    """Export as fmt; the path printed, and what was said on stderr."""
    capsys.readouterr()
    assert main(["export", str(manifest), "--format", fmt, "--cache-dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    return Path(out.strip()), err


def items(track: Any) -> list[tuple[str, Any, Any]]:
    """A track as (kind, name or offsets, range) in order."""
    found: list[tuple[str, Any, Any]] = []
    for item in track:
        if isinstance(item, otio.schema.Transition):
            found.append(("dissolve", item.in_offset.value, item.out_offset.value))
        else:
            r = item.source_range
            start = round(r.start_time.value * 24 / r.start_time.rate)
            end = start + round(r.duration.value * 24 / r.duration.rate)
            found.append(("clip", item.name, (start, end)))
    return found


def expected(dissolve: bool) -> list[tuple[str, Any, Any]]:
    clips = [("clip", name, (first, last)) for name, first, last in CUT]
    if dissolve:
        return [clips[0], ("dissolve", 0, 6), clips[1], clips[2]]
    # cuts only: the dissolve becomes a cut at its middle
    return [("clip", "river", (6, 21)), ("clip", "sky take 2", (3, 21)), clips[2]]


@pytest.mark.parametrize(
    ("fmt", "suffix", "dissolve", "audio"),
    [
        ("otio", ".otio", True, True),
        ("edl", ".edl", True, False),
        ("fcp7xml", ".xml", True, True),
        ("fcpxml", ".fcpxml", False, True),
    ],
)
def test_the_exported_cut_reads_back_as_the_manifests_edit_and_the_films_length(
    rendered: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    suffix: str,
    dissolve: bool,
    audio: bool,
) -> None:
    manifest, cache = rendered
    path, warning = export(manifest, cache, fmt, capsys)
    assert path == manifest.parent / "out" / f"film{suffix}"
    back = otio.adapters.read_from_file(str(path))
    video = back.video_tracks()
    assert len(video) == 1
    assert items(video[0]) == expected(dissolve)
    if audio:
        assert len(back.audio_tracks()) == 1
        assert items(back.audio_tracks()[0]) == expected(dissolve)
    film = manifest.parent / "out" / "film.mp4"
    assert round(back.duration().value * 24 / back.duration().rate) == FILM_FRAMES
    assert video_frames(film) == FILM_FRAMES
    if fmt == "fcpxml":
        assert "holds cuts only: 1 crossfade became a cut" in warning
    else:
        assert warning == ""


def test_otio_clips_carry_their_node_key_and_prompt_and_link_stable_media(
    rendered: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = rendered
    back = otio.adapters.read_from_file(str(export(manifest, cache, "otio", capsys)[0]))
    clips = list(back.video_tracks()[0].find_clips())
    meta = [c.metadata["runner"] for c in clips]
    assert [m["node"] for m in meta] == ["shots.river", "shots.sky.take2", "shots.town"]
    assert all(len(m["key"]) == 64 for m in meta)
    assert [m["prompt"].split("\n")[0] for m in meta] == [
        "Riverbank at dusk.",
        "The lantern rises.",
        "The town.",
    ]
    media = manifest.parent / "out" / "media"
    assert sorted(p.name for p in media.iterdir()) == [
        "river.take1.mp4",
        "sky.take2.mp4",
        "town.take1.mp4",
    ]
    for clip, m in zip(clips, meta, strict=True):
        file = Path(clip.media_reference.target_url.removeprefix("file://"))
        assert file.parent == media.resolve()
        blob = cache / "cas" / m["sha256"][:2] / m["sha256"]
        assert os.path.samefile(file, blob)  # a hard link into the cache, no copy
        assert clip.media_reference.available_range.duration.value == 24


def test_export_before_render_says_what_to_run_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = gen(tmp_path / "film", {"film.toml": FILM}) / "film.toml"
    code = main(["export", str(manifest), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert "not rendered yet; run `runner render" in err
    assert "shots.sky.take2" in err
    assert not (tmp_path / "film" / "out").exists()
