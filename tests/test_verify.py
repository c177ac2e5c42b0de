"""The cheap check of a rendered or downloaded clip (runner/media/mp4.py, nal.py and
ffmpeg.verify_video): what a broken download or a broken provider produces is rejected with a
clear message, without decoding every frame; a good clip reads as ffmpeg reports it."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from runner import cli
from runner.cache.store import Store
from runner.errors import NodeFailed
from runner.media import ffmpeg, mp4
from tests.conftest_media import ff, make_clip
from tests.films import MINIMAL, gen

SECONDS = 2.0


def provider_clip(
    dest: Path, *, faststart: bool = True, codec: str = "libx264", gop: int = 250
) -> Path:
    """2 s of 320x180 H.264 (CABAC, B-frames, like a provider's) with AAC audio; one group of
    pictures unless `gop` frames are fewer."""
    args = ["-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=s=320x180:r=24:d={SECONDS}"]
    args += ["-f", "lavfi", "-i", f"sine=d={SECONDS}:r=48000", "-c:v", codec, "-threads", "1"]
    args += ["-preset", "veryfast" if codec == "libx264" else "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac", "-ac", "2", "-g", str(gop)]
    if codec == "libx265":
        args += ["-x265-params", "log-level=error:pools=1:frame-threads=1", "-tag:v", "hvc1"]
    ff(*args, *(["-movflags", "+faststart"] if faststart else []), str(dest))
    return dest


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("verify")
    return {
        "faststart": provider_clip(folder / "faststart.mp4"),
        "moov-at-end": provider_clip(folder / "moov-at-end.mp4", faststart=False),
        "no-audio": make_clip(folder / "mute.mp4", seconds=SECONDS, beep_hz=None),
        "hevc": provider_clip(folder / "hevc.mp4", codec="libx265"),
        "gops": provider_clip(folder / "gops.mp4", gop=12),  # keyframes at 0, 12, 24, 36
    }


def reject(path: Path, seconds: float | None = SECONDS) -> str:
    """The cheap check's message for a clip it must reject."""
    with pytest.raises(NodeFailed) as caught:
        ffmpeg.verify_video(path, seconds)
    return str(caught.value)


def damaged(src: Path, dest: Path, at: float, data: bytes) -> Path:
    """src with `data` written over it at `at` (a fraction of the way into its media data)."""
    start, end = mp4.inspect(src).mdats[0]
    where = start + int((end - start) * at)
    raw = bytearray(src.read_bytes())
    raw[where : where + len(data)] = data
    dest.write_bytes(bytes(raw))
    return dest


# -- a good clip ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["faststart", "moov-at-end", "no-audio", "hevc", "gops"])
def test_a_good_clip_passes_and_reads_as_ffmpeg_reports_it(
    clips: dict[str, Path], kind: str
) -> None:
    info = ffmpeg.verify_video(clips[kind], SECONDS, tolerance=0.05)
    out = ff("-i", str(clips[kind]), "-frames:v", "1", "-f", "null", "-")  # ffmpeg's report
    theirs = ffmpeg.parse_probe(out, clips[kind])
    assert info.frames == 48
    fields = ("duration", "width", "height", "fps", "video_codec", "audio_codec", "pix_fmt")
    for field in (*fields, "sample_rate", "has_audio"):
        assert getattr(info, field) == getattr(theirs, field), field


def test_probing_an_mp4_spawns_no_process(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(*_: object, **__: object) -> None:
        raise AssertionError("spawned ffmpeg")

    monkeypatch.setattr(ffmpeg, "_spawn", no_process)
    info = ffmpeg.probe(clips["faststart"])
    assert (info.width, info.height, info.fps, info.codecs) == (320, 180, 24.0, ("h264", "aac"))


def test_a_file_that_is_no_mp4_is_decoded_whole_as_before(tmp_path: Path) -> None:
    mkv = tmp_path / "clip.mkv"
    ff("-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=160x90:r=24:d=1", str(mkv))
    assert ffmpeg.verify_video(mkv, 1.0).frames == 24
    mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    assert "does not decode cleanly" in reject(mkv, None)


# -- what a broken download or provider produces ----------------------------------------------


@pytest.mark.parametrize("kind", ["faststart", "moov-at-end"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.01])
def test_a_truncated_clip_is_rejected_as_cut_short(
    clips: dict[str, Path], tmp_path: Path, kind: str, keep: float
) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clips[kind].read_bytes()[: int(clips[kind].stat().st_size * keep)])
    assert "cut short" in reject(cut)


def test_a_zero_length_clip_is_rejected_as_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty (0 bytes)" in reject(tmp_path / "empty.mp4")


@pytest.mark.parametrize("kind", ["faststart", "moov-at-end", "hevc"])
def test_a_run_of_zeroed_bytes_in_the_middle_is_rejected(
    clips: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    broken = damaged(clips[kind], tmp_path / "zeroed.mp4", 0.5, bytes(64))
    assert "is garbled" in reject(broken)


@pytest.mark.parametrize("seed", range(4))
def test_a_run_of_random_bytes_in_the_middle_is_rejected(
    clips: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    noise = random.Random(seed).randbytes(4096)  # more than a frame: it spans NAL lengths
    broken = damaged(clips["faststart"], tmp_path / "noise.mp4", 0.4, noise)
    assert "is garbled" in reject(broken)


def test_bytes_no_encoder_writes_reject_a_clip_only_when_the_decoder_fails_on_them_too(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """Zeros inside the encoder's text note (an SEI unit a decoder reads past): the walk
    flags them, the decoder takes them, so a paid render is not thrown away for them."""
    raw = bytearray(clips["faststart"].read_bytes())
    at = raw.index(b"x264 - core") + 20
    raw[at : at + 4] = bytes(4)
    (tmp_path / "sei.mp4").write_bytes(bytes(raw))
    with pytest.raises(mp4.Garbled, match="sample 1 of 48 is garbled"):
        mp4.check(tmp_path / "sei.mp4")
    assert ffmpeg.verify_video(tmp_path / "sei.mp4", SECONDS).frames == 48


def test_a_clip_of_the_wrong_length_is_rejected(clips: dict[str, Path]) -> None:
    assert "lasts 2.000 s, expected 4.000 s" in reject(clips["faststart"], 4.0)


@pytest.mark.parametrize("box", [b"mvhd", b"mdhd"])
def test_headers_declaring_more_than_the_samples_cover_are_rejected(
    clips: dict[str, Path], tmp_path: Path, box: bytes
) -> None:
    raw = bytearray(clips["faststart"].read_bytes())
    at = raw.index(box) + 4 + 4 + 8  # version 0: flags, creation and modification times
    (timescale,) = struct.unpack_from(">I", raw, at)
    struct.pack_into(">I", raw, at + 4, timescale * 4)  # 4 s declared, 2 s of samples
    (tmp_path / "long.mp4").write_bytes(bytes(raw))
    message = reject(tmp_path / "long.mp4", None)
    assert "declares 4.000 s" in message and "2.0" in message


def test_a_garbled_first_frame_fails_the_decode_of_the_first_pictures(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    broken = garbled_frame(clips["faststart"], tmp_path / "first.mp4", 1)
    assert "does not decode cleanly" in reject(broken)


def test_a_garbled_last_keyframe_fails_the_decode_of_the_last_pictures(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    video = mp4.inspect(clips["gops"]).first("vide")
    assert video is not None and video.keyframes() == [0, 12, 24, 36]
    broken = garbled_frame(clips["gops"], tmp_path / "last.mp4", 36)
    assert "does not decode cleanly" in reject(broken)
    # The seek lands on the last keyframe, not before: the group before it is not decoded.
    ffmpeg.verify_video(garbled_frame(clips["gops"], tmp_path / "third.mp4", 24), SECONDS)


def test_a_frame_garbled_inside_its_slice_data_is_left_to_the_deep_decode(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """The limit of the cheap check: bytes changed inside one frame of the middle, with every
    length and escape intact, decode only when the whole clip is decoded."""
    broken = garbled_frame(clips["faststart"], tmp_path / "middle.mp4", 24)
    ffmpeg.verify_video(broken, SECONDS)
    with pytest.raises(NodeFailed, match="does not decode cleanly"):
        ffmpeg.verify_video(broken, SECONDS, deep=True)


def garbled_frame(src: Path, dest: Path, index: int) -> Path:
    """src with 64 bytes in the middle of video sample `index`'s largest NAL unit replaced by
    noise free of zero bytes (no escape sequence appears: only decoding can tell)."""
    raw = bytearray(src.read_bytes())
    video = mp4.check(src).first("vide")
    assert video is not None
    offset, size = list(mp4.samples(video))[index]
    units, pos = [], offset
    while pos < offset + size:
        (n,) = struct.unpack_from(">I", raw, pos)
        units.append((n, pos + 4))
        pos += 4 + n
    n, start = max(units)
    rng = random.Random(index)
    raw[start + n // 3 : start + n // 3 + 64] = bytes(rng.randrange(16, 256) for _ in range(64))
    dest.write_bytes(bytes(raw))
    return dest


# -- runner cache verify --deep -----------------------------------------------------------------


def test_cache_verify_deep_decodes_every_video_and_reports_the_undecodable(
    clips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    store = Store(tmp_path / "cache")
    broken = garbled_frame(clips["faststart"], store.own_tmp() / "middle.mp4", 24)
    bad = store.put(broken)  # hashes to its name: only decoding finds it
    good = store.put(provider_clip(store.own_tmp() / "good.mp4"))
    argv = ["cache", "verify", str(film), "--cache-dir", str(tmp_path / "cache")]

    assert cli.main(argv) == 0
    assert "0 corrupt blobs, 0 damaged records\n" in capsys.readouterr().out
    assert cli.main([*argv, "--deep"]) == 1
    out = capsys.readouterr().out
    assert f"undecodable: local video {bad}: does not decode cleanly" in out
    assert good not in out
    assert "0 corrupt blobs, 0 damaged records, 1 undecodable videos" in out
