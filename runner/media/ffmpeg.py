"""Every ffmpeg command line the runner builds, runs and parses, in one place.

The ffmpeg build is the one pinned by the imageio-ffmpeg wheel, so output bytes do not depend
on the machine. Every encode here is deterministic: bitexact flags, no metadata, no creation
time, and x264 pinned to one thread (its output bytes change with the thread count).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import threading
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from runner.errors import NodeFailed
from runner.media import mp4

SAMPLE_RATE = 48_000
"""Audio sample rate of every clip and film the runner writes."""

GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
"""Prepended to every command: no prompts, no banner, errors only, overwrite outputs."""

BITEXACT = [
    "-fflags",
    "+bitexact",
    "-flags:v",
    "+bitexact",
    "-flags:a",
    "+bitexact",
    "-map_metadata",
    "-1",
    "-map_chapters",
    "-1",
]
"""Output options that keep encoder versions, timestamps and source metadata out of the bytes."""

X264 = ["-c:v", "libx264", "-threads", "1", "-pix_fmt", "yuv420p"]
"""x264 pinned to one thread: its output depends on the thread count."""

PREVIZ_VIDEO = [
    *[*X264, "-preset", "ultrafast", "-tune", "stillimage", "-crf", "23"],
    *["-x264-params", "8x8dct=1"],
]
"""Previz clips: a still card and a timecode, so the fastest real H.264 is good enough. The
8x8 transform makes it H.264 High, like the film's segments, so assembly copies previz clips
instead of encoding them again."""

SEGMENT_VIDEO = [*X264, "-preset", "veryfast", "-crf", "18", "-profile:v", "high", "-bf", "0"]
"""Conformed film segments: visually clean, no B-frames so segments join by copy exactly."""

AAC = ["-c:a", "aac", "-b:a", "192k", "-ar", str(SAMPLE_RATE), "-ac", "2"]
"""The film's audio codec; audio is encoded exactly once, at the join."""

PCM = ["-c:a", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-ac", "2"]
"""Intermediate audio: sample-exact WAV, so joins neither drift nor add priming."""


@cache
def ffmpeg_exe() -> str:
    """Path of the pinned ffmpeg binary shipped by imageio-ffmpeg."""
    import imageio_ffmpeg  # lazy: keeps `runner --help` fast

    return str(imageio_ffmpeg.get_ffmpeg_exe())


_version_lock = threading.Lock()


def ffmpeg_version() -> str:
    """The ffmpeg build's version string, e.g. "9.0.2-17-g2a571b6068-20260930"."""
    with _version_lock:  # worker threads ask at once: run ffmpeg -version once, not per thread
        return _ffmpeg_version()


@cache
def _ffmpeg_version() -> str:
    out = _capture([ffmpeg_exe(), "-hide_banner", "-version"])
    match = re.match(r"ffmpeg version n?(\S+)", out)
    if match is None:
        raise NodeFailed(f"cannot read the ffmpeg version from: {out[:200]!r}")
    return match.group(1)


def command(args: list[str]) -> list[str]:
    """The full argv for ffmpeg `args`, with "ffmpeg" as argv[0] (for provenance records)."""
    return ["ffmpeg", *GLOBAL_ARGS, *args]


def run(args: list[str], *, cwd: Path | None = None) -> None:
    """Run ffmpeg with `args`; on failure raise NodeFailed with the tail of its stderr."""
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, *args]
    try:
        proc = _spawn(argv, cwd=cwd)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    if proc.returncode != 0:
        raise NodeFailed(f"ffmpeg failed (exit {proc.returncode}): {_tail(proc.stderr)}")


def _capture(argv: list[str], *, cwd: Path | None = None) -> str:
    """Run a command that may exit non-zero by design; return stdout and stderr together."""
    try:
        proc = _spawn(argv, cwd=cwd)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    return proc.stdout + proc.stderr


_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()


