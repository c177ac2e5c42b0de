"""The openai backend: the real SDK over real HTTP to a loopback Videos server, no mocks."""

from __future__ import annotations

import email.utils
import hashlib
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.backends import policy
from runner.backends.base import Expired, RateLimited, Refused, ShotRequest, Transient
from runner.backends.openai import OpenAIBackend, fit_image
from runner.digest import Hashed, file_digest
from runner.errors import NodeFailed, UserError
from runner.media import ffmpeg
from tests.hosted import lantern_shot
from tests.servers.clips import mp4_bytes
from tests.servers.openai_server import MODERATION_MESSAGE, OpenAIServer

KEY = "sk-test-loopback-0123456789"


def shot(**changes: object) -> ShotRequest:
    return lantern_shot(
        {
            "model": "sora-2",
            "prompt": "Riverbank at dusk; a girl lights a paper lantern.",
            "avoid": (),
            "seconds": 4.0,
            "seed": None,
        }
        | changes
    )


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(job_seconds=0.2, poll_after_ms=20, api_key=KEY) as s:
        yield s


@pytest.fixture
def backend(server: OpenAIServer, tmp_path: Path) -> Iterator[OpenAIBackend]:
    b = OpenAIBackend(tmp_path / "jobs", {"base_url": server.base_url, "api_key": KEY})
    yield b
    b.close()


