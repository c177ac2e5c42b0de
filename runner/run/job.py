"""One shot's job on its backend: submit (journaled, retried), poll, download, verify.

Retries live here, not in the providers' SDKs, so the journal sees every create: a create that
may have reached the provider is reconciled (`Backend.find`) before it is sent again. A 429 is
handed back to the scheduler, which pauses the backend's whole pool.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

from runner import faults
from runner.backends.base import (
    Backend,
    BackendError,
    Expired,
    JobStatus,
    RateLimited,
    Refused,
    ShotRequest,
    Transient,
    Untrusted,
)
from runner.digest import Hashed
from runner.errors import NodeFailed
from runner.run.journal import Journal
from runner.run.ratelimit import SendWindow

SUBMIT_ATTEMPTS = 5
POLL_ERRORS = 8  # transient poll failures in a row before the node fails (the job lives on)
DOWNLOAD_DEADLINE = 1800.0  # seconds a finished job's (free) download is retried
DOWNLOAD_BACKOFF_CAP = 30.0  # seconds: the longest wait between two download attempts
POLL_DEFAULT = 1.0  # seconds between polls when the provider does not say
RECONCILE_SLACK = 5.0  # seconds: clocks of runner and provider differ
# Seconds after a send during which its create may still land at the provider: a request its
# sender finished writing before it died (or lost the answer) is processed whenever the
# provider reads it, which under load can be after a quick rerun has listed the jobs.
ARRIVAL_SETTLE = 10.0
REFUNDED_RESENDS = 2  # a job the provider failed and refunded is sent again this many times
T = TypeVar("T")


class SendAgain(Exception):
    """The job's content expired and --rerender-expired says to pay for it again: the node
    goes back to the scheduler, whose pool sends the new create."""


class Refunded(Exception):
    """The provider failed the job and refunded it: sending it again pays once."""


class PoolPause(Exception):
    """The provider rate-limited a create: pause the pool, then try the node again."""

    def __init__(self, message: str, after: float | None) -> None:
        super().__init__(message)
        self.after = after


Steps = Generator[float, None, T]
"""Work that yields each wait (seconds) instead of sleeping through it, then returns a T."""


def drive(steps: Steps[T], sleep: Callable[[float], None]) -> T:
    """Run steps to the end in this thread, sleeping through their waits."""
    while True:
        try:
            wait = next(steps)
        except StopIteration as end:
            return cast(T, end.value)
        sleep(wait)


def backoff(attempt: int, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter: 1, 2, 4 ... seconds, capped."""
    return random.uniform(0.5, 1.0) * min(cap, 2.0**attempt)


