"""The copy-or-conform decision, from packet lists written by hand; and the packet list of a
real open-GOP clip (the one test here that runs ffmpeg)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.media.ffmpeg import MAX_REORDER, MediaInfo, Packet, VideoLayout, video_layout
from runner.media.streamcopy import mismatch, plan_body
from tests.conftest_media import ff

TICKS = 512  # one frame at 24 fps in a 1/12288 time base, as ffmpeg's MP4 muxer writes


def layout(order: list[int], idr: tuple[int, ...] = (0,), **changes: object) -> VideoLayout:
    """A 160x90 H.264 High clip whose packets, in decode order, show frames `order`."""
    info = MediaInfo(
        duration=len(order) / 24,
        width=160,
        height=90,
        fps=24.0,
        has_audio=False,
        video_codec="h264",
        audio_codec=None,
        pix_fmt="yuv420p",
    )
    delay = max(k - shown for k, shown in enumerate(order))
    packets = tuple(
        Packet(dts=(k - delay) * TICKS, pts=shown * TICKS, key=shown % 12 == 0, discard=False)
        for k, shown in enumerate(order)
    )
    base = VideoLayout(
        info=info,
        profile="High",
        pix_fmt_flags=("progressive",),
        time_base=(1, 12288),
        sar=(1, 1),
        packets=packets,
        idr_pts=frozenset(k * TICKS for k in idr),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def b_frames(n: int, gop: int = 12) -> list[int]:
    """Decode order of closed GOPs of `gop` frames: in each, an I or P frame every 3 frames
    and two B-frames between, shown before it and decoded after it: 0 3 1 2 6 4 5 ..."""
    order: list[int] = []
    for start in range(0, n, gop):
        end = min(start + gop, n)
        order.append(start)
        anchor = start + 3
        while anchor < end:
            order += [anchor, anchor - 2, anchor - 1]
            anchor += 3
        order += range(anchor - 2, end)
    return order


def test_a_whole_clip_with_b_frames_is_copied_whole() -> None:
    plan = plan_body(layout(b_frames(48)), 160, 90, 24, 0, 48)
    assert (plan.copy, plan.head, plan.start, plan.end, plan.tail) == (True, 0, 0, 48, 0)


def test_cuts_move_to_the_next_idr_frame_and_the_last_clean_end() -> None:
    # In at frame 5: frames 5-11 are encoded up to the IDR frame at 12. Out at 41: frame 40
    # is a B-frame decoded after frame 42, so the copy ends before it and 40 is encoded.
    plan = plan_body(layout(b_frames(48), idr=(0, 12, 24, 36)), 160, 90, 24, 5, 41)
    assert (plan.copy, plan.head, plan.start, plan.end, plan.tail) == (True, 7, 12, 40, 1)
    assert plan.record()["encoded_frames"] == 8


def test_an_open_gop_i_frame_is_no_place_to_cut() -> None:
    # Frames 12, 24 and 36 are keyframes to the container but not IDR frames: what follows
    # them may refer to frames before them.
    plan = plan_body(layout(list(range(48)), idr=(0,)), 160, 90, 24, 12, 48)
    assert not plan.copy and "no IDR frame" in plan.why


def test_too_little_to_copy_is_encoded_whole() -> None:
    plan = plan_body(layout(list(range(48)), idr=(0, 40)), 160, 90, 24, 30, 46)
    assert not plan.copy and "encoded whole" in plan.why


def test_a_deeper_reorder_than_the_film_allows_is_conformed() -> None:
    # A B-pyramid deeper than the film's decode delay: frame 1 is decoded 5 packets late.
    order = [0, *range(MAX_REORDER + 2, 0, -1), *range(MAX_REORDER + 3, 48)]
    plan = plan_body(layout(order), 160, 90, 24, 0, 48)
    assert not plan.copy
    assert plan.why == f"it reorders {MAX_REORDER + 1} frames, the film at most {MAX_REORDER}"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"profile": "Constrained Baseline"}, "profile Constrained Baseline != film High"),
        ({"pix_fmt_flags": ("pc", "bt709", "progressive")}, "full-range video != film tv range"),
        ({"rotation": -90.0}, "rotated -90 degrees"),
        ({"sar": (4, 3)}, "pixel aspect 4:3 != film 1:1"),
        ({"time_base": (1, 1000)}, "time base 1/1000 has no whole number of ticks"),
    ],
)
def test_a_stream_unlike_the_films_says_why(changes: dict[str, object], why: str) -> None:
    reason = mismatch(layout(list(range(24)), **changes), 160, 90, 24)
    assert reason is not None and reason.startswith(why)


def test_size_rate_and_edit_lists_are_checked() -> None:
    clip = layout(list(range(24)))
    assert mismatch(clip, 320, 180, 24) == "size 160x90 != film 320x180"
    assert mismatch(clip, 160, 90, 25) == "frame rate 24 != film 25"
    hidden = clip.packets[0]._replace(discard=True)
    edited = dataclasses.replace(clip, packets=(hidden, *clip.packets[1:]))
    assert mismatch(edited, 160, 90, 24) == "an edit list hides some of its frames"


def test_the_packet_list_tells_idr_frames_from_open_gop_i_frames(tmp_path: Path) -> None:
    src = tmp_path / "open-gop.mp4"
    ff(
        *["-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=64x36:r=24:d=1.5"],
        *["-c:v", "libx264", "-preset", "veryfast", "-threads", "1", "-pix_fmt", "yuv420p"],
        *["-g", "12", "-x264-params", "open-gop=1:scenecut=0", str(src)],
    )
    clip = video_layout(src)
    assert (clip.profile, clip.time_base, clip.sar) == ("High", (1, 12288), (1, 1))
    assert len(clip.packets) == 36 and [p.pts for p in clip.packets if p.key] == [0, 6144, 12288]
    assert clip.idr_pts == {0}  # 12 and 24 are I-frames that B-frames before them refer across
    assert mismatch(clip, 64, 36, 24) is None
    assert not plan_body(clip, 64, 36, 24, 12, 36).copy
