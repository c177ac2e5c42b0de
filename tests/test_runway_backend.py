"""The runway backend: the real runwayml SDK over real HTTP to a loopback server speaking
Runway's task API (creates, retrieve, delete, THROTTLED, failure codes, signed output URLs)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.backends.base import (
    Expired,
    RateLimited,
    Refused,
    ShotRequest,
    Transient,
)
from runner.backends.runway import RunwayBackend
from runner.backends.runway_models import BUILTIN, body
from runner.errors import NodeFailed, UserError
from runner.media import ffmpeg
from runner.run.job import ShotJob
from runner.run.journal import Journal
from tests import hosted
from tests.films import Checkout
from tests.hosted import lantern_shot, wait
from tests.servers.runway_server import VERSION, RunwayServer

KEY = "key_runway0123456789abcdef"
SAFETY = "The prompt was rejected by content moderation."


def shot(**changes: Any) -> ShotRequest:
    return lantern_shot(
        {
            "model": "veo3.1_fast",
            "prompt": "Riverbank at dusk; a girl lights a paper lantern.",
            "avoid": ("on-screen text", "logos"),
            "seconds": 4.0,
            "seed": 1234,
        }
        | changes
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Runway settings leak in from the machine running the tests."""
    for name in ("RUNWAYML_API_SECRET", "RUNWAYML_BASE_URL", "RUNWAYML_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[RunwayServer]:
    with RunwayServer(job_seconds=0.1, api_key=KEY) as s:
        yield s


def connect(server: RunwayServer, tmp_path: Path, **config: Any) -> RunwayBackend:
    cfg = {"base_url": server.base_url, "api_key": KEY, "poll_seconds": 0.02, **config}
    return RunwayBackend(tmp_path / "runway", cfg)


@pytest.fixture
def backend(server: RunwayServer, tmp_path: Path) -> Iterator[RunwayBackend]:
    b = connect(server, tmp_path)
    yield b
    b.close()


def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "first.png"
    Image.new("RGB", (64, 36), (200, 40, 40)).save(path)
    return path


def test_a_round_trip_sends_runways_fields_and_version_and_gives_a_video_that_verifies(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    states = [s.state for s in wait(backend, job_id)]
    assert states[0] == "queued" and "running" in states and states[-1] == "done"
    dest = tmp_path / "out" / "river.mp4"
    backend.download(job_id, dest)
    assert ffmpeg.verify_video(dest, 4.0).has_audio
    assert server.posts[0]["endpoint"] == "text_to_video"
    assert server.posts[0]["body"] == {
        "model": "veo3.1_fast",
        "promptText": shot().prompt,
        "ratio": "1280:720",
        "duration": 4,
        "seed": 1234,
        "negativePrompt": "on-screen text, logos",
        "audio": True,
    }
    assert server.authorizations == {f"Bearer {KEY}"} and server.versions == {VERSION}
    assert not list(dest.parent.glob("*.part"))


def test_a_first_frame_goes_to_image_to_video_as_a_data_uri(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    frame = image(tmp_path)
    turbo = shot(model="gen4_turbo", seconds=5.0, width=1104, height=832, image=frame)
    assert wait(backend, backend.submit(turbo))[-1].state == "done"
    sent = server.posts[0]
    assert sent["endpoint"] == "image_to_video"
    assert sent["body"]["promptImage"].startswith("data:image/png;base64,")
    assert "negativePrompt" not in sent["body"] and "audio" not in sent["body"]
    assert "image-to-video only" in (backend.check(shot(model="gen4_turbo", seconds=5.0)) or "")
    # gen4.5 renders 1104x832 only from a first frame.
    assert "needs a first frame" in (
        backend.check(shot(model="gen4.5", width=1104, height=832)) or ""
    )
    assert backend.check(shot(model="gen4.5", width=1104, height=832, image=frame)) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_shed_create_is_sent_once_and_certainly_made_nothing(
    backend: RunwayBackend, server: RunwayServer, status: int
) -> None:
    server.fail_next_creates(1, status=status)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is False and f"HTTP {status}" in str(err.value)
    assert server.create_posts() == 1 and server.billable() == []


def test_a_500_may_have_made_a_task_and_a_429_made_none(
    backend: RunwayBackend, server: RunwayServer
) -> None:
    server.fail_next_creates(1, status=500)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimited) as limited:
        backend.submit(shot())
    assert limited.value.retry_after == pytest.approx(7.0)
    assert server.create_posts() == 2 and server.billable() == []


def test_a_lost_create_answer_is_sent_once_and_cannot_be_found(
    backend: RunwayBackend, server: RunwayServer
) -> None:
    server.drop_next_creates(1)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    assert server.create_posts() == 1 and len(server.billable()) == 1  # the SDK sent it once
    assert not backend.reconciles and backend.find(shot(), time.time() - 60) is None


def test_a_lost_answer_stops_the_job_until_resend_unconfirmed_sends_exactly_one_more(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal")

    def job(**options: Any) -> ShotJob:
        verify = lambda p: ffmpeg.verify_video(p, 4.0)  # noqa: E731
        return ShotJob("shots.river", "c" * 64, backend, shot(), journal, verify, **options)

    server.drop_next_creates(1)
    for _ in range(2):  # the lost create, then a plain rerun: stopped, nothing sent again
        with pytest.raises(NodeFailed, match="--resend-unconfirmed"):
            job(sleep=lambda s: None).run(tmp_path / "a.mp4")
        assert server.create_posts() == 1
    job(resend_unconfirmed=True).run(tmp_path / "a.mp4")
    assert server.create_posts() == 2 and journal.pending() == ["c" * 64]


def test_throttled_tasks_are_in_flight_and_never_sent_again(tmp_path: Path) -> None:
    with RunwayServer(job_seconds=0.15, api_key=KEY, account_concurrency=1) as server:
        backend = connect(server, tmp_path)
        first, second = backend.submit(shot()), backend.submit(shot(take=2))
        seen = wait(backend, second)
        assert seen[0].state == "queued" and seen[0].extra == {"throttled": True}
        assert seen[-1].state == "done" and wait(backend, first)[-1].state == "done"
        assert server.create_posts() == 2 and server.throttled() == 1


def test_safety_is_charged_and_refused_in_runways_words_internal_is_refunded(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    server.fail_prompts("forbidden", "SAFETY.INPUT.TEXT", SAFETY)
    status = wait(backend, backend.submit(shot(prompt="A forbidden lantern.")))[-1]
    assert status.state == "failed" and not status.refunded
    assert status.error == f"{SAFETY} (SAFETY.INPUT.TEXT)"
    server.fail_next_tasks(1, "INTERNAL.BAD_OUTPUT.CODE01", "The output was rejected.")
    status = wait(backend, backend.submit(shot()))[-1]
    assert status.state == "failed" and status.refunded
    assert len(server.billable()) == 1 and len(server.refunded()) == 1
    # Through the runner's job: SAFETY fails the shot at once; INTERNAL sends it again once.
    journal = Journal(tmp_path / "journal")
    refunds: list[str] = []
    verify = lambda p: ffmpeg.verify_video(p, 4.0)  # noqa: E731
    server.fail_next_tasks(1, "INTERNAL.BAD_OUTPUT.CODE01", "The output was rejected.")
    job = ShotJob("shots.a", "a" * 64, backend, shot(take=3), journal, verify)
    job.on_refunded = lambda: refunds.append("a")
    job.run(tmp_path / "a.mp4")
    assert refunds == ["a"] and len(server.billable()) == 2 and len(server.refunded()) == 2
    with pytest.raises(NodeFailed, match=r"SAFETY\.INPUT\.TEXT"):
        ShotJob("shots.b", "b" * 64, backend, shot(prompt="forbidden"), journal, verify).run(
            tmp_path / "b.mp4"
        )
    assert len(server.billable()) == 3 and journal.pending() == ["a" * 64]


def test_a_job_refunded_again_and_again_fails_after_two_resends(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal")
    verify = lambda p: ffmpeg.verify_video(p, 4.0)  # noqa: E731
    server.fail_next_tasks(3, "INTERNAL.BAD_OUTPUT.CODE01", "The output was rejected.")
    with pytest.raises(NodeFailed, match=r"failed it 3 times \(refunded each time\)"):
        ShotJob("shots.a", "a" * 64, backend, shot(), journal, verify).run(tmp_path / "a.mp4")
    assert server.billable() == [] and len(server.refunded()) == 3 and journal.pending() == []


def test_an_expired_output_url_is_signed_again_by_retrieving_the_task(tmp_path: Path) -> None:
    with RunwayServer(job_seconds=0.1, api_key=KEY, url_ttl=0.2) as server:
        backend = connect(server, tmp_path)
        job_id = backend.submit(shot())
        wait(backend, job_id)
        time.sleep(0.3)  # the URL the poll saw has expired
        backend.download(job_id, tmp_path / "clip.mp4")
        ffmpeg.verify_video(tmp_path / "clip.mp4", 4.0)
        outputs = [s for m, p, s in server.requests if p.startswith("/outputs/")]
        assert outputs == [403, 200] and len(server.billable()) == 1


def test_downloads_cut_short_are_fetched_again_and_a_forgotten_task_is_expired(
    backend: RunwayBackend, server: RunwayServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait(backend, job_id)
    dest = tmp_path / "river.mp4"
    hosted.cut_downloads_short(backend, server, job_id, dest, 4.0)
    fresh = connect(server, tmp_path)  # a resumed run: the task by id, its URL fetched anew
    fresh.download(job_id, dest)
    ffmpeg.verify_video(dest, 4.0)
    server.fail_next_polls(1, status=502)
    with pytest.raises(Transient):
        fresh.poll(job_id)
    server.forget(job_id)
    with pytest.raises(Expired):
        connect(server, tmp_path).download(job_id, tmp_path / "gone.mp4")
    assert len(server.billable()) == 1


def test_delete_cancels_a_throttled_task_without_charge(tmp_path: Path) -> None:
    with RunwayServer(job_seconds=2.0, api_key=KEY, account_concurrency=1) as server:
        backend = connect(server, tmp_path)
        backend.submit(shot())
        waiting = backend.submit(shot(take=2))
        backend.cancel(waiting)
        assert wait(backend, waiting)[-1].state == "failed"
        assert len(server.billable()) == 1 and len(server.refunded()) == 1


def test_no_key_is_refused_before_any_request_and_the_key_never_shows(
    server: RunwayServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyless = RunwayBackend(tmp_path, {"base_url": server.base_url})
    assert keyless.check(shot()) is None  # planning needs no key
    assert "RUNWAYML_API_SECRET" in (keyless.credentials_problem() or "")
    with pytest.raises(Refused, match="RUNWAYML_API_SECRET"):
        keyless.submit(shot())
    assert server.requests == []
    monkeypatch.setenv("RUNWAYML_API_SECRET", KEY)
    monkeypatch.setenv("RUNWAYML_BASE_URL", server.base_url)
    from_env = RunwayBackend(tmp_path, {"poll_seconds": 0.02})
    assert from_env.credentials_problem() is None
    assert wait(from_env, from_env.submit(shot()))[-1].state == "done"
    wrong = "key_wrong0123456789"
    hosted.assert_a_wrong_key_never_shows(
        lambda base: RunwayBackend(tmp_path, {"base_url": base, "api_key": wrong}).submit(shot()),
        (server.base_url, "http://127.0.0.1:9"),
        wrong,
        "RUNWAYML_API_SECRET",
    )


def test_a_400_is_refused_with_runways_validation_issues(
    server: RunwayServer, tmp_path: Path
) -> None:
    loose = connect(server, tmp_path, models={"veo3.1": {"seconds": [5]}})  # a wrong row
    with pytest.raises(Refused) as err:
        loose.submit(shot(model="veo3.1", seconds=5.0))
    assert "Validation of body failed: duration: Invalid duration (HTTP 400)" in str(err.value)


def test_the_table_prices_checks_and_pyproject_rows(tmp_path: Path) -> None:
    backend = RunwayBackend(tmp_path, {})
    assert backend.price_per_second("gen4.5", 1280, 720) == pytest.approx(0.12)
    assert backend.price_per_second("gen4_turbo", 1280, 720) == pytest.approx(0.05)
    assert backend.price_per_second("veo3.1", 1920, 1080) == pytest.approx(0.40)
    assert backend.price_per_second("veo3.1_fast", 1280, 720) == pytest.approx(0.15)
    assert [m for m, row in BUILTIN.items() if row.last_frame] == ["veo3.1", "veo3.1_fast"]
    assert backend.capabilities("veo3.1").audio and not backend.capabilities("gen4.5").audio
    assert "seconds 5" in (backend.check(shot(seconds=5.0)) or "")
    assert backend.check(shot(model="gen4.5", seconds=7.0)) is None
    assert "1000" in (backend.check(shot(prompt="x" * 1001)) or "")
    assert "unknown runway model" in (backend.check(shot(model="gen5")) or "")
    assert "audio" not in body(shot(model="gen4.5"), BUILTIN["gen4.5"])
    row = {"seconds": [5, 10], "sizes": ["1920x1080"], "price_per_second": 0.1}
    added = RunwayBackend(tmp_path, {"models": {"kling2.5_turbo_pro": row}})
    assert (
        added.check(shot(model="kling2.5_turbo_pro", seconds=5.0, width=1920, height=1080)) is None
    )
    with pytest.raises(UserError, match="did you mean 'text_sizes'"):
        RunwayBackend(tmp_path, {"models": {"x": {"text_size": []}}})
    with pytest.raises(UserError, match="did you mean 'base_url'"):
        RunwayBackend(tmp_path, {"base_ur": "http://x"})
    with pytest.raises(UserError, match="extend"):  # Runway's API extends no video
        RunwayBackend(tmp_path, {"models": {"veo3.1": {"extend": True}}})
    legacy = RunwayBackend(tmp_path, {"models": {"gen4.5": {"last_position": True}}})
    assert legacy.capabilities("gen4.5").last_frame  # the table's first name, still read


def test_request_holds_what_changes_the_video_and_no_connection_details(tmp_path: Path) -> None:
    a = RunwayBackend(tmp_path, {"base_url": "http://a", "api_key": "key_aaaa"})
    b = RunwayBackend(tmp_path, {"base_url": "http://b", "api_key": "key_bbbb"})
    assert a.request(shot()) == b.request(shot())
    assert "key_" not in str(a.request(shot())) and "http://a" not in str(a.request(shot()))
    assert a.request(shot(take=2)) != a.request(shot())
    assert a.request(shot(seed=1)) != a.request(shot())


def test_importing_the_backend_imports_neither_runwayml_nor_httpx() -> None:
    assert hosted.imports_lazily("runner.backends.runway", "runwayml", "httpx")


# -- the runner against the server: one billable create per shot, counted by the server -------


def runway_film(root: Path, server: RunwayServer, shots: int, limits: str) -> Checkout:
    return hosted.film(
        root,
        "runway",
        shots,
        defaults='model = "veo3.1_fast"\nsize = "1280x720"\nseconds = 4',
        limits=limits,
        table=f'base_url = "{server.base_url}"\n',
        env={"RUNWAYML_API_SECRET": KEY},
    )


def bought(server: RunwayServer) -> Counter[str]:
    return Counter(t.body["promptText"].split(":")[0] for t in server.billable())


def test_a_twelve_shot_film_survives_three_kills_and_a_fault_mix_with_one_create_per_shot(
    tmp_path: Path,
) -> None:
    # The account runs two tasks at once: the runner's four in flight include THROTTLED ones.
    with RunwayServer(job_seconds=0.2, api_key=KEY, account_concurrency=2) as server:
        server.normalise_prompts = True
        # A kill while a create is on the wire loses its answer, which Runway cannot list:
        # that run would stop and ask (tested below). So the killed runs send one create at a
        # time and at most one in five seconds: s0's, which is all they get to.
        film = runway_film(tmp_path, server, 12, "concurrency = 1\nrpm = 1")
        film.env["RUNNER_RATE_WINDOW_SECONDS"] = "5"
        # s0's task, killed once journaled, once half downloaded and once stored but not
        # recorded: each run resumes it by task id, free.
        hosted.kill_at(film, ("job-journaled:1", "mid-download:1", "stored:1"))
        del film.env["RUNNER_RATE_WINDOW_SECONDS"]
        assert server.create_posts() == len(server.billable()) == 1
        film = runway_film(tmp_path, server, 12, "concurrency = 4")
        film.env["RUNNER_RATE_WINDOW_SECONDS"] = "2"  # 429s paced over seconds, not a minute
        hosted.inject_fault_mix(server, drops=0)  # a lost create answer stops the run (see below)
        server.fail_next_tasks(2, "INTERNAL.BAD_OUTPUT.CODE01", "The output was rejected.")
        result = film.run("render")
        assert result.returncode == 0, result.stderr
        assert bought(server) == {f"Runway shot {i}": 1 for i in range(12)}
        assert len(server.refunded()) == 2  # the INTERNAL failures, sent again
        assert server.in_flight_max <= 4 and server.throttled() > 0
        assert server.faults_left() == 0
        ffmpeg.verify_video(tmp_path / "out" / "film.mp4", 8.0)
        posts = hosted.assert_a_rerun_sends_nothing(film, server)
        # A new shot whose create answer is lost: the run stops after that one create (what
        # --resend-unconfirmed then does is tested with the job above).
        film.manifest.write_text(film.manifest.read_text() + '[shots.s12]\nscene = "Lost."\n')
        server.drop_next_creates(1)
        stopped = film.run("render")
        assert stopped.returncode == 1 and "--resend-unconfirmed" in stopped.stderr
        assert "shots.s12" in stopped.stderr and server.create_posts() == posts + 1
