"""The protocol every backend speaks: submit, poll, download, capabilities and prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner.film.request import ShotRequest

if TYPE_CHECKING:
    from runner.digest import Hashed
    from runner.film.request import Capabilities

__all__ = ["Backend", "Capabilities", "JobStatus", "ShotRequest"]


def __getattr__(name: str) -> Any:
    """`Capabilities`, loaded on first use (it loads pydantic; a no-op plan needs neither)."""
    if name == "Capabilities":
        from runner.film import model_table

        return model_table.ModelRow
    raise AttributeError(name)


class BackendError(Exception):
    """A provider's failure, classified so the runner knows whether to retry."""


class Refused(BackendError):
    """The provider refused the request (content policy, invalid request, unknown model).

    The message is the provider's own, made clear; never retried.
    """


class Untrusted(Refused):
    """This machine does not trust the TLS certificate a provider's host presented (a proxy
    that inspects HTTPS, its CA missing from the bundle): nothing was sent, no retry mends it."""


class RateLimited(BackendError):
    """429: the runner pauses the backend's whole pool for `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(BackendError):
    """5xx, timeouts, dropped connections: retried by the runner with backoff.

    `sent` is True when a create may have reached the provider (the runner reconciles with
    `find` before sending it again).
    """

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class Expired(BackendError):
    """The provider no longer has the job's content; re-rendered only with --rerender-expired."""


@dataclass
class JobStatus:
    """A provider's answer to a poll."""

    state: str  # "queued" | "running" | "done" | "failed"
    error: str | None = None
    poll_after: float | None = None  # seconds the provider asks us to wait
    extra: dict[str, Any] = field(default_factory=dict)
    # A failure the provider refunded (Runway's INTERNAL.*): sending again pays once.
    refunded: bool = False
    progress: float | None = None  # 0..1, where the provider reports how far a job is


class Backend(Protocol):
    """A video generator. Submitting costs money on hosted backends; the runner journals it."""

    name: str
    default_model: str  # used when neither the shot, its profile nor [defaults] names one
    # Whether `find` can list the provider's jobs. When it cannot, a create that may have been
    # sent is never re-sent silently: the user checks the provider's console first.
    reconciles: bool
    # Whether a create can reach the provider after the process that sent it died (bytes in
    # flight, a provider's queue): then a rerun looks again before sending (ARRIVAL_SETTLE).
    # Not for a render made in the runner's own process, which dies with it (previz).
    lands_late: bool

    def capabilities(self, model: str) -> Capabilities: ...

    def rows(self) -> Mapping[str, Capabilities]:
        """Every model of the backend's table, by name (to say which have a feature)."""
        ...

    def price_per_second(self, model: str, width: int, height: int) -> float: ...

    def check(self, shot: ShotRequest) -> str | None:
        """What the backend cannot render about this shot, in words; None when it can."""
        ...

    def credentials_problem(self) -> str | None:
        """What is missing to reach the provider (no key, no project), in words; None when
        nothing is. Offline: looks at configuration and the environment only."""
        ...

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The JSON-able part of the shot that changes the output: it goes into the node key."""
        ...

    def connect(self, shot: ShotRequest) -> None:
        """Do now what a create of `shot` needs that costs nothing (import the SDK, build the
        client, upload its images), no create sent: called before the create is journaled,
        so the journaled send time is when the create leaves, not seconds earlier (a first SDK
        import on a loaded machine, an upload). Raises Refused (no key) or Transient."""
        ...

    def submit(self, shot: ShotRequest) -> str:
        """Send exactly one create request (no retries inside: the runner retries, journaled);
        return the provider's job id."""
        ...

    def find(self, shot: ShotRequest, since: float, exclude: frozenset[str]) -> str | None:
        """The id of a job created for this shot's request at or after `since` (Unix time), if
        the provider lists one, other than those in `exclude` (jobs other nodes own, e.g. the
        identical requests of other takes): reconciles a create that got no answer."""
        ...

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """Like submit, but edits the video of an earlier job with shot.prompt."""
        ...

    def poll(self, job_id: str) -> JobStatus: ...

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Write the finished video to dest (the caller verifies and stores it); its digest and
        length when they were taken as it was written (None: the store hashes it)."""
        ...
