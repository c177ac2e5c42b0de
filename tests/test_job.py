"""One shot's job against a scripted backend: the journal never lets a create be paid twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.backends.base import (
    Capabilities,
    Expired,
    JobStatus,
    RateLimited,
    Refused,
    ShotRequest,
    Transient,
    Untrusted,
)
from runner.errors import NodeFailed
from runner.run.job import ARRIVAL_SETTLE, PoolPause, SendAgain, ShotJob
from runner.run.journal import Journal

REQUEST = ShotRequest("F", "river", 1, "m", "a river", (), 4.0, 64, 64, 24, None)


class Scripted:
    """A backend whose answers are scripted per call; it counts creates like a provider."""

    name = "scripted"
    default_model = "m"
    reconciles = True
    lands_late = True

    def __init__(self) -> None:
        self.creates = 0
        self.jobs: list[str] = []
        self.submit_errors: list[Exception] = []
        self.find_errors: list[Exception] = []
        self.polls: list[JobStatus | Exception] = []
        self.downloads: list[bytes | Exception] = []
        self.download_calls = 0
        self.connected_with: list[dict[str, object] | None] = []  # the journal at each connect
        self.journal: Journal | None = None

    def connect(self, shot: ShotRequest) -> None:
        assert self.journal is not None
        self.connected_with.append(self.journal.get("k1"))

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities(sizes=(), seconds=())

    def price_per_second(self, model: str, width: int, height: int) -> float:
        return 0.1

    def check(self, shot: ShotRequest) -> str | None:
        return None

    def request(self, shot: ShotRequest) -> dict[str, object]:
        return {"prompt": shot.prompt}

    def submit(self, shot: ShotRequest) -> str:
        self.creates += 1
        job = f"job{self.creates}"
        if self.submit_errors:
            error = self.submit_errors.pop(0)
            if not (isinstance(error, Transient) and error.sent):
                raise error
            self.jobs.append(job)  # created, but the answer was lost
            raise error
        self.jobs.append(job)
        return job

    def find(self, shot: ShotRequest, since: float, exclude: frozenset[str]) -> str | None:
        if self.find_errors:
            raise self.find_errors.pop(0)
        return self.jobs[-1] if self.jobs else None

    def poll(self, job_id: str) -> JobStatus:
        answer = self.polls.pop(0) if self.polls else JobStatus("done")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def download(self, job_id: str, dest: Path) -> None:
        self.download_calls += 1
        answer = self.downloads.pop(0) if self.downloads else b"complete"
        if isinstance(answer, Exception):
            raise answer
        dest.write_bytes(answer)


def verify(path: Path) -> None:
    if path.read_bytes() != b"complete":
        raise NodeFailed("truncated")


class Clock:
    """A fake monotonic clock that its fake sleep moves on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def job(backend: Scripted, tmp_path: Path, **kwargs: object) -> ShotJob:
    journal = Journal(tmp_path / "journal")
    backend.journal = journal
    kwargs.setdefault("sleep", lambda _: None)
    return ShotJob("shots.river", "k1", backend, REQUEST, journal, verify, **kwargs)  # type: ignore[arg-type]


def test_one_create_and_the_journal_is_cleared_after_success(tmp_path: Path) -> None:
    backend = Scripted()
    backend.polls = [JobStatus("queued", poll_after=0.05), JobStatus("running")]
    j = job(backend, tmp_path)
    assert j.run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1
    assert j.journal.pending() == []


def test_the_client_is_made_before_the_create_is_journaled(tmp_path: Path) -> None:
    # A first SDK import can take seconds on a loaded machine: made after the journal entry,
    # it would leave the journaled send time that much before the create left, and a rerun's
    # wait for a create still on its way (ARRIVAL_SETTLE) that much shorter.
    backend = Scripted()
    j = job(backend, tmp_path)
    assert j.run(tmp_path / "out.mp4") == "job1"
    assert backend.connected_with == [None]  # no journal entry yet when the client was made


def test_a_connect_that_is_refused_sends_nothing_and_journals_nothing(tmp_path: Path) -> None:
    backend = Scripted()

    def refused(shot: ShotRequest) -> None:
        raise Refused("no API key")

    backend.connect = refused  # type: ignore[method-assign]
    j = job(backend, tmp_path)
    with pytest.raises(NodeFailed, match="no API key"):
        j.run(tmp_path / "out.mp4")
    assert backend.creates == 0 and j.journal.pending() == []


def test_a_journaled_job_id_is_polled_not_submitted_again(tmp_path: Path) -> None:
    backend = Scripted()
    j = job(backend, tmp_path)
    j.journal.sending("k1", "shots.river", "scripted")
    j.journal.submitted("k1", "job-from-the-killed-run")
    assert j.run(tmp_path / "out.mp4") == "job-from-the-killed-run"
    assert backend.creates == 0


