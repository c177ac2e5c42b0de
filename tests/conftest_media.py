"""Shared helpers for the media tests: test clips made with ffmpeg lavfi, a counting cache.

Imported explicitly (`from tests.conftest_media import ...`), not a pytest conftest, so other
test files are unaffected.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runner.media import ffmpeg


def sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ff(*args: str) -> str:
    """Run ffmpeg for a test (inputs, analysis); return its stderr. Fails the test on error."""
    argv = [ffmpeg.ffmpeg_exe(), "-nostdin", "-hide_banner", "-y", *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def make_clip(
    dest: Path,
    *,
    seconds: float = 1.0,
    size: str = "160x90",
    fps: int = 24,
    beep_hz: int | None = 1000,
    beep_seconds: float = 0.125,
    video: str | None = None,
    preset: str = "ultrafast",
    gop: int | None = None,
) -> Path:
    """An H.264/AAC test clip. By default: a white flash and a beep for the first 0.125 s,
    then black and silence, so a clip's start can be found in both picture and sound.

    x264's ultrafast makes Constrained Baseline; "veryfast" makes High with B-frames, like a
    provider's clip. `gop` puts an IDR frame every that many frames (else only the first).
    """
    flash = f"color=black:s={size}:r={fps}:d={seconds}"
    flash += f",drawbox=c=white:t=fill:enable='lt(t,{beep_seconds})'"
    args = ["-f", "lavfi", "-i", video or flash]
    if beep_hz is not None:
        beep = f"sine=f={beep_hz}:r=48000:d={seconds},volume=0:enable='gte(t,{beep_seconds})'"
        args += ["-f", "lavfi", "-i", beep, "-c:a", "aac", "-ac", "2"]
    args += ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-threads", "1"]
    if gop is not None:
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    ff(*args, "-t", str(seconds), str(dest))
    return dest


def make_clips(specs: list[tuple[Path, dict[str, Any]]]) -> list[Path]:
    """make_clip for many clips, in parallel."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda s: make_clip(s[0], **s[1]), specs))


class DirCache:
    """A SegmentCache on a directory that counts saves (to prove what was re-encoded)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.saved: list[str] = []

    def lookup(self, key: str) -> Path | None:
        path = self.root / key
        return path if path.is_file() else None

    def save(self, key: str, path: Path) -> Path:
        self.saved.append(key)
        shutil.move(path, self.root / key)
        return self.root / key


def audio_samples(video: Path, tmp: Path) -> int:
    """Decoded audio length in samples at 48 kHz."""
    out = tmp / f"{video.stem}-audio.wav"
    ff("-loglevel", "error", "-i", str(video), "-map", "0:a:0", "-c:a", "pcm_s16le", str(out))
    with wave.open(str(out), "rb") as w:
        assert w.getframerate() == 48000
        return w.getnframes()


def video_frames(video: Path) -> int:
    """Decoded video frame count."""
    return ffmpeg.verify_video(video, None, deep=True).frames or 0


def flash_onsets(video: Path) -> list[float]:
    """Times where the picture turns from black to not black (each clip's flash)."""
    err = ff("-i", str(video), "-vf", "blackdetect=d=0.2:pix_th=0.1", "-an", "-f", "null", "-")
    ends = [float(x) for x in re.findall(r"black_end:(\d+(?:\.\d+)?)", err)]
    starts = [float(x) for x in re.findall(r"black_start:(\d+(?:\.\d+)?)", err)]
    onsets = ([] if starts and starts[0] < 0.01 else [0.0]) + ends
    duration = ffmpeg.probe(video).duration
    return [t for t in onsets if t < duration - 0.1]


def beep_onsets(video: Path) -> list[float]:
    """Times where the sound turns from silence to a beep (each clip's beep)."""
    err = ff("-i", str(video), "-af", "silencedetect=n=-40dB:d=0.2", "-vn", "-f", "null", "-")
    ends = [float(x) for x in re.findall(r"silence_end: (\d+(?:\.\d+)?)", err)]
    starts = [float(x) for x in re.findall(r"silence_start: (-?\d+(?:\.\d+)?)", err)]
    onsets = ([] if starts and starts[0] < 0.01 else [0.0]) + ends
    duration = ffmpeg.probe(video).duration
    return [t for t in onsets if t < duration - 0.1]
