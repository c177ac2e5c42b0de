"""Deterministic film assembly: make each piece once into a cached segment, then join.

A piece is either the body of a clip (its trimmed range minus the crossfade overlaps) or a
crossfade between two clips. Each piece becomes a video-only H.264 MP4 of an exact frame count
at the film's size, rate and pixel format, plus a PCM WAV of exactly the matching sample count.
A body whose stream already matches the film is stream-copied (runner/media/streamcopy.py
decides; only the frames a trim cuts off an IDR frame or a clean end are encoded around the
copy); any other body, and every crossfade, is conformed by an x264 encode. Segments are
cached under the sha256 of a canonical recipe (source digests, trims, size, rate, crossfade,
SEGMENT_VERSION, ffmpeg version), so changing one clip remakes only its pieces; a body's
copy-or-conform decision is cached beside it, for provenance. The join copies the video and
encodes the audio once: PCM joins add no AAC priming, so the audio cannot drift from the video
however many clips the film has. Loudness is matched with one measured gain (EBU R128
integrated loudness, capped by the true peak). The integrated loudness is measured on the joined
audio; the true peak, the costlier half, is each piece's (measured as the piece is made, cached
beside it) or a join's (measured on the few samples around each join).
"""

from __future__ import annotations

import array
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner import faults
from runner.digest import key_of
from runner.errors import NodeFailed, UserError
from runner.media import SEGMENT_VERSION, ffmpeg, streamcopy

TRUE_PEAK_CEILING = -1.5
"""dBTP the loudness gain never pushes the film's true peak past (EBU R128 delivery)."""


@dataclass(frozen=True)
class Clip:
    """One clip of the edit, as cut into the film."""

    path: Path  # a verified source video (any size/fps; audio optional)
    digest: str  # sha256 of the source file's bytes (segment keys use this, never paths)
    start: float = 0.0  # trim in, seconds into the source
    end: float | None = None  # trim out; None = source end
    crossfade_in: float = 0.0  # overlap with the previous clip in seconds (0 = a cut)


class SegmentCache(Protocol):
    """Where conformed segments live between runs (the store's blob cache, or a test dict)."""

    def lookup(self, key: str) -> Path | None: ...

    def save(self, key: str, path: Path) -> Path:
        """Move the file in; return the cached path."""
        ...


@dataclass
class Assembly:
    """How a film was assembled, for the provenance record."""

    ffmpeg_version: str
    segments: list[str]  # segment keys in film order: each piece's video, audio (, decision)
    join_argv: list[str]  # the join command; its paths are relative to a scratch directory
    rendered: list[str] = field(default_factory=list)  # the keys made by this run
    clips: list[dict[str, Any]] = field(default_factory=list)  # per clip: "copy" or "conform"


@dataclass(frozen=True)
class _Film:
    width: int
    height: int
    fps: int

    def samples(self, frames: int) -> int:
        """Audio samples matching `frames` video frames."""
        return round(frames * ffmpeg.SAMPLE_RATE / self.fps)


@dataclass(frozen=True)
class _Piece:
    kind: str  # "body" | "crossfade"
    clip: int  # index of the clip (for a crossfade: the incoming clip)
    video_key: str
    audio_key: str

    @property
    def peak_key(self) -> str:
        """Its audio's true peak, measured as the audio was made (the film's is their max)."""
        return key_of({"true_peak_of": self.audio_key})

    @property
    def decision_key(self) -> str:
        """A body's copy-or-conform decision, for provenance."""
        return key_of({"decision_of": self.video_key})

    @property
    def keys(self) -> tuple[str, ...]:
        """Its cached files: video, audio, true peak, and for a body the decision."""
        if self.kind != "body":
            return (self.video_key, self.audio_key, self.peak_key)
        return (self.video_key, self.audio_key, self.peak_key, self.decision_key)


@dataclass(frozen=True)
class _Source:
    """A clip resolved against its probed source: the trimmed range in film frames."""

    layout: ffmpeg.VideoLayout
    first: int  # first frame of the trimmed range, counted at the film's rate
    last: int  # one past its last frame

    @property
    def info(self) -> ffmpeg.MediaInfo:
        return self.layout.info


