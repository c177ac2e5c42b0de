"""Google Veo 3.x through google-genai in enterprise (Vertex AI) mode.

From google-genai 3.0, `generate_videos` works only with `Client(enterprise=True, ...)`: a
`:predictLongRunning` create that returns an operation, polled with `:fetchPredictOperation`.
The operation's name is the job id, so a run killed mid-render resumes polling from a fresh
client without paying again. The SDK's own retries stay off (its default): the runner retries,
journaled, so it sees every create.

Connection, first match wins: the `[tool.runner.backends.veo]` table (`project`, `location`,
`api_key`, `base_url`), then the SDK's environment variables (GOOGLE_CLOUD_PROJECT,
GOOGLE_CLOUD_LOCATION, GOOGLE_API_KEY / GEMINI_API_KEY, GOOGLE_VERTEX_BASE_URL). With a project
the client authenticates with Application Default Credentials (or the `credentials` passed to
the constructor); with only an API key it uses Vertex AI express mode (`x-goog-api-key`).
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backends import policy
from runner.backends.base import (
    BackendError,
    Capabilities,
    Expired,
    JobStatus,
    Refused,
    ShotRequest,
    Transient,
)
from runner.digest import Hashed
from runner.film import model_table
from runner.film.model_table import ModelRow

if TYPE_CHECKING:
    import httpx2
    from google.auth.credentials import Credentials
    from google.genai import Client

RECIPE_VERSION = 1
"""Bumped when the meaning of a field in `request` changes, so cached clips re-render."""

SIZES: dict[str, tuple[str, str]] = {
    "1280x720": ("16:9", "720p"),
    "1920x1080": ("16:9", "1080p"),
    "720x1280": ("9:16", "720p"),
    "1080x1920": ("9:16", "1080p"),
    "3840x2160": ("16:9", "4k"),
    "2160x3840": ("9:16", "4k"),
}
"""Frame sizes Veo renders, as (aspectRatio, resolution) on the wire."""

HD_SIZES = ("1280x720", "1920x1080", "720x1280", "1080x1920")
DEFAULT_LOCATION = "us-central1"  # where Google's Veo examples run; "global" may lack Veo
TABLE = "[tool.runner.backends.veo]"
CONFIG_KEYS = frozenset(
    {"base_url", "project", "location", "api_key", "models", "timeout", "poll_seconds",
     "storage_url"}
)  # fmt: skip
NO_CREDENTIALS = (
    "veo needs a Google Cloud project or a Vertex AI API key: set GOOGLE_CLOUD_PROJECT "
    "(and GOOGLE_CLOUD_LOCATION, default us-central1) with Application Default "
    "Credentials (`gcloud auth application-default login` or "
    "GOOGLE_APPLICATION_CREDENTIALS), or GOOGLE_API_KEY for express mode; or `project` "
    "/ `api_key` in [tool.runner.backends.veo] of pyproject.toml"
)
KEY_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # where google-genai looks for an API key
CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


# A new model's row: Veo takes a seed (uint32) and a negative prompt, and renders with audio
# (generateAudio, included in the price) unless its row says `audio = false`.
NEW_ROW = ModelRow(
    sizes=HD_SIZES,
    seconds=(4.0, 6.0, 8.0),
    audio=True,
    seed=True,
    max_seed=0xFFFFFFFF,
    negative_prompt=True,
)
FIXED = {"remix": False}  # Veo has no remix
_UHD = {"sizes": (*HD_SIZES, "3840x2160", "2160x3840")}
# Vertex AI model pages (Veo 3 / 3.1): 16:9 and 9:16, 720p and 1080p, 4, 6 or 8 s at 24 fps;
# 3.1 takes up to three asset reference images. Vertex AI pricing, video with audio: $0.40/s
# for Veo 3 and 3.1, $0.15/s for the Fast variants; 3.1 at 4K: $0.60/s ($0.35/s Fast).
# 3.1 also interpolates to a last frame (`lastFrame`, with a first frame) and extends a video
# it made (`video` in the instance; the answer is that video with the extension after it).
_FRAMES = {"last_frame": True, "extend": True}
_31 = _UHD | _FRAMES | {"price_per_second": 0.40, "prices": {"4k": 0.60}, "reference_images": 3}
_31_FAST = _UHD | _FRAMES | {"price_per_second": 0.15, "prices": {"4k": 0.35}}
MODELS: dict[str, ModelRow] = {
    "veo-3.1-generate-preview": NEW_ROW.model_copy(update=_31),
    "veo-3.1-generate-001": NEW_ROW.model_copy(update=_31),
    "veo-3.1-fast-generate-preview": NEW_ROW.model_copy(update=_31_FAST),
    "veo-3.1-fast-generate-001": NEW_ROW.model_copy(update=_31_FAST),
    "veo-3.0-generate-001": NEW_ROW.model_copy(update={"price_per_second": 0.40}),
    "veo-3.0-fast-generate-001": NEW_ROW.model_copy(
        update={"price_per_second": 0.15, "image": False}
    ),
}


class VeoBackend:
    """Veo on Vertex AI: one `generate_videos` call per submit, polled by operation name."""

    name = "veo"
    default_model = "veo-3.1-generate-preview"
    reconciles = False  # Vertex cannot list generate_videos operations (see find)
    lands_late = True  # a create sent before a kill can still be made

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        """`credentials` (google.auth) replace Application Default Credentials in project mode:
        for embedding, and for loopback tests with a static bearer token."""
        self.workdir = workdir
        cfg = dict(config or {})
        model_table.reject_unknown(cfg, CONFIG_KEYS, TABLE)
        self._config = cfg
        self._credentials = credentials
        models = cfg.get("models", {})
        self.models = model_table.load(TABLE, models, MODELS, NEW_ROW, sizes=SIZES, fixed=FIXED)
        self.poll_seconds = float(cfg.get("poll_seconds", 5.0))
        self.timeout = float(cfg.get("timeout", 120.0))
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._http: httpx2.Client | None = None  # video downloads by URI
        self._secret: str | None = None  # the API key in use, scrubbed from every message

    # -- capabilities and prices -------------------------------------------------------

    def rows(self) -> Mapping[str, Capabilities]:
        """The backend's model table, by model name."""
        return dict(self.models)

    def capabilities(self, model: str) -> Capabilities:
        """The model's row; a new model's for an unknown one (`check` then says what to add)."""
        return self.models.get(model, NEW_ROW)

    def price_per_second(self, model: str, width: int, height: int) -> float:
        """USD per second from the price table (per resolution where the row has one)."""
        row = self.models.get(model)
        return (row.price(width, height) if row else None) or 0.0

    def credentials_problem(self) -> str | None:
        cfg = self._config
        found = cfg.get("api_key") or cfg.get("project") or self._credentials is not None
        found = found or any(os.environ.get(v) for v in (*KEY_VARS, "GOOGLE_CLOUD_PROJECT"))
        return None if found else NO_CREDENTIALS

    def check(self, shot: ShotRequest) -> str | None:
        """What Veo cannot render about this shot, in words; None when it can."""
        missing = model_table.missing(self.name, shot.model, self.models, TABLE)
        found = missing or model_table.words(shot, self.models[shot.model], self.name)
        if found is None and shot.end_image is not None and shot.extend_of is not None:
            return "veo extends a video without a last frame: remove `end_image`"
        if found is None and shot.end_image is not None and shot.image is None:
            return "veo interpolates from a first to a last frame: give the shot an `image` too"
        return found

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """Everything sent that changes the video (the image's digest is hashed by the caller)."""
        aspect, resolution = SIZES.get(f"{shot.width}x{shot.height}", ("", ""))
        row = self.models.get(shot.model, NEW_ROW)
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "model": shot.model,
            "prompt": shot.prompt,
            "negative_prompt": _negative_prompt(shot),
            "seconds": shot.seconds,
            "aspect_ratio": aspect,
            "resolution": resolution,
            "seed": shot.seed,
            "audio": row.audio,
            "take": shot.take,  # takes of one request are separate renders
            # By presence (the files' digests are hashed by the caller), only when given.
            **({"end_image": True} if shot.end_image is not None else {}),
            **({"extend": True} if shot.extend_of is not None else {}),
        }

    # -- jobs ---------------------------------------------------------------------------

    def connect(self, shot: ShotRequest) -> None:
        """The SDK's client, made before a create is journaled (see Backend.connect)."""
        self._get_client()

    def submit(self, shot: ShotRequest) -> str:
        """One `:predictLongRunning` create; returns the operation name (the job id)."""
        problem = self.check(shot)
        if problem is not None:
            raise Refused(f"veo cannot render shot {shot.shot!r}: {problem}")
        from google.genai import types

        aspect, resolution = SIZES[f"{shot.width}x{shot.height}"]
        row = self.models[shot.model]
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=round(shot.seconds),
            aspect_ratio=aspect,
            resolution=resolution,
            negative_prompt=_negative_prompt(shot),
            seed=shot.seed,
            generate_audio=True if row.audio else None,
            reference_images=[
                types.VideoGenerationReferenceImage(
                    image=_image(types, path),
                    reference_type=types.VideoGenerationReferenceType.ASSET,
                )
                for path in shot.references
            ]
            or None,
            last_frame=_image(types, shot.end_image) if shot.end_image is not None else None,
        )
        image = _image(types, shot.image) if shot.image is not None else None
        video = _video(types, shot.extend_video) if shot.extend_of is not None else None
        source = types.GenerateVideosSource(prompt=shot.prompt, image=image, video=video)
        client = self._get_client()
        try:
            operation = client.models.generate_videos(
                model=shot.model, source=source, config=config
            )
        except Exception as exc:
            raise self._classify(exc, stage="create") from None
        if not operation.name:
            raise Transient("veo answered the create without an operation name", sent=True)
        return operation.name

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """Veo has no remix; the planner never sends one (capabilities say remix=False)."""
        raise Refused(f"{self.name} cannot remix a video")

    def find(
        self, shot: ShotRequest, since: float, exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """Always None: Vertex AI lists no operations of publisher models (there is no
        `operations.list` for `:predictLongRunning`, and the SDK offers none), so a create
        whose answer was lost cannot be found again; the runner decides what to do."""
        return None

    def poll(self, job_id: str) -> JobStatus:
        """The operation's state: running, done, or failed with the provider's own message."""
        operation = self._operation(job_id)
        if not operation.done:
            return JobStatus(state="running", poll_after=self.poll_seconds)
        if operation.error:
            return JobStatus(state="failed", error=self._scrub(_operation_error(operation.error)))
        result = operation.response or operation.result
        videos = (result.generated_videos if result else None) or []
        if not any(v.video for v in videos):
            return JobStatus(state="failed", error=self._scrub(_filtered_reason(result)))
        return JobStatus(state="done")

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Write the operation's video to dest: inline bytes, or its URI streamed; returns
        its digest and length, taken as it was written."""
        operation = self._operation(job_id)
        if not operation.done:
            raise Transient(f"veo job {job_id} has not finished")
        result = operation.response or operation.result
        videos = [v.video for v in (result.generated_videos if result else None) or [] if v.video]
        if not videos:
            raise Expired(f"veo job {job_id} has no video: {_filtered_reason(result)}")
        video = videos[0]
        with policy.part_file(dest) as part:
            if video.video_bytes:
                part.write_bytes(video.video_bytes)
            elif video.uri:
                self._fetch(video.uri, part, job_id)
            else:
                raise Expired(f"veo job {job_id}: the video has neither bytes nor a URI")
            return part.finish()

    # -- the client ---------------------------------------------------------------------

    def _get_client(self) -> Client:
        """The shared SDK client, made once on first use (threads share it: httpx is safe)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Client:
        from google import genai
        from google.genai import types

        cfg = self._config
        api_key = cfg.get("api_key") or os.environ.get("GOOGLE_API_KEY")
        api_key = api_key or os.environ.get("GEMINI_API_KEY")
        project = cfg.get("project") or (
            None if cfg.get("api_key") else _env("GOOGLE_CLOUD_PROJECT")
        )
        location = cfg.get("location") or _env("GOOGLE_CLOUD_LOCATION") or DEFAULT_LOCATION
        options = types.HttpOptions(timeout=round(self.timeout * 1000), retry_options=None)
        if cfg.get("base_url"):
            options.base_url = str(cfg["base_url"])
        try:
            if project:
                credentials = self._credentials or _default_credentials()
                return genai.Client(
                    enterprise=True,
                    project=str(project),
                    location=str(location),
                    credentials=credentials,
                    http_options=options,
                )
            if api_key:
                self._secret = str(api_key).strip()
                return genai.Client(enterprise=True, api_key=self._secret, http_options=options)
        except ValueError as exc:
            raise Refused(f"cannot set up the Veo client: {self._scrub(str(exc))}") from None
        raise Refused(NO_CREDENTIALS)

    def _operation(self, job_id: str) -> Any:
        """Fetch a saved operation by name (works from a fresh client: resume after a crash)."""
        from google.genai import types

        client = self._get_client()
        try:
            return client.operations.get(
                types.GenerateVideosOperation.model_validate({"name": job_id})
            )
        except Exception as exc:
            raise self._classify(exc, stage="job", job_id=job_id) from None

    def _classify(self, exc: Exception, *, stage: policy.Stage, job_id: str = "") -> Exception:
        """An SDK, transport or google-auth failure as the runner's error classes."""
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            status = str(exc.status or "")
            message = self._scrub(f"{exc.code} {status}: {exc.message or exc.details}")
            headers = getattr(getattr(exc, "response", None), "headers", None)
            wait = policy.retry_after(headers)
            return policy.from_status(
                int(exc.code or 0),
                f"veo: {message}",
                stage=stage,
                code=status,
                retry_after=_retry_info(exc.details) if wait is None else wait,
                job=job_id,
                credentials=f"check the project's credentials or api_key in {TABLE}",
            )
        sent = policy.transport_sent(exc)
        if sent is not None:
            kind = type(exc).__name__
            return Transient(self._scrub(f"veo connection failed ({kind}): {exc}"), sent=sent)
        auth = _auth_failure(exc)
        if auth is not None:
            auth.args = (self._scrub(str(auth)),)
            return auth
        return exc  # a bug, not a provider failure: let it show as it is

    def _scrub(self, text: str) -> str:
        """`text` with the API key replaced: keys never reach a message, log or record."""
        key = self._config.get("api_key")
        return policy.scrub(text, self._secret, str(key or ""), *map(os.environ.get, KEY_VARS))

    def _fetch(self, uri: str, part: policy.Part, job_id: str) -> None:
        """Stream a video URI (gs:// through the Cloud Storage JSON API) into the part."""
        url = uri
        headers: dict[str, str] = {}
        if uri.startswith("gs://"):
            bucket, _, obj = uri[5:].partition("/")
            base = str(self._config.get("storage_url") or "https://storage.googleapis.com")
            url = (
                f"{base.rstrip('/')}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
                f"/o/{urllib.parse.quote(obj, safe='')}?alt=media"
            )
            token = self._bearer_token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        try:
            with self._downloads().stream("GET", url, headers=headers) as resp:
                if resp.status_code >= 400:
                    message = self._scrub(
                        f"veo video {uri}: {resp.status_code} {resp.reason_phrase}"
                    )
                    wait = policy.retry_after(resp.headers)
                    raise policy.from_status(
                        resp.status_code, message, stage="download", retry_after=wait, job=job_id
                    )
                part.announce(policy.content_length(resp.headers))
                with part.open() as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
            part.finish()  # Transient when cut short of the announced length
        except BackendError:
            raise
        except OSError as exc:
            raise Transient(self._scrub(f"veo video download failed: {exc}")) from None
        except Exception as exc:
            sent = policy.transport_sent(exc)
            if sent is None:
                raise
            raise Transient(self._scrub(f"veo video download failed: {exc}"), sent=sent) from None

    def _downloads(self) -> httpx2.Client:
        """One HTTP client for every video download, made on first use: its connections are
        pooled and shared by all jobs (the SDK's client serves the API calls)."""
        with self._lock:
            if self._http is None:
                import httpx2

                timeout = httpx2.Timeout(self.timeout, connect=min(15.0, self.timeout))
                self._http = httpx2.Client(timeout=timeout, follow_redirects=True)
            return self._http

    def _bearer_token(self) -> str | None:
        """An OAuth token for Cloud Storage, from the client's credentials, if it has any."""
        credentials = self._credentials
        if credentials is None and self._secret is None:
            credentials = _default_credentials()
        if credentials is None:
            return None
        if not credentials.valid:
            from google.auth.transport.requests import Request

            try:
                credentials.refresh(Request())  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise Transient(f"cannot refresh Google credentials: {exc}") from None
        token = credentials.token
        return str(token) if token else None


def _negative_prompt(shot: ShotRequest) -> str | None:
    """`[style] avoid` as Veo's negativePrompt (so it stays out of the prompt text)."""
    return ", ".join(shot.avoid) if shot.avoid else None


def _image(types: Any, path: Path) -> Any:
    """A google.genai Image from a PNG or JPEG file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Refused(f"{path}: cannot read the image: {exc}") from None
    return types.Image(image_bytes=data, mime_type=_image_mime(data))


def _video(types: Any, path: Path | None) -> Any:
    """A google.genai Video (inline MP4 bytes, as Vertex takes them) of the video extended."""
    if path is None:
        raise Refused("veo extends a video it is given: the source video is missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Refused(f"{path}: cannot read the video to extend: {exc}") from None
    return types.Video(video_bytes=data, mime_type="video/mp4")


def _image_mime(data: bytes) -> str:
    """The first-frame image's MIME type from its magic bytes (PNG unless it is a JPEG)."""
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _default_credentials() -> Credentials:
    """Application Default Credentials, or Refused naming how to provide them."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_SCOPE])
    except DefaultCredentialsError:
        raise Refused(
            "veo found no Google credentials for the project: run `gcloud auth "
            "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a service "
            "account key file, or set GOOGLE_API_KEY (or `api_key` in "
            "[tool.runner.backends.veo]) for Vertex AI express mode"
        ) from None
    return credentials


def _operation_error(error: Mapping[str, Any]) -> str:
    """A failed operation's {code, message, status} in words."""
    message = str(error.get("message") or "the operation failed")
    status = error.get("status") or error.get("code")
    return f"{message} ({status})" if status else message


def _filtered_reason(result: Any) -> str:
    """Why a finished operation has no video: Veo's responsible-AI filter reasons."""
    reasons = list(getattr(result, "rai_media_filtered_reasons", None) or [])
    count = getattr(result, "rai_media_filtered_count", None)
    if reasons:
        return "filtered by Veo's safety filters: " + "; ".join(str(r) for r in reasons)
    if count:
        return f"filtered by Veo's safety filters ({count} video(s))"
    return "the operation finished without a video"


def _retry_info(details: Any) -> float | None:
    """Seconds to wait from a google.rpc.RetryInfo detail of a 429 (`"retryDelay": "7s"`)."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    for detail in error.get("details") or []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        match = re.fullmatch(r"([\d.]+)s", str(delay or ""))
        if match:
            return float(match.group(1))
    return None


def _auth_failure(exc: Exception) -> Exception | None:
    """A google-auth failure: bad credentials are Refused, an unreachable token service is
    Transient (nothing was sent). None for anything else."""
    from google.auth import exceptions

    if isinstance(exc, exceptions.RefreshError | exceptions.DefaultCredentialsError):
        return Refused(f"cannot authenticate to Google Cloud: {exc}")
    if isinstance(exc, exceptions.TransportError):
        return Transient(f"cannot reach Google's token service: {exc}", sent=False)
    return None
