"""The protocol every backend speaks: submit, poll, download, capabilities and prices."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ShotRequest:
    """Everything a backend needs to render one take of one shot."""

    film: str  # the film's title
    shot: str  # the shot id, e.g. "river"
    take: int  # 1-based take index
    model: str
    prompt: str  # the compiled prompt text, exactly as sent
    avoid: tuple[str, ...]  # exclusions, for backends with a negative-prompt field
    seconds: float
    width: int
    height: int
    fps: int
    seed: int | None
    image: Path | None = None  # first-frame reference, when the shot has one


@dataclass(frozen=True)
class Capabilities:
    """What a model accepts; the planner rejects a shot asking for anything else."""

    sizes: tuple[str, ...]  # "WxH"; empty means any size
    seconds: tuple[float, ...]  # allowed lengths; empty means any length within max_seconds
    max_seconds: float = 60.0
    image: bool = True
    seed: bool = True
    negative_prompt: bool = False


@dataclass
class JobStatus:
    """A provider's answer to a poll."""

    state: str  # "queued" | "running" | "done" | "failed"
    error: str | None = None
    poll_after: float | None = None  # seconds the provider asks us to wait
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """A video generator. Submitting costs money on hosted backends; the runner journals it."""

    name: str
    default_model: str  # used when neither the shot, its profile nor [defaults] names one

    def capabilities(self, model: str) -> Capabilities: ...

    def price_per_second(self, model: str, width: int, height: int) -> float: ...

    def check(self, shot: ShotRequest) -> str | None:
        """What the backend cannot render about this shot, in words; None when it can."""
        ...

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The JSON-able part of the shot that changes the output: it goes into the node key."""
        ...

    def submit(self, shot: ShotRequest) -> str:
        """Start a job; return the provider's job id."""
        ...

    def poll(self, job_id: str) -> JobStatus: ...

    def download(self, job_id: str, dest: Path) -> None:
        """Write the finished video to dest (the caller verifies and stores it)."""
        ...
