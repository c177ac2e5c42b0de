"""Film assembly with real ffmpeg: exact lengths, A/V sync, determinism, segment reuse."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from runner.errors import UserError
from runner.media import ffmpeg
from runner.media.assemble import Assembly, Clip, assemble, loudness_gain, tag
from tests.conftest_media import (
    DirCache,
    audio_samples,
    beep_onsets,
    ff,
    flash_onsets,
    make_clip,
    make_clips,
    sha256,
    video_frames,
)

FPS = 24
FRAME = 1 / FPS


def clip(path: Path, start: float = 0.0, end: float | None = None, fade: float = 0.0) -> Clip:
    return Clip(path=path, digest=sha256(path), start=start, end=end, crossfade_in=fade)


def build(
    clips: list[Clip],
    tmp: Path,
    cache: DirCache,
    name: str = "film.mp4",
    *,
    width: int = 160,
    height: int = 90,
    loudness_lufs: float | None = None,
) -> tuple[Path, Assembly]:
    dest = tmp / name
    result = assemble(
        clips,
        width=width,
        height=height,
        fps=FPS,
        loudness_lufs=loudness_lufs,
        dest=dest,
        cache=cache,
        workdir=tmp / "work",
    )
    return dest, result


PROVIDER = {"preset": "veryfast"}  # H.264 High with B-frames, like a hosted model's clip


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four 2 s clips with different beeps; c is at another size, rate and profile."""
    d = tmp_path_factory.mktemp("sources")
    return make_clips(
        [
            (d / "a.mp4", {"seconds": 2.0, "beep_hz": 440, **PROVIDER}),
            (d / "b.mp4", {"seconds": 2.0, "beep_hz": 660, **PROVIDER}),
            (d / "c.mp4", {"seconds": 2.0, "beep_hz": 880, "size": "320x240", "fps": 30}),
            (d / "d.mp4", {"seconds": 2.0, "beep_hz": 990, **PROVIDER}),
        ]
    )


@pytest.mark.slow
def test_a_40_clip_film_keeps_audio_within_one_frame_of_video(tmp_path: Path) -> None:
    # Each naive join drifts 32 ms: forty clips (the 100-clip figure is in `make bench`) would
    # be 1.2 s out by the end, thirty times the one-frame tolerance checked at every clip.
    n = 40
    # Copied clips (B-frames, their own parameter sets) and conformed ones, alternately: eight
    # sources, each cut in five times (made once; the drift is the joins').
    specs = [
        (tmp_path / f"src{i:03d}.mp4", {"beep_hz": 400 + 10 * i, **(PROVIDER if i % 2 else {})})
        for i in range(8)
    ]
    sources = [clip(p) for p in make_clips(specs)]
    clips = [sources[i % len(sources)] for i in range(n)]
    film, _ = build(clips, tmp_path, DirCache(tmp_path / "cache"))

    frames = video_frames(film)
    assert frames == n * FPS
    samples = audio_samples(film, tmp_path)
    assert abs(samples / 48000 - frames / FPS) < FRAME
    flashes, beeps = flash_onsets(film), beep_onsets(film)
    assert len(flashes) == len(beeps) == n
    for k, (seen, heard) in enumerate(zip(flashes, beeps, strict=True)):
        assert abs(seen - k) < FRAME, f"clip {k} picture starts at {seen}"
        assert abs(heard - seen) < FRAME, f"clip {k}: beep at {heard}, flash at {seen}"
    assert abs(beeps[-1] - (n - 1)) < FRAME


def test_film_has_exact_length_size_and_streams(sources: list[Path], tmp_path: Path) -> None:
    a, b, c, _ = sources
    clips = [clip(a), clip(b, start=0.5, end=1.5, fade=0.25), clip(c, fade=0.5)]
    film, _ = build(clips, tmp_path, DirCache(tmp_path / "cache"))

    info = ffmpeg.verify_video(film, None)
    assert (info.width, info.height, info.fps) == (160, 90, 24.0)
    assert info.codecs == ("h264", "aac") and info.pix_fmt == "yuv420p"
    expected = (2.0 + 1.0 + 2.0 - 0.25 - 0.5) * FPS
    assert info.frames == expected
    assert audio_samples(film, tmp_path) == expected * 2000