def assemble(
    clips: list[Clip],
    *,
    width: int,
    height: int,
    fps: int,
    loudness_lufs: float | None,
    dest: Path,
    cache: SegmentCache,
    workdir: Path,
    lossless_audio: bool = False,
) -> Assembly:
    """Assemble `clips` into one MP4 at `dest`; identical inputs give identical bytes. With
    `lossless_audio` (a mix follows), its audio is ALAC, unnormalised."""
    film = _Film(width, height, fps)
    _check_edit(clips, film)
    version = ffmpeg.ffmpeg_version()
    pieces = _pieces(clips, film, version)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="assemble-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        found = {k: cache.lookup(k) for p in pieces for k in p.keys}
        for p in pieces:  # a peak record that does not read as this audio's is measured again
            peak_path = found[p.peak_key]
            if peak_path is not None and _read_peak(peak_path, p.audio_key) is None:
                found[p.peak_key] = None
        unique: dict[str, _Piece] = {}  # a clip cut in twice is made once
        for p in pieces:
            if any(found[k] is None for k in p.keys if k != p.peak_key):
                unique.setdefault(p.video_key + p.audio_key, p)
        missing = list(unique.values())
        rendered = _render_missing(clips, missing, film, found, cache, tmp)
        if loudness_lufs is not None:  # the gain needs every piece's peak
            rendered += _measure_peaks(pieces, found, cache, tmp)
        paths = {k: v for k, v in found.items() if v is not None}
        video_list = tmp / "video.ffconcat"
        video_list.write_text(
            "ffconcat version 1.0\n"
            + "".join(f"file {_quote(paths[p.video_key])}\n" for p in pieces),
            encoding="utf-8",
        )
        wavs = [paths[p.audio_key] for p in pieces]
        _join_wavs(wavs, tmp / "audio.wav")
        gain = None
        if loudness_lufs is not None:
            peaks = [_peak(paths[p.peak_key], p.audio_key) for p in pieces]
            integrated, peak = _loudness(tmp / "audio.wav", wavs, peaks, tmp)
            gain = loudness_gain(integrated, peak, target=loudness_lufs)
        args = ffmpeg.join_args(
            video_list="video.ffconcat",
            audio="audio.wav",
            gain_db=gain,
            out="film.mp4",
            codec=ffmpeg.ALAC if lossless_audio else ffmpeg.AAC,
        )
        ffmpeg.run(args, cwd=tmp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp / "film.mp4", dest)
        decisions = {
            p.clip: json.loads(paths[p.decision_key].read_text(encoding="utf-8"))
            for p in pieces
            if p.kind == "body"
        }
    return Assembly(
        ffmpeg_version=version,
        segments=[k for p in pieces for k in p.keys if found[k] is not None],
        join_argv=ffmpeg.command(args),
        rendered=rendered,
        clips=[decisions[i] for i in range(len(clips))],
    )


def clip_ranges(clips: list[Clip], fps: int) -> list[tuple[int, int]]:
    """Each clip's trimmed range of its source in film frames, `(first, last)`, by the same
    probe and arithmetic the assembly cuts with: what the sound and the subtitles are timed by."""
    film = _Film(2, 2, fps)
    ranges = []
    for i, clip in enumerate(clips):
        src = _resolve(clip, i, film)
        ranges.append((src.first, src.last))
    return ranges


