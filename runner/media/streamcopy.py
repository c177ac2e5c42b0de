"""Which frames of a clip go into the film by stream copy, and why the others are encoded.

Pure: decides from a clip's packet list (ffmpeg.video_layout), runs nothing. A clip body is
copied when its stream already is what the film's encoder would make (H.264 High, yuv420p,
progressive, square pixels, the film's size, a steady frame rate equal to the film's) and its
trimmed range can be cut out of the stream without decoding: it must start on an IDR picture
and end where every frame shown so far has been decoded (B-frames are decoded ahead of where
they are shown). Frames before the first IDR of the range, and after the last such end, are
encoded and joined to the copied ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.media.ffmpeg import MAX_REORDER, VideoLayout

FILM_CODEC = "h264"
FILM_PROFILE = "High"
"""What SEGMENT_VIDEO encodes; the profile HD H.264 from an encoder's defaults has (x264 and
hardware encoders use High at 720p and 1080p), so a provider's clip at the film's size and
rate is copied. Only an exact match is copied: the film's avcC names one profile."""

COPY_FRAMES_PER_ENCODED_END = 8
"""A body whose head (before its first IDR frame) or tail (after its last clean cut) must be
encoded is copied only when at least this many frames per encoded end can be copied, else it
is encoded whole. Measured on a 4 s 1280x720 High clip with an IDR frame every 24 frames (x264
veryfast, one thread, 2 cores): encoding a body whole costs 0.10 s + 5.8 ms a frame; encoding
a 6-frame head, copying the rest and joining the two costs 0.15 s however much is copied
(break-even near 8 copied frames); an encoded tail adds 0.09 s (break-even near 17)."""


@dataclass(frozen=True)
class Plan:
    """How one clip body becomes its film segment."""

    copy: bool
    why: str = ""  # the reason it is conformed, or what of it is encoded around the copy
    head: int = 0  # frames encoded before the copied range
    start: int = 0  # the copied range [start, end), in source frames (= film frames)
    end: int = 0
    tail: int = 0  # frames encoded after it
    ticks: int = 0  # one frame in the source's time base

    def record(self) -> dict[str, Any]:
        """The decision as provenance shows it."""
        if not self.copy:
            return {"video": "conform", "why": self.why}
        out: dict[str, Any] = {"video": "copy", "copied_frames": self.end - self.start}
        if self.head or self.tail:
            out.update(encoded_frames=self.head + self.tail, why=self.why)
        return out


def mismatch(layout: VideoLayout, width: int, height: int, fps: int) -> str | None:
    """Why a clip's video stream cannot be copied into a film of this format, or None."""
    info = layout.info
    if info.video_codec != FILM_CODEC:
        return f"codec {info.video_codec} != film {FILM_CODEC}"
    if layout.profile != FILM_PROFILE:
        return f"profile {layout.profile} != film {FILM_PROFILE}"
    if (info.width, info.height) != (width, height):
        return f"size {info.width}x{info.height} != film {width}x{height}"
    if info.pix_fmt != "yuv420p":
        return f"pixel format {info.pix_fmt} != film yuv420p"
    if "pc" in layout.pix_fmt_flags:
        return "full-range video != film tv range"
    if any(f in layout.pix_fmt_flags for f in ("top first", "bottom first", "top coded first")):
        return "interlaced video != film progressive"
    if layout.sar not in ((0, 1), (1, 1)):
        return f"pixel aspect {layout.sar[0]}:{layout.sar[1]} != film 1:1"
    if layout.rotation:
        return f"rotated {layout.rotation:g} degrees"
    if info.fps != fps:
        return f"frame rate {info.fps:g} != film {fps}"
    if not layout.packets:
        return "its packets could not be listed"
    num, den = layout.time_base
    if num <= 0 or den % (num * fps):
        return f"time base {num}/{den} has no whole number of ticks per {fps} fps frame"
    ticks = den // (num * fps)
    if any(p.discard for p in layout.packets):
        return "an edit list hides some of its frames"
    shown = sorted(p.pts for p in layout.packets)
    if shown != [k * ticks for k in range(len(shown))]:
        return f"frame times are not a steady {fps} fps from 0"
    return None


def plan_body(
    layout: VideoLayout, width: int, height: int, fps: int, first: int, last: int
) -> Plan:
    """How to make film frames [first, last) of this clip: copy what can be, encode the rest."""
    why = mismatch(layout, width, height, fps)
    if why is not None:
        return Plan(copy=False, why=why)
    packets = layout.packets
    if last > len(packets):
        return Plan(copy=False, why="the trim runs past its last video frame")
    num, den = layout.time_base
    ticks = den // (num * fps)
    order = [p.pts // ticks for p in packets]  # display index of each packet, decode order
    # clean[k]: the first k packets in decode order are exactly the frames shown first.
    clean = [True]
    seen = -1
    for k, shown in enumerate(order):
        seen = max(seen, shown)
        clean.append(seen == k)
    start = next(
        (
            k
            for k in range(first, last)
            if clean[k] and order[k] == k and packets[k].pts in layout.idr_pts
        ),
        None,
    )
    end = next((k for k in range(last, first, -1) if clean[k]), None)
    if start is None or end is None or end <= start:
        return Plan(copy=False, why="no IDR frame to cut at within its trim")
    depth = max(k - order[k] for k in range(start, end))  # decoded this many frames early
    if depth > MAX_REORDER:
        return Plan(copy=False, why=f"it reorders {depth} frames, the film at most {MAX_REORDER}")
    head, tail = start - first, last - end
    if end - start < COPY_FRAMES_PER_ENCODED_END * ((head > 0) + (tail > 0)):
        return Plan(
            copy=False,
            why=f"only {end - start} frames between IDR frames and clean cuts: encoded whole",
        )
    parts = []
    if head:
        parts.append(f"{_frames(head)} before its first IDR frame")
    if tail:
        parts.append(f"{_frames(tail)} after its last clean cut")
    note = "encoded: " + " and ".join(parts) if parts else ""
    return Plan(copy=True, why=note, head=head, start=start, end=end, tail=tail, ticks=ticks)


def _frames(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"
