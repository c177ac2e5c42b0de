"""The luma backend: the real lumaai SDK over real HTTP to a loopback server speaking Luma's
Dream Machine API (create, get, list with request echoes, delete, a CDN), no mocks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.backends import luma
from runner.backends.base import Expired, RateLimited, Refused, ShotRequest, Transient
from runner.backends.luma import NO_IMAGE_STORE, LumaBackend
from runner.backends.luma_models import arguments
from runner.errors import UserError
from runner.media import ffmpeg
from tests import hosted
from tests.films import Checkout
from tests.hosted import lantern_shot, wait
from tests.servers.luma_server import UNREADABLE, LumaServer

KEY = "luma-0123456789abcdef0123456789abcdef"
MODERATION = "Advanced prompt moderation failed"


def shot(**changes: Any) -> ShotRequest:
    return lantern_shot(
        {
            "model": "ray-flash-2",
            "prompt": "Riverbank at dusk;\n  a girl lights a paper lantern.\n",
            "avoid": ("on-screen text",),
            "seconds": 5.0,
            "seed": None,
        }
        | changes
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LumaServer]:
    with LumaServer(job_seconds=0.2, api_key=KEY, images=tmp_path / "bucket") as s:
        yield s


def connect(server: LumaServer, tmp_path: Path, **config: Any) -> LumaBackend:
    cfg = {"base_url": server.base_url, "api_key": KEY, "poll_seconds": 0.02, **config}
    return LumaBackend(tmp_path / "luma", cfg)


@pytest.fixture
def backend(server: LumaServer, tmp_path: Path) -> Iterator[LumaBackend]:
    b = connect(server, tmp_path)
    yield b
    b.close()


def test_a_round_trip_sends_lumas_fields_and_gives_a_video_that_verifies(
    backend: LumaBackend, server: LumaServer, tmp_path: Path
) -> None:
    server.job_seconds = 0.6  # queued long enough for the first poll to see it
    job_id = backend.submit(shot())
    states = [s.state for s in wait(backend, job_id)]
    assert states[0] == "queued" and "running" in states and states[-1] == "done"
    dest = tmp_path / "out" / "river.mp4"
    backend.download(job_id, dest)
    ffmpeg.verify_video(dest, 5.0)
    assert server.creates[0]["body"] == {
        "model": "ray-flash-2",
        "prompt": shot().prompt,
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "duration": "5s",
        "loop": False,
    }
    assert ("POST", "/dream-machine/v1/generations/video", 201) in server.requests
    assert server.authorizations == {f"Bearer {KEY}"}  # the CDN got no key
    assert not list(dest.parent.glob("*.part"))


def test_size_and_seconds_become_aspect_ratio_resolution_and_duration(tmp_path: Path) -> None:
    assert arguments(shot(width=1080, height=1920, seconds=9.0, model="ray-2")) | {
        "prompt": ""
    } == {
        "model": "ray-2",
        "prompt": "",
        "aspect_ratio": "9:16",
        "resolution": "1080p",
        "duration": "9s",
        "loop": False,
    }
    assert arguments(shot(width=720, height=540))["aspect_ratio"] == "4:3"
    assert arguments(shot(width=5040, height=2160))["resolution"] == "4k"
    backend = LumaBackend(tmp_path, {})
    assert "seconds 4 is not supported" in (backend.check(shot(seconds=4.0)) or "")
    assert "size 1280x700" in (backend.check(shot(width=1280, height=700)) or "")
    assert backend.check(shot(width=960, height=540, seconds=9.0)) is None
    assert "5000" in (backend.check(shot(prompt="x" * 5001)) or "")


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_create_is_sent_once_and_is_transient(
    backend: LumaBackend, server: LumaServer, status: int
) -> None:
    server.fail_next_creates(1, status=status)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True and f"HTTP {status}" in str(err.value)
    assert server.create_posts() == 1 and server.billable() == []


def test_a_429_and_a_full_concurrency_are_sent_once_and_create_nothing(
    backend: LumaBackend, server: LumaServer
) -> None:
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimited) as err:
        backend.submit(shot())
    assert err.value.retry_after == pytest.approx(7.0)
    server.concurrency = 1
    server.job_seconds = 5.0
    backend.submit(shot())
    with pytest.raises(RateLimited, match="concurrent"):
        backend.submit(shot(take=2))
    assert server.create_posts() == 3 and len(server.billable()) == 1 and server.over_limit == 1


def test_a_lost_create_answer_is_sent_once_and_found_by_listing_generations(
    server: LumaServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True  # the echo has the prompt collapsed
    backend = connect(server, tmp_path)
    backend.submit(shot(prompt="another shot"))  # noise: another prompt
    since = time.time()
    backend.submit(shot(seconds=9.0))  # noise: the same prompt, another length
    server.drop_next_creates(1)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True and server.create_posts() == 3  # the SDK did not re-send
    (lost,) = [g.id for g in server.billable() if g.request["duration"] == "5s"][1:]
    fresh = connect(server, tmp_path)  # a resumed run knows only the journaled send time
    assert fresh.find(shot(), since, frozenset({lost})) is None  # another node's job
    assert fresh.find(shot(), since) == lost
    assert fresh.find(shot(), since) is None  # claimed once: another take gets its own
    assert connect(server, tmp_path).find(shot(), since + 3600) is None  # made before `since`


def test_find_pages_with_overlap_so_a_deletion_between_pages_hides_nothing(
    server: LumaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(luma, "FIND_PAGE", 5)
    monkeypatch.setattr(luma, "FIND_OVERLAP", 2)
    server.concurrency = 100
    backend = connect(server, tmp_path)
    since = time.time()
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        backend.submit(shot())
    for i in range(5):  # a page of newer generations: the lost one is first on page two
        backend.submit(shot(prompt=f"filler {i}"))
    lost = next(iter(server.generations))
    pages = 0
    real = luma._raw_page

    def page_then_delete(client: Any, limit: int, offset: int) -> dict[str, Any]:
        nonlocal pages
        pages += 1
        page = real(client, limit, offset)
        if pages == 1:  # a teammate deletes two generations: later offsets move up by two
            for g in page["generations"][:2]:
                client.generations.delete(g["id"])
        return page

    monkeypatch.setattr(luma, "_raw_page", page_then_delete)
    assert connect(server, tmp_path).find(shot(), since) == lost
    assert pages == 2


def test_failed_generations_are_refunded_refusals_keep_lumas_words_others_are_resent(
    backend: LumaBackend, server: LumaServer
) -> None:
    server.fail_generations("forbidden", MODERATION)
    server.fail_generations("unlucky", "Job failed")
    refused = wait(backend, backend.submit(shot(prompt="A forbidden lantern.")))[-1]
    assert refused.state == "failed" and not refused.refunded
    assert refused.error == MODERATION
    internal = wait(backend, backend.submit(shot(prompt="An unlucky lantern.")))[-1]
    assert internal.state == "failed" and internal.refunded and "Job failed" in internal.error
    assert server.billable() == []  # Luma refunds failed generations


def test_the_first_frame_is_stored_once_by_digest_and_sent_as_a_keyframe_url(
    server: LumaServer, tmp_path: Path
) -> None:
    from PIL import Image

    image = tmp_path / "first.png"
    Image.new("RGB", (64, 36), (200, 40, 40)).save(image)
    bucket = tmp_path / "bucket"
    public = {"image_store": bucket.as_uri(), "image_url": server.root + "/images"}
    assert connect(server, tmp_path).check(shot(image=image)) == NO_IMAGE_STORE
    with pytest.raises(UserError, match="go together"):
        connect(server, tmp_path, image_store=bucket.as_uri())
    backend = connect(server, tmp_path, **public)
    since = time.time()
    first = backend.submit(shot(image=image))
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        connect(server, tmp_path, **public).submit(shot(image=image, take=2))
    assert [p.name for p in bucket.iterdir()] == [f"{_sha(image)}.png"]
    urls = {g.request["keyframes"]["frame0"]["url"] for g in server.billable()}
    assert urls == {f"{server.root}/images/{_sha(image)}.png"}
    assert wait(backend, first)[-1].state == "done"  # the server fetched the frame
    # Another run finds the lost create by its whole body, the keyframe's URL included.
    found = connect(server, tmp_path, **public).find(shot(image=image), since, frozenset({first}))
    assert found is not None and found != first
    # A URL Luma cannot fetch fails the generation, refunded, and is not sent again.
    elsewhere = {**public, "image_url": server.root + "/nowhere"}
    status = wait(backend, connect(server, tmp_path, **elsewhere).submit(shot(image=image)))[-1]
    assert status.state == "failed" and not status.refunded
    assert status.error is not None and UNREADABLE in status.error and "image_url" in status.error


def test_downloads_cut_short_are_fetched_again_and_a_deleted_generation_is_expired(
    backend: LumaBackend, server: LumaServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait(backend, job_id)
    dest = tmp_path / "river.mp4"
    hosted.cut_downloads_short(backend, server, job_id, dest, 5.0)
    fresh = connect(server, tmp_path)  # a resumed run: by the journaled id
    fresh.download(job_id, dest)
    ffmpeg.verify_video(dest, 5.0)
    server.fail_next_polls(1, status=503)
    with pytest.raises(Transient):
        fresh.poll(job_id)
    server.generations[job_id].deleted = True
    with pytest.raises(Expired):
        fresh.download(job_id, tmp_path / "gone.mp4")
    assert len(server.billable()) == 1


def test_no_key_is_refused_before_any_request_and_the_key_never_shows(
    server: LumaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LUMAAI_API_KEY", raising=False)
    monkeypatch.setenv("LUMAAI_BASE_URL", server.base_url)
    keyless = LumaBackend(tmp_path, {"poll_seconds": 0.02})
    assert keyless.check(shot()) is None  # planning needs no key
    assert "LUMAAI_API_KEY" in (keyless.credentials_problem() or "")
    with pytest.raises(Refused, match="LUMAAI_API_KEY"):
        keyless.submit(shot())
    assert server.requests == []
    monkeypatch.setenv("LUMAAI_API_KEY", KEY)
    assert keyless.credentials_problem() is None and keyless.submit(shot())  # env base URL
    wrong = "luma-wrong-key-0123456789"
    hosted.assert_a_wrong_key_never_shows(
        lambda base: LumaBackend(tmp_path, {"base_url": base, "api_key": wrong}).submit(shot()),
        (server.base_url, "http://127.0.0.1:9/dream-machine/v1"),
        wrong,
        "LUMAAI_API_KEY",
    )


def test_the_table_prices_per_million_pixels_and_records_keyframes(tmp_path: Path) -> None:
    backend = LumaBackend(tmp_path, {})
    # Luma's list prices: ray-2 5 s at 540p $0.40, 720p $0.71, 1080p $1.59, 4k $6.37.
    for (w, h), usd in {(960, 540): 0.40, (1280, 720): 0.71, (1920, 1080): 1.59}.items():
        assert 5 * backend.price_per_second("ray-2", w, h) == pytest.approx(usd, abs=0.005)
    assert 5 * backend.price_per_second("ray-flash-2", 3840, 2160) == pytest.approx(2.19, 0.01)
    assert backend.price_per_second("ray-2", 720, 1280) == backend.price_per_second(
        "ray-2", 1280, 720
    )
    row = backend.capabilities("ray-2")
    assert row.last_frame and row.extend and not row.seed and not row.remix
    assert row.keyframes == {"frame0": ("image", "generation"), "frame1": ("image", "generation")}
    assert "unknown luma model" in (backend.check(shot(model="ray-3")) or "")
    priced = LumaBackend(
        tmp_path,
        {
            "models": {
                "ray-2": {"price_per_second": 0.1},
                "ray-3": {"price_per_million_pixels": 0.01, "seconds": [5]},
            }
        },
    )
    assert priced.price_per_second("ray-2", 3840, 2160) == pytest.approx(0.1)
    assert priced.price_per_second("ray-3", 1000, 1000) == pytest.approx(0.24)
    assert priced.check(shot(model="ray-3")) is None
    with pytest.raises(UserError, match="did you mean 'image_store'"):
        LumaBackend(tmp_path, {"image_stor": "s3://x"})
    with pytest.raises(UserError, match="seed"):
        LumaBackend(tmp_path, {"models": {"ray-2": {"seed": True}}})


def test_request_holds_what_changes_the_video_and_no_connection_details(tmp_path: Path) -> None:
    a = LumaBackend(tmp_path, {"base_url": "http://a", "api_key": "luma-key-aaaa"})
    b = LumaBackend(tmp_path, {"base_url": "http://b", "api_key": "luma-key-bbbb"})
    assert a.request(shot()) == b.request(shot())
    assert "luma-key" not in str(a.request(shot())) and "http://a" not in str(a.request(shot()))
    assert a.request(shot(take=2)) != a.request(shot())
    assert a.request(shot(width=1920, height=1080)) != a.request(shot())


def test_importing_the_backend_imports_neither_lumaai_nor_httpx() -> None:
    assert hosted.imports_lazily("runner.backends.luma", "lumaai", "httpx")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the runner against the server: one billable generation per shot, counted by the server --


def luma_film(root: Path, server: LumaServer, shots: int) -> Checkout:
    return hosted.film(
        root,
        "luma",
        shots,
        defaults='model = "ray-flash-2"\nsize = "960x540"\nseconds = 5',
        limits=f"concurrency = {server.concurrency}",
        table=f'base_url = "{server.base_url}"\n',
        # The rpm window the runner paces 429s over: a few seconds here, not a real minute.
        env={"LUMAAI_API_KEY": KEY, "RUNNER_RATE_WINDOW_SECONDS": "2"},
    )


def test_a_twelve_shot_film_survives_three_kills_and_a_fault_mix_with_one_generation_per_shot(
    server: LumaServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True
    film = luma_film(tmp_path, server, 12)
    # Killed with an accepted create not yet journaled (found again by listing), with a
    # journaled one (resumed by id), and with a video half written.
    hosted.kill_at(film, ("create-answered:2", "job-journaled:3", "mid-download:2"))
    hosted.inject_fault_mix(server)
    server.fail_generations("Luma shot", "Job failed")  # refunded: sent again
    result = film.run("render")
    assert result.returncode == 0, result.stderr
    bought = Counter(g.request["prompt"].split(":")[0] for g in server.billable())
    assert bought == {f"Luma shot {i}": 1 for i in range(12)}
    assert server.over_limit == 0 and server.in_flight_max <= server.concurrency
    assert server.faults_left() == 0  # every fault was met ...
    assert ("GET", "/dream-machine/v1/generations", 200) in server.requests  # ... and found
    ffmpeg.verify_video(tmp_path / "out" / "film.mp4", 10.0)
    hosted.assert_a_rerun_sends_nothing(film, server)
