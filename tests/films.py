"""Film folders for tests, written from dictionaries (DVC's `tmp_dir.gen` idea)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

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
    *args: str | Path,
    cache: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    child: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line as a user would (env: more variables): in this process, or
    in a child process (`child`, or where only a process shows the behaviour: `run_cli`)."""
    env = {**os.environ, **(env or {}), "RUNNER_CACHE_DIR": str(cache)}
    env.pop("RUNNER_DEBUG", None)
    return run_cli([*map(str, args)], env, cwd=cwd, child=child)


# Set RUNNER_TEST_CHILDREN=1 to run every command line in a child process, as before.
ALWAYS_CHILD = os.environ.get("RUNNER_TEST_CHILDREN") == "1"
_CHILD_ONLY = ("RUNNER_KILL_AT",)  # read when the runner is imported: a child must start


def run_cli(
    argv: list[str], env: dict[str, str], *, cwd: Path | None = None, child: bool = False
) -> subprocess.CompletedProcess[str]:
    """`runner ARGV` with exactly the environment `env`, its output captured.

    In this process by default: the same `runner.cli.main.main` a child runs, minus a child's
    interpreter start and SDK imports (about 0.7 s of CPU each, most of `make test`'s time).
    The environment, working folder and standard streams are swapped for the call and put
    back after it. A kill point (RUNNER_KILL_AT kills the process that reaches it) runs in a
    child; so do the tests about signals and exit statuses, through `Checkout.start` or
    subprocess directly.
    """
    if child or ALWAYS_CHILD or any(name in env for name in _CHILD_ONLY):
        return subprocess.run(
            [sys.executable, "-m", "runner", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=600,
        )
    from runner.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            _stdin(io.StringIO("")),
        ):
            try:
                code = main(argv)
            except SystemExit as exit:  # argparse: usage errors and --help
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["runner", *argv], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(stream: TextIO) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


class Checkout:
    """One user of a film (a teammate, a CI job): its manifest, a cache of its own, an
    environment; runs the real command line (`run_cli`; `start` in a child process)."""

    def __init__(self, manifest: Path, cache: Path, env: dict[str, str] | None = None) -> None:
        self.manifest = manifest
        self.env = {**os.environ, "RUNNER_CACHE_DIR": str(cache), **(env or {})}
        self.env.pop("RUNNER_DEBUG", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = run_cli([*args, str(self.manifest)], self.env)
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
