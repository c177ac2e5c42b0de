"""The ffmpeg layer against the pinned build: probing, verification, frame extraction, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from runner.errors import NodeFailed
from runner.media import ffmpeg
from tests.conftest_media import ff, make_clip, sha256


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 320x180 at 25 fps with stereo AAC audio."""
    return make_clip(
        tmp_path_factory.mktemp("ff") / "clip.mp4", seconds=2.0, size="320x180", fps=25
    )


def test_version_is_the_pinned_build() -> None:
    assert ffmpeg.ffmpeg_version().startswith("9.0.2")
    assert Path(ffmpeg.ffmpeg_exe()).is_file()


def test_probe_reads_duration_size_rate_and_codecs(clip: Path) -> None:
    info = ffmpeg.probe(clip)
    assert info.duration == pytest.approx(2.0, abs=0.03)
    assert (info.width, info.height, info.fps) == (320, 180, 25.0)
    assert info.codecs == ("h264", "aac") and info.has_audio and info.has_video
    assert (info.pix_fmt, info.sample_rate) == ("yuv420p", 48000)


def test_probe_sees_a_clip_without_audio(tmp_path: Path) -> None:
    info = ffmpeg.probe(make_clip(tmp_path / "mute.mp4", beep_hz=None))
    assert not info.has_audio and info.audio_codec is None and info.codecs == ("h264",)


def test_parse_probe_handles_colour_details_and_fractional_rates() -> None:
    report = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n"
        "  Duration: 00:01:02.50, start: 0.000000, bitrate: 2000 kb/s\n"
        "  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), "
        "yuv420p(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 1900 kb/s, "
        "29.97 fps, 29.97 tbr, 30k tbn (default)\n"
        "  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, "
        "fltp, 128 kb/s\n"
    )
    info = ffmpeg.parse_probe(report, Path("x.mp4"))
    assert info.duration == 62.5
    assert (info.width, info.height, info.fps, info.pix_fmt) == (1920, 1080, 29.97, "yuv420p")
    assert info.sample_rate == 44100


def test_probe_of_a_non_media_file_is_a_node_failure(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(NodeFailed, match="not a readable media file"):
        ffmpeg.probe(junk)


def test_verify_accepts_a_good_clip_and_counts_its_frames(clip: Path) -> None:
    info = ffmpeg.verify_video(clip, 2.0, 0.05)
    assert info.frames == 50


@pytest.mark.parametrize("expected", [1.0, 3.0])
def test_verify_rejects_the_wrong_length(clip: Path, expected: float) -> None:
    with pytest.raises(NodeFailed, match="expected"):
        ffmpeg.verify_video(clip, expected, 0.1)


def test_verify_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NodeFailed, match="not found"):
        ffmpeg.verify_video(tmp_path / "nope.mp4", None)