@dataclass
class ShotJob:
    node: str
    key: str
    backend: Backend
    request: ShotRequest
    journal: Journal
    verify: Callable[[Path], object]  # raises NodeFailed when the file is not the shot
    rerender_expired: bool = False
    resend_unconfirmed: bool = False
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic  # measures download_deadline
    wall: Callable[[], float] = time.time  # the journal's clock: when a create was sent
    download_deadline: float = DOWNLOAD_DEADLINE
    gate: SendWindow = field(default_factory=lambda: SendWindow(None))  # the pool's rpm
    on_provider_done: Callable[[], None] = lambda: None  # frees the pool slot before download
    on_paid: Callable[[str], None] = lambda job_id: None  # this run's create was accepted
    on_refunded: Callable[[], None] = lambda: None  # the provider refunded the failed job
    may_send: Callable[[], bool] = lambda: True  # False once the run is stopping (Ctrl-C)
    remix_source: str | None = None  # the provider's job id of the video a remix edits
    on_status: Callable[[JobStatus], None] = lambda status: None  # each poll's answer
    # The downloaded video's digest and length, taken as it arrived (None: not taken).
    received: Hashed | None = field(default=None, init=False)

    def run(self, dest: Path) -> str:
        """Make the shot's video at dest, sleeping through its waits; returns the provider's
        job id.

        The journal entry outlives this call: the caller clears it only once the output is
        stored and recorded (see runner/journal.py)."""
        return drive(self.steps(dest), self.sleep)

    def steps(self, dest: Path) -> Steps[str]:
        """`run`, yielding each wait (in seconds) instead of sleeping through it: a job
        waiting on its provider then holds no thread (runner/run/execute.py parks it)."""
        job_id = (yield from self._resume()) or (yield from self._submit())
        try:
            job_id = yield from self._settle(job_id)
            self.on_provider_done()
            yield from self._download(job_id, dest)
        except Expired as err:
            if not self.rerender_expired:
                raise NodeFailed(
                    f"{self.node}: {self.backend.name} no longer has job {job_id} ({err}); "
                    "run again with --rerender-expired to render (and pay for) it again"
                ) from None
            # Paying again is a new create: it goes back through the pool like any other
            # (concurrency, rpm, budget), not straight from this worker.
            self.journal.clear(self.key)
            raise SendAgain(
                f"{self.backend.name} no longer has job {job_id}; rendering it again "
                "(--rerender-expired)"
            ) from None
        faults.point("downloaded")
        return job_id

    def _resume(self) -> Steps[str | None]:
        """A job a killed run already sent for this key, if any."""
        entry = self.journal.get(self.key)
        if entry is None:
            return None
        if entry.get("job_id"):
            return str(entry["job_id"])
        return (yield from self._reconcile(float(entry.get("sent_at", 0.0))))

    def _reconcile(self, sent_at: float) -> Steps[str | None]:
        """The job a create sent at `sent_at` made, found in the provider's list; None when
        it made none. Not found while it could still be on its way: look again once it
        would have landed (ARRIVAL_SETTLE), so a late create is adopted, never bought again."""
        found = self._find(sent_at)
        left = sent_at + ARRIVAL_SETTLE - self.wall()
        if found is None and left > 0 and self.backend.reconciles and self.backend.lands_late:
            yield left
            found = self._find(sent_at)
        if found:
            self.journal.submitted(self.key, found)
        return found

    def _find(self, sent_at: float) -> str | None:
        if not self.backend.reconciles:
            if self.resend_unconfirmed:
                return None
            raise NodeFailed(
                f"{self.node}: a create for this shot may have reached {self.backend.name}, "
                "which cannot list its jobs; check the provider's console, then run again with "
                "--resend-unconfirmed to send it again (and pay again if it did arrive)"
            )
        try:
            owned = frozenset(self.journal.job_ids()) - {""}
            found = self.backend.find(self.request, sent_at - RECONCILE_SLACK, owned)
        except BackendError as err:
            # Not knowing is not the same as "no job": never risk paying twice.
            raise NodeFailed(
                f"{self.node}: cannot check whether an earlier create reached "
                f"{self.backend.name} ({err}); run again to retry"
            ) from None
        return found

    def _submit(self) -> Steps[str]:
        for attempt in range(SUBMIT_ATTEMPTS):
            if not self.may_send():
                raise NodeFailed(f"{self.node}: not sent: the run is stopping")
            try:
                # First: the journaled send time is then when the create leaves.
                self.backend.connect(self.request)
                with self.gate.turn():
                    sent_at = self.journal.sending(self.key, self.node, self.backend.name)
                    faults.point("create-journaled")
                    if self.remix_source is not None:
                        job_id = self.backend.remix(self.remix_source, self.request)
                    else:
                        job_id = self.backend.submit(self.request)
            except RateLimited as err:
                self.journal.clear(self.key)  # rejected: nothing was created
                raise PoolPause(str(err), err.retry_after) from None
            except Refused as err:
                self.journal.clear(self.key)
                who = "cannot reach {}" if isinstance(err, Untrusted) else "{} refused"
                raise NodeFailed(f"{self.node}: {who.format(self.backend.name)}: {err}") from None
            except Transient as err:
                if err.sent:
                    found = yield from self._reconcile(sent_at)
                    if found:
                        self.on_paid(found)  # this run's create, answered or not
                        return found
                if attempt + 1 == SUBMIT_ATTEMPTS:
                    self.journal.clear(self.key)
                    raise NodeFailed(
                        f"{self.node}: {self.backend.name} failed {SUBMIT_ATTEMPTS} times: {err}"
                    ) from None
                yield backoff(attempt)
                continue
            faults.point("create-answered")
            self.on_paid(job_id)
            self.journal.submitted(self.key, job_id)
            faults.point("job-journaled")
            return job_id
        raise AssertionError("unreachable")

    def _settle(self, job_id: str) -> Steps[str]:
        """Wait for the job; a failure the provider refunded is sent again (a new create, in
        this job's pool slot and through its rpm gate), at most REFUNDED_RESENDS times.
        Returns the id of the job that finished."""
        for resend in range(REFUNDED_RESENDS + 1):
            try:
                yield from self._wait(job_id)
                return job_id
            except Refunded as err:
                if resend == REFUNDED_RESENDS:
                    self.journal.clear(self.key)
                    raise NodeFailed(
                        f"{self.node}: {self.backend.name} failed it {resend + 1} times "
                        f"(refunded each time): {err}"
                    ) from None
                self.on_refunded()
                job_id = yield from self._submit()
        raise AssertionError("unreachable")

    def _wait(self, job_id: str) -> Steps[None]:
        errors = 0
        while True:
            try:
                status = self.backend.poll(job_id)
            except RateLimited as err:
                yield err.retry_after or backoff(errors)
                continue
            except Transient as err:
                errors += 1
                if errors >= POLL_ERRORS:
                    raise NodeFailed(
                        f"{self.node}: cannot poll {self.backend.name} job {job_id} ({err}); "
                        "the job is journaled: run again to resume it without paying again"
                    ) from None
                yield backoff(errors)
                continue
            except Refused as err:  # e.g. credentials gone on a resumed run: keep the journal
                raise NodeFailed(
                    f"{self.node}: {self.backend.name} refused to report job {job_id}: {err}; "
                    "the job is journaled: fix the problem and run again"
                ) from None
            errors = 0
            self.on_status(status)
            if status.state == "done":
                return
            if status.state == "failed" and status.refunded:
                raise Refunded(status.error or "the job failed")
            if status.state == "failed":
                self.journal.clear(self.key)
                raise NodeFailed(f"{self.node}: {self.backend.name} refused: {status.error}")
            yield status.poll_after if status.poll_after is not None else POLL_DEFAULT

    def _download(self, job_id: str, dest: Path) -> Steps[None]:
        """Download until the video verifies. Downloading a finished job is free, so it is
        retried until the provider says the content is gone (`Expired`, raised to `run`) or
        `download_deadline` passes; a truncated file is fetched again, never bought again."""
        deadline = self.clock() + self.download_deadline
        attempts = 0
        while True:
            attempts += 1
            wait = backoff(min(attempts - 1, 8), cap=DOWNLOAD_BACKOFF_CAP)  # 2**8 is past the cap
            try:
                received = self.backend.download(job_id, dest)
            except Refused as err:
                raise NodeFailed(
                    f"{self.node}: {self.backend.name} refused the download of job {job_id}: "
                    f"{err}; the job is journaled: fix the problem and run again"
                ) from None
            except RateLimited as err:
                problem = str(err)
                wait = err.retry_after if err.retry_after is not None else wait
            except Transient as err:
                problem = str(err)
            else:
                try:
                    self.verify(dest)
                    self.received = received
                    return
                except NodeFailed as err:
                    # A close-delimited truncation looks complete: only the box walk finds it.
                    problem = str(err)
                    dest.unlink(missing_ok=True)
            left = deadline - self.clock()
            if left <= 0:
                raise NodeFailed(
                    f"{self.node}: download of {self.backend.name} job {job_id} still failing "
                    f"after {self.download_deadline:g} s and {attempts} attempts ({problem}); "
                    "the job is journaled: run again to retry the download without paying again"
                )
            yield min(wait, left)  # one last attempt at the deadline