def test_a_create_sent_without_an_answer_is_reconciled_before_resending(tmp_path: Path) -> None:
    backend = Scripted()
    backend.jobs = ["job-created-before-the-crash"]
    j = job(backend, tmp_path)
    j.journal.sending("k1", "shots.river", "scripted")  # killed before the answer came
    assert j.run(tmp_path / "out.mp4") == "job-created-before-the-crash"
    assert backend.creates == 0


class LandsLate(Scripted):
    """A provider that processes a create only after the first list that could show it."""

    def __init__(self) -> None:
        super().__init__()
        self.finds = 0

    def find(self, shot: ShotRequest, since: float, exclude: frozenset[str]) -> str | None:
        self.finds += 1
        return "job-that-landed-late" if self.finds > 1 else None


def test_a_create_still_on_its_way_when_the_rerun_looks_is_adopted_not_bought_again(
    tmp_path: Path,
) -> None:
    """Reproduced (kill -9 at job-journaled, rerun at once, 7 creates for 6 shots): a create
    the killed run had finished sending was processed by the provider after the rerun listed
    its jobs, and the rerun sent it again."""
    clock = Clock()
    clock.now = 1000.0
    backend = LandsLate()
    j = job(backend, tmp_path, wall=clock, sleep=clock.sleep)
    j.journal.sending("k1", "shots.river", "scripted", sent_at=999.0)  # sent 1 s ago, then killed
    assert j.run(tmp_path / "out.mp4") == "job-that-landed-late"
    assert backend.creates == 0 and backend.finds == 2
    assert clock.sleeps[0] == pytest.approx(ARRIVAL_SETTLE - 1.0)  # until it would have landed


def test_a_render_made_in_the_killed_process_is_not_waited_for(tmp_path: Path) -> None:
    """Reproduced: a previz shot being rendered when its run was killed took the rerun 10 s
    (the wait for a create still on its way to a provider); a render in the runner's own
    process died with it, so there is nothing to wait for."""
    clock = Clock()
    clock.now = 1000.0
    backend = Scripted()
    backend.lands_late = False
    j = job(backend, tmp_path, wall=clock, sleep=clock.sleep)
    j.journal.sending("k1", "shots.river", "scripted", sent_at=999.0)  # 1 s ago, then killed
    backend.find = lambda shot, since, exclude: None  # type: ignore[method-assign]
    assert j.run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1 and clock.sleeps == []


