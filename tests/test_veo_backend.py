"""The veo backend: the real google-genai SDK over real HTTP to a loopback Vertex AI server."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from runner.backends.base import (
    BackendError,
    Expired,
    JobStatus,
    RateLimited,
    Refused,
    ShotRequest,
    Transient,
)
from runner.backends.veo import VeoBackend
from runner.errors import UserError
from runner.media import ffmpeg
from tests.conftest_media import ff
from tests.films import Checkout, gen
from tests.hosted import lantern_shot
from tests.servers.veo_server import FILTER_REASON, VeoServer

KEY = "AIzaSy-loopback-SECRET-0123456789"
TOKEN = "ya29.loopback-token"
ENV_VARS = (
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_VERTEX_BASE_URL",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Google settings leak in from the machine running the tests."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC either


@pytest.fixture
def server() -> Iterator[VeoServer]:
    with VeoServer(job_seconds=0.2, api_key=KEY, token=TOKEN) as s:
        yield s


def express(server: VeoServer, tmp_path: Path, **config: Any) -> VeoBackend:
    """A backend in Vertex AI express mode (API key) pointed at the loopback server."""
    cfg = {"base_url": server.base_url, "api_key": KEY, "poll_seconds": 0.05, **config}
    return VeoBackend(tmp_path / "veo", cfg)


def with_project(server: VeoServer, tmp_path: Path, **config: Any) -> VeoBackend:
    """A backend in project mode, authenticated with a static bearer token (no ADC)."""
    cfg = {
        "base_url": server.base_url,
        "project": "film-project",
        "location": "europe-west4",
        "poll_seconds": 0.05,
        **config,
    }
    return VeoBackend(tmp_path / "veo", cfg, credentials=Credentials(token=TOKEN))  # type: ignore[no-untyped-call]


def shot(**changes: Any) -> ShotRequest:
    return lantern_shot(
        {
            "model": "veo-3.1-generate-preview",
            "prompt": "Riverbank at dusk; a girl lets a paper lantern drift onto the water.",
            "avoid": ("on-screen text", "logos"),
            "seconds": 4.0,
            "seed": 1234,
        }
        | changes
    )


def wait(backend: VeoBackend, job_id: str, timeout: float = 10.0) -> JobStatus:
    """Poll until the job leaves "running"."""
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll(job_id)
        if status.state != "running" or time.monotonic() > deadline:
            return status
        time.sleep(status.poll_after or 0.05)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- round trips ------------------------------------------------------------------------


def test_express_mode_round_trip_gives_a_video_that_verifies(
    server: VeoServer, tmp_path: Path
) -> None:
    backend = express(server, tmp_path)
    job_id = backend.submit(shot(seconds=6.0))
    assert job_id.startswith("projects/") and "/operations/" in job_id
    assert wait(backend, job_id).state == "done"
    dest = tmp_path / "out" / "river.mp4"
    backend.download(job_id, dest)
    info = ffmpeg.verify_video(dest, 6.0)
    assert info.has_video and info.has_audio
    assert set(server.auth_seen) == {"api_key"}
    create = server.log[0]
    assert create == (
        "POST",
        "/v1beta1/publishers/google/models/veo-3.1-generate-preview:predictLongRunning",
        200,
    )
    assert all(p.endswith(":fetchPredictOperation") for _, p, _ in server.log[1:])


def test_project_mode_sends_project_and_location_with_a_bearer_token(
    server: VeoServer, tmp_path: Path
) -> None:
    backend = with_project(server, tmp_path)
    job_id = backend.submit(shot())
    assert wait(backend, job_id).state == "done"
    backend.download(job_id, tmp_path / "clip.mp4")
    ffmpeg.verify_video(tmp_path / "clip.mp4", 4.0)
    assert server.creates[0]["project"] == "film-project"
    assert server.creates[0]["location"] == "europe-west4"
    assert job_id.startswith("projects/film-project/locations/europe-west4/")
    assert set(server.auth_seen) == {"bearer"}


def test_a_gcs_uri_result_is_streamed_from_cloud_storage(tmp_path: Path) -> None:
    with VeoServer(job_seconds=0.1, api_key=KEY, token=TOKEN, gcs_output=True) as server:
        backend = with_project(server, tmp_path, storage_url=server.base_url)
        job_id = backend.submit(shot(seconds=8.0))
        assert wait(backend, job_id).state == "done"
        backend.download(job_id, tmp_path / "clip.mp4")
        ffmpeg.verify_video(tmp_path / "clip.mp4", 8.0)
        assert any(p.startswith("/storage/v1/b/veo-loopback/o/") for _, p, _ in server.log)


def test_a_fresh_backend_resumes_polling_from_the_saved_operation_name(
    server: VeoServer, tmp_path: Path
) -> None:
    job_id = express(server, tmp_path).submit(shot())
    # The run is killed here: only the journaled operation name survives.
    fresh = express(server, tmp_path)
    assert wait(fresh, job_id).state == "done"
    fresh.download(job_id, tmp_path / "resumed.mp4")
    ffmpeg.verify_video(tmp_path / "resumed.mp4", 4.0)
    assert len(server.creates) == 1


# -- what reaches the server ------------------------------------------------------------


def test_parameters_and_first_frame_reach_the_server_as_configured(
    server: VeoServer, tmp_path: Path
) -> None:
    image = tmp_path / "first.png"
    ff("-f", "lavfi", "-i", "color=red:s=72x128", "-frames:v", "1", str(image))
    backend = express(server, tmp_path)
    backend.submit(
        shot(seconds=6.0, width=1080, height=1920, seed=99, image=image, avoid=("logos",))
    )
    create = server.creates[0]
    assert create["model"] == "veo-3.1-generate-preview"
    assert create["negativePrompt"] == "logos"
    assert "logos" not in create["prompt"]  # the avoid list goes to negativePrompt only
    assert create["seed"] == 99
    assert create["durationSeconds"] == 6
    assert create["aspectRatio"] == "9:16"
    assert create["resolution"] == "1080p"
    assert create["sampleCount"] == 1
    assert create["generateAudio"] is True
    assert create["has_image"] and create["image_mime"] == "image/png"
    assert create["image_bytes"] == image.read_bytes()


def test_reference_images_reach_the_server_as_assets(server: VeoServer, tmp_path: Path) -> None:
    refs = []
    for colour in ("red", "blue"):
        refs.append(tmp_path / f"{colour}.png")
        ff("-f", "lavfi", "-i", f"color={colour}:s=64x64", "-frames:v", "1", str(refs[-1]))
    backend = express(server, tmp_path)
    assert backend.capabilities("veo-3.1-generate-preview").reference_images == 3
    backend.submit(shot(references=tuple(refs)))
    assert server.creates[0]["reference_images"] == 2
    assert not server.creates[0]["has_image"]


def test_no_avoid_and_no_seed_send_neither_field(server: VeoServer, tmp_path: Path) -> None:
    express(server, tmp_path).submit(shot(avoid=(), seed=None))
    create = server.creates[0]
    assert create["negativePrompt"] is None and create["seed"] is None
    assert not create["has_image"]


def test_request_holds_what_changes_the_video_and_no_connection_details(
    tmp_path: Path,
) -> None:
    backend = VeoBackend(tmp_path, {"api_key": KEY, "base_url": "http://example.invalid"})
    request = backend.request(shot())
    assert request["negative_prompt"] == "on-screen text, logos"
    assert (request["aspect_ratio"], request["resolution"]) == ("16:9", "720p")
    assert request["seconds"] == 4.0 and request["seed"] == 1234
    assert KEY not in repr(request) and "example.invalid" not in repr(request)
    assert backend.request(shot(take=2)) != request
    assert backend.request(shot(seed=1)) != request


# -- one create per submit, errors classified ------------------------------------------


def test_a_500_is_transient_after_exactly_one_create(server: VeoServer, tmp_path: Path) -> None:
    server.fail_next_creates(1, status=500)
    backend = express(server, tmp_path)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    assert server.create_attempts == 1  # the SDK did not retry on its own
    backend.submit(shot())
    assert server.create_attempts == 2


def test_a_429_is_rate_limited_with_retry_after_after_one_create(
    server: VeoServer, tmp_path: Path
) -> None:
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimited) as err:
        express(server, tmp_path).submit(shot())
    assert err.value.retry_after == 7.0
    assert "RESOURCE_EXHAUSTED" in str(err.value)
    assert server.create_attempts == 1 and server.creates == []


def test_a_400_is_refused_with_the_providers_message(server: VeoServer, tmp_path: Path) -> None:
    server.fail_next_creates(1, status=400)
    with pytest.raises(Refused, match="Internal error encountered"):
        express(server, tmp_path).submit(shot())
    assert server.create_attempts == 1


def test_a_dropped_create_is_transient_and_may_have_been_sent(
    server: VeoServer, tmp_path: Path
) -> None:
    server.drop_next_creates(1)
    backend = express(server, tmp_path)
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is True
    assert len(server.creates) == 1 and server.create_attempts == 1
    # Vertex AI lists no video operations, so the lost one cannot be found again.
    assert backend.find(shot(), since=time.time() - 60) is None


def test_a_refused_connection_is_transient_and_certainly_not_sent(tmp_path: Path) -> None:
    backend = VeoBackend(
        tmp_path, {"base_url": f"http://127.0.0.1:{closed_port()}", "api_key": KEY}
    )
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert err.value.sent is False


def test_a_rai_filtered_job_fails_with_its_reason(server: VeoServer, tmp_path: Path) -> None:
    server.filter_prompts("lantern")
    backend = express(server, tmp_path)
    status = wait(backend, backend.submit(shot()))
    assert status.state == "failed"
    assert status.error is not None and FILTER_REASON in status.error


def test_poll_errors_are_transient_and_a_forgotten_job_is_expired(
    server: VeoServer, tmp_path: Path
) -> None:
    backend = express(server, tmp_path)
    job_id = backend.submit(shot())
    server.fail_next_polls(1, status=503)
    with pytest.raises(Transient):
        backend.poll(job_id)
    server.expire_jobs()
    with pytest.raises(Expired):
        backend.poll(job_id)
    with pytest.raises(Expired):
        backend.download(job_id, tmp_path / "gone.mp4")
    assert not (tmp_path / "gone.mp4").exists()


def test_concurrent_submits_from_many_threads_each_create_one_job(
    server: VeoServer, tmp_path: Path
) -> None:
    backend = express(server, tmp_path)
    ids: list[str] = []
    lock = threading.Lock()

    def submit(take: int) -> None:
        job_id = backend.submit(shot(take=take))
        with lock:
            ids.append(job_id)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8 and len(server.creates) == 8
    assert server.in_flight_max >= 2
    assert server.max_creates_in_window(60.0) == 8


# -- secrets and configuration ---------------------------------------------------------


def test_the_api_key_never_appears_in_an_error_message(
    server: VeoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages: list[str] = []
    backend = express(server, tmp_path)

    def collect(action: Any) -> None:
        try:
            action()
        except BackendError as err:
            messages.append(str(err))

    server.rate_limit_next(1)
    collect(lambda: backend.submit(shot()))
    server.fail_next_creates(1, status=500)
    collect(lambda: backend.submit(shot()))
    server.fail_next_creates(1, status=403)
    collect(lambda: backend.submit(shot()))
    server.drop_next_creates(1)
    collect(lambda: backend.submit(shot()))
    server.api_key = "another-key"  # now the server rejects ours (and echoes it back)
    collect(lambda: backend.submit(shot()))
    collect(lambda: backend.poll("projects/p/locations/l/publishers/google/models/m/operations/1"))
    down = VeoBackend(tmp_path, {"base_url": f"http://127.0.0.1:{closed_port()}", "api_key": KEY})
    collect(lambda: down.submit(shot()))
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    from_env = VeoBackend(tmp_path, {"base_url": server.base_url})
    collect(lambda: from_env.submit(shot()))
    assert len(messages) == 8
    assert any("***" in m for m in messages)  # the echoing server was scrubbed
    for message in messages:
        assert KEY not in message


def test_missing_project_and_key_is_refused_naming_the_settings(tmp_path: Path) -> None:
    with pytest.raises(Refused) as err:
        VeoBackend(tmp_path, {}).submit(shot())
    message = str(err.value)
    assert "GOOGLE_CLOUD_PROJECT" in message and "GOOGLE_API_KEY" in message
    assert "[tool.runner.backends.veo]" in message


def test_environment_variables_configure_the_connection(
    server: VeoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", server.base_url)
    backend = VeoBackend(tmp_path, {"poll_seconds": 0.05})
    assert wait(backend, backend.submit(shot())).state == "done"


def test_check_and_prices_follow_the_model_table(tmp_path: Path) -> None:
    backend = VeoBackend(tmp_path, {})
    assert backend.check(shot()) is None
    assert "size 640x480" in (backend.check(shot(width=640, height=480)) or "")
    assert "seconds 5" in (backend.check(shot(seconds=5.0)) or "")
    assert "unknown veo model" in (backend.check(shot(model="veo-9")) or "")
    image = tmp_path / "x.png"
    assert "first-frame" in (
        backend.check(shot(model="veo-3.0-fast-generate-001", image=image)) or ""
    )
    assert backend.price_per_second("veo-3.1-generate-preview", 1280, 720) == 0.40
    assert backend.price_per_second("veo-3.1-generate-preview", 3840, 2160) == 0.60
    assert backend.price_per_second("veo-3.1-fast-generate-preview", 1920, 1080) == 0.15
    caps = backend.capabilities("veo-3.1-generate-preview")
    assert caps.negative_prompt and caps.seed and caps.image
    assert caps.seconds == (4.0, 6.0, 8.0) and "1080x1920" in caps.sizes


def test_config_models_override_and_add_rows(tmp_path: Path) -> None:
    backend = VeoBackend(
        tmp_path,
        {
            "models": {
                "veo-3.1-generate-preview": {"price": 0.20, "audio": False},
                "veo-4-preview": {"seconds": [8], "sizes": ["1920x1080"], "price": 0.5},
            }
        },
    )
    assert backend.price_per_second("veo-3.1-generate-preview", 1280, 720) == 0.20
    assert backend.request(shot())["audio"] is False
    assert backend.check(shot(model="veo-4-preview", seconds=8.0, width=1920, height=1080)) is None
    assert backend.check(shot(model="veo-4-preview")) is not None
    with pytest.raises(UserError, match="unknown key"):
        VeoBackend(tmp_path, {"modles": {}})
    with pytest.raises(UserError, match="sizes"):
        VeoBackend(tmp_path, {"models": {"veo-x": {"sizes": ["100x100"]}}})


# -- the runner against the server: one create per shot, counted on the server's side --------


def veo_film(root: Path, server: VeoServer, shots: int) -> Checkout:
    lines = ['[film]\ntitle = "Veo"\nsize = "160x90"\nfps = 24\n[defaults]\nbackend = "veo"']
    lines += ['size = "1280x720"\nseconds = 4\n[limits.veo]\nconcurrency = 1']
    lines += [f'[shots.s{i}]\nscene = "Veo shot {i}:   a lantern.  "' for i in range(shots)]
    gen(
        root,
        {
            "film.toml": "\n".join(lines) + "\n",
            "pyproject.toml": "[tool.runner.backends.veo]\npoll_seconds = 0.05\n",
        },
    )
    env = {"GOOGLE_VERTEX_BASE_URL": server.base_url, "GOOGLE_API_KEY": KEY}
    return Checkout(root / "film.toml", root / "cache", env)


def bought(server: VeoServer) -> Counter[str]:
    """Creates per shot, by the prompt the server kept (normalised, as a gateway may)."""
    return Counter(c["prompt"].split(":")[0] for c in server.creates)


def test_a_veo_film_is_bought_once_per_shot_and_never_again(
    server: VeoServer, tmp_path: Path
) -> None:
    server.normalise_prompts = True
    film = veo_film(tmp_path, server, 3)
    result = film.run("render")
    assert result.returncode == 0, result.stderr
    assert bought(server) == {"Veo shot 0": 1, "Veo shot 1": 1, "Veo shot 2": 1}
    assert server.creates[0]["prompt"].startswith("Veo shot 0: a lantern.")  # as normalised
    assert film.run("render").returncode == 0
    assert server.create_attempts == len(server.creates) == 3


def test_a_dropped_veo_answer_stops_then_resend_unconfirmed_sends_exactly_one_more(
    server: VeoServer, tmp_path: Path
) -> None:
    server.drop_next_creates(1)  # s0's create makes an operation; its answer never arrives
    film = veo_film(tmp_path, server, 2)
    stopped = film.run("render")
    assert stopped.returncode == 1
    assert "--resend-unconfirmed" in stopped.stderr and "shots.s0" in stopped.stderr
    assert bought(server)["Veo shot 0"] == 1  # Veo lists no jobs: nothing was sent again
    assert film.run("render").returncode == 1  # nor on a plain rerun
    assert bought(server)["Veo shot 0"] == 1
    resent = film.run("render", "--resend-unconfirmed")
    assert resent.returncode == 0, resent.stderr
    assert bought(server) == {"Veo shot 0": 2, "Veo shot 1": 1}  # the lost one, and one more
    assert film.run("render").returncode == 0 and len(server.creates) == 3
