"""Sound and words over the cut: where each cut sits, the subtitle cues, the music bed, the
mix and the final mux.

Everything is timed in film frames, from the cut's clips as the assembly trims and overlaps
them (`assemble.clip_ranges`), so a cue or a duck lands on the frames its shot plays, trims and
crossfades included. The music stem and the mix are PCM until the one AAC encode; the final mux
copies the picture's video (unless subtitles are burned in) and the mix's audio.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import NodeFailed
from runner.media import ffmpeg
from runner.media.assemble import Clip, clip_ranges, loudness_gain


@dataclass(frozen=True)
class Placed:
    """A cut placed in the film: its trimmed source range and where its first frame shows."""

    source_first: int  # frames into its source
    source_last: int  # one past its last frame, in its source
    film_first: int  # the film frame its first trimmed frame is shown at

    @property
    def frames(self) -> int:
        return self.source_last - self.source_first

    @property
    def film_last(self) -> int:
        return self.film_first + self.frames


@dataclass(frozen=True)
class Cue:
    """One subtitle cue, in film frames [first, last)."""

    first: int
    last: int
    text: str
    who: str = ""


def place(ranges: list[tuple[int, int]], fades: list[int]) -> list[Placed]:
    """Each cut's place in the film: it starts where the previous one ends, less the frames
    of its crossfade in (`fades[i]`), as the assembly joins its pieces."""
    placed: list[Placed] = []
    at = 0
    for (first, last), fade in zip(ranges, fades, strict=True):
        at = at - fade if placed else 0
        placed.append(Placed(first, last, at))
        at += last - first
    return placed


def placement(clips: list[Clip], fps: int) -> list[Placed]:
    """Each clip's place in the film, by the assembly's own probe and frame arithmetic: what
    the mix, the subtitles and the exported timeline are all timed by."""
    fades = [round(c.crossfade_in * fps) if i else 0 for i, c in enumerate(clips)]
    return place(clip_ranges(clips, fps), fades)


def film_frames(placed: list[Placed]) -> int:
    return placed[-1].film_last if placed else 0


def voice_frame(cut: Placed, at: float, fps: int) -> int:
    """The film frame a voice-over `at` seconds into its cut's shot starts at (before the cut
    shows when the shot is trimmed in, never before the film)."""
    return max(0, cut.film_first + round(at * fps) - cut.source_first)


def music_entry(start: float, total: int) -> int:
    """The sample of a film of `total` samples where music entering at `start` s begins."""
    return min(round(start * ffmpeg.SAMPLE_RATE), total)


def music_passes(*, fps: int, frames: int, start: float, length: float) -> list[tuple[int, int]]:
    """Each pass of the looped music (`length` s long) in the stem, in film frames [first,
    last): from its entry to the film's end, the last pass cut short, as `music_stem` plays
    it. Each pass is placed from its exact sample, so rounding never drifts."""
    total = samples(frames, fps)
    loop = round(length * ffmpeg.SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    at = music_entry(start, total)
    while loop > 0 and at < total:
        first = round(at * fps / ffmpeg.SAMPLE_RATE)
        last = round(min(at + loop, total) * fps / ffmpeg.SAMPLE_RATE)
        if last > first:
            out.append((first, last))
        at += loop
    return out


def span(cut: Placed, at: float | None, until: float | None, fps: int) -> tuple[int, int] | None:
    """Seconds `at`..`until` into a cut's shot, in film frames, kept to the frames the cut
    shows (None when none of it is); without them, the whole cut."""
    first = cut.source_first if at is None else round(at * fps)
    last = cut.source_last if until is None else round(until * fps)
    shift = cut.film_first - cut.source_first
    first, last = max(first, cut.source_first) + shift, min(last, cut.source_last) + shift
    return (first, last) if last > first else None


def cues(placed: list[Placed], lines: list[dict[str, Any]], fps: int) -> list[Cue]:
    """The dialogue lines (`{"cut", "at", "until", "text", "who"}`) as cues in film order."""
    out = []
    for line in lines:
        frames = span(placed[line["cut"]], line.get("at"), line.get("until"), fps)
        if frames is not None:
            out.append(Cue(*frames, text=line["text"], who=line.get("who", "")))
    return sorted(out, key=lambda c: (c.first, c.last))


def read_cues(path: Path) -> list[Cue]:
    """The subtitles node's output (JSON, version 1) back as cues."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != 1:
        raise NodeFailed(f"{path}: not a version-1 cue list")
    return [
        Cue(int(c["first"]), int(c["last"]), str(c["text"]), str(c["who"])) for c in data["cues"]
    ]


def _stamp(frame: int, fps: int, sep: str) -> str:
    ms = round(frame * 1000 / fps)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{ms:03d}"


def _text(text: str) -> str:
    """A cue's text: no blank lines (they end a cue in both formats)."""
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def srt(cue_list: list[Cue], fps: int) -> str:
    blocks = [
        f"{n}\n{_stamp(c.first, fps, ',')} --> {_stamp(c.last, fps, ',')}\n{_text(c.text)}\n"
        for n, c in enumerate(cue_list, start=1)
    ]
    return "\n".join(blocks)