def test_a_create_sent_long_ago_and_not_listed_is_sent_again_without_waiting(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.now = 1000.0
    backend = LandsLate()
    j = job(backend, tmp_path, wall=clock, sleep=clock.sleep)
    j.journal.sending("k1", "shots.river", "scripted", sent_at=1000.0 - 2 * ARRIVAL_SETTLE)
    assert j.run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1 and backend.finds == 1 and clock.sleeps == []


def test_a_5xx_after_the_create_reached_the_provider_does_not_create_twice(
    tmp_path: Path,
) -> None:
    backend = Scripted()
    backend.submit_errors = [Transient("502 Bad Gateway", sent=True)]
    assert job(backend, tmp_path).run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1


def test_a_create_that_never_left_is_retried(tmp_path: Path) -> None:
    backend = Scripted()
    backend.submit_errors = [Transient("connection refused", sent=False)]
    assert job(backend, tmp_path).run(tmp_path / "out.mp4") == "job2"
    assert backend.creates == 2


def test_a_429_on_create_goes_back_to_the_scheduler(tmp_path: Path) -> None:
    backend = Scripted()
    backend.submit_errors = [RateLimited("slow down", retry_after=12.0)]
    j = job(backend, tmp_path)
    with pytest.raises(PoolPause) as raised:
        j.run(tmp_path / "out.mp4")
    assert raised.value.after == 12.0
    assert j.journal.pending() == []


def test_a_refusal_fails_with_the_providers_message_and_is_not_retried(tmp_path: Path) -> None:
    backend = Scripted()
    backend.submit_errors = [Refused("content policy: violence")]
    with pytest.raises(NodeFailed, match=r"shots\.river: scripted refused: content policy"):
        job(backend, tmp_path).run(tmp_path / "out.mp4")
    assert backend.creates == 1


def test_an_untrusted_certificate_fails_at_once_and_a_lookup_it_stops_keeps_the_journal(
    tmp_path: Path,
) -> None:
    backend = Scripted()
    untrusted = Untrusted("the TLS certificate presented for h is not trusted")
    backend.submit_errors = [untrusted]
    j = job(backend, tmp_path)
    with pytest.raises(NodeFailed, match=r"shots\.river: cannot reach scripted: the TLS"):
        j.run(tmp_path / "out.mp4")
    assert backend.creates == 1 and j.journal.get("k1") is None  # nothing was sent
    # A resumed run that cannot look an unanswered create up stops, its journal entry kept.
    j.journal.sending("k1", "shots.river", "scripted")
    backend.find_errors = [untrusted]
    with pytest.raises(NodeFailed, match="cannot check whether an earlier create reached"):
        j.run(tmp_path / "out.mp4")
    assert backend.creates == 1 and j.journal.get("k1") is not None


def test_a_job_that_fails_at_the_provider_reports_its_message(tmp_path: Path) -> None:
    backend = Scripted()
    backend.polls = [JobStatus("failed", error="moderation_blocked: unsafe content")]
    j = job(backend, tmp_path)
    with pytest.raises(NodeFailed, match="moderation_blocked: unsafe content"):
        j.run(tmp_path / "out.mp4")
    assert j.journal.pending() == []


def test_a_failed_job_the_provider_refunded_is_sent_again_at_most_twice(tmp_path: Path) -> None:
    backend = Scripted()
    backend.polls = [JobStatus("failed", error="Job failed", refunded=True)]
    refunds: list[None] = []
    j = job(backend, tmp_path, on_refunded=lambda: refunds.append(None))
    assert j.run(tmp_path / "out.mp4") == "job2"
    assert backend.creates == 2 and len(refunds) == 1 and j.journal.pending() == []
    again = Scripted()
    again.polls = [JobStatus("failed", error="Job failed", refunded=True)] * 3
    second = job(again, tmp_path / "second")
    with pytest.raises(NodeFailed, match=r"failed it 3 times \(refunded each time\): Job failed"):
        second.run(tmp_path / "out.mp4")
    assert again.creates == 3 and second.journal.pending() == []  # two resends, never more


def test_a_truncated_download_is_fetched_again_not_bought_again(tmp_path: Path) -> None:
    backend = Scripted()
    backend.downloads = [b"compl", Transient("connection reset"), b"complete"]
    assert job(backend, tmp_path).run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1


def test_a_free_download_is_retried_well_past_three_failures_until_it_verifies(
    tmp_path: Path,
) -> None:
    backend = Scripted()
    failures: list[bytes | Exception] = [Transient("connection reset"), b"compl"] * 5
    backend.downloads = [*failures, RateLimited("slow down", retry_after=7.0)]
    clock = Clock()
    j = job(backend, tmp_path, clock=clock, sleep=clock.sleep)
    assert j.run(tmp_path / "out.mp4") == "job1"
    assert backend.creates == 1 and backend.download_calls == 12
    assert clock.sleeps[-1] == 7.0  # the provider's Retry-After
    backoffs = clock.sleeps[:-1]
    assert max(backoffs) <= 30.0 and len(set(backoffs)) == len(backoffs)  # capped, jittered


def test_a_download_failing_until_the_deadline_fails_and_leaves_the_job_journaled(
    tmp_path: Path,
) -> None:
    backend = Scripted()
    backend.downloads = [Transient("connection reset")] * 10_000
    clock = Clock()
    j = job(backend, tmp_path, clock=clock, sleep=clock.sleep, download_deadline=600.0)
    with pytest.raises(NodeFailed, match="run again to retry the download without paying"):
        j.run(tmp_path / "out.mp4")
    assert clock.now == pytest.approx(600.0)  # retried right up to the deadline, not past it
    assert 20 < backend.download_calls < 60
    assert backend.creates == 1
    assert j.journal.get("k1")["job_id"] == "job1"  # type: ignore[index]


def test_a_refused_download_fails_at_once(tmp_path: Path) -> None:
    backend = Scripted()
    backend.downloads = [Refused("invalid api key")]
    with pytest.raises(NodeFailed, match="refused the download of job job1: invalid api key"):
        job(backend, tmp_path).run(tmp_path / "out.mp4")
    assert backend.download_calls == 1


def test_expired_content_is_rerendered_only_when_asked(tmp_path: Path) -> None:
    backend = Scripted()
    backend.downloads = [Expired("gone")]
    with pytest.raises(NodeFailed, match="--rerender-expired"):
        job(backend, tmp_path).run(tmp_path / "out.mp4")
    assert backend.creates == 1
    backend.downloads = [Expired("gone")]
    # The second run resumes the journaled job, finds it expired and hands the node back to
    # the scheduler (whose pool sends the new create); sent again, it pays for one new job.
    again = job(backend, tmp_path, rerender_expired=True)
    with pytest.raises(SendAgain, match="no longer has job job1"):
        again.run(tmp_path / "o.mp4")
    assert backend.creates == 1 and again.journal.get(again.key) is None
    assert again.run(tmp_path / "o.mp4") == "job2"
    assert backend.creates == 2


def test_a_backend_that_cannot_list_jobs_never_resends_silently(tmp_path: Path) -> None:
    backend = Scripted()
    backend.reconciles = False
    backend.submit_errors = [Transient("read timeout", sent=True)]
    with pytest.raises(NodeFailed, match="--resend-unconfirmed"):
        job(backend, tmp_path).run(tmp_path / "out.mp4")
    assert backend.creates == 1
    assert job(backend, tmp_path, resend_unconfirmed=True).run(tmp_path / "o.mp4") == "job2"
