"""Film folders for tests, written from dictionaries (DVC's `tmp_dir.gen` idea)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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


def lock_nodes(lock: Path, profile: str = "default") -> dict[str, dict[str, Any]]:
    """One profile's node tables of a film.lock file."""
    nodes: dict[str, dict[str, Any]] = tomllib.loads(lock.read_text())["profiles"][profile]["nodes"]
    return nodes


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
    *args: str | Path, cache: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process, as a user would (env: more variables)."""
    env = {**os.environ, **(env or {}), "RUNNER_CACHE_DIR": str(cache)}
    env.pop("RUNNER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "runner", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


class Checkout:
    """One user of a film (a teammate, a CI job): its manifest, a cache of its own, an
    environment; runs the real command line in child processes."""

    def __init__(self, manifest: Path, cache: Path, env: dict[str, str] | None = None) -> None:
        self.manifest = manifest
        self.env = {**os.environ, "RUNNER_CACHE_DIR": str(cache), **(env or {})}
        self.env.pop("RUNNER_DEBUG", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "runner", *args, str(self.manifest)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def start(self) -> subprocess.Popen[str]:
        """`runner render` in the background, for tests that kill it or race it."""
        return subprocess.Popen(
            [sys.executable, "-m", "runner", "render", str(self.manifest)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