def _spawn(
    argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run, with the child known to `kill_children` while it runs."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    ) as proc:
        with _children_lock:
            _children.add(proc)
        try:
            out, err = proc.communicate()
        finally:
            with _children_lock:
                _children.discard(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_children() -> None:
    """Kill every ffmpeg this process is running (a run that exits at once leaves none)."""
    with _children_lock:
        running = list(_children)
    for proc in running:
        with suppress(OSError):
            proc.kill()


def _tail(stderr: str, lines: int = 12) -> str:
    """The last few non-empty lines of a command's stderr, for an error message."""
    kept = [line for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(no output)"


# --- probing and verification -------------------------------------------------------------


@dataclass(frozen=True)
class MediaInfo:
    """What `ffmpeg -i` reports about a media file (the pinned build ships no ffprobe), or
    the MP4 box walk reads in its place."""

    duration: float  # container duration in seconds (10 ms resolution)
    width: int  # 0 when there is no video stream
    height: int
    fps: float  # 0.0 when unknown
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    pix_fmt: str | None = None
    sample_rate: int | None = None
    frames: int | None = None  # video frames; only verify_video counts them

    @property
    def has_video(self) -> bool:
        """Whether the file has a video stream."""
        return self.video_codec is not None

    @property
    def codecs(self) -> tuple[str, ...]:
        """Codec names of the first video and audio streams, in that order."""
        return tuple(c for c in (self.video_codec, self.audio_codec) if c is not None)


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+\S*: Video: (\w+)(.*)")
_AUDIO = re.compile(r"Stream #\d+:\d+\S*: Audio: (\w+)(.*)")
_SIZE = re.compile(r", (\d+)x(\d+)[ ,\n]")
_FPS = re.compile(r", (\d+(?:\.\d+)?)(k?) fps")
_RATE = re.compile(r", (\d+) Hz")


def probe(path: Path) -> MediaInfo:
    """A file's duration, size, frame rate and codecs: read from its boxes when it is an MP4
    the box walk reads (no process), else by parsing `ffmpeg -i` output."""
    try:
        return media_info(mp4.inspect(path))
    except (mp4.Unsupported, mp4.Damaged):
        pass  # ffmpeg reads more than the box walk does, and says what it cannot read
    if not path.is_file():
        raise NodeFailed(f"{path}: file not found")
    out = _capture([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)])
    return parse_probe(out, path)


def media_info(movie: mp4.Movie) -> MediaInfo:
    """What `ffmpeg -i` would report about an MP4, from its box walk."""
    video, audio = movie.first("vide"), movie.first("soun")
    return MediaInfo(
        duration=movie.seconds,
        width=video.width if video else 0,
        height=video.height if video else 0,
        fps=video.fps if video else 0.0,
        has_audio=audio is not None,
        video_codec=video.codec if video else None,
        audio_codec=audio.codec if audio else None,
        pix_fmt=video.pix_fmt if video else None,
        sample_rate=audio.sample_rate if audio else None,
    )


def parse_probe(out: str, path: Path) -> MediaInfo:
    """Parse the stream report `ffmpeg -i FILE` prints to stderr."""
    if "Input #0" not in out:
        raise NodeFailed(f"{path}: not a readable media file: {_tail(out, 3)}")
    duration = 0.0
    if m := _DURATION.search(out):
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    width = height = 0
    fps = 0.0
    video_codec = audio_codec = pix_fmt = None
    sample_rate = None
    if v := _VIDEO.search(out):
        video_codec, rest = v.group(1), v.group(2) + "\n"
        if s := _SIZE.search(rest):
            width, height = int(s.group(1)), int(s.group(2))
        if f := _FPS.search(rest):
            fps = float(f.group(1)) * (1000 if f.group(2) else 1)
        if p := re.search(r", (\w+)(?:\([^)]*\))?, \d+x\d+", rest):
            pix_fmt = p.group(1)
    if a := _AUDIO.search(out):
        audio_codec = a.group(1)
        if r := _RATE.search(a.group(2)):
            sample_rate = int(r.group(1))
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        fps=fps,
        has_audio=audio_codec is not None,
        video_codec=video_codec,
        audio_codec=audio_codec,
        pix_fmt=pix_fmt,
        sample_rate=sample_rate,
    )


def verify_video(
    path: Path, seconds: float | None, tolerance: float = 0.1, *, deep: bool = False
) -> MediaInfo:
    """Check a rendered or downloaded video before it is recorded as a success.

    It must exist, have a video stream, be whole and (when `seconds` is given) last `seconds`
    within `tolerance`; raises NodeFailed otherwise. An MP4 the box walk reads is checked
    cheaply: its structure, sample tables and NAL units (`mp4.check`), then the head of its
    first and last group of pictures decoded. Anything else, or `deep`, is decoded from start
    to end, as `runner cache verify --deep` does; so is a clip whose NAL units look garbled,
    which is rejected only if the decoder fails on it too.
    """
    if not deep:
        try:
            movie = mp4.check(path)
        except mp4.Garbled as err:
            # Rejecting a paid render is costly: only when the decoder fails on it too.
            try:
                return verify_video(path, seconds, tolerance, deep=True)
            except NodeFailed:
                raise NodeFailed(f"{path}: {err}") from None
        except mp4.Damaged as err:
            raise NodeFailed(f"{path}: {err}") from None
        except mp4.Unsupported:
            return verify_video(path, seconds, tolerance, deep=True)
        info = media_info(movie)
        video = movie.first("vide")
        if video is None:
            raise NodeFailed(f"{path}: has no video stream")
        if not video.sizes:
            raise NodeFailed(f"{path}: the video stream has no frames")
        _check_length(path, info, seconds, tolerance)
        _decode_ends(path, video)
        return dataclasses.replace(info, frames=video.shown(movie.timescale))
    info = probe(path)
    if not info.has_video:
        raise NodeFailed(f"{path}: has no video stream")
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, "-xerror", "-i", str(path)]
    argv += ["-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-"]
    proc = _decode(path, argv)
    counts = re.findall(r"^frame=(\d+)", proc.stdout, flags=re.MULTILINE)
    frames = int(counts[-1]) if counts else 0
    if frames == 0:
        raise NodeFailed(f"{path}: the video stream has no frames")
    _check_length(path, info, seconds, tolerance)
    return dataclasses.replace(info, frames=frames)


DECODE_PIXELS = 1280 * 720
"""Pixels decoded from each end of a clip by the cheap check: the keyframe of a 720p or
larger clip (its decoder's start-up and that frame are most of the cost), or the whole of each
group of pictures of a small one."""