def wait_done(backend: OpenAIBackend, job_id: str, timeout: float = 10.0) -> str:
    """Poll as the server asks until the job ends; returns the final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.poll(job_id)
        if status.state in ("done", "failed"):
            return status.state
        time.sleep(status.poll_after or 0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_round_trip_gives_a_video_that_verifies(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot(seconds=8.0))
    assert wait_done(backend, job_id) == "done"
    dest = tmp_path / "out" / "river.mp4"
    backend.download(job_id, dest)
    info = ffmpeg.verify_video(dest, 8.0)
    assert info.video_codec == "h264" and info.has_audio
    assert server.creates[0] | {"t": 0} == {
        "prompt": shot().prompt,
        "model": "sora-2",
        "seconds": "8",  # the wire format: a string, no ".0"
        "size": "1280x720",
        "has_image": False,
        "image_size": None,
        "t": 0,
        "status": 200,
        "job_id": job_id,
        "remix_of": None,
    }
    assert server.authorizations == {f"Bearer {KEY}"}
    assert not list(dest.parent.glob("*.part"))


def test_poll_states_move_from_queued_to_done(backend: OpenAIBackend) -> None:
    job_id = backend.submit(shot())
    states: list[str] = []
    progress: list[float | None] = []
    deadline = time.monotonic() + 10.0  # the job takes 0.2 s: a poll stuck short of done fails
    while not states or states[-1] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} never finished; polled {states[-5:]}"
        status = backend.poll(job_id)
        states.append(status.state)
        progress.append(status.progress)
        time.sleep(0.02)
    assert states[-1] == "done"
    # The live view's progress: the provider's 0-100 as a fraction, never going back.
    reported = [p for p in progress if p is not None]
    assert reported and all(0 <= p <= 1 for p in reported) and reported == sorted(reported)
    assert states[0] == "queued" and "running" in states
    assert set(states) <= {"queued", "running", "done"}


def test_poll_after_follows_the_server_header(server: OpenAIServer, tmp_path: Path) -> None:
    backend = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    job_id = backend.submit(shot())
    server.poll_after_ms = 250
    assert backend.poll(job_id).poll_after == pytest.approx(0.25)
    server.poll_after_ms = 1500
    assert backend.poll(job_id).poll_after == pytest.approx(1.5)
    server.poll_after_ms = None
    assert backend.poll(job_id).poll_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_create_is_sent_once_and_is_transient(
    backend: OpenAIBackend, server: OpenAIServer, status: int
) -> None:
    server.fail_next_creates(1, status=status)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    assert f"HTTP {status}" in str(err.value)
    assert server.create_requests() == 1  # the SDK did not retry
    assert backend.submit(shot())  # and the next one works
    assert server.create_requests() == 2


def test_a_429_is_sent_once_and_carries_retry_after(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimited) as err:
        backend.submit(shot())
    assert err.value.retry_after == pytest.approx(7.0)
    assert "rate limit" in str(err.value).lower()
    assert server.create_requests() == 1
    assert not server.jobs


def test_a_429_for_an_exhausted_quota_is_a_refusal_not_a_pace_to_wait_out(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    message = "You exceeded your current quota, please check your plan and billing details."
    server.fail_next_creates(1, status=429, message=message, code="insufficient_quota")
    with pytest.raises(Refused, match="quota"):
        backend.submit(shot())
    assert not server.jobs


def test_retry_after_as_an_http_date_or_absent(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    server.rate_limit_next(1, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(RateLimited) as err:
        backend.submit(shot())
    assert err.value.retry_after is not None and 25 <= err.value.retry_after <= 31
    server.rate_limit_next(1, retry_after=None)
    with pytest.raises(RateLimited) as err:
        backend.submit(shot())
    assert err.value.retry_after is None


def test_poll_429_and_5xx_map_to_rate_limited_and_transient(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    job_id = backend.submit(shot())
    server.fail_next_polls(1, status=429, retry_after=3)
    with pytest.raises(RateLimited) as limited:
        backend.poll(job_id)
    assert limited.value.retry_after == pytest.approx(3.0)
    server.fail_next_polls(1, status=503)
    with pytest.raises(Transient):
        backend.poll(job_id)
    assert wait_done(backend, job_id) == "done"


def test_moderation_failure_comes_back_with_the_providers_message(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    server.moderate("forbidden thing")
    job_id = backend.submit(shot(prompt="A forbidden thing by the river."))
    assert wait_done(backend, job_id) == "failed"
    status = backend.poll(job_id)
    assert status.state == "failed"
    assert status.error is not None and MODERATION_MESSAGE in status.error


def test_an_unknown_model_is_refused_naming_the_shutdown_and_a_gateway(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    server.missing_models.add("sora-2")
    with pytest.raises(Refused) as err:
        backend.submit(shot())
    message = str(err.value)
    assert "sora-2" in message and "does not exist" in message  # the provider's own words
    assert "2026-09-24" in message
    assert "OPENAI_BASE_URL" in message and "base_url" in message
    assert server.create_requests() == 1


def test_a_bad_request_is_refused_with_the_providers_message(
    server: OpenAIServer, tmp_path: Path
) -> None:
    # A gateway row that lets a size through that the server rejects.
    config = {"base_url": server.base_url, "api_key": KEY, "models": {"sora-2": {"sizes": []}}}
    backend = OpenAIBackend(tmp_path, config)
    with pytest.raises(Refused) as err:
        backend.submit(shot(width=640, height=360))
    assert "Invalid value: '640x360'" in str(err.value)


def test_a_close_delimited_truncated_download_fails_verify_then_downloads_again(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    server.truncate_next_downloads(1)
    dest = tmp_path / "river.mp4"
    backend.download(job_id, dest)  # the client cannot tell: no Content-Length
    with pytest.raises(NodeFailed):
        ffmpeg.verify_video(dest, 4.0)
    backend.download(job_id, dest)
    ffmpeg.verify_video(dest, 4.0)


def test_a_download_cut_short_resumes_with_a_range_and_fetches_only_the_rest(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    server.truncate_next_downloads(1, declare_length=True)
    dest = tmp_path / "river.mp4"
    with pytest.raises(Transient):
        backend.download(job_id, dest)
    assert not dest.exists()
    size = len(mp4_bytes(4.0))
    half = (dest.parent / "river.mp4.part").stat().st_size
    assert half == size // 2  # kept for the next attempt
    received = backend.download(job_id, dest)
    assert server.downloads == [(job_id, 0, half), (job_id, half, size - half)]
    assert dest.read_bytes() == mp4_bytes(4.0)
    assert not list(tmp_path.glob("*.part"))
    # Hashed as it arrived, the kept half included: the store need not read it again.
    assert received == Hashed(hashlib.sha256(mp4_bytes(4.0)).hexdigest(), size)


def test_a_download_is_hashed_as_it_arrives(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    received = backend.download(job_id, tmp_path / "river.mp4")
    assert received == Hashed(file_digest(tmp_path / "river.mp4"), len(mp4_bytes(4.0)))


def test_a_body_shorter_than_the_length_announced_is_a_transfer_cut_short(tmp_path: Path) -> None:
    dest = tmp_path / "river.mp4"
    cut = pytest.raises(Transient, match="stopped at 5 of the 10 bytes")
    with cut, policy.part_file(dest, resumable=True) as part:
        part.announce(10)
        with part.open() as out:
            out.write(b"12345")
        part.finish()
    assert (tmp_path / "river.mp4.part").read_bytes() == b"12345"  # kept: the rest follows
    with policy.part_file(dest, resumable=True) as part:
        part.announce(10)
        with part.open(offset=5) as out:
            out.write(b"67890")
        received = part.finish()
    assert received == Hashed(hashlib.sha256(b"1234567890").hexdigest(), 10)
    assert dest.read_bytes() == b"1234567890"


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        ({"content-length": "100"}, 100),
        ({"content-range": "bytes 40-99/100", "content-length": "60"}, 100),
        ({"content-range": "bytes 40-99/*", "content-length": "60"}, None),
        ({"content-length": "100", "content-encoding": "gzip"}, None),
        ({}, None),
    ],
)
def test_the_length_a_server_announces(headers: dict[str, str], length: int | None) -> None:
    assert policy.content_length(headers) == length


def test_a_resumed_range_cut_short_again_resumes_from_further_on(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    server.truncate_next_downloads(2, declare_length=True)
    dest = tmp_path / "river.mp4"
    for _ in range(2):
        with pytest.raises(Transient):
            backend.download(job_id, dest)
    backend.download(job_id, dest)
    starts = [start for _, start, _ in server.downloads]
    assert starts[0] == 0 and starts[1] < starts[2]
    assert sum(sent for _, _, sent in server.downloads) == len(mp4_bytes(4.0))
    ffmpeg.verify_video(dest, 4.0)


def test_a_server_that_ignores_the_range_gets_the_file_written_over(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    dest = tmp_path / "river.mp4"
    (tmp_path / "river.mp4.part").write_bytes(b"stale bytes of another attempt")
    server.honour_ranges = False
    backend.download(job_id, dest)
    assert dest.read_bytes() == mp4_bytes(4.0)


def test_a_part_longer_than_the_video_gets_a_416_and_starts_over(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    dest = tmp_path / "river.mp4"
    (tmp_path / "river.mp4.part").write_bytes(b"x" * (len(mp4_bytes(4.0)) + 10))
    backend.download(job_id, dest)
    assert ("GET", f"/v1/videos/{job_id}/content", 416) in server.requests
    assert server.downloads == [(job_id, 0, len(mp4_bytes(4.0)))]
    assert dest.read_bytes() == mp4_bytes(4.0)


def test_expired_content_raises_expired(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait_done(backend, job_id)
    server.expire(job_id)
    with pytest.raises(Expired) as err:
        backend.download(job_id, tmp_path / "river.mp4")
    assert "expired" in str(err.value)
    assert not (tmp_path / "river.mp4").exists()


def test_find_recovers_a_dropped_create(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    backend.submit(shot(prompt="another shot"))  # noise, newer and older
    since = time.time()
    server.drop_next_creates(1)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    backend.submit(shot(prompt="yet another shot"))
    (dropped,) = [c["job_id"] for c in server.creates if c["prompt"] == shot().prompt]
    # A fresh process (a resumed run) knows only the journaled send time.
    fresh = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    # A job the journal gives to another node (an identical take) is never adopted.
    assert fresh.find(shot(), since, frozenset({dropped})) is None
    assert fresh.find(shot(), since) == dropped
    assert fresh.find(shot(), since) is None  # claimed once: a second take gets its own


def test_a_create_that_times_out_was_sent_and_is_found(
    server: OpenAIServer, tmp_path: Path
) -> None:
    config = {"base_url": server.base_url, "api_key": KEY, "timeout": 0.3}
    backend = OpenAIBackend(tmp_path, config)
    since = time.time()
    server.delay_next_creates(1, 1.0)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True and "Timeout" in str(err.value)
    assert len(server.create_attempts) == 1
    assert backend.find(shot(), since) == server.creates[0]["job_id"]


def test_find_skips_a_job_claimed_by_another_take(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    since = time.time()
    take1 = backend.submit(shot())
    fresh = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    fresh.claim(take1)  # a resumed run knows take 1's journaled id
    assert fresh.find(shot(take=2), since) is None


def test_find_returns_none_when_nothing_matches(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    since = time.time()
    backend.submit(shot(prompt="something else"))
    assert backend.find(shot(), since) is None
    assert backend.find(shot(seconds=8.0), since) is None
    assert backend.find(shot(prompt="something else"), since + 3600) is None


def test_find_matches_a_prompt_the_server_normalised_but_no_older_job_or_other_size(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True  # a gateway that strips and collapses what it echoes
    compiled = shot(prompt="Riverbank at dusk;\n  a girl lights a paper lantern.\n")
    backend = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    before = backend.submit(compiled)
    server.jobs[before].created -= 60  # the same request, made a minute before the send
    since = time.time()
    backend.submit(shot(prompt=compiled.prompt, width=720, height=1280))
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        backend.submit(compiled)
    later = backend.submit(compiled)
    dropped = server.creates[2]["job_id"]
    assert server.creates[2]["prompt"] == compiled.prompt  # sent as compiled, kept normalised:
    assert server.jobs[dropped].prompt == "Riverbank at dusk; a girl lights a paper lantern."
    fresh = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    assert fresh.find(compiled, since) == dropped  # the oldest match
    assert fresh.find(compiled, since) == later
    assert fresh.find(compiled, since) is None  # neither the older job nor the other size


def test_find_pages_back_through_the_list(server: OpenAIServer, tmp_path: Path) -> None:
    backend = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    since = time.time()
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        backend.submit(shot())
    for i in range(60):  # more than one page of newer jobs
        backend.submit(shot(prompt=f"filler {i}"))
    fresh = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    assert fresh.find(shot(), since) == server.creates[0]["job_id"]
    lists = [r for r in server.requests if r[0] == "GET" and r[1] == "/v1/videos"]
    assert len(lists) == 2


def test_the_image_reference_arrives_as_a_file_at_the_requested_size(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    from PIL import Image

    ref = tmp_path / "mara.png"
    Image.new("RGB", (300, 300), (200, 40, 40)).save(ref)
    job_id = backend.submit(shot(image=ref, width=720, height=1280))
    record = server.creates[0]
    assert record["has_image"] is True
    assert record["image_size"] == (720, 1280)
    assert record["status"] == 200 and record["job_id"] == job_id


def test_fit_image_covers_and_crops_to_exactly_the_size(tmp_path: Path) -> None:
    import io

    from PIL import Image

    ref = tmp_path / "wide.png"
    Image.new("RGB", (4000, 1000), (0, 0, 255)).save(ref)
    with Image.open(io.BytesIO(fit_image(ref, 1280, 720))) as im:
        assert im.size == (1280, 720) and im.format == "PNG"


def test_no_deprecation_warning_escapes(
    backend: OpenAIBackend, server: OpenAIServer, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        since = time.time()
        job_id = backend.submit(shot())
        wait_done(backend, job_id)
        backend.download(job_id, tmp_path / "river.mp4")
        backend.find(shot(prompt="nothing"), since)
        server.rate_limit_next(1)
        with pytest.raises(RateLimited):
            backend.submit(shot())
        assert warnings.filters == filters  # the backend's filter is gone again
    assert [w for w in caught if issubclass(w.category, DeprecationWarning)] == []
    # ... and the filters are as they were: user code still sees its own warnings.
    with pytest.warns(DeprecationWarning):
        warnings.warn("user code", DeprecationWarning, stacklevel=1)


def test_the_api_key_never_appears_in_an_error(server: OpenAIServer, tmp_path: Path) -> None:
    wrong = "sk-wrong-secret-abcdef123456"
    backend = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": wrong})
    with pytest.raises(Refused) as err:
        backend.submit(shot())  # the server echoes the key it was given, whole
    assert wrong not in str(err.value)
    # Not in a traceback either: the SDK's error (which quotes the server) is not chained.
    assert wrong not in "".join(traceback.format_exception(err.value))
    assert "OPENAI_API_KEY" in str(err.value)
    good = OpenAIBackend(tmp_path, {"base_url": server.base_url, "api_key": KEY})
    server.fail_next_creates(1, status=400, message=f"bad request from key {KEY}")
    with pytest.raises(Refused) as refused:
        good.submit(shot())
    assert KEY not in str(refused.value) and "bad request from key ***" in str(refused.value)
    server.fail_next_creates(1, status=500, message=f"oops {KEY}")
    with pytest.raises(Transient) as transient:
        good.submit(shot())
    assert KEY not in "".join(traceback.format_exception(transient.value))


def test_a_missing_key_is_refused_naming_the_variable_and_the_table(
    server: OpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(tmp_path, {"base_url": server.base_url})
    assert backend.check(shot()) is None  # planning needs no key
    with pytest.raises(Refused) as err:
        backend.submit(shot())
    assert "OPENAI_API_KEY" in str(err.value)
    assert "[tool.runner.backends.openai]" in str(err.value)
    assert server.requests == []
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert backend.submit(shot())


def test_a_refused_connection_was_never_sent(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(tmp_path, {"base_url": f"http://127.0.0.1:{port}/v1", "api_key": KEY})
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is False
    assert KEY not in str(err.value)


def test_concurrent_submits_from_threads_each_send_one_create(
    backend: OpenAIBackend, server: OpenAIServer
) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            ids.append(backend.submit(shot(prompt=f"shot {i}")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 8 and server.create_requests() == 8
    assert server.in_flight_max >= 2


def test_capabilities_prices_and_checks(tmp_path: Path) -> None:
    backend = OpenAIBackend(tmp_path, {"base_url": "http://gateway.example/v1"})
    caps = backend.capabilities("sora-2")
    assert caps.sizes == ("1280x720", "720x1280")
    assert caps.seconds == (4.0, 8.0, 12.0)
    assert caps.image and not caps.negative_prompt
    assert "1920x1080" in backend.capabilities("sora-2-pro").sizes
    assert backend.price_per_second("sora-2", 1280, 720) == pytest.approx(0.10)
    assert backend.price_per_second("sora-2-pro", 1280, 720) == pytest.approx(0.30)
    assert backend.price_per_second("sora-2-pro", 1792, 1024) == pytest.approx(0.50)
    assert backend.check(shot()) is None
    assert "1920x1080" in (backend.check(shot(width=1920, height=1080)) or "")
    assert "seconds 5" in (backend.check(shot(seconds=5.0)) or "")
    unknown = backend.check(shot(model="seedance-1"))
    assert unknown is not None and "models" in unknown
    assert "[tool.runner.backends.openai]" in unknown
    assert backend.capabilities("seedance-1").sizes == ()  # permissive: check() explains


def test_openais_own_endpoint_fails_the_plan_naming_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for config in ({}, {"base_url": "https://api.openai.com/v1"}):
        problem = OpenAIBackend(tmp_path, config).check(shot()) or ""
        assert "2026-09-24" in problem and "OPENAI_BASE_URL" in problem
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.example/v1")
    assert OpenAIBackend(tmp_path, {}).check(shot()) is None


def test_a_models_row_adds_a_gateway_model(tmp_path: Path) -> None:
    row = {"sizes": ["1280x720"], "seconds": [5, 10], "price_per_second": 0.2}
    backend = OpenAIBackend(tmp_path, {"base_url": "http://gw/v1", "models": {"seedance-1": row}})
    assert backend.capabilities("seedance-1").seconds == (5.0, 10.0)
    assert backend.check(shot(model="seedance-1", seconds=5.0)) is None
    assert backend.check(shot(model="seedance-1", seconds=4.0)) is not None
    assert backend.price_per_second("seedance-1", 1920, 1080) == pytest.approx(0.2)
    override = OpenAIBackend(tmp_path, {"models": {"sora-2": {"price_per_second": 0.05}}})
    assert override.price_per_second("sora-2", 1280, 720) == pytest.approx(0.05)
    assert override.capabilities("sora-2").sizes == ("1280x720", "720x1280")


def test_bad_config_is_a_user_error_that_never_echoes_a_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="did you mean 'base_url'"):
        OpenAIBackend(tmp_path, {"base_ur": "http://x"})
    with pytest.raises(UserError, match=r"models\.x\.seconds"):
        OpenAIBackend(tmp_path, {"models": {"x": {"seconds": "5"}}})
    with pytest.raises(UserError) as err:
        OpenAIBackend(tmp_path, {"api_key": 12345})
    assert "12345" not in str(err.value)


def test_request_holds_what_changes_the_video_and_no_connection_details(
    tmp_path: Path,
) -> None:
    a = OpenAIBackend(tmp_path, {"base_url": "http://a/v1", "api_key": "sk-a"})
    b = OpenAIBackend(tmp_path, {"base_url": "http://b/v1", "api_key": "sk-b"})
    assert a.request(shot()) == b.request(shot())
    assert "sk-a" not in str(a.request(shot())) and "http://a" not in str(a.request(shot()))
    assert a.request(shot())["seconds"] == "4"
    assert a.request(shot(take=2)) != a.request(shot())
    assert a.request(shot(prompt="x")) != a.request(shot())


def test_importing_the_backend_does_not_import_the_sdk() -> None:
    code = "import sys, runner.backends.openai; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_create_whose_body_is_cut_short_makes_no_job(server: OpenAIServer) -> None:
    """What any HTTP server does with a request whose sender died mid-body (kill -9 between
    two writes of the multipart body): drop it. The loopback server made a job of the fields
    that had arrived (the size missing: its default), a create nobody asked for."""
    boundary = "b0undary"
    fields = [("prompt", "a river"), ("model", "sora-2"), ("seconds", "4"), ("size", "1280x720")]
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    body = "".join(parts) + f"--{boundary}--\r\n"
    head = (
        f"POST /v1/videos HTTP/1.1\r\nHost: loopback\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    cut = len("".join(parts[:3]))  # prompt, model and seconds arrived; the size did not
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall((head + body[:cut]).encode())
        conn.shutdown(socket.SHUT_WR)  # the sender is gone
        assert conn.recv(1024) == b""  # closed without an answer
    assert server.creates == [] and server.create_attempts == []
    assert server.cut_requests == [("POST", "/v1/videos", cut, len(body))]
    with socket.create_connection(("127.0.0.1", server.port)) as conn:  # the whole of it
        conn.sendall((head + body).encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
    assert [(c["prompt"], c["size"]) for c in server.creates] == [("a river", "1280x720")]
