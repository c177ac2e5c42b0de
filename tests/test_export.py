"""`runner export`: the cut read back with the real opentimelineio and its adapters matches the
manifest's edit and the assembled film, to the frame."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import opentimelineio as otio
import pytest

from runner.cli.main import main
from tests.conftest_media import ff, video_frames
from tests.films import gen, runner

# 1 s shots at 24 fps: river trimmed in by 6 frames; sky's take 2, trimmed out at frame 21,
# dissolving in over 6 frames; town cut in whole. Over them a 0.7 s score entering at 0.5 s,
# looped; a 0.5 s voice-over half a second into sky and one 0.75 s into town (cut short by the
# film's end); a timed line on river and a whole-shot line on town.
FILM = """\
[film]
title = "Export Film"
size = "160x90"
fps = 24

[defaults]
seconds = 1

[characters.mara]
description = "a girl of ten in a blue raincoat"

[assets.score]
path = "score.wav"

[assets.vo_sky]
path = "vo_sky.wav"

[assets.vo_town]
path = "vo_town.wav"

[shots.river]
scene = "Riverbank at dusk."
cast = ["mara"]
dialogue = [{ who = "mara", line = "Go on.", at = 0.5, until = 0.75 }]

[shots.sky]
scene = "The lantern rises."
takes = 2
pick = 2
voiceover = { asset = "assets.vo_sky", at = 0.5 }

[shots.town]
scene = "The town."
dialogue = [{ who = "mara", line = "There it goes." }]
voiceover = { asset = "assets.vo_town", at = 0.75 }

[edit]
sequence = [
  { shot = "river", start = 0.25 },
  { shot = "sky", end = 0.875, transition = { kind = "crossfade", seconds = 0.25 } },
  "town",
]
music = { asset = "assets.score", start = 0.5, fade = 0.1 }
"""
# (clip name, source in, source out) as an editor sees them, and the dissolve into sky: the
# outgoing clip stops 6 frames early and plays those frames as its handle under the dissolve.
CUT = [("river", 6, 18), ("sky take 2", 0, 21), ("town", 0, 24)]
FILM_FRAMES = (24 - 6) + 21 + 24 - 6
# Film frames [first, last): the score's passes (each from its exact sample: 0.7 s is 16.8
# frames), the voice-overs (sky is shown from frame 12, town from 33) and the cues.
MUSIC = [("score", 12, 29), ("score", 29, 46), ("score", 46, 57)]
VOICES = [("vo_sky", 24, 36), ("vo_town", 51, 57)]
CUES = [(6, 12), (33, 57)]


def film_folder(root: Path) -> Path:
    """FILM with its score and voice-overs (sine tones); returns the manifest's path."""
    manifest = gen(root, {"film.toml": FILM}) / "film.toml"
    for name, seconds in (("score", 0.7), ("vo_sky", 0.5), ("vo_town", 0.5)):
        tone = ["-f", "lavfi", "-i", f"sine=f=330:d={seconds}", "-ar", "48000"]
        ff(*tone, "-c:a", "pcm_s16le", str(root / f"{name}.wav"))
    return manifest


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    manifest = film_folder(root / "film")
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
    # The shots' own sound, then the music and the voice-overs (EDL: the picture only).
    assert len(back.audio_tracks()) == (3 if audio else 0)
    if audio:
        assert items(back.audio_tracks()[0]) == expected(dissolve)
    film = manifest.parent / "out" / "film.mp4"
    assert round(back.duration().value * 24 / back.duration().rate) == FILM_FRAMES
    assert video_frames(film) == FILM_FRAMES
    said = [line for line in warning.splitlines() if line]
    if fmt == "fcpxml":
        assert said == [
            "runner: warning: fcpxml holds cuts only: 1 crossfade became a cut at the middle "
            "of the dissolve (the film's length is kept); export otio or fcp7xml to keep them"
        ]
    elif fmt == "edl":
        assert len(said) == 2, said
        assert "edl holds the picture track only: the music and voice-over tracks are" in said[0]
        assert "edl keeps 2 subtitle cues as LOC comments" in said[1]
        assert "first frame but not their last" in said[1]
    else:
        assert warning == ""


def placed(track: Any) -> list[tuple[str, int, int]]:
    """A track's clips as (name, first film frame, one past its last)."""
    out = []
    for clip in track.find_clips():
        where = clip.range_in_parent()
        first = round(where.start_time.value * 24 / where.start_time.rate)
        out.append(
            (clip.name, first, first + round(where.duration.value * 24 / where.duration.rate))
        )
    return out