@pytest.mark.parametrize("faststart", [False, True])
def test_verify_rejects_a_truncated_download(clip: Path, tmp_path: Path, faststart: bool) -> None:
    src = clip
    if faststart:  # the index comes first, so the cut-off file still opens
        src = tmp_path / "faststart.mp4"
        ff("-loglevel", "error", "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(src))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    with pytest.raises(NodeFailed):
        ffmpeg.verify_video(cut, None)


def test_verify_rejects_a_file_with_no_video(tmp_path: Path) -> None:
    audio = tmp_path / "audio.m4a"
    ff("-loglevel", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(audio))
    with pytest.raises(NodeFailed, match="no video stream"):
        ffmpeg.verify_video(audio, None)


def test_run_failure_is_a_node_failure_carrying_ffmpeg_stderr(tmp_path: Path) -> None:
    with pytest.raises(NodeFailed, match="ffmpeg failed") as caught:
        ffmpeg.run(["-i", str(tmp_path / "missing.mp4"), str(tmp_path / "out.mp4")])
    assert "missing.mp4" in str(caught.value)


def test_last_frame_is_the_final_frame_with_stable_bytes(tmp_path: Path) -> None:
    # 47 red frames, then one blue frame at the very end.
    video = "color=red:s=64x48:r=24:d=1,drawbox=c=blue:t=fill:enable='gte(n,23)'"
    src = make_clip(tmp_path / "src.mp4", seconds=1.0, video=video, beep_hz=None)
    ffmpeg.extract_last_frame(src, tmp_path / "one.png")
    ffmpeg.extract_last_frame(src, tmp_path / "two.png")

    assert sha256(tmp_path / "one.png") == sha256(tmp_path / "two.png")
    with Image.open(tmp_path / "one.png") as im:
        assert im.size == (64, 48)
        pixel = im.convert("RGB").getpixel((32, 24))
    assert isinstance(pixel, tuple)
    r, _, b = pixel[:3]
    assert b > 200 and r < 50


def test_command_names_ffmpeg_without_the_machine_path() -> None:
    argv = ffmpeg.command(["-i", "in.mp4", "out.mp4"])
    assert argv[0] == "ffmpeg" and argv[-1] == "out.mp4" and "-nostdin" in argv


def test_every_encode_is_bitexact_and_single_threaded() -> None:
    segment = ffmpeg.segment_args(
        source="s.mp4",
        has_audio=True,
        video_chain="null",
        audio_filter="anull",
        frames=24,
        fps=24,
        video_out="v.mp4",
        audio_out="a.wav",
    )
    join = ffmpeg.join_args(video_list="v.txt", audio="a.wav", gain_db=-3.0, out="f.mp4")
    for args in (segment, join):
        assert "+bitexact" in args and "-map_metadata" in args
        assert args[args.index("-threads") + 1] == "1"


def test_loudness_measures_integrated_level_and_true_peak(tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    ff("-loglevel", "error", "-f", "lavfi", "-i", "sine=f=997:d=3", "-af", "volume=-6dB", str(tone))
    integrated, peak = ffmpeg.loudness(tone)
    assert integrated == pytest.approx(-27.1, abs=1.0)  # 1/8 full scale sine, then -6 dB
    assert peak == pytest.approx(-24.1, abs=0.5)
    assert (ffmpeg.integrated_loudness(tone), ffmpeg.true_peak(tone)) == (integrated, peak)


def test_last_frame_of_a_video_that_ends_before_its_audio(tmp_path: Path) -> None:
    src = tmp_path / "short-video.mp4"
    ff(
        *["-loglevel", "error", "-f", "lavfi", "-i", "color=blue:s=64x48:r=24:d=0.5"],
        *["-f", "lavfi", "-i", "sine=d=3", "-c:v", "libx264", "-c:a", "aac", str(src)],
    )
    ffmpeg.extract_last_frame(src, tmp_path / "last.png")
    with Image.open(tmp_path / "last.png") as im:
        assert im.size == (64, 48)


def test_a_segment_command_that_fails_says_why_without_the_input_dump(tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    ff("-loglevel", "error", "-f", "lavfi", "-i", "sine=f=997:d=1", str(tone))
    args = ["-i", str(tone), "-af", f"nosuchfilter,{ffmpeg.TRUE_PEAK_TAP}", "-f", "wav", "o.wav"]
    with pytest.raises(NodeFailed) as failed:
        ffmpeg.run_peak(args, cwd=tmp_path)
    assert "nosuchfilter" in str(failed.value) and "Input #0" not in str(failed.value)
    args = ["-i", str(tone), "-af", ffmpeg.TRUE_PEAK_TAP, "-f", "wav", "o.wav"]
    assert ffmpeg.run_peak(args, cwd=tmp_path) == pytest.approx(-18.1, abs=0.5)  # 1/8 scale


def test_subtitles_are_found_in_an_mp4s_boxes_and_in_other_files_by_ffmpeg(
    tmp_path: Path,
) -> None:
    srt = tmp_path / "cues.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,500\nHello.\n")
    video = ["-f", "lavfi", "-i", "color=black:s=64x48:r=24:d=1"]
    plain, with_text, mkv = tmp_path / "plain.mp4", tmp_path / "text.mp4", tmp_path / "text.mkv"
    ff("-loglevel", "error", *video, "-c:v", "libx264", str(plain))
    ff("-loglevel", "error", *video, "-i", str(srt), "-c:v", "libx264", "-c:s", "mov_text",
       str(with_text))  # fmt: skip
    ff("-loglevel", "error", *video, "-i", str(srt), "-c:v", "libx264", "-c:s", "srt", str(mkv))
    assert [ffmpeg.has_subtitles(p) for p in (plain, with_text, mkv)] == [False, True, True]
