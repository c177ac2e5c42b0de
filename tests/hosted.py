"""What the hosted backends' tests share (fal, luma, runway; openai and veo in part): the shot
they render, polling a job to its end, the films of many shots and the runs that kill them,
and the checks every provider passes in its own protocol. Each provider's protocol-specific
assertions stay in its own test file; the creates are counted by its loopback server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from runner.backends.base import Backend, BackendError, JobStatus, Refused, ShotRequest, Transient
from runner.errors import NodeFailed
from runner.media import ffmpeg
from tests.films import Checkout, gen
from tests.servers.loopback import FaultQueues


def lantern_shot(fields: dict[str, Any]) -> ShotRequest:
    """The test shot of the river and the lantern, 1280x720 at 24 fps, with a provider's own
    model, prompt, avoid, seconds and seed in `fields` (and any changes)."""
    common: dict[str, Any] = {"film": "The Lantern", "shot": "river", "take": 1}
    return ShotRequest(**(common | {"width": 1280, "height": 720, "fps": 24} | fields))


def wait(backend: Backend, job_id: str) -> list[JobStatus]:
    """Poll until the job ends, done or failed; returns every status seen."""
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = backend.poll(job_id)
        seen.append(status)
        if status.state in ("done", "failed"):
            return seen
        time.sleep(status.poll_after or 0.02)
    raise AssertionError(f"{job_id} never ended")


class CountingServer(Protocol):
    """A loopback server's own count of the creates it was sent."""

    def create_posts(self) -> int: ...


def film(
    root: Path,
    backend: str,
    shots: int,
    *,
    defaults: str,
    limits: str,
    table: str,
    env: dict[str, str],
    more: Iterable[str] = (),
    files: dict[str, str | bytes] | None = None,
) -> Checkout:
    """A film of `shots` shots on one hosted backend, scene i "Title shot i: ..." (so the
    server's records say which shot each create was for); `table`: the backend's
    [tool.runner.backends] lines; `more`: TOML after the last shot."""
    title = backend.capitalize()
    lines = [f'[film]\ntitle = "{title}"\nsize = "160x90"\nfps = 24']
    lines += [f'[defaults]\nbackend = "{backend}"\n{defaults}', f"[limits.{backend}]\n{limits}"]
    # Every shot renders; the cut joins two, so each render's audio encode stays short.
    lines += ['[edit]\nsequence = ["s0", "s1"]']
    lines += [f'[shots.s{i}]\nscene = "{title} shot {i}:   a lantern.  "' for i in range(shots)]
    lines += more
    pyproject = f"[tool.runner.backends.{backend}]\npoll_seconds = 0.05\n{table}"
    gen(root, (files or {}) | {"film.toml": "\n".join(lines) + "\n", "pyproject.toml": pyproject})
    return Checkout(root / "film.toml", root / "cache", env)


def kill_at(film: Checkout, points: Sequence[str]) -> None:
    """Render once per kill point, each run killed (SIGKILL) where the point names."""
    for point in points:
        film.env["RUNNER_KILL_AT"] = point
        killed = film.run("render")
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
    del film.env["RUNNER_KILL_AT"]


def inject_fault_mix(server: FaultQueues, drops: int = 2) -> None:
    """Two 429s, two 503s, `drops` creates made but unanswered, two downloads cut short
    close-delimited and one with its length declared."""
    server.rate_limit_next(2, retry_after=0.2)
    server.fail_next_creates(2, status=503)
    if drops:
        server.drop_next_creates(drops)
    server.truncate_next_downloads(2)
    server.truncate_next_downloads(1, declare_length=True)


def assert_a_rerun_sends_nothing(film: Checkout, server: CountingServer) -> int:
    """Render again: nothing to do, no create sent. Returns the creates so far."""
    posts = server.create_posts()
    assert film.run("render").returncode == 0 and server.create_posts() == posts
    return posts


def cut_downloads_short(
    backend: Backend, server: FaultQueues, job_id: str, dest: Path, seconds: float
) -> None:
    """A download cut short with its length declared is transient and leaves nothing; one
    cut short close-delimited is written, and only verifying the video tells."""
    server.truncate_next_downloads(1, declare_length=True)
    with pytest.raises(Transient):
        backend.download(job_id, dest)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    server.truncate_next_downloads(1)  # close-delimited: only decoding can tell
    backend.download(job_id, dest)
    with pytest.raises(NodeFailed):
        ffmpeg.verify_video(dest, seconds)


def assert_a_wrong_key_never_shows(
    submit: Callable[[str], object], bases: tuple[str, str], wrong: str, env_name: str
) -> None:
    """`submit(base_url)`, with the key `wrong`, to the server and to a closed port: refused
    naming `env_name`, then transient and never sent; the key in neither traceback."""
    errors: list[BackendError] = []
    for base in bases:
        with pytest.raises(BackendError) as err:
            submit(base)
        errors.append(err.value)
    assert isinstance(errors[0], Refused) and env_name in str(errors[0])
    assert isinstance(errors[1], Transient) and errors[1].sent is False  # never left
    for error in errors:
        assert wrong not in "".join(traceback.format_exception(error))


def imports_lazily(module: str, *heavy: str) -> bool:
    """Whether importing `module` leaves the `heavy` modules (SDKs, httpx) unimported."""
    code = f"import sys, {module}\nprint([m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == str([False] * len(heavy))