def tag(src: Path, dest: Path, comment: str) -> None:
    """Copy src to dest with `comment` (the provenance digest) in its metadata, by remux."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tag-", suffix=".mp4", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        subtitles = ffmpeg.has_subtitles(src)
        ffmpeg.run(
            ffmpeg.tag_args(src=str(src), comment=comment, out=str(tmp), subtitles=subtitles)
        )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def loudness_gain(integrated: float, true_peak: float, *, target: float) -> float | None:
    """The gain (dB) that brings the film to `target` LUFS without its true peak passing
    TRUE_PEAK_CEILING; None for silence. Rounded, so the join command is stable.
    """
    if integrated < -70 or true_peak == float("-inf"):
        return None  # silence (R128 gates everything below -70 LUFS)
    gain = min(target - integrated, TRUE_PEAK_CEILING - true_peak)
    return round(gain, 2)


# --- the plan: pieces and their keys (pure) ------------------------------------------------


def _frames(seconds: float, film: _Film) -> int:
    return round(seconds * film.fps)


def _check_edit(clips: list[Clip], film: _Film) -> None:
    """Reject edits that cannot be cut, before anything is probed or encoded."""
    if not clips:
        raise UserError("the edit has no clips to assemble")
    if film.width < 2 or film.height < 2 or film.width % 2 or film.height % 2:
        raise UserError(f"film size {film.width}x{film.height} must be even in both sides")
    if not 1 <= film.fps <= 240:
        raise UserError(f"film fps {film.fps} must be from 1 to 240")
    for i, clip in enumerate(clips):
        where = _where(i, clip)
        if clip.start < 0:
            raise UserError(f"{where}: start {clip.start:g} s is negative")
        if clip.end is not None and _frames(clip.end, film) <= _frames(clip.start, film):
            raise UserError(f"{where}: end {clip.end:g} s is not after start {clip.start:g} s")
        if clip.crossfade_in < 0:
            raise UserError(f"{where}: crossfade {clip.crossfade_in:g} s is negative")
        if i == 0 and _frames(clip.crossfade_in, film) > 0:
            raise UserError(f"{where}: the first clip has nothing to crossfade from")


def _pieces(clips: list[Clip], film: _Film, version: str) -> list[_Piece]:
    """The film's pieces in order, each with the keys of its video and audio segments."""
    base = {"segment_version": SEGMENT_VERSION, "ffmpeg": version, "fps": film.fps}
    video = {**base, "track": "video", "size": [film.width, film.height], "pix_fmt": "yuv420p"}
    audio = {**base, "track": "audio", "sample_rate": ffmpeg.SAMPLE_RATE, "channels": 2}
    fades = [_frames(c.crossfade_in, film) for c in clips] + [0]

    def trim(clip: Clip) -> dict[str, Any]:
        end = None if clip.end is None else _frames(clip.end, film)
        return {"source": clip.digest, "first": _frames(clip.start, film), "end": end}

    pieces = []
    for i, clip in enumerate(clips):
        if fades[i] > 0:
            prev = trim(clips[i - 1])
            xfade = {
                "kind": "crossfade",
                "frames": fades[i],
                "a": {"source": prev["source"], "end": prev["end"]},
                "b": {"source": clip.digest, "first": trim(clip)["first"]},
            }
            pieces.append(
                _Piece("crossfade", i, key_of({**video, **xfade}), key_of({**audio, **xfade}))
            )
        body = {"kind": "body", **trim(clip), "fade_in": fades[i], "fade_out": fades[i + 1]}
        pieces.append(_Piece("body", i, key_of({**video, **body}), key_of({**audio, **body})))
    return pieces


def _where(i: int, clip: Clip) -> str:
    return f"edit clip {i + 1} ({clip.path.name})"


# --- rendering missing segments ------------------------------------------------------------


