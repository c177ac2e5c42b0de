"""Sound and words over the cut: the layer nodes, cue timing, the ducked music, the mix, the mux."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from runner.backends.registry import Backends
from runner.film import builder
from runner.film.manifest import Manifest
from runner.media import assemble, ffmpeg, soundtrack
from tests.conftest_media import DirCache, ff, make_clips, sha256

FILM = """\
[film]
title = "Sound"
size = "160x90"
fps = 24
language = "en"

[defaults]
seconds = 1

[assets.score]
path = "score.m4a"

[assets.vo]
path = "vo.wav"

[shots.a]
scene = "A quay."
dialogue = [{ who = "mara", line = "Go on.", at = 0.25, until = 0.75 }]

[shots.b]
scene = "A sky."
voiceover = { asset = "assets.vo", at = 0.5 }

[edit]
sequence = [{ shot = "a", start = 0.25 },
            { shot = "b", transition = { kind = "crossfade", seconds = 0.25 } }]
music = { asset = "assets.score", gain_db = -14, duck_db = 8, fade = 0.1 }
"""


def graph(tmp_path: Path, text: str = FILM) -> builder.Graph:  # type: ignore[name-defined]
    (tmp_path / "score.m4a").write_bytes(b"x")
    (tmp_path / "vo.wav").write_bytes(b"x")
    manifest = Manifest.model_validate(tomllib.loads(text))
    return builder.build(manifest, tmp_path, None, "film.toml", Backends())


def digests(g: builder.Graph) -> dict[str, str]:  # type: ignore[name-defined]
    return {nid: node.recipe_digest for nid, node in g.nodes.items()}


def test_music_voiceover_and_dialogue_become_layer_nodes_over_the_cut(tmp_path: Path) -> None:
    g = graph(tmp_path)
    assert {"picture", "audio.music", "audio.mix", "subtitles", "edit"} <= set(g.nodes)
    edit = g.nodes["edit"]
    assert edit.recipe["kind"] == "mux"
    assert edit.inputs == {"picture": "picture", "audio": "audio.mix", "subtitles": "subtitles"}
    assert g.nodes["audio.mix"].inputs["music"] == "audio.music"
    assert g.nodes["audio.mix"].inputs["vo0"] == "assets.vo"
    assert g.nodes["picture"].recipe["audio"] == "alac"  # lossless until the one AAC encode


def test_changing_the_music_gain_changes_only_the_music_recipe(tmp_path: Path) -> None:
    before = digests(graph(tmp_path))
    after = digests(graph(tmp_path, FILM.replace("gain_db = -14", "gain_db = -10")))
    assert {nid for nid in before if before[nid] != after[nid]} == {"audio.music"}


def test_dialogue_timing_is_not_part_of_the_shots_request(tmp_path: Path) -> None:
    before = digests(graph(tmp_path))
    after = digests(graph(tmp_path, FILM.replace("at = 0.25, until = 0.75", "at = 0.5")))
    assert {nid for nid in before if before[nid] != after[nid]} == {"audio.music", "subtitles"}


def test_a_film_without_sound_or_words_keeps_the_plain_edit(tmp_path: Path) -> None:
    plain = FILM.split("[edit]")[0].replace('voiceover = { asset = "assets.vo", at = 0.5 }', "")
    g = graph(tmp_path, plain + '[edit]\nsubtitles = "off"\n')
    assert g.nodes["edit"].recipe["kind"] == "edit"
    assert not {"picture", "audio.music", "audio.mix", "subtitles"} & set(g.nodes)


def test_cues_land_where_their_shots_play_trims_and_crossfades_included() -> None:
    # Three 24-frame clips: the first trimmed 6 frames in, the second crossfaded 6 frames in.
    placed = soundtrack.place([(6, 24), (0, 24), (0, 24)], [0, 6, 0])
    assert [(p.film_first, p.film_last) for p in placed] == [(0, 18), (12, 36), (36, 60)]
    lines = [
        {"cut": 0, "at": 0.5, "until": 0.75, "text": "One.", "who": "Mara"},
        {"cut": 1, "at": None, "until": None, "text": "Two &\n\n<three>", "who": "Nana"},
        {"cut": 2, "at": 0.0, "until": 9.0, "text": "Four.", "who": ""},
        {"cut": 0, "at": 0.0, "until": 0.2, "text": "Trimmed away.", "who": ""},
    ]
    cues = soundtrack.cues(placed, lines, 24)
    assert [(c.first, c.last) for c in cues] == [(6, 12), (12, 36), (36, 60)]
    assert soundtrack.srt(cues, 24).split("\n\n")[0] == "1\n00:00:00,250 --> 00:00:00,500\nOne."
    vtt = soundtrack.vtt(cues, 24, "en")
    assert vtt.startswith("WEBVTT\nLanguage: en\n\n00:00:00.250 --> 00:00:00.500\n<v Mara>One.\n")
    assert "00:00:00.500 --> 00:00:01.500\n<v Nana>Two &amp;\n&lt;three&gt;\n" in vtt


def test_music_passes_and_voice_overs_are_placed_from_exact_samples() -> None:
    # 0.7 s is 16.8 frames at 24 fps: each pass starts on its own rounded sample, no drift.
    passes = soundtrack.music_passes(fps=24, frames=57, start=0.5, length=0.7)
    assert passes == [(12, 29), (29, 46), (46, 57)]
    assert soundtrack.music_passes(fps=24, frames=57, start=3.0, length=0.7) == []  # after the end
    assert soundtrack.music_passes(fps=24, frames=48, start=0.0, length=5.0) == [(0, 48)]
    placed = soundtrack.place([(6, 24), (0, 24)], [0, 6])
    assert soundtrack.voice_frame(placed[1], 0.5, 24) == 12 + 12
    assert soundtrack.voice_frame(placed[0], 0.5, 24) == 6  # the shot was trimmed in by 6
    assert soundtrack.voice_frame(placed[0], 0.0, 24) == 0  # never before the film


def loudness_of(path: Path, start: float, end: float) -> float:
    """Integrated loudness (LUFS) of path's audio between two times, by ffmpeg's ebur128."""
    err = ff("-i", str(path), "-af", f"atrim={start}:{end},ebur128", "-f", "null", "-")
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


def packets(video: Path, tmp: Path) -> list[str]:
    """The video stream's packets (timestamps, sizes, checksums), read without decoding."""
    ff("-i", str(video), "-map", "0:v", "-c", "copy", "-f", "framecrc", str(tmp / "v.crc"))
    return [line for line in (tmp / "v.crc").read_text().splitlines() if not line.startswith("#")]


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-second picture (three 1 s clips, lossless audio), a looping score and a voice-over."""
    tmp = tmp_path_factory.mktemp("sound")
    clips = make_clips([(tmp / f"c{i}.mp4", {"beep_hz": 300 + 200 * i}) for i in range(3)])
    picture = tmp / "picture.mp4"
    assemble.assemble(
        [assemble.Clip(p, sha256(p)) for p in clips],
        width=160,
        height=90,
        fps=24,
        loudness_lufs=None,
        dest=picture,
        cache=DirCache(tmp / "segments"),
        workdir=tmp,
        lossless_audio=True,
    )
    score = tmp / "score.m4a"  # 0.7 s: looped about four times
    ff("-f", "lavfi", "-i", "sine=f=220:d=0.7", "-c:a", "aac", "-b:a", "32k", str(score))
    vo = tmp / "vo.wav"
    ff("-f", "lavfi", "-i", "sine=f=660:d=0.5", "-c:a", "pcm_s16le", str(vo))
    return {"picture": picture, "score": score, "vo": vo, "tmp": tmp}


def test_the_music_stem_is_ducked_by_duck_db_where_someone_speaks(
    sound: dict[str, Path],
) -> None:
    stem = sound["tmp"] / "music.wav"
    soundtrack.music_stem(
        sound["score"],
        fps=24,
        frames=72,
        start=0.0,
        fade=0.1,
        gain_db=-14,
        duck_db=8,
        spans=[(1.0, 2.0)],
        dest=stem,
    )
    assert ffmpeg.probe(stem).duration == pytest.approx(3.0, abs=0.011)
    ducked = loudness_of(stem, 1.2, 1.8)
    around = min(loudness_of(stem, 0.2, 0.8), loudness_of(stem, 2.2, 2.8))
    assert around - ducked >= 8 - 1, (around, ducked)


def test_the_mix_meets_its_loudness_and_the_mux_copies_the_picture(sound: dict[str, Path]) -> None:
    tmp = sound["tmp"]
    stem = tmp / "stem.wav"
    soundtrack.music_stem(
        sound["score"], fps=24, frames=72, start=0.5, fade=0.1, gain_db=-6, duck_db=8,
        spans=[(1.5, 2.0)], dest=stem,
    )  # fmt: skip
    mixed = tmp / "mix.m4a"
    voice = ffmpeg.Voice(str(sound["vo"]), 72_000)  # at 1.5 s
    result = soundtrack.mix(
        sound["picture"], stem, [voice], [(1.5, 2.0, 8.0)],
        frames=72, fps=24, loudness_lufs=-16, dest=mixed, workdir=tmp,
    )  # fmt: skip
    assert result.gain_db is not None
    integrated, peak = ffmpeg.loudness(mixed)
    assert abs(integrated - -16) <= 1 and peak <= -1, (integrated, peak)
    srt = tmp / "cues.srt"
    srt.write_text(soundtrack.srt([soundtrack.Cue(24, 48, "Hello.")], 24))
    films = []
    for n in range(2):
        film = tmp / f"film{n}.mp4"
        soundtrack.mux(
            sound["picture"], mixed, srt, language="en", burn=False, fps=24, height=90,
            dest=film, workdir=tmp,
        )  # fmt: skip
        films.append(sha256(film))
    assert films[0] == films[1]  # same inputs, same bytes
    report = ff("-i", str(tmp / "film0.mp4"), "-f", "null", "-")
    assert "Video: h264" in report and "Audio: aac" in report
    assert re.search(r"\(eng\): Subtitle: mov_text", report), report
    assert packets(sound["picture"], tmp) == packets(tmp / "film0.mp4", tmp)  # copied, untouched
    ff("-i", str(tmp / "film0.mp4"), "-map", "0:s", "-f", "srt", str(tmp / "back.srt"))
    assert "00:00:01,000 --> 00:00:02,000\nHello." in (tmp / "back.srt").read_text()


def test_burned_subtitles_are_drawn_into_a_reencoded_picture_deterministically(
    sound: dict[str, Path],
) -> None:
    tmp = sound["tmp"]
    srt = tmp / "burn.srt"
    srt.write_text(soundtrack.srt([soundtrack.Cue(0, 48, "Hello.")], 24))
    made = []
    for n in range(2):
        film = tmp / f"burn{n}.mp4"
        soundtrack.mux(
            sound["picture"], None, srt, language="en", burn=True, fps=24, height=90,
            dest=film, workdir=tmp,
        )  # fmt: skip
        made.append(sha256(film))
    assert made[0] == made[1]
    report = ff("-i", str(tmp / "burn0.mp4"), "-f", "null", "-")
    assert "Subtitle:" not in report  # drawn in, not a track as well
    assert packets(sound["picture"], tmp) != packets(tmp / "burn0.mp4", tmp)
