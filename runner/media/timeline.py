"""The edit as an editor's timeline: OpenTimelineIO, and through its adapters EDL, FCP 7 XML
and FCPXML.

One video track and one audio track carry the same clips. A crossfade of F frames is a
dissolve that starts at the cut: the outgoing clip's source range ends F frames before its
trimmed end (those frames are its handle, played under the dissolve) and the incoming clip
starts at its trimmed start, as assembly mixes them; so the timeline is exactly as long as the
film. opentimelineio is imported when a timeline is made, never at start-up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.media.assemble import Span

if TYPE_CHECKING:
    import opentimelineio as otio

FORMATS = {
    # --format: (OpenTimelineIO adapter, file suffix)
    "otio": ("otio_json", ".otio"),
    "edl": ("cmx_3600", ".edl"),
    "fcp7xml": ("fcp_xml", ".xml"),
    "fcpxml": ("fcpx_xml", ".fcpxml"),
}
CUTS_ONLY = {"edl": False, "otio": False, "fcp7xml": False, "fcpxml": True}


@dataclass(frozen=True)
class Shot:
    """One clip of the edit: its media file, where assembly cuts it, and what made it."""

    name: str  # the clip's name in the editor (shot, and take when there are several)
    media: Path  # a stable file the editor links to (out/media/...)
    span: Span
    metadata: dict[str, Any] = field(default_factory=dict)


def build(
    title: str, fps: int, shots: list[Shot], metadata: dict[str, Any]
) -> otio.schema.Timeline:
    """The timeline of `shots` in order, at the film's rate."""
    import opentimelineio as otio

    def t(frames: int) -> otio.opentime.RationalTime:
        return otio.opentime.RationalTime(frames, fps)

    timeline = otio.schema.Timeline(name=title, global_start_time=t(0))
    timeline.metadata["runner"] = metadata
    for kind, name in ((otio.schema.TrackKind.Video, "V1"), (otio.schema.TrackKind.Audio, "A1")):
        track = otio.schema.Track(name=name, kind=kind)
        for i, shot in enumerate(shots):
            span = shot.span
            fade_out = shots[i + 1].span.fade_in if i + 1 < len(shots) else 0
            reference = otio.schema.ExternalReference(
                target_url=shot.media.resolve().as_uri(),
                available_range=otio.opentime.TimeRange(t(0), t(span.length)),
            )
            track.append(
                otio.schema.Clip(
                    name=shot.name,
                    media_reference=reference,
                    source_range=otio.opentime.TimeRange(
                        t(span.first), t(span.last - fade_out - span.first)
                    ),
                    metadata={"runner": shot.metadata},
                )
            )
            if fade_out:
                track.append(
                    otio.schema.Transition(
                        name=f"crossfade into {shots[i + 1].name}",
                        transition_type=otio.schema.TransitionTypes.SMPTE_Dissolve,
                        in_offset=t(0),
                        out_offset=t(fade_out),
                    )
                )
        timeline.tracks.append(track)
    return timeline


def cuts_only(timeline: otio.schema.Timeline) -> int:
    """Replace each dissolve by a cut at its middle (the film's length is kept); returns how
    many were dropped."""
    import opentimelineio as otio

    dropped = 0
    for track in timeline.tracks:
        items = list(track)
        for i, item in enumerate(items):
            if not isinstance(item, otio.schema.Transition):
                continue
            before, after = items[i - 1], items[i + 1]
            half = otio.opentime.RationalTime(item.out_offset.value // 2, item.out_offset.rate)
            a, b = before.source_range, after.source_range
            before.source_range = otio.opentime.TimeRange(a.start_time, a.duration + half)
            after.source_range = otio.opentime.TimeRange(b.start_time + half, b.duration - half)
            dropped += track is timeline.tracks[0]
        for i in reversed(range(len(items))):
            if isinstance(items[i], otio.schema.Transition):
                del track[i]
    return dropped


def write(timeline: otio.schema.Timeline, fmt: str, dest: Path) -> None:
    """Write `timeline` as `fmt` (a FORMATS key) to dest, through a temporary file."""
    import opentimelineio as otio

    adapter, _ = FORMATS[fmt]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # adapters' own chatter (reel-name truncation, ...)
        otio.adapters.write_to_file(timeline, str(tmp), adapter_name=adapter)
    tmp.replace(dest)
