"""Assembly of 100 clips of 4 s into a 1280x720 film, against a floor measured beside it.

Clips at the film's format (H.264 High with B-frames, 24 fps, AAC, as a hosted model delivers)
are copied; clips at 1920x1080 are conformed. For each set: cold (no segment cached), warm (the
edit changed: one clip's out-point moved, so one body is made again and the film joined), and
the floor: the same clips' video joined by stream copy and their audio encoded once
(`ffmpeg -f concat -c:v copy -c:a aac`), which every assembly of them has to do at least.

`python bench/run.py assembly [CLIPS]` runs this alone; with fewer than 100 clips it only
prints (a check that it works), it does not touch BENCHMARKS.md.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from runner.cache.store import SegmentCache, Store
from runner.digest import file_digest
from runner.media import assemble, ffmpeg

Row = tuple[str, str, str, str]
FILM = (1280, 720, 24)
VARIANTS = 4  # distinct encodes; the other clips are remuxes of them with their own bytes


def rows(work: Path, clips: int = 100) -> list[Row]:
    """The assembly rows of BENCHMARKS.md."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out: list[Row] = []
    for size, runs in (("1280x720", 2), ("1920x1080", 1)):
        sources = make_sources(work / f"src-{size}", clips, size)
        out += measure(work / f"run-{size}", sources, size, runs)
    return out


def make_sources(folder: Path, n: int, size: str) -> list[assemble.Clip]:
    """n clips of 4 s: a few distinct encodes (x264 veryfast: High, B-frames, one IDR frame),
    each remuxed with its own comment, so every clip has its own digest and segments."""
    folder.mkdir(parents=True)
    variants = []
    for v in range(min(n, VARIANTS)):
        dest = folder / f"variant{v}.mp4"
        _ff(
            *["-f", "lavfi", "-i", f"testsrc2=s={size}:r=24:d=4,hue=h={90 * v}"],
            *["-f", "lavfi", "-i", _sound(v)],
            *["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
            *["-c:a", "aac", "-b:a", "192k", "-ac", "2", "-t", "4", str(dest)],
        )
        variants.append(dest)
    clips = []
    for i in range(n):
        dest = folder / f"clip{i:03d}.mp4"
        source = str(variants[i % len(variants)])
        _ff("-i", source, "-c", "copy", "-metadata", f"comment={i}", str(dest))
        clips.append(dest)
    return [assemble.Clip(path=p, digest=file_digest(p)) for p in clips]


def _sound(v: int) -> str:
    """Film-like sound: a tone over pink noise, every band busy, at about a delivered film's
    loudness (-17 LUFS, so the film's gain is small). A pure tone is not what a clip's sound
    is, and its s16 rounding noise slows ffmpeg's AAC encoder by half; a quiet clip made 11 dB
    louder by the loudness gain costs the encoder half again (more to code), which the floor,
    encoding the clips as they are, would not pay."""
    noise = f"anoisesrc=color=pink:r=48000:amplitude=0.1:d=4:seed={v + 1}[n]"
    tone = f"sine=f={330 + 110 * v}:r=48000:d=4[s]"
    return f"{noise};{tone};[n][s]amix=inputs=2,volume=10dB[out0]"


def measure(work: Path, clips: list[assemble.Clip], size: str, runs: int) -> list[Row]:
    n = len(clips)
    width, height, fps = FILM
    # The changed edit: one clip's out-point half a second earlier.
    edited = list(clips)
    edited[n // 2] = replace(clips[n // 2], end=3.5)

    def assemble_into(store: Store, edit: list[assemble.Clip]) -> assemble.Assembly:
        with store.workdir() as tmp:
            return assemble.assemble(
                edit,
                width=width,
                height=height,
                fps=fps,
                loudness_lufs=-16,
                dest=tmp / "film.mp4",
                cache=SegmentCache(store),
                workdir=tmp,
            )

    cold, warm = [], []
    decisions: set[str] = set()
    for r in range(runs):
        store = Store(work / f"segments{r}")
        start = time.perf_counter()
        result = assemble_into(store, clips)
        cold.append(time.perf_counter() - start)
        decisions |= {c["video"] for c in result.clips}
        warm.append(_timed(lambda s=store: assemble_into(s, edited)))
    floor_s = min(_timed(lambda: floor(work / "floor", clips)) for _ in range(3))
    how = "/".join(sorted(decisions))
    what = f"assembly of {n} clips (4 s, {size}, H.264 High) into a 1280x720 film: {how}"
    one = "" if runs > 1 else " (one run)"
    goal = size == "1280x720"
    return [
        (
            f"{what}; floor (video stream copy + one audio encode): {floor_s:.1f} s",
            f"cold {min(cold):.1f} s",
            f"{statistics.median(cold):.1f} s{one}",
            _ratio(min(cold), floor_s, "<= 2x the floor" if goal else "ratio"),
        ),
        (
            f"{what}, warm: one clip's out-point changed",
            f"warm {min(warm):.1f} s",
            f"{statistics.median(warm):.1f} s{one}",
            _ratio(min(warm), floor_s, "<= 1.2x the floor" if goal else "ratio"),
        ),
    ]


def floor(work: Path, clips: list[assemble.Clip]) -> None:
    """What any assembly of these clips costs at least: their video joined by stream copy,
    their audio encoded once (AAC, as the film's)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    listing = work / "clips.ffconcat"
    listing.write_text(
        "ffconcat version 1.0\n" + "".join(f"file '{c.path.resolve()}'\n" for c in clips)
    )
    _ff(
        *["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v:0", "-map", "0:a:0"],
        *["-c:v", "copy", *ffmpeg.AAC, "-threads", "1", str(work / "floor.mp4")],
    )


def _ratio(seconds: float, floor_s: float, goal: str) -> str:
    return f"{goal}: {seconds / floor_s:.2f}x"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ff(*args: str) -> None:
    argv = [ffmpeg.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(argv, check=True)