def test_identical_inputs_give_byte_identical_films(sources: list[Path], tmp_path: Path) -> None:
    clips = [clip(sources[0], end=1.5), clip(sources[2], fade=0.5), clip(sources[1])]
    first, _ = build(clips, tmp_path / "one", DirCache(tmp_path / "one" / "c"), loudness_lufs=-16)
    second, _ = build(clips, tmp_path / "two", DirCache(tmp_path / "two" / "c"), loudness_lufs=-16)
    assert sha256(first) == sha256(second)


def test_a_second_assembly_reuses_every_segment(sources: list[Path], tmp_path: Path) -> None:
    cache = DirCache(tmp_path / "cache")
    clips = [clip(sources[0]), clip(sources[1], fade=0.5)]
    first, result = build(clips, tmp_path, cache, "one.mp4")
    # body, crossfade, body: video, audio and its true peak each, and each body's
    # copy-or-conform decision
    assert len(cache.saved) == len(result.segments) == 11
    second, again = build(clips, tmp_path, cache, "two.mp4")
    assert len(cache.saved) == 11 and again.rendered == []
    assert sha256(first) == sha256(second)


def test_changing_one_clip_reencodes_only_its_segments(sources: list[Path], tmp_path: Path) -> None:
    a, b, c, d = sources
    cache = DirCache(tmp_path / "cache")
    _, before = build([clip(a), clip(b), clip(c, fade=0.5), clip(d)], tmp_path, cache)
    cache.saved.clear()

    changed = make_clip(tmp_path / "b2.mp4", seconds=2.0, beep_hz=770)
    _, after = build([clip(a), clip(changed), clip(c, fade=0.5), clip(d)], tmp_path, cache)

    # b's body (video, audio, peak, decision) and the crossfade b -> c (video, audio, peak);
    # the rest reused.
    assert len(cache.saved) == 7
    assert sorted(cache.saved) == sorted(set(after.segments) - set(before.segments))


def test_resizing_the_film_reuses_the_audio_segments(sources: list[Path], tmp_path: Path) -> None:
    cache = DirCache(tmp_path / "cache")
    clips = [clip(sources[0]), clip(sources[1])]
    build(clips, tmp_path, cache)
    cache.saved.clear()
    build(clips, tmp_path, cache, width=320, height=180)
    assert len(cache.saved) == 4  # two video segments and their decisions; not the audio