def srt_frames(srt: str) -> list[tuple[int, int]]:
    """The cues of an SRT file as film frames [first, last)."""

    def frame(stamp: str) -> int:
        h, m, rest = stamp.split(":")
        sec, ms = rest.split(",")
        return round((int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000) * 24)

    times = re.findall(r"(\S+) --> (\S+)", srt)
    return [(frame(a), frame(b)) for a, b in times]


def cue_markers(back: Any, ranged: bool) -> list[tuple[str, int, int | None]]:
    """The cue markers, wherever the format keeps them (the timeline, else the picture's
    clips), as (name, first film frame, one past the last; None when only the start is kept)."""

    def frames(t: Any) -> int:
        return round(t.value * 24 / t.rate)

    found: list[tuple[str, int, int | None]] = []
    for m in back.tracks.markers:
        r = m.marked_range
        found.append((m.name, frames(r.start_time), frames(r.end_time_exclusive())))
    for clip in back.video_tracks()[0].find_clips():
        shift = frames(clip.range_in_parent().start_time) - frames(clip.source_range.start_time)
        for m in clip.markers:
            first = frames(m.marked_range.start_time) + shift
            last = frames(m.marked_range.duration) + first if ranged else None
            if ranged or m.name not in [f[0] for f in found]:
                # (The EDL writer repeats an outgoing clip's LOC under the dissolve's event.)
                found.append((m.name, first, last))
    return sorted(found, key=lambda m: m[1])


@pytest.mark.parametrize(
    ("fmt", "suffix", "ranged"),
    [("otio", ".otio", True), ("fcp7xml", ".xml", True), ("fcpxml", ".fcpxml", True),
     ("edl", ".edl", False)],
)  # fmt: skip
def test_the_music_voice_overs_and_cues_sit_where_the_mix_and_the_srt_put_them(
    rendered: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    suffix: str,
    ranged: bool,
) -> None:
    manifest, cache = rendered
    back = otio.adapters.read_from_file(str(export(manifest, cache, fmt, capsys)[0]))
    srt = (manifest.parent / "out" / "film.srt").read_text()
    assert srt_frames(srt) == CUES
    names = ["Mara: Go on.", "Mara: There it goes."]
    if ranged:
        want = [(n, first, last) for n, (first, last) in zip(names, CUES, strict=True)]
    else:  # an EDL's LOC comment: the first frame, the name in capitals
        want = [(n.upper(), first, None) for n, (first, _) in zip(names, CUES, strict=True)]
    assert cue_markers(back, ranged) == want
    if fmt == "edl":
        return
    music, voices = back.audio_tracks()[1:]
    assert placed(music) == MUSIC
    assert placed(voices) == VOICES
    folder = manifest.parent.resolve()
    assert [file_of(c) for c in voices.find_clips()] == [
        folder / "vo_sky.wav",
        folder / "vo_town.wav",
    ]
    for clip in music.find_clips():  # each pass from the score's start
        assert clip.source_range.start_time.value == 0
        assert file_of(clip) == folder / "score.wav"
    # Where the mix put them: its recorded argv delays the score and each voice by its start
    # sample.
    provenance = json.loads((manifest.parent / "out" / "film.provenance.json").read_text())
    argv = {n["id"]: " ".join(n.get("argv", [])) for n in provenance["nodes"]}
    voice_firsts = [first for _, first, _ in VOICES]
    for node, firsts in (("audio.music", [MUSIC[0][1]]), ("audio.mix", voice_firsts)):
        delays = re.findall(r"adelay=delays=(\d+)S", argv[node])
        assert [round(int(d) * 24 / 48_000) for d in delays] == firsts


def file_of(clip: Any) -> Path:
    return Path(clip.media_reference.target_url.removeprefix("file://"))


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
    manifest = film_folder(tmp_path / "film")
    code = main(["export", str(manifest), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert "not rendered yet; run `runner render" in err
    assert "shots.sky.take2" in err
    assert not (tmp_path / "film" / "out").exists()


def test_overlapping_voice_overs_go_on_a_second_track_and_an_edl_drops_both(
    tmp_path: Path,
) -> None:
    from runner.media import timeline

    def vo(name: str, first: int) -> timeline.Sound:
        return timeline.Sound(name, tmp_path / f"{name}.wav", first, 24, 24)

    made = timeline.build("t", 24, [], {}, {"Voice-over": [vo("b", 12), vo("a", 0), vo("c", 30)]})
    assert [(t.name, placed(t)) for t in made.audio_tracks()[1:]] == [  # after A1
        ("Voice-over", [("a", 0, 24), ("c", 30, 54)]),
        ("Voice-over 2", [("b", 12, 36)]),
    ]
    assert timeline.drop_sound(made, {"Voice-over"}) == 3
    assert [t.name for t in made.tracks] == ["V1", "A1"]
