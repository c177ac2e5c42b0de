"""The edit as an editor's timeline: OpenTimelineIO, and through its adapters EDL, FCP 7 XML
and FCPXML.

One video track and one audio track carry the same clips. A crossfade of F frames is a
dissolve that starts at the cut: the outgoing clip's source range ends F frames before its
trimmed end (those frames are its handle, played under the dissolve) and the incoming clip
starts at its trimmed start, as assembly mixes them; so the timeline is exactly as long as the
film. Under them, when the film has them, a music track (one clip per pass of the looped bed)
and a voice-over track, placed where the mix plays them, and each subtitle cue as a marker on
the timeline. What a format cannot hold is moved (`markers_on_clips`) or dropped
(`cuts_only`, `drop_sound`), and the export says so.
opentimelineio is imported when a timeline is made, never at start-up.
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
# What each adapter keeps of the sound layers: the music and voice-over tracks (the EDL
# writer writes the picture track alone), and where the cue markers go: on the timeline
# (FCP 7 XML: sequence markers), else on the clip each cue starts in (FCPXML keeps their
# ranges; an EDL keeps only each one's first frame, as a LOC comment).
SOUND_TRACKS = {"edl": False, "otio": True, "fcp7xml": True, "fcpxml": True}
MARKERS_ON = {"edl": "clips", "otio": "timeline", "fcp7xml": "timeline", "fcpxml": "clips"}


@dataclass(frozen=True)
class Shot:
    """One clip of the edit: its media file, where assembly cuts it, and what made it."""

    name: str  # the clip's name in the editor (shot, and take when there are several)
    media: Path  # a stable file the editor links to (out/media/...)
    span: Span
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sound:
    """A sound file placed in the film from its start: at film frame `first`, for `frames`."""

    name: str
    media: Path  # the asset in the film's folder
    first: int
    frames: int
    length: int  # the file's whole length, in film frames
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Marker:
    """A subtitle cue on the timeline: film frames [first, last)."""

    name: str
    first: int
    last: int
    metadata: dict[str, Any] = field(default_factory=dict)


def build(
    title: str,
    fps: int,
    shots: list[Shot],
    metadata: dict[str, Any],
    sound: dict[str, list[Sound]] | None = None,
    markers: list[Marker] | None = None,
) -> otio.schema.Timeline:
    """The timeline of `shots` in order, at the film's rate; then each `sound` track (name ->
    its sounds) and the `markers`."""
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
    for name, sounds in (sound or {}).items():
        for lane, placed in enumerate(_lanes(sounds), start=1):
            track = otio.schema.Track(
                name=name if lane == 1 else f"{name} {lane}", kind=otio.schema.TrackKind.Audio
            )
            at = 0
            for s in placed:
                if s.first > at:
                    track.append(
                        otio.schema.Gap(source_range=otio.opentime.TimeRange(t(0), t(s.first - at)))
                    )
                reference = otio.schema.ExternalReference(
                    target_url=s.media.resolve().as_uri(),
                    available_range=otio.opentime.TimeRange(t(0), t(s.length)),
                )
                track.append(
                    otio.schema.Clip(
                        name=s.name,
                        media_reference=reference,
                        source_range=otio.opentime.TimeRange(t(0), t(s.frames)),
                        metadata={"runner": s.metadata},
                    )
                )
                at = s.first + s.frames
            timeline.tracks.append(track)
    for m in markers or []:
        timeline.tracks.markers.append(
            otio.schema.Marker(
                name=m.name,
                marked_range=otio.opentime.TimeRange(t(m.first), t(m.last - m.first)),
                metadata={"runner": m.metadata},
            )
        )
    return timeline


def _lanes(sounds: list[Sound]) -> list[list[Sound]]:
    """The sounds in film order, on as few tracks as keep any two from overlapping."""
    lanes: list[list[Sound]] = []
    for s in sorted(sounds, key=lambda s: (s.first, s.frames)):
        lane = next((lane for lane in lanes if lane[-1].first + lane[-1].frames <= s.first), None)
        if lane is None:
            lanes.append([s])
        else:
            lane.append(s)
    return lanes


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


def drop_sound(timeline: otio.schema.Timeline, names: set[str]) -> int:
    """Remove the sound-layer tracks (named in `names`, or their extra lanes); returns how many
    clips they held."""
    dropped = 0
    for i in reversed(range(len(timeline.tracks))):
        track = timeline.tracks[i]
        if track.name in names or track.name.rsplit(" ", 1)[0] in names:
            dropped += len(list(track.find_clips()))
            del timeline.tracks[i]
    return dropped


def markers_on_clips(timeline: otio.schema.Timeline) -> int:
    """Move the timeline's markers onto the picture track's clip each one starts in (its range
    in that clip's source time); returns how many moved."""
    import opentimelineio as otio

    clips = list(timeline.video_tracks()[0].find_clips())
    moved = 0
    for marker in list(timeline.tracks.markers):
        start = marker.marked_range.start_time
        for clip in clips:
            where = clip.range_in_parent()
            if where.start_time <= start < where.end_time_exclusive() or clip is clips[-1]:
                offset = start - where.start_time + clip.source_range.start_time
                clip.markers.append(
                    otio.schema.Marker(
                        name=marker.name,
                        marked_range=otio.opentime.TimeRange(offset, marker.marked_range.duration),
                        color=marker.color,
                        metadata=marker.metadata,
                    )
                )
                moved += 1
                break
    del timeline.tracks.markers[:]
    return moved


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