def packet_md5s(video: Path) -> tuple[list[str], str]:
    """The md5 of each video packet in decode order, without the parameter sets the join puts
    in-band before each IDR frame; and the stream's extradata checksum (its SPS and PPS)."""
    proc = subprocess.run(
        [
            *[ffmpeg.ffmpeg_exe(), "-v", "error", "-i", str(video), "-map", "0:v:0", "-c", "copy"],
            *["-bsf:v", "filter_units=remove_types=7|8", "-f", "framemd5", "-"],
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    extradata = next((line for line in lines if line.startswith("#extradata 0")), "")
    return [line.split(",")[5].strip() for line in lines if not line.startswith("#")], extradata


def test_matching_clips_are_copied_packet_for_packet_and_others_conformed(
    sources: list[Path], tmp_path: Path
) -> None:
    a = sources[0]
    big = make_clip(tmp_path / "big.mp4", seconds=1.0, size="320x180", **PROVIDER)
    other = make_clip(tmp_path / "other.mp4", seconds=1.0, preset="medium")  # other SPS/PPS
    film, result = build([clip(a), clip(big), clip(other)], tmp_path, DirCache(tmp_path / "c"))

    assert [c["video"] for c in result.clips] == ["copy", "conform", "copy"]
    assert result.clips[1]["why"] == "size 320x180 != film 160x90"
    # Three sets of parameter sets in one film: it decodes without one error (-xerror), to
    # the frame, and the copied clips' packets are the sources' bytes.
    assert ffmpeg.verify_video(film, None).frames == 2 * FPS + FPS + FPS
    packets, _ = packet_md5s(film)
    a_packets, a_sets = packet_md5s(a)
    other_packets, other_sets = packet_md5s(other)
    assert a_sets != other_sets
    assert packets[: 2 * FPS] == a_packets
    assert packets[3 * FPS :] == other_packets


def test_a_trim_off_an_idr_frame_is_exact_to_the_frame(tmp_path: Path) -> None:
    # Frame k is flat grey at 16 + 4k; IDR frames every 12 frames, B-frames between.
    ramp = "color=black:s=160x90:r=24:d=2,format=yuv420p,geq=lum='16+4*N':cb=128:cr=128"
    src = make_clip(
        tmp_path / "ramp.mp4", seconds=2.0, video=ramp, beep_hz=None, gop=12, **PROVIDER
    )
    clips = [clip(src, start=0.25, end=1.75), clip(src)]  # frames 6-41, then 0-47
    film, result = build(clips, tmp_path, DirCache(tmp_path / "c"))

    trimmed = result.clips[0]
    assert trimmed["video"] == "copy" and trimmed["encoded_frames"] >= 6
    assert result.clips[1] == {"video": "copy", "copied_frames": 48}
    raw = subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-v", "error", "-i", str(film), "-f", "rawvideo", "-"],
        capture_output=True,
        check=True,
    ).stdout
    luma, frame = 160 * 90, 160 * 90 * 3 // 2  # yuv420p: the Y plane, then U and V
    means = [sum(raw[i : i + luma]) / luma for i in range(0, len(raw), frame)]
    expected = [16 + 4 * k for k in [*range(6, 42), *range(48)]]
    assert len(means) == len(expected)
    for n, (mean, want) in enumerate(zip(means, expected, strict=True)):
        assert abs(mean - want) < 1.5, f"film frame {n}: grey {mean:.1f}, expected {want}"


def test_trim_cuts_on_the_requested_frames(tmp_path: Path) -> None:
    # Red for the first second, green for the second, blue for the third.
    colours = "color=red:s=64x64:r=24:d=1[r];color=green:s=64x64:r=24:d=1[g];"
    colours += "color=blue:s=64x64:r=24:d=1[b];[r][g][b]concat=n=3"
    src = make_clip(tmp_path / "rgb.mp4", seconds=3.0, video=colours, beep_hz=None)
    film, _ = build([clip(src, start=1.0, end=2.0)], tmp_path, DirCache(tmp_path / "c"))

    assert video_frames(film) == FPS
    ff("-loglevel", "error", "-i", str(film), "-frames:v", "1", str(tmp_path / "first.png"))
    ffmpeg.extract_last_frame(film, tmp_path / "last.png")
    for png in ("first.png", "last.png"):
        pixel = Image.open(tmp_path / png).convert("RGB").getpixel((80, 45))
        assert isinstance(pixel, tuple)
        r, g, b = pixel[:3]
        assert g > 100 and r < 60 and b < 60, (png, r, g, b)


def test_source_without_audio_becomes_exact_silence(tmp_path: Path) -> None:
    mute = make_clip(tmp_path / "mute.mp4", seconds=1.0, beep_hz=None)
    film, _ = build([clip(mute)], tmp_path, DirCache(tmp_path / "c"))
    assert ffmpeg.probe(film).has_audio
    assert audio_samples(film, tmp_path) == 48000
    err = ff("-i", str(film), "-af", "volumedetect", "-vn", "-f", "null", "-")
    assert "max_volume: -91" in err


def test_crossfade_blends_both_clips_audio(sources: list[Path], tmp_path: Path) -> None:
    mute = make_clip(tmp_path / "mute.mp4", seconds=2.0, beep_hz=None)
    clips = [clip(sources[0]), clip(mute, fade=0.5), clip(sources[1], fade=0.5)]
    film, _ = build(clips, tmp_path, DirCache(tmp_path / "c"))
    assert video_frames(film) == (6.0 - 1.0) * FPS
    assert audio_samples(film, tmp_path) == 5 * 48000


def test_loudness_normalisation_reaches_the_target(tmp_path: Path) -> None:
    tone = make_clip(tmp_path / "tone.mp4", seconds=6.0, beep_hz=440, beep_seconds=6.0)
    film, result = build([clip(tone)], tmp_path, DirCache(tmp_path / "c"), loudness_lufs=-20)
    err = ff("-i", str(film), "-af", "ebur128", "-vn", "-f", "null", "-")
    integrated = float(re.findall(r"I:\s+(-?\d+\.\d) LUFS", err)[-1])
    assert abs(integrated - -20) < 2
    assert any(arg.startswith("volume=") for arg in result.join_argv)
    assert abs(audio_samples(film, tmp_path) / 48000 - video_frames(film) / FPS) < FRAME


def pcm_clip(dest: Path, sound: str, seconds: float = 1.0) -> Path:
    """A clip whose sound is `sound` (an aevalsrc expression) as exact PCM samples."""
    ff(
        *["-loglevel", "error", "-f", "lavfi", "-i", f"color=gray:s=160x90:r=24:d={seconds}"],
        *["-f", "lavfi", "-i", f"aevalsrc={sound}|{sound}:s=48000:d={seconds}"],
        *["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "pcm_s16le", str(dest)],
    )
    return dest


def gain_of(result: Assembly) -> float:
    (volume,) = [a for a in result.join_argv if a.startswith("volume=")]
    return float(volume.removeprefix("volume=").removesuffix("dB"))


def test_a_cut_that_peaks_between_samples_caps_the_films_gain(tmp_path: Path) -> None:
    # Each side is a 100 Hz wave at 0.9 (-0.9 dBTP); the cut goes from +0.9 to -0.9 in one
    # sample, and the wave between those samples overshoots to +1.1 dBTP. The pieces' own peaks
    # are measured as they are made; the cut's is measured around the join, as it must be: the
    # gain it allows is 2 dB lower than the pieces' peaks would.
    up = pcm_clip(tmp_path / "up.mov", "0.9*cos(2*PI*100*t)")
    down = pcm_clip(tmp_path / "down.mov", "-0.9*cos(2*PI*100*t)")
    _, result = build([clip(up), clip(down)], tmp_path, DirCache(tmp_path / "c"), loudness_lufs=-1)

    wavs = []
    for src in (up, down):
        wavs.append(tmp_path / f"{src.stem}.wav")
        ff("-loglevel", "error", "-i", str(src), "-map", "0:a", "-c:a", "pcm_s16le", str(wavs[-1]))
    joined = tmp_path / "joined.wav"
    ff("-loglevel", "error", "-i", str(wavs[0]), "-i", str(wavs[1]), "-filter_complex",
       "[0:a][1:a]concat=n=2:v=0:a=1", "-c:a", "pcm_s16le", str(joined))  # fmt: skip
    integrated, peak = ffmpeg.loudness(joined)
    pieces_peak = max(ffmpeg.true_peak(w) for w in wavs)
    assert peak > pieces_peak + 1.5
    whole, pieces_only = (loudness_gain(integrated, p, target=-1) for p in (peak, pieces_peak))
    assert whole is not None and pieces_only is not None
    assert gain_of(result) == pytest.approx(whole, abs=0.11)
    assert gain_of(result) < pieces_only - 1.5


def peak_records(cache: DirCache, result: Assembly) -> list[str]:
    """The segments of `result` that are true-peak records, in film order."""
    return [k for k in result.segments if b'"true_peak_dbtp"' in (cache.root / k).read_bytes()]


@pytest.mark.parametrize("damage", ["deleted", "garbled", "another piece's"])
def test_a_missing_or_untrusted_peak_is_measured_again_from_the_cached_audio(
    tmp_path: Path, damage: str
) -> None:
    # "deleted" is also a cache made before peaks were kept: no piece is encoded again for it.
    tone = make_clip(tmp_path / "tone.mp4", seconds=2.0, beep_hz=440, beep_seconds=2.0)
    quiet = pcm_clip(tmp_path / "quiet.mov", "0.05*sin(2*PI*300*t)", seconds=2.0)
    cache = DirCache(tmp_path / "c")
    clips = [clip(tone), clip(quiet, fade=0.5)]
    first, result = build(clips, tmp_path, cache, "one.mp4", loudness_lufs=-16)
    peaks = peak_records(cache, result)
    assert len(peaks) == 3  # two bodies and the crossfade
    loud, _, soft = (cache.root / k for k in peaks)
    if damage == "deleted":
        for key in peaks:
            (cache.root / key).unlink()
    elif damage == "garbled":
        garbage = [b"{}", b'{"true_peak_dbtp": "loud"}', b"\xff\x00"]
        for key, bad in zip(peaks, garbage, strict=True):
            (cache.root / key).write_bytes(bad)
    else:  # a valid record, of the quiet body's audio, where the loud body's belongs
        loud.write_bytes(soft.read_bytes())
    cache.saved.clear()
    second, again = build(clips, tmp_path, cache, "two.mp4", loudness_lufs=-16)
    redone = peaks if damage != "another piece's" else peaks[:1]
    assert sorted(cache.saved) == sorted(redone) == sorted(again.rendered)  # measured, not made
    assert sha256(first) == sha256(second)


def test_a_clip_that_peaks_at_full_scale_still_gets_its_gain(tmp_path: Path) -> None:
    # ffmpeg reports its true peak as 0.0 (or -0.0) dBTP: a peak, not silence.
    full = pcm_clip(tmp_path / "full.mov", "0.995*sin(2*PI*100*t)", seconds=2.0)
    cache = DirCache(tmp_path / "c")
    _, result = build([clip(full)], tmp_path, cache, loudness_lufs=-16)
    (record,) = peak_records(cache, result)
    assert abs(json.loads((cache.root / record).read_text())["true_peak_dbtp"]) < 0.1
    assert gain_of(result) < -10  # a film at about -3 LUFS, brought down to -16


@pytest.mark.parametrize(
    ("integrated", "peak", "target", "gain"),
    [
        (-20.0, -6.0, -16.0, 4.0),  # quiet film: raised to the target
        (-10.0, -0.5, -16.0, -6.0),  # loud film: lowered to the target
        (-30.0, -3.0, -16.0, 1.5),  # raising to -16 would clip: stops at the peak ceiling
        (float("-inf"), float("-inf"), -16.0, None),  # silence stays silence
    ],
)
def test_loudness_gain_reaches_the_target_within_the_peak_ceiling(
    integrated: float, peak: float, target: float, gain: float | None
) -> None:
    assert loudness_gain(integrated, peak, target=target) == gain


def test_join_argv_holds_no_absolute_paths(sources: list[Path], tmp_path: Path) -> None:
    _, result = build([clip(sources[0])], tmp_path, DirCache(tmp_path / "c"))
    assert result.join_argv[0] == "ffmpeg"
    assert not [arg for arg in result.join_argv if arg.startswith(os.sep)]
    assert result.ffmpeg_version == ffmpeg.ffmpeg_version()


@pytest.mark.parametrize(
    ("clips", "message"),
    [
        ([], "no clips"),
        ([{"fade": 0.5}], "nothing to crossfade from"),
        ([{"start": 1.5, "end": 1.0}], "not after start"),
        ([{}, {"fade": 1.5}, {"fade": 1.0}], "too short for its crossfades"),
        ([{"end": 9.0}], "past the end of the source"),
    ],
)
def test_impossible_edits_are_user_errors(
    sources: list[Path], tmp_path: Path, clips: list[dict[str, float]], message: str
) -> None:
    edit = [clip(sources[0], **kw) for kw in clips]
    with pytest.raises(UserError, match=message):
        build(edit, tmp_path, DirCache(tmp_path / "c"))


def test_tag_adds_a_comment_by_stream_copy_deterministically(
    sources: list[Path], tmp_path: Path
) -> None:
    film, _ = build([clip(sources[0])], tmp_path, DirCache(tmp_path / "c"))
    tag(film, tmp_path / "one.mp4", "provenance sha256:abc123")
    tag(film, tmp_path / "two.mp4", "provenance sha256:abc123")

    assert sha256(tmp_path / "one.mp4") == sha256(tmp_path / "two.mp4")
    report = ff("-i", str(tmp_path / "one.mp4"), "-f", "null", "-")
    assert re.search(r"comment\s*: provenance sha256:abc123", report)

    def packets(path: Path) -> str:
        md5 = tmp_path / f"{path.stem}.md5"
        ff(
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "framemd5",
            str(md5),
        )
        return md5.read_text()

    assert packets(film) == packets(tmp_path / "one.mp4")
