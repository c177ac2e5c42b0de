"""The real videos the loopback servers serve: small H.264/AAC MP4s, one per length.

Encoded as providers encode (H.264 High with B-frames, 24 fps, AAC), so a film at CLIP_SIZE
and 24 fps copies them into its cut the way a 1280x720 film copies a provider's clips."""

from __future__ import annotations

import struct
import subprocess
import tempfile
import threading
from pathlib import Path

from runner.media import ffmpeg

CLIP_SIZE = "160x90"  # served clips are small whatever was asked: only the length matters

_clips: dict[tuple[str, str], bytes] = {}
_clips_lock = threading.Lock()


def mp4_bytes(seconds: float, size: str = CLIP_SIZE) -> bytes:
    """A real H.264/AAC MP4 of `seconds` at `size` (160x90), made once per length and size
    (moov first)."""
    key = f"{seconds:g}"
    with _clips_lock:
        if (key, size) not in _clips:
            with tempfile.TemporaryDirectory(prefix="loopback-clip-") as tmp:
                out = Path(tmp) / "clip.mp4"
                argv = [ffmpeg.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
                argv += ["-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r=24:d={key}"]
                # A sound bed with every band busy, like a shot's: a pure tone is not what a
                # clip sounds like, and it makes each film's one AAC encode half again slower.
                bed = f"anoisesrc=color=pink:r=48000:amplitude=0.05:seed=1:d={key}"
                argv += ["-f", "lavfi", "-i", bed]
                argv += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
                argv += ["-threads", "1", "-c:a", "aac", "-ac", "2", "-t", key]
                argv += ["-movflags", "+faststart", str(out)]
                subprocess.run(argv, check=True, capture_output=True)
                _clips[key, size] = out.read_bytes()
        return _clips[key, size]


def labelled(data: bytes, label: str) -> bytes:
    """The clip with a `free` box naming `label` after its last box: other bytes, the same
    video (players skip free boxes), as a hosted model's renders differ from job to job."""
    payload = label.encode()
    return data + struct.pack(">I4s", 8 + len(payload), b"free") + payload