def _render_missing(
    clips: list[Clip],
    missing: list[_Piece],
    film: _Film,
    found: dict[str, Path | None],
    cache: SegmentCache,
    tmp: Path,
) -> list[str]:
    """Encode the missing segments in parallel (each ffmpeg single-threaded), then cache them.

    Saves happen on this thread, in film order, so the cache needs no locking.
    """
    if not missing:
        return []
    fades = [_frames(c.crossfade_in, film) for c in clips] + [0]
    needed = sorted({p.clip for p in missing} | {p.clip - 1 for p in missing if p.kind != "body"})
    pool = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)))
    try:
        return _render_pieces(clips, missing, film, found, cache, tmp, fades, needed, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on failure, start nothing more


def _render_pieces(
    clips: list[Clip],
    missing: list[_Piece],
    film: _Film,
    found: dict[str, Path | None],
    cache: SegmentCache,
    tmp: Path,
    fades: list[int],
    needed: list[int],
    pool: ThreadPoolExecutor,
) -> list[str]:
    """Probe the sources, check the cut fits, encode each piece, save in film order."""
    probes = {i: pool.submit(_resolve, clips[i], i, film) for i in needed}
    sources = {i: f.result() for i, f in probes.items()}
    for i in needed:
        _check_fades(clips[i], i, sources[i], fades[i] + fades[i + 1], film)
    jobs: list[tuple[_Piece, Future[tuple[Path, ...]]]] = []
    for n, piece in enumerate(missing):
        out = tmp / f"piece-{n:05d}"
        out.mkdir()
        i = piece.clip
        job: Callable[[], tuple[Path, ...]]
        if piece.kind == "body":
            job = _body_job(clips[i], sources[i], fades[i], fades[i + 1], film, out, piece)
        else:
            job = _crossfade_job(
                clips[i - 1], sources[i - 1], clips[i], sources[i], fades[i], film, out, piece
            )
        jobs.append((piece, pool.submit(job)))
    rendered = []
    for piece, future in jobs:
        made = future.result()
        for key, path in zip(piece.keys, made, strict=True):
            if found[key] is None:
                found[key] = cache.save(key, path)
                rendered.append(key)
        faults.point("mid-assembly")
    return rendered


def _check_fades(clip: Clip, i: int, src: _Source, lead: int, film: _Film) -> None:
    if src.last - src.first <= lead:
        raise UserError(
            f"{_where(i, clip)}: {(src.last - src.first) / film.fps:g}"
            f" s after trimming, too short for its crossfades of {lead / film.fps:g} s"
        )


@dataclass(frozen=True)
class Span:
    """A clip as assembly cuts it, in film frames: its trimmed range [first, last), the
    crossfade that joins it to the previous clip, and its source's whole length."""

    first: int
    last: int
    fade_in: int
    length: int


def spans(clips: list[Clip], *, width: int, height: int, fps: int) -> list[Span]:
    """Each clip's cut, by the same probing and frame arithmetic as `assemble` (what an
    editor export lays out; the film is sum(last - first) - sum(fade_in) frames long)."""
    film = _Film(width, height, fps)
    _check_edit(clips, film)
    fades = [_frames(c.crossfade_in, film) for c in clips] + [0]
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        sources = list(pool.map(lambda i: _resolve(clips[i], i, film), range(len(clips))))
    out = []
    for i, (clip, src) in enumerate(zip(clips, sources, strict=True)):
        _check_fades(clip, i, src, fades[i] + fades[i + 1], film)
        length = _frames(src.info.duration, film)
        if src.layout.packets and src.info.fps == film.fps:
            length = len(src.layout.packets)
        out.append(Span(src.first, src.last, fades[i], max(length, src.last)))
    return out


def _resolve(clip: Clip, i: int, film: _Film) -> _Source:
    """Probe a clip's source and place its trim in film frames."""
    layout = ffmpeg.video_layout(clip.path)
    info = layout.info
    if not info.has_video:
        raise NodeFailed(f"{_where(i, clip)}: {clip.path} has no video stream")
    length = _frames(info.duration, film)
    if layout.packets and info.fps == film.fps:
        # The video's own frame count: the container's duration is its longest stream's, and
        # AAC audio often runs a frame past the video (its last frame would be repeated).
        length = len(layout.packets)
    first = _frames(clip.start, film)
    last = length if clip.end is None else _frames(clip.end, film)
    if last > length + 1:
        raise UserError(
            f"{_where(i, clip)}: end {clip.end:g} s is past the end of the source "
            f"({info.duration:g} s)"
        )
    if first >= last:
        raise UserError(
            f"{_where(i, clip)}: start {clip.start:g} s is not before the end of the source "
            f"({info.duration:g} s)"
        )
    return _Source(layout, first, last)


def _body_job(
    clip: Clip, src: _Source, fade_in: int, fade_out: int, film: _Film, out: Path, piece: _Piece
) -> Callable[[], tuple[Path, ...]]:
    """Make a clip's body, the frames between its crossfades: copied where its stream allows,
    else encoded."""
    first = src.first + fade_in
    last = src.last - fade_out
    plan = streamcopy.plan_body(src.layout, film.width, film.height, film.fps, first, last)
    source = str(clip.path)

    def encode(start: int, frames: int, video: str | None, audio: str | None) -> None:
        """Encode frames [start, start+frames); with audio, its WAV and true peak too."""
        args = ffmpeg.segment_args(
            source=source,
            has_audio=src.info.has_audio,
            video_chain=_video(film, start, frames),
            audio_filter=_audio(film, start, frames),
            frames=frames,
            fps=film.fps,
            video_out=video,
            audio_out=audio,
        )
        if audio is None:
            ffmpeg.run(args, cwd=out)
        else:
            _write_peak(out / "peak.json", ffmpeg.run_peak(args, cwd=out), piece.audio_key)

    made = (out / "video.mp4", out / "audio.wav", out / "peak.json", out / "decision.json")

    def job() -> tuple[Path, ...]:
        (out / "decision.json").write_text(json.dumps(plan.record(), sort_keys=True))
        if not plan.copy:
            encode(first, last - first, "video.mp4", "audio.wav")
            return made
        parts = []
        if plan.head:
            encode(first, plan.head, "head.mp4", None)
            parts.append("head.mp4")
        middle = "middle.mp4" if plan.head or plan.tail else "video.mp4"
        args = ffmpeg.copy_args(
            source=source,
            has_audio=src.info.has_audio,
            first_packet=plan.start,  # a clean cut: as many packets as frames come before it
            end_packet=plan.end,
            pts_offset=plan.start * plan.ticks,
            duration=plan.ticks,
            audio_filter=_audio(film, first, last - first),
            fps=film.fps,
            video_out=middle,
            audio_out="audio.wav",
        )
        _write_peak(out / "peak.json", ffmpeg.run_peak(args, cwd=out), piece.audio_key)
        parts.append(middle)
        if plan.tail:
            encode(plan.end, plan.tail, "tail.mp4", None)
            parts.append("tail.mp4")
        if len(parts) > 1:
            (out / "parts.ffconcat").write_text(
                "ffconcat version 1.0\n" + "".join(f"file {p}\n" for p in parts),
                encoding="utf-8",
            )
            ffmpeg.run(
                ffmpeg.concat_video_args(video_list="parts.ffconcat", out="video.mp4"), cwd=out
            )
        return made

    return job


def _crossfade_job(
    a: Clip,
    a_src: _Source,
    b: Clip,
    b_src: _Source,
    frames: int,
    film: _Film,
    out: Path,
    piece: _Piece,
) -> Callable[[], tuple[Path, ...]]:
    """Encode a crossfade: the last `frames` of A dissolving into the first `frames` of B."""
    a_first = a_src.last - frames

    def job() -> tuple[Path, ...]:
        args = ffmpeg.crossfade_args(
            a=str(a.path),
            a_has_audio=a_src.info.has_audio,
            a_video=_video(film, a_first, frames),
            a_audio=_audio(film, a_first, frames),
            b=str(b.path),
            b_has_audio=b_src.info.has_audio,
            b_video=_video(film, b_src.first, frames),
            b_audio=_audio(film, b_src.first, frames),
            frames=frames,
            samples=film.samples(frames),
            fps=film.fps,
            video_out="video.mp4",
            audio_out="audio.wav",
        )
        _write_peak(out / "peak.json", ffmpeg.run_peak(args, cwd=out), piece.audio_key)
        return out / "video.mp4", out / "audio.wav", out / "peak.json"

    return job


def _video(film: _Film, first: int, frames: int) -> str:
    return ffmpeg.conform_chain(
        width=film.width, height=film.height, fps=film.fps, start_frame=first, frames=frames
    )


def _audio(film: _Film, first: int, frames: int) -> str:
    return ffmpeg.audio_chain(start_sample=film.samples(first), samples=film.samples(frames))


# --- the join ------------------------------------------------------------------------------


def _quote(path: Path) -> str:
    """A path quoted for an ffconcat `file` line."""
    return "'" + str(path.resolve()).replace("'", "'\\''") + "'"


def _join_wavs(parts: list[Path], dest: Path) -> None:
    """Concatenate PCM WAVs sample for sample: no gaps, no priming, no drift."""
    with wave.open(str(dest), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(ffmpeg.SAMPLE_RATE)
        for part in parts:
            with wave.open(str(part), "rb") as src:
                params = (src.getnchannels(), src.getsampwidth(), src.getframerate())
                if params != (2, 2, ffmpeg.SAMPLE_RATE):
                    raise NodeFailed(f"{part}: audio segment is {params}, not 48 kHz s16 stereo")
                while chunk := src.readframes(1 << 16):
                    out.writeframes(chunk)


# --- loudness: measured once on the joined audio, true peak from the pieces ----------------

JOIN_WINDOW = 256
"""Samples taken from each side of a join to measure the true peak across it: wider than the
reach of ebur128's oversampling filter, so the window holds every inter-sample peak the join
can make."""

JOIN_RAMP = 64
"""Samples at a window's outer edges faded from silence and back to it, so that laying the
windows end to end makes no new step of its own."""


PEAK_VERSION = 1
"""The format of a piece's true-peak record."""


def _write_peak(dest: Path, peak: float, audio_key: str) -> None:
    """A piece's true peak as JSON, naming the audio it was measured on (null for silence:
    JSON has no -inf)."""
    value = None if math.isinf(peak) else peak
    record = {"version": PEAK_VERSION, "audio": audio_key, "true_peak_dbtp": value}
    dest.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")


def _read_peak(path: Path, audio_key: str) -> float | None:
    """A cached piece's true peak, -inf for silence; None when the file is not the peak record
    of this audio (read from disk, so not trusted: it is measured again)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != PEAK_VERSION:
        return None
    if record.get("audio") != audio_key or "true_peak_dbtp" not in record:
        return None
    value = record["true_peak_dbtp"]
    if value is None:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -200 <= value <= 50:
        return None
    return float(value)


def _peak(path: Path, audio_key: str) -> float:
    peak = _read_peak(path, audio_key)
    if peak is None:  # checked when looked up, made or measured since: a bug if not
        raise NodeFailed(f"{path}: not the true-peak record of audio segment {audio_key}")
    return peak


def _measure_peaks(
    pieces: list[_Piece], found: dict[str, Path | None], cache: SegmentCache, tmp: Path
) -> list[str]:
    """Cached pieces without a (readable) peak record, say from a runner before this one kept
    them: their true peak measured on their cached audio, not the piece made again."""
    todo = {p.peak_key: p for p in pieces if found[p.peak_key] is None}
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        measured = dict(
            zip(
                todo,
                pool.map(lambda p: ffmpeg.true_peak(_found(found, p.audio_key)), todo.values()),
                strict=True,
            )
        )
    for key, piece in todo.items():
        dest = tmp / f"peak-{key}.json"
        _write_peak(dest, measured[key], piece.audio_key)
        found[key] = cache.save(key, dest)
    return list(todo)


def _found(found: dict[str, Path | None], key: str) -> Path:
    path = found[key]
    assert path is not None  # every piece's audio is cached or made by now
    return path


def _loudness(joined: Path, wavs: list[Path], peaks: list[float], tmp: Path) -> tuple[float, float]:
    """The joined audio's integrated loudness and true peak.

    Integrated loudness gates over the whole film, so it is measured on the joined file. The
    true peak is the highest of the pieces' (each measured when it was made) and of the joins
    between them, measured on a short file of the samples either side of each join: a cut can
    put an inter-sample peak above both of its sides. The two measurements run side by side.
    """
    if len(wavs) < 2:
        return ffmpeg.integrated_loudness(joined), max(peaks)
    windows = tmp / "joins.wav"
    _join_windows(wavs, windows)
    with ThreadPoolExecutor(max_workers=1) as pool:
        at_joins = pool.submit(ffmpeg.true_peak, windows)
        integrated = ffmpeg.integrated_loudness(joined)
        return integrated, max(*peaks, at_joins.result())


def _join_windows(wavs: list[Path], dest: Path) -> None:
    """For each join, the last JOIN_WINDOW samples before it and the first after it, their
    outer JOIN_RAMP samples faded; the joins one after another in one 48 kHz s16 stereo WAV."""
    ramp = [(1 - math.cos(math.pi * (i + 0.5) / JOIN_RAMP)) / 2 for i in range(JOIN_RAMP)]
    with wave.open(str(dest), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(ffmpeg.SAMPLE_RATE)
        for before, after in itertools.pairwise(wavs):
            tail = _frames_of(before, last=True)
            head = _frames_of(after, last=False)
            _fade(tail, ramp, at_start=True)
            _fade(head, ramp, at_start=False)
            out.writeframes(_le(tail) + _le(head))


def _frames_of(path: Path, *, last: bool) -> array.array[int]:
    """Up to JOIN_WINDOW stereo frames from the start or the end of a segment's WAV."""
    with wave.open(str(path), "rb") as src:
        count = min(JOIN_WINDOW, src.getnframes())
        if last:
            src.setpos(src.getnframes() - count)
        samples = array.array("h", src.readframes(count))
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    return samples


def _fade(samples: array.array[int], ramp: list[float], *, at_start: bool) -> None:
    """Fade the outer end of a window (its start, or its end) from silence, in place."""
    frames = len(samples) // 2
    for i, gain in enumerate(ramp[:frames]):
        frame = i if at_start else frames - 1 - i
        samples[2 * frame] = round(samples[2 * frame] * gain)
        samples[2 * frame + 1] = round(samples[2 * frame + 1] * gain)


def _le(samples: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()