def vtt(cue_list: list[Cue], fps: int, language: str) -> str:
    """WebVTT, each cue's speaker as a voice span (`<v Mara>`)."""
    blocks = [f"WEBVTT\nLanguage: {language}\n"]
    for c in cue_list:
        text = _text(c.text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        who = c.who.replace("&", "&amp;").replace("<", "").replace(">", "")
        voice = f"<v {who}>" if who else ""
        blocks.append(
            f"{_stamp(c.first, fps, '.')} --> {_stamp(c.last, fps, '.')}\n{voice}{text}\n"
        )
    return "\n".join(blocks)


def seconds(frames: tuple[int, int], fps: int) -> tuple[float, float]:
    return frames[0] / fps, frames[1] / fps


def samples(frame: int, fps: int) -> int:
    return round(frame * ffmpeg.SAMPLE_RATE / fps)


def music_stem(
    music: Path,
    *,
    fps: int,
    frames: int,
    start: float,
    fade: float,
    gain_db: float,
    duck_db: float,
    spans: list[tuple[float, float]],
    dest: Path,
) -> list[str]:
    """Write the music stem (float WAV of the film's length) to `dest`; returns the argv."""
    total = samples(frames, fps)
    entry = music_entry(start, total)
    args = ffmpeg.music_args(
        music=str(music),
        start_sample=entry,
        samples=total,
        fade_samples=round(fade * ffmpeg.SAMPLE_RATE),
        gain_db=gain_db,
        duck_db=duck_db,
        spans=spans,
        out=str(dest),
    )
    if entry >= total:  # the music enters after the film ends: a silent stem
        args = ffmpeg.silence_args(samples=total, out=str(dest))
    ffmpeg.run(args)
    return ffmpeg.command(_relative(args))


@dataclass
class Mix:
    """How the film's sound was mixed, for provenance."""

    argv: list[str]
    integrated_lufs: float
    true_peak_dbtp: float
    gain_db: float | None


def mix(
    picture: Path,
    music: Path | None,
    voices: list[ffmpeg.Voice],
    shot_ducks: list[tuple[float, float, float]],
    *,
    frames: int,
    fps: int,
    loudness_lufs: float | None,
    dest: Path,
    workdir: Path,
) -> Mix:
    """Mix the picture's audio, the music stem and the voice-overs, bring the sum to
    `loudness_lufs` (one measured gain, capped by the true peak) and encode it once to AAC."""
    with tempfile.TemporaryDirectory(prefix="mix-", dir=workdir) as tmp_name:
        wav = Path(tmp_name) / "mix.wav"
        args = ffmpeg.mix_args(
            picture=str(picture),
            music=None if music is None else str(music),
            voices=voices,
            shot_duck_db=shot_ducks,
            samples=samples(frames, fps),
            out=str(wav),
        )
        ffmpeg.run(args)
        integrated, peak = ffmpeg.loudness(wav)
        gain = None
        if loudness_lufs is not None:
            gain = loudness_gain(integrated, peak, target=loudness_lufs)
        encode = ffmpeg.encode_mix_args(mix=str(wav), gain_db=gain, out=str(dest))
        ffmpeg.run(encode)
    return Mix(ffmpeg.command(_relative(args)), integrated, peak, gain)


def _relative(args: list[str]) -> list[str]:
    """argv without this machine's paths (cache blobs, assets, scratch): the record is the
    same on every machine, and so is the film that carries its digest."""
    return [Path(a).name if a.startswith("/") else a for a in args]


def mux(
    picture: Path,
    audio: Path | None,
    subtitles: Path | None,
    *,
    language: str,
    burn: bool,
    fps: int,
    height: int,
    dest: Path,
    workdir: Path,
) -> list[str]:
    """The film: picture, mix and subtitle track in one MP4; returns the argv."""
    with tempfile.TemporaryDirectory(prefix="mux-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        burn_filter = None
        srt_in = None
        if subtitles is not None:
            shutil.copyfile(subtitles, tmp / "cues.srt")
            srt_in = "cues.srt"
        if burn and subtitles is not None:
            fonts = tmp / "fonts"
            fonts.mkdir()
            (fonts / "card.ttf").write_bytes(_font_bytes())
            burn_filter = ffmpeg.burn_filter(
                srt="cues.srt", fontsdir="fonts", font=_FONT_NAME, size=max(8, height // 24)
            )
            srt_in = None  # burned in, not a track as well
        args = ffmpeg.mux_args(
            picture=str(picture),
            audio=None if audio is None else str(audio),
            subtitles=srt_in,
            language=ffmpeg_language(language),
            burn=burn_filter,
            fps=fps,
            out="film.mp4",
        )
        ffmpeg.run(args, cwd=tmp)
        shutil.move(tmp / "film.mp4", dest)
    return ffmpeg.command(_relative(args))


_FONT_NAME = "Aileron"


def _font_bytes() -> bytes:
    """The card's font (Pillow's embedded Aileron): what burned-in cues are drawn with."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    data = getattr(font, "font_bytes", None)
    if not isinstance(data, bytes):
        raise RuntimeError("Pillow ships no embedded TrueType font")
    return data


ISO_639_2 = {
    "ar": "ara", "de": "deu", "en": "eng", "es": "spa", "fr": "fra", "hi": "hin", "it": "ita",
    "ja": "jpn", "ko": "kor", "nl": "nld", "pl": "pol", "pt": "por", "ru": "rus", "sv": "swe",
    "th": "tha", "tr": "tur", "uk": "ukr", "zh": "zho",
}  # fmt: skip


def ffmpeg_language(code: str) -> str:
    """The MP4 track's language: ISO 639-2 (three letters), as the format stores it."""
    return ISO_639_2.get(code, code if len(code) == 3 else "und")
