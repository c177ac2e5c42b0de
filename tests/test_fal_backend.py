"""The fal backend: the real fal-client over real HTTP to a loopback server speaking fal's queue
protocol (submit, status, result, cancel, upload, request history), no mocks."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.backends.base import Expired, RateLimited, Refused, ShotRequest, Transient
from runner.backends.fal import FalBackend
from runner.backends.fal_models import BUILTIN, arguments
from runner.errors import UserError
from runner.media import ffmpeg
from tests import hosted
from tests.films import Checkout, gen
from tests.hosted import lantern_shot, wait
from tests.servers.fal_server import FalServer
from tests.servers.tls_proxy import TestCA, TLSProxy

KEY = "fal-key-id-0123:fal-secret-abcdef456789"
POLICY = "The prompt could not be processed because it violates the content policy."


def shot(**changes: Any) -> ShotRequest:
    return lantern_shot(
        {
            "model": "fal-ai/veo3/fast",
            "prompt": "Riverbank at dusk;\n  a girl lights a paper lantern.\n",
            "avoid": ("on-screen text", "logos"),
            "seconds": 4.0,
            "seed": 1234,
        }
        | changes
    )


@pytest.fixture
def server() -> Iterator[FalServer]:
    with FalServer(job_seconds=0.2, api_key=KEY) as s:
        yield s


def connect(server: FalServer, tmp_path: Path, **config: Any) -> FalBackend:
    cfg = {"base_url": server.base_url, "api_key": KEY, "poll_seconds": 0.02, **config}
    return FalBackend(tmp_path / "fal", cfg)


@pytest.fixture
def backend(server: FalServer, tmp_path: Path) -> Iterator[FalBackend]:
    b = connect(server, tmp_path)
    yield b
    b.close()


def test_a_round_trip_sends_the_endpoints_own_fields_and_gives_a_video_that_verifies(
    backend: FalBackend, server: FalServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    assert job_id.startswith("fal-ai/veo3/fast/requests/")
    seen = wait(backend, job_id)
    states = [s.state for s in seen]
    assert states[0] == "queued" and "queue_position" in seen[0].extra
    assert "running" in states and states[-1] == "done"
    assert any(s.extra.get("log") == "Generating video" for s in seen)  # fal's logs
    dest = tmp_path / "out" / "river.mp4"
    backend.download(job_id, dest)
    assert ffmpeg.verify_video(dest, 4.0).has_audio
    assert server.submits[0]["input"] == {
        "prompt": shot().prompt,
        "duration": "4s",
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "generate_audio": True,
        "negative_prompt": "on-screen text, logos",
        "seed": 1234,
    }
    assert server.authorizations == {f"Key {KEY}"}
    assert not list(dest.parent.glob("*.part"))


def test_each_family_maps_size_and_seconds_to_its_own_fields() -> None:
    kling = BUILTIN["fal-ai/kling-video/v2.1/master/text-to-video"]
    assert arguments(shot(seconds=10.0, width=1080, height=1920, seed=None), kling) == {
        "prompt": shot().prompt,
        "duration": "10",
        "aspect_ratio": "9:16",
        "negative_prompt": "on-screen text, logos",
    }
    wan = BUILTIN["fal-ai/wan/v2.2-a14b/text-to-video"]
    assert arguments(shot(seconds=5.0, width=832, height=480, avoid=()), wan) == {
        "prompt": shot().prompt,
        "num_frames": 81,  # 5 s at 16 fps, plus the first frame
        "frames_per_second": 16,
        "aspect_ratio": "16:9",
        "resolution": "480p",
        "seed": 1234,
    }
    i2v = BUILTIN["fal-ai/kling-video/v2.1/master/image-to-video"]
    assert "aspect_ratio" not in arguments(shot(seconds=5.0, width=1920, height=1080), i2v)


@pytest.mark.parametrize(("status", "nginx"), [(500, False), (503, False), (502, True)])
def test_a_5xx_submit_is_sent_once_and_is_transient(
    backend: FalBackend, server: FalServer, status: int, nginx: bool
) -> None:
    # fal-client retries an nginx 502 (and 429s, and dropped connections) on its own.
    server.fail_next_creates(1, status=status, nginx=nginx)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True and f"HTTP {status}" in str(err.value)
    assert server.create_posts() == 1 and server.billable() == []


def test_a_429_is_sent_once_and_carries_retry_after(backend: FalBackend, server: FalServer) -> None:
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimited) as err:
        backend.submit(shot())
    assert err.value.retry_after == pytest.approx(7.0)
    assert server.create_posts() == 1 and server.billable() == []
    assert backend.submit(shot())


def test_a_lost_submit_answer_is_sent_once_and_found_in_the_request_history(
    server: FalServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True  # the history echoes the prompt collapsed
    backend = connect(server, tmp_path)
    backend.submit(shot(prompt="another shot"))  # noise: another input
    since = time.time()
    backend.submit(shot(seconds=6.0))  # noise: the same prompt, another length
    server.drop_next_creates(1)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    assert server.create_posts() == 3  # fal-client did not send it again
    (lost,) = [r.id for r in server.billable()[1:] if r.input["duration"] == "4s"]
    lost_job = f"fal-ai/veo3/fast/requests/{lost}"
    fresh = connect(server, tmp_path)  # a resumed run knows only the journaled send time
    assert fresh.find(shot(), since, frozenset({lost_job})) is None  # another node's job
    assert fresh.find(shot(), since) == lost_job
    assert fresh.find(shot(), since) is None  # claimed once: another take gets its own
    assert connect(server, tmp_path).find(shot(), since + 3600) is None  # sent before `since`
    history = [p for m, p, _ in server.requests if p == "/v1/models/requests/by-endpoint"]
    assert len(history) == 4


def test_find_pages_back_through_the_history(server: FalServer, tmp_path: Path) -> None:
    backend = connect(server, tmp_path)
    since = time.time()
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        backend.submit(shot())
    for i in range(101):  # more than one page of newer requests
        backend.submit(shot(prompt=f"filler {i}"))
    lost = next(iter(server.queue))
    assert connect(server, tmp_path).find(shot(), since) == f"fal-ai/veo3/fast/requests/{lost}"
    history = [p for m, p, _ in server.requests if p == "/v1/models/requests/by-endpoint"]
    assert len(history) == 2


def test_a_model_error_on_completed_fails_with_fals_words_and_a_422_submit_is_refused(
    backend: FalBackend, server: FalServer
) -> None:
    server.model_error("forbidden", POLICY, "content_policy_violation")
    job_id = backend.submit(shot(prompt="A forbidden lantern."))
    status = wait(backend, job_id)[-1]
    assert status.state == "failed"
    assert status.error is not None and POLICY in status.error
    assert "content_policy_violation" in status.error
    with pytest.raises(Refused) as err:  # a length the endpoint rejects (a row that allows it)
        connect(server, backend.workdir.parent, models={"fal-ai/veo3": {"seconds": [5]}}).submit(
            shot(model="fal-ai/veo3", seconds=5.0)
        )
    assert "duration: unexpected value; permitted: '4s', '6s', '8s'" in str(err.value)
    assert "HTTP 422" in str(err.value)


def test_a_model_error_only_the_result_tells_is_the_models_refusal_too(
    backend: FalBackend, server: FalServer
) -> None:
    server.status_reports_errors = False  # COMPLETED, no error field: the result is a 422
    server.model_error("forbidden", POLICY, "content_policy_violation")
    status = wait(backend, backend.submit(shot(prompt="A forbidden lantern.")))[-1]
    assert status.state == "failed"
    assert status.error is not None and f"prompt: {POLICY} (HTTP 422)" in status.error


def test_downloads_cut_short_are_transient_or_fail_verify_then_download_again(
    backend: FalBackend, server: FalServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    wait(backend, job_id)
    dest = tmp_path / "river.mp4"
    hosted.cut_downloads_short(backend, server, job_id, dest, 4.0)
    backend.download(job_id, dest)
    ffmpeg.verify_video(dest, 4.0)
    assert len(server.billable()) == 1


def test_a_resumed_run_polls_and_downloads_by_job_id_and_an_expired_result_is_expired(
    backend: FalBackend, server: FalServer, tmp_path: Path
) -> None:
    job_id = backend.submit(shot())
    fresh = connect(server, tmp_path)  # killed after the job id was journaled
    assert wait(fresh, job_id)[-1].state == "done"
    fresh.download(job_id, tmp_path / "resumed.mp4")
    ffmpeg.verify_video(tmp_path / "resumed.mp4", 4.0)
    later = connect(server, tmp_path)
    server.expire(job_id.rpartition("/")[2])
    with pytest.raises(Expired):
        later.download(job_id, tmp_path / "gone.mp4")
    server.fail_next_polls(1, status=503)
    with pytest.raises(Transient):
        later.poll(job_id)
    assert len(server.billable()) == 1


def test_the_first_frame_is_uploaded_once_per_digest_and_sent_as_image_url(
    server: FalServer, tmp_path: Path
) -> None:
    from PIL import Image

    image = tmp_path / "first.png"
    Image.new("RGB", (64, 36), (200, 40, 40)).save(image)
    model = "fal-ai/veo3/fast/image-to-video"
    backend = connect(server, tmp_path)
    assert "image-to-video endpoint" in (backend.check(shot(model=model)) or "")
    assert "takes no first-frame image" in (backend.check(shot(image=image)) or "")
    since = time.time()
    backend.connect(shot(model=model, image=image))  # before the create is journaled
    assert len(server.uploads) == 1 and server.create_posts() == 0
    backend.submit(shot(model=model, image=image))
    server.drop_next_creates(1)
    with pytest.raises(Transient):
        connect(server, tmp_path).submit(shot(model=model, image=image, take=2))
    assert len(server.uploads) == 1 and server.uploads[0] == ("image/png", image.read_bytes())
    urls = {r.input["image_url"] for r in server.billable()}
    assert len(urls) == 1 and urls.pop().startswith(server.base_url + "/files/uploads/")
    # Another run finds the lost submit by its whole input, the image's URL included.
    first = f"{model}/requests/{next(iter(server.queue))}"
    found = connect(server, tmp_path).find(
        shot(model=model, image=image), since, frozenset({first})
    )
    assert found is not None and found != first


def test_cancel_refunds_a_queued_request(server: FalServer, tmp_path: Path) -> None:
    server.job_seconds = 3.0
    backend = connect(server, tmp_path)
    job_id = backend.submit(shot())
    backend.cancel(job_id)
    assert server.billable() == []


def test_no_key_is_refused_before_any_request_and_the_key_never_shows(
    server: FalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    keyless = FalBackend(tmp_path, {"base_url": server.base_url})
    assert keyless.check(shot()) is None  # planning needs no key
    assert "FAL_KEY" in (keyless.credentials_problem() or "")
    with pytest.raises(Refused, match="FAL_KEY"):
        keyless.submit(shot())
    assert server.requests == []
    monkeypatch.setenv("FAL_KEY_ID", "fal-key-id-0123")
    monkeypatch.setenv("FAL_KEY_SECRET", "fal-secret-abcdef456789")
    assert keyless.credentials_problem() is None and keyless.submit(shot())
    wrong = "fal-wrong-key-0123456789"
    hosted.assert_a_wrong_key_never_shows(
        lambda base: FalBackend(tmp_path, {"base_url": base, "api_key": wrong}).submit(shot()),
        (server.base_url, "http://127.0.0.1:9"),
        wrong,
        "FAL_KEY",
    )


def test_a_ca_bundle_that_cannot_be_read_is_named_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FalBackend(tmp_path, {"api_key": KEY})
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    problem = backend.credentials_problem() or ""
    assert f"SSL_CERT_FILE={missing} is not a CA bundle (No such file or directory)" in problem
    notes = gen(tmp_path, {"notes.pem": "not a certificate"}) / "notes.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(notes))
    assert "no certificate or crl found" in (backend.credentials_problem() or "")
    monkeypatch.setenv("SSL_CERT_FILE", str(TestCA(tmp_path / "ca").bundle))
    assert backend.credentials_problem() is None
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-folder"))
    assert "SSL_CERT_DIR=" in (backend.credentials_problem() or "")


def test_the_table_prices_checks_and_pyproject_rows(tmp_path: Path) -> None:
    backend = FalBackend(tmp_path, {})
    assert backend.price_per_second("fal-ai/veo3", 1920, 1080) == pytest.approx(0.40)
    assert backend.price_per_second("fal-ai/veo3/fast", 1280, 720) == pytest.approx(0.15)
    wan = "fal-ai/wan/v2.2-a14b/text-to-video"
    assert backend.price_per_second(wan, 832, 480) == pytest.approx(0.04)
    assert backend.price_per_second(wan, 1280, 720) == pytest.approx(0.08)
    kling = "fal-ai/kling-video/v2.1/master/text-to-video"
    assert "seconds 4" in (backend.check(shot(model=kling, width=1920, height=1080)) or "")
    assert backend.check(shot(model=kling, seconds=5.0, width=1920, height=1080)) is None
    assert "unknown fal model" in (backend.check(shot(model="fal-ai/ltx-2")) or "")
    assert backend.capabilities("fal-ai/veo3").negative_prompt
    assert not backend.capabilities(kling).seed
    row = {"seconds": [6, 10], "sizes": ["1920x1080"], "price_per_second": 0.06}
    added = FalBackend(tmp_path, {"models": {"fal-ai/minimax/hailuo-02/pro/text-to-video": row}})
    hailuo = shot(
        model="fal-ai/minimax/hailuo-02/pro/text-to-video", seconds=6.0, width=1920, height=1080
    )
    assert added.check(hailuo) is None
    assert added.request(hailuo)["input"]["duration"] == "6"
    with pytest.raises(UserError, match="did you mean 'duration'"):
        FalBackend(tmp_path, {"models": {"x": {"duraton": "plain"}}})
    with pytest.raises(UserError, match="did you mean 'base_url'"):
        FalBackend(tmp_path, {"base_ur": "http://x"})
    with pytest.raises(UserError, match="reference_images"):
        FalBackend(tmp_path, {"models": {"x": {"reference_images": 2}}})


def test_request_holds_what_changes_the_video_and_no_connection_details(tmp_path: Path) -> None:
    a = FalBackend(tmp_path, {"base_url": "http://a", "api_key": "fal-key-aaaa"})
    b = FalBackend(tmp_path, {"base_url": "http://b", "api_key": "fal-key-bbbb"})
    assert a.request(shot()) == b.request(shot())
    assert "fal-key" not in str(a.request(shot())) and "http://a" not in str(a.request(shot()))
    assert a.request(shot(take=2)) != a.request(shot())
    assert a.request(shot(seed=1)) != a.request(shot())


def test_importing_the_backend_imports_neither_fal_client_nor_httpx() -> None:
    assert hosted.imports_lazily("runner.backends.fal", "fal_client", "httpx")


# -- the runner against the server: one billable request per shot, counted by the server ------


def fal_film(
    root: Path, server: FalServer, shots: int, *, base_url: bool = True, first_frame: bool = False
) -> Checkout:
    """A film of `shots` fal shots; `base_url`: fal's hosts are the server (else fal-client
    goes to fal's own names); `first_frame`: the last shot is image-to-video, its first frame
    an asset (uploaded to fal's storage)."""
    more: list[str] = []
    files: dict[str, str | bytes] = {}
    if first_frame:
        more += ['model = "fal-ai/veo3/fast/image-to-video"\nimage = "assets.first"']
        more += ['[assets.first]\npath = "first.png"']
        files["first.png"] = png(64, 36)
    return hosted.film(
        root,
        "fal",
        shots,
        defaults='model = "fal-ai/veo3/fast"\nsize = "1280x720"\nseconds = 4',
        limits="concurrency = 4",
        table=f'base_url = "{server.base_url}"\n' if base_url else "",
        # The rpm window the runner paces 429s over: a few seconds here, not a real minute.
        env={"FAL_KEY": KEY, "RUNNER_RATE_WINDOW_SECONDS": "2"},
        more=more,
        files=files,
    )


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def test_a_twelve_shot_film_survives_three_kills_and_a_fault_mix_with_one_request_per_shot(
    server: FalServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True
    film = fal_film(tmp_path, server, 12)
    # Killed with an accepted submit not yet journaled (found again in fal's history), with
    # a journaled one (resumed by id), and with a video half written.
    hosted.kill_at(film, ("create-answered:2", "job-journaled:3", "mid-download:2"))
    hosted.inject_fault_mix(server)
    result = film.run("render")
    assert result.returncode == 0, result.stderr
    bought = Counter(r.input["prompt"].split(":")[0] for r in server.billable())
    assert bought == {f"Fal shot {i}": 1 for i in range(12)}
    assert server.in_flight_max <= 4
    assert server.faults_left() == 0  # every fault was met ...
    assert ("GET", "/v1/models/requests/by-endpoint", 200) in server.requests  # ... and found
    ffmpeg.verify_video(tmp_path / "out" / "film.mp4", 8.0)
    hosted.assert_a_rerun_sends_nothing(film, server)


def test_a_film_renders_through_an_https_proxy_to_fals_own_hosts_and_a_wrong_ca_stops_it(
    server: FalServer, tmp_path: Path
) -> None:
    # As behind a corporate proxy: no base_url, fal-client's own https:// URLs, the proxy in
    # HTTPS_PROXY, its CA in SSL_CERT_FILE (and nothing of this machine's own settings).
    film = fal_film(tmp_path / "film", server, 12, base_url=False, first_frame=True)
    for name in [n for n in film.env if n.lower().endswith("_proxy")]:
        del film.env[name]
    for name in ("SSL_CERT_DIR", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST"):
        film.env.pop(name, None)
    ca = TestCA(tmp_path / "ca")
    with TLSProxy(server.base_url, ca) as proxy:
        film.env["HTTPS_PROXY"] = proxy.url
        # A bundle without the proxy's CA: refused at the first handshake, not retried.
        film.env["SSL_CERT_FILE"] = str(TestCA(tmp_path / "other", "another CA").bundle)
        refused = film.run("render")
        assert refused.returncode == 1, refused.stderr
        assert "cannot reach fal: the TLS certificate presented for " in refused.stderr
        assert "is not trusted (unable to get local issuer certificate" in refused.stderr
        assert f"SSL_CERT_FILE={tmp_path / 'other' / 'ca.pem'}" in refused.stderr
        assert server.requests == []  # nothing reached fal
        deadline = time.monotonic() + 5  # the proxy's loop sees the client's alert on its own
        while not proxy.rejected and time.monotonic() < deadline:
            time.sleep(0.01)
        # The client refused the proxy's certificate (a submit's, or an upload's).
        assert proxy.rejected and set(proxy.rejected) <= {"queue.fal.run", "rest.fal.ai"}
        assert sum(proxy.connects.values()) <= 4  # one try per shot in flight
        film.env["SSL_CERT_FILE"] = str(ca.bundle)
        server.drop_next_creates(1)  # found again in the request history, on api.fal.ai
        server.truncate_next_downloads(1, declare_length=True)
        result = film.run("render")
    assert result.returncode == 0, result.stderr
    bought = Counter(r.input["prompt"].split(":")[0] for r in server.billable())
    assert bought == {f"Fal shot {i}": 1 for i in range(12)}
    assert server.in_flight_max <= 4 and server.faults_left() == 0
    ffmpeg.verify_video(tmp_path / "film" / "out" / "film.mp4", 8.0)
    # Every request came by fal's names through the proxy's tunnels, none to the server itself.
    fal_hosts = {"queue.fal.run", "rest.fal.ai", "api.fal.ai", "v3.fal.media"}
    assert set(server.hosts) == fal_hosts
    assert set(proxy.connects) == fal_hosts and not proxy.refused
    (upload,) = server.uploads
    assert upload == ("image/png", png(64, 36))
    image_urls = [r.input["image_url"] for r in server.billable() if "image_url" in r.input]
    assert len(image_urls) == 1 and image_urls[0].startswith("https://v3.fal.media/files/")
    # The key: sent inside TLS only, and in no file the runner wrote, nor in what it printed.
    assert server.authorizations == {f"Key {KEY}"}
    for secret in (KEY, *KEY.split(":")):
        assert all(secret.encode() not in head for head in proxy.heads)
        assert secret not in refused.stdout + refused.stderr + result.stdout + result.stderr
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
