"""Film folders for tests, written from dictionaries (DVC's `tmp_dir.gen` idea)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MINIMAL = """\
[film]
title = "Test Film"
size = "320x180"
fps = 24

[defaults]
seconds = 1

[style]
look = "35mm, soft grain"
avoid = ["on-screen text"]

[characters.mara]
description = "a girl of ten in a blue raincoat"

[shots.river]
scene = "Riverbank at dusk."
cast = ["mara"]

[shots.sky]
needs = ["river"]
image = { shot = "river", frame = "last" }
scene = "The lantern rises."
"""


def gen(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write files (path -> content) under root; returns root."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def runner(
    *args: str | Path, cache: Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process, as a user would."""
    env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
    env.pop("RUNNER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