def _decode_ends(path: Path, video: mp4.Track) -> None:
    """Decode the first frames of the clip, and of its last group of pictures.

    One ffmpeg for both (each start costs more than a few frames' decoding): the head from
    the start, and from a seek to the last keyframe. Frames past the budget are not decoded:
    when a clip is one long group of pictures, its middle and end were checked by the box
    walk only.
    """
    frames = len(video.sizes)
    per_end = max(1, DECODE_PIXELS // max(1, video.width * video.height))
    keys = video.keyframes() or [0]
    head = min(per_end, keys[1] if len(keys) > 1 else frames)
    reader = ["-threads", "1", "-nofind_stream_info"]  # the box walk read what it finds
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, "-xerror", *reader, "-i", str(path)]
    outputs = ["-map", "0:v:0", "-frames:v", str(head), "-f", "null", "-"]
    last = keys[-1]
    if last >= head:  # the last group's head is not decoded yet
        # Half a frame past the time it is shown, so the seek lands on it, not before it.
        frame = video.stts[0][1] if video.stts else 0
        at = max(0.0, (video.shown_at(last) + frame // 2) / video.timescale)
        argv += [*reader, "-ss", f"{at:.6f}", "-noaccurate_seek", "-i", str(path)]
        tail = min(per_end, frames - last)
        outputs += ["-map", "1:v:0", "-frames:v", str(tail), "-f", "null", "-"]
    _decode(path, [*argv, *outputs])


def _decode(path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a decoding ffmpeg; any error it prints fails the file."""
    try:
        proc = _spawn(argv)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    # Any error counts: a cut-short file whose index comes first decodes to the cut and
    # exits 0, reporting only "partial file".
    if proc.returncode != 0 or proc.stderr.strip():
        raise NodeFailed(f"{path}: does not decode cleanly: {_tail(proc.stderr, 4)}")
    return proc


def _check_length(path: Path, info: MediaInfo, seconds: float | None, tolerance: float) -> None:
    if seconds is not None and abs(info.duration - seconds) > tolerance:
        raise NodeFailed(
            f"{path}: lasts {info.duration:.3f} s, expected {seconds:.3f} s (±{tolerance} s)"
        )


def extract_first_frame(video: Path, dest_png: Path) -> None:
    """Write the video's first frame as a PNG (deterministic bytes): a shot ends on it."""
    if not probe(video).has_video:
        raise NodeFailed(f"{video}: has no video stream")
    dest_png.parent.mkdir(parents=True, exist_ok=True)
    dest_png.unlink(missing_ok=True)
    out = ["-map", "0:v:0", "-frames:v", "1", "-pix_fmt", "rgb24", "-c:v", "png", *BITEXACT]
    run(["-i", str(video), *out, "-f", "image2", str(dest_png)])
    if not dest_png.is_file():
        raise NodeFailed(f"{video}: could not extract its first frame")


def trim_head_args(*, source: str, seconds: float, out: str) -> list[str]:
    """The video from `seconds` on, encoded again (a cut between keyframes): what an
    extension's provider repeats of its source, cut away."""
    return [
        *["-ss", f"{seconds:.6f}", "-i", source, "-map", "0:v:0", "-map", "0:a:0?"],
        *SEGMENT_VIDEO,
        *AAC,
        *BITEXACT,
        *["-movflags", "+faststart", out],
    ]


def extract_last_frame(video: Path, dest_png: Path) -> None:
    """Write the video's last frame as a PNG (deterministic bytes), e.g. to chain shots."""
    info = probe(video)
    if not info.has_video:
        raise NodeFailed(f"{video}: has no video stream")
    # Seek close to the end: every frame decoded after the seek point is written as a PNG.
    back = min(max(info.duration, 0.1), max(0.25, 3 / info.fps if info.fps else 0.5))
    dest_png.parent.mkdir(parents=True, exist_ok=True)
    dest_png.unlink(missing_ok=True)
    out = ["-map", "0:v:0", "-update", "1", "-pix_fmt", "rgb24", "-c:v", "png", *BITEXACT]
    run(["-sseof", f"-{back:.3f}", "-i", str(video), *out, "-f", "image2", str(dest_png)])
    if not dest_png.is_file():  # the video ends well before the audio: decode it all
        run(["-i", str(video), *out, "-f", "image2", str(dest_png)])
    if not dest_png.is_file():
        raise NodeFailed(f"{video}: could not extract its last frame")


# --- argv builders -----------------------------------------------------------------------


def previz_args(
    *,
    card_png: str,
    fontfile: str,
    out: str,
    frames: int,
    fps: int,
    samples: int,
    font_size: int,
    noise_seed: int,
    start_frame: int = 0,
) -> list[str]:
    """A previz clip: a still card, a burned-in running timecode, a quiet seeded audio bed.

    `start_frame`: the timecode starts there (an extension continues its source's).
    Paths are relative to the working directory the command runs in, so no path needs
    escaping inside the filter graph.
    """
    margin = max(2, font_size // 2)
    clock = "%{pts\\:hms}"
    if start_frame:
        clock = f"%{{pts\\:hms\\:{start_frame / fps!r}}}"
        fontfile += f":start_number={start_frame}"
    timecode = (
        f"drawtext=fontfile={fontfile}:text='{clock}  #%{{frame_num}}'"
        f":fontsize={font_size}:fontcolor=white:box=1:boxcolor=black@0.6"
        f":boxborderw={max(1, font_size // 6)}:x={margin}:y=h-th-{margin}"
    )
    video = f"[0:v]format=yuv420p,loop=loop={frames - 1}:size=1,setpts=N/{fps}/TB,{timecode}[v]"
    audio = f"[1:a]lowpass=f=900,pan=stereo|c0=c0|c1=c0,atrim=end_sample={samples}[a]"
    bed = f"anoisesrc=color=brown:amplitude=0.01:sample_rate={SAMPLE_RATE}:seed={noise_seed}"
    return [
        *["-framerate", str(fps), "-i", card_png],
        *["-f", "lavfi", "-i", bed],
        *["-filter_complex", f"{video};{audio}", "-map", "[v]", "-map", "[a]"],
        *["-frames:v", str(frames), "-r", str(fps)],
        *PREVIZ_VIDEO,
        *["-c:a", "aac", "-aac_coder", "fast", "-b:a", "96k", "-ar", str(SAMPLE_RATE), "-ac", "2"],
        *["-video_track_timescale", str(fps * 1000)],
        *BITEXACT,
        *["-movflags", "+faststart", out],
    ]


def conform_chain(*, width: int, height: int, fps: int, start_frame: int, frames: int) -> str:
    """Video filter: to the film's rate, frames [start, start+frames), fitted and padded.

    Frames missing at the end (a source shorter than its trim) repeat the last one, so the
    output always has exactly `frames` frames.
    """
    return (
        f"fps={fps}:start_time=0,trim=start_frame={start_frame},setpts=PTS-STARTPTS,"
        f"tpad=stop_mode=clone:stop=-1,trim=end_frame={frames},"
        f"scale={width}:{height}:force_original_aspect_ratio=decrease:flags=bicubic,"
        f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p"
    )


def audio_chain(*, start_sample: int, samples: int) -> str:
    """Audio filter: 48 kHz stereo samples [start, start+samples), padded with silence."""
    return (
        f"aresample={SAMPLE_RATE}:async=1:first_pts=0,"
        f"aformat=sample_fmts=s16:channel_layouts=stereo,"
        f"atrim=start_sample={start_sample},asetpts=N/SR/TB,"
        f"apad=whole_len={samples},atrim=end_sample={samples}"
    )


def silence_input() -> list[str]:
    """An input of endless stereo silence, for sources without audio."""
    return ["-f", "lavfi", "-i", f"anullsrc=r={SAMPLE_RATE}:cl=stereo"]


def segment_args(
    *,
    source: str,
    has_audio: bool,
    video_chain: str,
    audio_filter: str,
    frames: int,
    fps: int,
    video_out: str | None,
    audio_out: str | None,
) -> list[str]:
    """One clip body: an exact-length video-only H.264 MP4 and/or a PCM WAV."""
    args = ["-i", source]
    audio_in = "0:a:0"
    if not has_audio:
        args += silence_input()
        audio_in = "1:a:0"
    graph = []
    if video_out is not None:
        graph.append(f"[0:v:0]{video_chain}[v]")
    if audio_out is not None:
        graph.append(f"[{audio_in}]{audio_filter},{TRUE_PEAK_TAP}[a]")
    args += ["-filter_complex", ";".join(graph)]
    if video_out is not None:
        args += ["-map", "[v]", *_segment_video_out(frames, fps), video_out]
    if audio_out is not None:
        args += ["-map", "[a]", *PCM, *BITEXACT, "-f", "wav", audio_out]
    return args


def crossfade_args(
    *,
    a: str,
    a_has_audio: bool,
    a_video: str,
    a_audio: str,
    b: str,
    b_has_audio: bool,
    b_video: str,
    b_audio: str,
    frames: int,
    samples: int,
    fps: int,
    video_out: str,
    audio_out: str,
) -> list[str]:
    """A crossfade: xfade of A's tail into B's head, and acrossfade of their audio."""
    args = ["-i", a, "-i", b]
    a_in, b_in = "0:a:0", "1:a:0"
    if not (a_has_audio and b_has_audio):
        args += silence_input()
        a_in = a_in if a_has_audio else "2:a:0"
        b_in = b_in if b_has_audio else "2:a:0"
    seconds = frames / fps
    graph = [
        f"[0:v:0]{a_video}[va]",
        f"[1:v:0]{b_video}[vb]",
        f"[va][vb]xfade=transition=fade:duration={seconds!r}:offset=0,"
        f"trim=end_frame={frames},format=yuv420p[v]",
    ]
    if a_in == b_in:  # both silent: one silence input cannot feed two chains
        graph.append(f"[{a_in}]{a_audio},{TRUE_PEAK_TAP}[a]")
    else:
        graph += [
            f"[{a_in}]{a_audio}[aa]",
            f"[{b_in}]{b_audio}[ab]",
            f"[aa][ab]acrossfade=ns={samples}:c1=tri:c2=tri,apad=whole_len={samples},"
            f"atrim=end_sample={samples},{TRUE_PEAK_TAP}[a]",
        ]
    args += ["-filter_complex", ";".join(graph)]
    args += ["-map", "[v]", *_segment_video_out(frames, fps), video_out]
    args += ["-map", "[a]", *PCM, *BITEXACT, "-f", "wav", audio_out]
    return args


def _segment_video_out(frames: int, fps: int) -> list[str]:
    """Output options shared by every conformed video segment."""
    return [
        *["-frames:v", str(frames), "-r", str(fps), *SEGMENT_VIDEO, "-an"],
        *["-video_track_timescale", str(fps * FRAME_TICKS), *BITEXACT, "-f", "mp4"],
    ]


def join_args(
    *, video_list: str, audio: str, gain_db: float | None, out: str, codec: list[str] = AAC
) -> list[str]:
    """The film: video segments joined by stream copy, the audio encoded once to AAC.

    `gain_db` is the loudness correction, a plain gain: it keeps the mix's dynamics and every
    sample's timing (loudnorm's dynamic mode does neither, and runs 6x slower).
    """
    args = [*CONCAT, "-i", video_list, "-i", audio]
    args += ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-bsf:v", RETIME]
    if gain_db:
        args += ["-af", f"volume={gain_db:.2f}dB"]
    args += [*codec, "-threads", "1", *BITEXACT, "-movflags", "+faststart", "-f", "mp4", out]
    return args


# --- stream copy: clips that already match the film -----------------------------------------

CONCAT = ["-f", "concat", "-safe", "0", "-auto_convert", "1"]
"""Segments joined by the concat demuxer. A copied clip keeps its encoder's SPS and PPS, which
differ from x264's (and share their ids). `auto_convert` runs each file through
h264_mp4toannexb, which puts that file's parameter sets in-band before each of its IDR frames,
and the MP4 muxer keeps them in the samples: every segment decodes with its own, whatever the
film's avcC (the first segment's) says. Hence a copied segment must start on an IDR frame."""

FRAME_TICKS = 1000
"""Ticks per frame of every segment's video track (-video_track_timescale fps*1000)."""

MAX_REORDER = 4
"""How many places later than it is shown a copied clip may decode a frame (its B-frame
reorder depth: x264's default is 2). The film's dts trail its pts by this many frames."""

RETIME = f"setts=pts=round(PTS/{FRAME_TICKS})*{FRAME_TICKS}:dts=(N-{MAX_REORDER})*{FRAME_TICKS}"
"""Join-time timestamps: pts snapped to the frame grid (the concat demuxer adds up durations
in microseconds), dts one frame per packet, MAX_REORDER frames behind. Segments reorder by
different amounts (x264 here: none; a provider's B-frames: 1-2 frames), so their own dts would
overlap at a join; any dts that trail the pts by at least each segment's reorder depth decode
the same pictures."""


class Packet(NamedTuple):
    """One video packet as stored, in decode order (timestamps in the stream's time base)."""

    dts: int
    pts: int
    key: bool
    discard: bool  # hidden by an edit list


@dataclass(frozen=True)
class VideoLayout:
    """A clip's first video stream as stored: what decides whether it can be stream-copied."""

    info: MediaInfo
    profile: str | None = None  # "High", "Constrained Baseline", ... (H.264 only)
    pix_fmt_flags: tuple[str, ...] = ()  # e.g. ("tv", "bt709", "progressive")
    rotation: float = 0.0  # degrees, from a display matrix
    time_base: tuple[int, int] = (0, 1)
    sar: tuple[int, int] = (0, 1)  # 0/1 = unset
    packets: tuple[Packet, ...] = ()  # empty when the stream cannot be listed (not H.264)
    idr_pts: frozenset[int] = frozenset()  # pts of the packets holding an IDR slice


_PACKET = re.compile(
    r"^(\d+), +(-?\d+), +(-?\d+), +-?\d+, +\d+, 0x[0-9a-f]+(?:, F=0x([0-9A-Fa-f]+))?$",
    re.MULTILINE,
)
_PROFILE = re.compile(r"Video: \w+ \(((?:(?! / )[^)])+)\)")
_PIX = re.compile(r", (\w+)(?:\(([^)]*)\))?, \d+x\d+")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def video_layout(path: Path) -> VideoLayout:
    """Probe a clip and list its video packets (no decoding): one ffmpeg run.

    The packet list is framecrc of the first video stream; a second copy of it, passed through
    filter_units to keep IDR slices only (NAL type 5), tells IDRs from open-GOP I-frames, which
    the container flags as keyframes too but which cannot start a segment.
    """
    if not path.is_file():
        raise NodeFailed(f"{path}: file not found")
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    argv += ["-map", "0:v:0", "-map", "0:v:0", "-c", "copy"]
    argv += ["-bsf:v:1", "filter_units=pass_types=5", "-f", "framecrc", "-"]
    try:
        proc = _spawn(argv)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    report = proc.stderr.split("\nOutput #0")[0]
    info = parse_probe(report, path)
    if proc.returncode != 0 or info.video_codec != "h264":
        return VideoLayout(info=info)  # no video, or a codec the film never copies
    video = _VIDEO.search(report)
    assert video is not None  # parse_probe found an h264 video stream
    line = video.group(0)
    profile = _PROFILE.search(line)
    pix = _PIX.search(line)
    rotation = _ROTATION.search(report)
    packets: list[Packet] = []
    idr: set[int] = set()
    for m in _PACKET.finditer(proc.stdout):
        stream, dts, pts, flags = int(m[1]), int(m[2]), int(m[3]), int(m[4] or "1", 16)
        if stream == 0:
            packets.append(Packet(dts, pts, bool(flags & 1), bool(flags & 4)))
        else:
            idr.add(pts)
    return VideoLayout(
        info=info,
        profile=profile.group(1) if profile else None,
        pix_fmt_flags=tuple(f.strip() for f in (pix.group(2) or "").split(",")) if pix else (),
        rotation=float(rotation.group(1)) if rotation else 0.0,
        time_base=_header_ratio(proc.stdout, "tb"),
        sar=_header_ratio(proc.stdout, "sar"),
        packets=tuple(packets),
        idr_pts=frozenset(idr),
    )


def _header_ratio(framecrc: str, name: str) -> tuple[int, int]:
    """A "#tb 0: 1/12288"-style header of stream 0 in framecrc output, as (num, den)."""
    m = re.search(rf"^#{name} 0: (\d+)/(\d+)$", framecrc, flags=re.MULTILINE)
    return (int(m[1]), int(m[2])) if m else (0, 1)


def copy_args(
    *,
    source: str,
    has_audio: bool,
    first_packet: int,
    end_packet: int,
    pts_offset: int,
    duration: int,
    audio_filter: str,
    fps: int,
    video_out: str,
    audio_out: str,
) -> list[str]:
    """A clip body by stream copy: packets [first, end) in decode order, their bytes untouched,
    retimed to start at 0 with one frame each; and its PCM audio, as in segment_args.

    Timestamps are in the source's time base; the muxer rescales them to the film's.
    """
    args = ["-i", source]
    audio_in = "0:a:0"
    if not has_audio:
        args += silence_input()
        audio_in = "1:a:0"
    # noise's drop expression picks packets by decode index, so no decoding or seeking is
    # involved; setts then moves them to start at 0 (pts and dts alike: the reorder stays).
    keep = f"noise=drop=lt(n\\,{first_packet})+gte(n\\,{end_packet})"
    shift = f"setts=pts=PTS-{pts_offset}:dts=DTS-{pts_offset}:duration={duration}"
    args += ["-filter_complex", f"[{audio_in}]{audio_filter},{TRUE_PEAK_TAP}[a]"]
    args += ["-map", "0:v:0", "-c:v", "copy", "-bsf:v", f"{keep},{shift}", "-an"]
    args += ["-video_track_timescale", str(fps * FRAME_TICKS), *BITEXACT, "-f", "mp4", video_out]
    args += ["-map", "[a]", *PCM, *BITEXACT, "-f", "wav", audio_out]
    return args


def concat_video_args(*, video_list: str, out: str) -> list[str]:
    """Video-only segments joined into one by stream copy (a clip's encoded head, copied
    middle and encoded tail), retimed like the film's join."""
    args = [*CONCAT, "-i", video_list, "-map", "0:v:0", "-c:v", "copy"]
    return [*args, "-bsf:v", RETIME, *BITEXACT, "-f", "mp4", out]


TRUE_PEAK_TAP = "ebur128=peak=true:framelog=quiet"
"""Ends the filter chain of every audio segment (a clip body's or a crossfade's PCM): it passes
the samples through unchanged (s16 to double and back is exact) and logs their true peak, so a
film's peak is known from its pieces' without measuring the joined film again (the costlier
half of a loudness measurement: 4x oversampling). `run_peak` runs such a command."""


PEAK_REPORT = "ebur128.log"
"""The info-level log a segment command writes beside its outputs (FFREPORT), where ebur128's
summary is; its standard error stays at errors only, for the message when it fails."""


def run_peak(args: list[str], *, cwd: Path) -> float:
    """Run a segment command whose audio ends in TRUE_PEAK_TAP in `cwd`; return that true peak
    (dBTP, -inf for silence)."""
    report = cwd / PEAK_REPORT
    report.unlink(missing_ok=True)
    env = {**os.environ, "FFREPORT": f"file={PEAK_REPORT}:level=32"}
    try:
        proc = _spawn([ffmpeg_exe(), *GLOBAL_ARGS, *args], cwd=cwd, env=env)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    if proc.returncode != 0:
        raise NodeFailed(f"ffmpeg failed (exit {proc.returncode}): {_tail(proc.stderr)}")
    try:
        log = report.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NodeFailed(f"ffmpeg wrote no report of the true peak: {exc}") from None
    return _summary(log, _PEAK, "true peak")


def loudness(path: Path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) of a file's audio, by EBU R128.

    Silence measures as -inf for both.
    """
    report = _ebur128(path, "peak=true")
    return _summary(report, _INTEGRATED, "loudness"), _summary(report, _PEAK, "true peak")


def integrated_loudness(path: Path) -> float:
    """Integrated loudness (LUFS) of a file's audio, by EBU R128; no true peak (a third of the
    time of `loudness`)."""
    return _summary(_ebur128(path, "peak=none"), _INTEGRATED, "loudness")


def true_peak(path: Path) -> float:
    """True peak (dBTP) of a file's audio, by EBU R128's 4x oversampling."""
    return _summary(_ebur128(path, "peak=true"), _PEAK, "true peak")


_INTEGRATED = re.compile(r"I:\s+(-?(?:\d+(?:\.\d+)?|inf)) LUFS")
_PEAK = re.compile(r"Peak:\s+(-?(?:\d+(?:\.\d+)?|inf)) dBFS")


def _ebur128(path: Path, peak: str) -> str:
    """ffmpeg's report of an EBU R128 measurement of `path`'s first audio stream."""
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path)]
    argv += ["-map", "0:a:0", "-af", f"ebur128=framelog=quiet:{peak}", "-f", "null", "-"]
    try:
        proc = _spawn(argv)
    except OSError as exc:
        raise NodeFailed(f"cannot run ffmpeg: {exc}") from None
    if proc.returncode != 0:
        raise NodeFailed(f"{path}: cannot measure loudness: {_tail(proc.stderr, 4)}")
    return proc.stderr


def _summary(report: str, pattern: re.Pattern[str], what: str) -> float:
    """The last value `pattern` finds in an ebur128 summary (the summary comes last)."""
    found = pattern.findall(report)
    if not found:
        raise NodeFailed(f"ffmpeg reported no {what}: {_tail(report, 4)}")
    return float(found[-1])


SUBTITLE_HANDLERS = ("sbtl", "text", "subt", "subp")
"""MP4 track handlers of subtitles: mov_text in an MP4 ("sbtl"), a QuickTime text track,
others' timed text and DVD pictures."""


def has_subtitles(path: Path) -> bool:
    """Whether a file has a subtitle stream: read from an MP4's boxes, else asked of ffmpeg."""
    try:
        return any(t.handler in SUBTITLE_HANDLERS for t in mp4.inspect(path).tracks)
    except (mp4.Unsupported, mp4.Damaged, OSError):
        pass  # not an MP4 this walk reads: ffmpeg says
    out = _capture([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)])
    return re.search(r"Stream #\d+:\d+\S*: Subtitle: ", out) is not None


def tag_args(*, src: str, comment: str, out: str, subtitles: bool = False) -> list[str]:
    """Stream-copy remux that sets the file's comment (the provenance digest); a subtitle
    track keeps its language."""
    keep = ["-map_metadata:s:s", "0:s:s"] if subtitles else []
    return [
        *["-i", src, "-map", "0", "-c", "copy", *BITEXACT, *keep],
        *["-metadata", f"comment={comment}", "-movflags", "+faststart", "-f", "mp4", out],
    ]


POSTER_VERSION = 1
"""Bumped when poster frames change (the frame chosen, size, codec): cached posters are remade."""


def poster_args(pairs: list[tuple[str, str]], *, width: int) -> list[str]:
    """Poster frames of several clips in one process, (clip, jpeg) each, at most `width` wide:
    ffmpeg's `thumbnail` filter picks the most representative of the first two seconds'
    frames (not a black first frame)."""
    chain = f"thumbnail=n=48,scale=w='min(iw,{width})':h=-2,format=yuvj420p"
    args = [arg for src, _ in pairs for arg in ("-i", src)]
    for i, (_, out) in enumerate(pairs):
        args += ["-map", f"{i}:v:0", "-vf", chain, "-frames:v", "1"]
        args += ["-c:v", "mjpeg", "-q:v", "4", *BITEXACT, "-f", "image2", out]
    return args


def make_posters(pairs: list[tuple[Path, Path]], width: int) -> None:
    """Write each video's poster frame (see poster_args), a batch of clips per ffmpeg."""
    for start in range(0, len(pairs), 16):
        batch = pairs[start : start + 16]
        for _, dest in batch:
            dest.parent.mkdir(parents=True, exist_ok=True)
        run(poster_args([(str(v), str(d)) for v, d in batch], width=width))


# --- sound and words: the music bed, the mix, the subtitle track ----------------------------

ALAC = ["-c:a", "alac", "-ar", str(SAMPLE_RATE), "-ac", "2"]
"""The picture's audio when a mix follows: lossless in MP4, so the shots' sound is encoded
lossily once, in the mix."""

DUCK_RAMP = 0.15
"""Seconds the music takes to duck before a line and to come back after it."""


def duck_expr(gain_db: float, duck_db: float, spans: list[tuple[float, float]]) -> str:
    """A volume expression of t: `gain_db`, lowered by `duck_db` over each span (seconds),
    ramping linearly over DUCK_RAMP either side. Overlapping ramps add up, capped at one."""
    ramps = [
        f"clip(min(t-{a - DUCK_RAMP:.6f},{b + DUCK_RAMP:.6f}-t)/{DUCK_RAMP},0,1)" for a, b in spans
    ]
    duck = f"clip({'+'.join(ramps)},0,1)" if ramps else "0"
    return f"pow(10,({gain_db:.4f}-{duck_db:.4f}*{duck})/20)"


def _volume(expr: str) -> str:
    # Small frames, so the gain steps every 10 ms (no zipper); evaluated per frame.
    return f"asetnsamples=n=480:p=0,volume='{expr}':eval=frame"


def music_args(
    *,
    music: str,
    start_sample: int,
    samples: int,
    fade_samples: int,
    gain_db: float,
    duck_db: float,
    spans: list[tuple[float, float]],
    out: str,
) -> list[str]:
    """The music stem: the asset looped from its start, entering `start_sample` into the film,
    cut to the film's `samples`, faded in and out, at its gain and ducked over `spans`."""
    length = samples - start_sample
    fade = min(fade_samples, length // 2)
    chain = [
        f"aresample={SAMPLE_RATE}",
        "aformat=sample_fmts=flt:channel_layouts=stereo",
        "asetpts=N/SR/TB",  # the loops' timestamps made contiguous
        f"atrim=end_sample={length}",
    ]
    if fade:
        chain += [
            f"afade=t=in:ss=0:ns={fade}",
            f"afade=t=out:ss={length - fade}:ns={fade}",
        ]
    chain += [f"adelay=delays={start_sample}S:all=1", "asetpts=N/SR/TB"]
    chain += [f"apad=whole_len={samples}", f"atrim=end_sample={samples}"]
    chain.append(_volume(duck_expr(gain_db, duck_db, spans)))
    return [
        *["-stream_loop", "-1", "-i", music],
        *["-filter_complex", f"[0:a:0]{','.join(chain)}[a]", "-map", "[a]"],
        *["-c:a", "pcm_f32le", "-ar", str(SAMPLE_RATE), "-ac", "2", *BITEXACT, "-f", "wav", out],
    ]


def silence_args(*, samples: int, out: str) -> list[str]:
    """A silent stereo float WAV of exactly `samples`."""
    return [
        *silence_input(),
        *["-af", f"atrim=end_sample={samples}", "-map", "0:a:0"],
        *["-c:a", "pcm_f32le", "-ar", str(SAMPLE_RATE), "-ac", "2", *BITEXACT, "-f", "wav", out],
    ]


@dataclass(frozen=True)
class Voice:
    """A voice-over placed in the film: its file and the sample it starts at."""

    path: str
    start_sample: int


def mix_args(
    *,
    picture: str,
    music: str | None,
    voices: list[Voice],
    shot_duck_db: list[tuple[float, float, float]],
    samples: int,
    out: str,
) -> list[str]:
    """The film's sound before loudness: the picture's own audio (lowered by each voice-over's
    duck_db while it plays: `(from, to, dB)` spans), the music stem and the voice-overs, summed
    as they are (no amix normalising), as 32-bit float WAV of exactly `samples`."""
    args = ["-i", picture]
    if music is not None:
        args += ["-i", music]
    for voice in voices:
        args += ["-i", voice.path]
    fmt = f"aresample={SAMPLE_RATE},aformat=sample_fmts=flt:channel_layouts=stereo"
    shots = f"[0:a:0]{fmt},asetpts=N/SR/TB"
    if shot_duck_db:
        ramps = "+".join(
            f"{db:.4f}*clip(min(t-{a - DUCK_RAMP:.6f},{b + DUCK_RAMP:.6f}-t)/{DUCK_RAMP},0,1)"
            for a, b, db in shot_duck_db
        )
        shots += "," + _volume(f"pow(10,-({ramps})/20)")
    graph = [f"{shots}[s]"]
    labels = ["[s]"]
    index = 1
    if music is not None:
        graph.append(f"[1:a:0]{fmt},asetpts=N/SR/TB[m]")
        labels.append("[m]")
        index = 2
    for n, voice in enumerate(voices):
        graph.append(
            f"[{index + n}:a:0]{fmt},asetpts=N/SR/TB,"
            f"adelay=delays={voice.start_sample}S:all=1[v{n}]"
        )
        labels.append(f"[v{n}]")
    tail = f"apad=whole_len={samples},atrim=end_sample={samples}"
    if len(labels) > 1:
        graph.append(
            f"{''.join(labels)}amix=inputs={len(labels)}:duration=longest:normalize=0,{tail}[a]"
        )
    else:
        graph.append(f"[s]{tail}[a]")
    return [
        *args,
        *["-filter_complex", ";".join(graph), "-map", "[a]"],
        *["-c:a", "pcm_f32le", "-ar", str(SAMPLE_RATE), "-ac", "2", *BITEXACT, "-f", "wav", out],
    ]


def encode_mix_args(*, mix: str, gain_db: float | None, out: str) -> list[str]:
    """The mix at its loudness gain, encoded once to the film's AAC (an MP4 audio file)."""
    args = ["-i", mix, "-map", "0:a:0"]
    if gain_db:
        args += ["-af", f"volume={gain_db:.2f}dB"]
    return [*args, *AAC, "-threads", "1", *BITEXACT, "-f", "mp4", out]


def mux_args(
    *,
    picture: str,
    audio: str | None,
    subtitles: str | None,
    language: str,
    burn: str | None,
    fps: int,
    out: str,
) -> list[str]:
    """The film: the picture's video copied (or, with `burn` set to a subtitles filter, encoded
    with the cues drawn in), the mix's audio (else the picture's) copied, and the cues as a
    mov_text track."""
    args = ["-i", picture]
    if audio is not None:
        args += ["-i", audio]
    track = 2 if audio is not None else 1
    if subtitles is not None:
        args += ["-i", subtitles]
    if burn is not None:
        args += ["-filter_complex", f"[0:v:0]{burn}[v]", "-map", "[v]", *SEGMENT_VIDEO]
        args += ["-r", str(fps), "-video_track_timescale", str(fps * FRAME_TICKS)]
    else:
        args += ["-map", "0:v:0", "-c:v", "copy"]
    args += ["-map", "1:a:0" if audio is not None else "0:a:0", "-c:a", "copy"]
    if subtitles is not None:
        args += ["-map", f"{track}:s:0", "-c:s", "mov_text"]
        args += ["-metadata:s:s:0", f"language={language}"]
    return [*args, *BITEXACT, "-movflags", "+faststart", "-f", "mp4", out]


def burn_filter(*, srt: str, fontsdir: str, font: str, size: int) -> str:
    """libass drawing the cues of `srt` (a path relative to the working directory) with a
    font of `fontsdir`, white on a translucent box, near the bottom of the picture."""
    style = f"FontName={font},FontSize={size},BorderStyle=3,Outline=1,Shadow=0,MarginV=12"
    return f"subtitles=filename={srt}:fontsdir={fontsdir}:force_style='{style}'"
