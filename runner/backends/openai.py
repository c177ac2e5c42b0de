"""The `openai` backend: the Videos protocol (`/v1/videos`) through the official `openai` SDK.

OpenAI shut its own Videos API and the sora-2 models down on 2026-09-24; gateways still serve
other models on the same protocol, so this backend is mostly used with a gateway's base URL.
The SDK is imported lazily (start-up stays fast), never retries (the runner retries, journaled)
and its DeprecationWarning on the videos methods never reaches users.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from runner import faults
from runner.backends import policy
from runner.backends.base import (
    BackendError,
    Capabilities,
    JobStatus,
    Refused,
    ShotRequest,
    Transient,
)
from runner.digest import Hashed
from runner.film import model_table
from runner.film.model_table import ModelRow

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.video import Video

RECIPE_VERSION = 1
"""Bumped when the meaning of a request field changes, so cached clips re-render."""
TABLE = "[tool.runner.backends.openai]"
SHUTDOWN = (
    "OpenAI shut its own Videos API and the sora-2 models down on 2026-09-24: point the "
    "backend at a gateway that serves this model with OPENAI_BASE_URL or base_url in " + TABLE
)
CONFIG_KEYS = ("api_key", "api_key_env", "base_url", "models", "timeout")
DEFAULT_TIMEOUT = 120.0  # seconds per read; connecting gets at most 15
FIND_SLACK = 5.0  # seconds: the provider's created_at is whole seconds on another clock
FIND_PAGE = 50
FIND_MAX_PAGES = 20
SORA_SECONDS = (4.0, 8.0, 12.0)
SORA_720P = ("1280x720", "720x1280")
SORA_PRO = (*SORA_720P, "1792x1024", "1024x1792", "1920x1080", "1080x1920")

# The protocol has no seed or negative-prompt field (`avoid` stays in the text) and every job
# can be remixed; a gateway's model starts from this row.
NEW_ROW = ModelRow(remix=True)
FIXED: dict[str, object] = {"reference_images": 0, "last_frame": False, "extend": False}
FIXED |= {"seed": False, "max_seed": None, "negative_prompt": False}
BUILTIN: dict[str, ModelRow] = {
    "sora-2": NEW_ROW.model_copy(
        update={"sizes": SORA_720P, "seconds": SORA_SECONDS, "max_seconds": 12.0}
        | {"audio": True, "price_per_second": 0.10}
    ),
    "sora-2-pro": NEW_ROW.model_copy(
        update={"sizes": SORA_PRO, "seconds": SORA_SECONDS, "max_seconds": 12.0}
        | {"audio": True, "price_per_second": 0.30, "price_per_second_hd": 0.50}
    ),
}

_T = TypeVar("_T")


class OpenAIBackend:
    """Renders on any server speaking OpenAI's Videos protocol; safe to share across threads."""

    name = "openai"
    default_model = "sora-2"
    reconciles = True  # GET /v1/videos lists recent jobs: `find` can look for a lost create
    lands_late = True  # a create sent before a kill can still be made

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        config = dict(config or {})
        model_table.reject_unknown(config, CONFIG_KEYS, TABLE)
        self._base_url = model_table.text_setting(config, "base_url", TABLE)
        self._api_key = model_table.text_setting(config, "api_key", TABLE)
        api_key_env = model_table.text_setting(config, "api_key_env", TABLE)
        self._api_key_env = api_key_env or "OPENAI_API_KEY"
        self._timeout = model_table.seconds_setting(config, "timeout", TABLE, DEFAULT_TIMEOUT)
        models = config.get("models", {})
        self._models = model_table.load(TABLE, models, BUILTIN, NEW_ROW, fixed=FIXED)
        self._lock = threading.Lock()
        self._client: OpenAI | None = None
        self._secret = ""  # the key in use, scrubbed from every message
        self._claimed: set[str] = set()  # job ids handed out by submit/find in this process

    # -- capability and price tables (pure: planning never touches the network) --

    def rows(self) -> Mapping[str, Capabilities]:
        """The backend's model table, by model name."""
        return dict(self._models)

    def capabilities(self, model: str) -> Capabilities:
        """The model's row; permissive for an unknown model (`check` then says what to add)."""
        return self._models.get(model, NEW_ROW)

    def price_per_second(self, model: str, width: int, height: int) -> float:
        """USD per second of video; sora-2-pro costs more above 720p."""
        row = self._models.get(model)
        return (row.price(width, height) if row else None) or 0.0

    def check(self, shot: ShotRequest) -> str | None:
        """What this backend cannot render about the shot, in words; None when it can."""
        if self._official_endpoint():
            return (
                f"it would send to api.openai.com. {SHUTDOWN} (a gateway that serves {shot.model})"
            )
        missing = model_table.missing(self.name, shot.model, self._models, TABLE)
        return missing or model_table.words(shot, self._models[shot.model], self.name)

    def credentials_problem(self) -> str | None:
        if self._api_key or os.environ.get(self._api_key_env):
            return None
        return self._no_key()

    def _no_key(self) -> str:
        return (
            f"no API key for the openai backend: set {self._api_key_env} in the "
            f"environment (or api_key / api_key_env in {TABLE} of pyproject.toml)"
        )

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """What changes the video: the fields sent, plus the take (takes are separate renders).

        Not the base URL or key; the image's digest is hashed by the caller.
        """
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "take": shot.take,
            "model": shot.model,
            "prompt": shot.prompt,
            "seconds": _wire_seconds(shot.seconds),
            "size": f"{shot.width}x{shot.height}",
            "image": shot.image is not None,
            "remix": shot.remix_of is not None,
        }

    # -- the network --

    def connect(self, shot: ShotRequest) -> None:
        """The SDK's client, made before a create is journaled (see Backend.connect)."""
        self._get_client()

    def submit(self, shot: ShotRequest) -> str:
        """Send exactly one create (multipart, the image as a file part); return the job id."""
        client = self._get_client()
        kwargs: dict[str, Any] = {
            "model": shot.model,
            "prompt": shot.prompt,
            "seconds": _wire_seconds(shot.seconds),
            "size": f"{shot.width}x{shot.height}",
        }
        if shot.image is not None:
            # A file part: the SDK's dict form of input_reference is broken.
            kwargs["input_reference"] = (
                f"{shot.image.stem}.png",
                fit_image(shot.image, shot.width, shot.height),
                "image/png",
            )
        video = self._call(lambda: client.videos.create(**kwargs), stage="create")
        with self._lock:
            self._claimed.add(video.id)
        return video.id

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """Send exactly one remix of an earlier job (POST /v1/videos/{id}/remix)."""
        client = self._get_client()
        video = self._call(
            lambda: client.videos.remix(source_job_id, prompt=shot.prompt), stage="create"
        )
        with self._lock:
            self._claimed.add(video.id)
        return video.id

    def find(
        self, shot: ShotRequest, since: float, exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """The oldest unclaimed job matching the request created at or after `since`.

        Prompts are compared whitespace-normalised: gateways strip and collapse what they echo.
        """
        client = self._get_client()
        size = f"{shot.width}x{shot.height}"
        want = (shot.model, policy.normalised(shot.prompt), _wire_seconds(shot.seconds), size)
        cutoff = since - FIND_SLACK
        found: str | None = None

        def scan() -> None:
            nonlocal found
            page = client.videos.list(limit=FIND_PAGE, order="desc")
            for _ in range(FIND_MAX_PAGES):
                for video in page.data:
                    if video.created_at < cutoff:
                        return
                    if video.id in exclude or self._is_claimed(video.id):
                        continue
                    if _identity(video) == want:
                        found = video.id  # keep going: the oldest match is the likeliest
                if not page.data or not page.has_next_page():
                    return
                page = page.get_next_page()

        self._call(scan, stage="list")
        if found is not None:
            with self._lock:
                self._claimed.add(found)
        return found

    def poll(self, job_id: str) -> JobStatus:
        """The job's state; `poll_after` follows the server's `openai-poll-after-ms` header."""
        client = self._get_client()
        raw = self._call(
            lambda: client.videos.with_raw_response.retrieve(job_id), job=job_id, stage="job"
        )
        video: Video = self._call(raw.parse, job=job_id, stage="job")
        poll_after: float | None = None
        header = raw.headers.get("openai-poll-after-ms")
        if header is not None:
            try:
                poll_after = max(0.0, float(header) / 1000.0)
            except ValueError:
                poll_after = None
        extra = {"progress": video.progress, "model": video.model, "size": video.size}
        extra |= {"seconds": video.seconds, "expires_at": video.expires_at}
        if video.status == "completed":
            return JobStatus("done", poll_after=poll_after, extra=extra)
        if video.status == "failed":
            error = video.error
            message = (
                f"{error.message} ({error.code})"
                if error is not None
                else "the job failed without a message"
            )
            return JobStatus("failed", error=self._scrub(message), extra=extra)
        state = "queued" if video.status == "queued" else "running"
        progress = video.progress / 100 if isinstance(video.progress, int | float) else None
        return JobStatus(state, poll_after=poll_after, extra=extra, progress=progress)

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Stream the video to dest through a `.part` file beside it (never whole in memory),
        hashing it as it arrives; returns its digest and length.

        A transfer cut short keeps its `.part`: the next call asks for the rest with a Range
        request and appends it on 206; a 200 or a 416 starts the file over. Fewer bytes than
        the server announced (Content-Length, or a range's total) is a transfer cut short.
        """
        import openai

        client = self._get_client()

        def fetch(part: policy.Part, offset: int) -> bool:
            """Write the body to part from offset; False when the server did not resume there."""
            headers = {"Range": f"bytes={offset}-"} if offset else None
            try:
                with client.videos.with_streaming_response.download_content(
                    job_id, extra_headers=headers
                ) as response:
                    start = 0  # a 200 is the whole file, Range or not
                    if response.status_code == 206:
                        if _range_start(response.headers.get("content-range")) != offset:
                            return False
                        start = offset
                    part.announce(policy.content_length(response.headers))
                    with part.open(start) as f:
                        # As received: a fixed-size chunker drops the tail of a cut transfer.
                        for n, chunk in enumerate(response.iter_bytes()):
                            f.write(chunk)
                            if n == 0:
                                f.out.flush()  # a kill here leaves the first bytes in the part
                                faults.point("mid-download")
            except openai.APIStatusError as exc:
                if offset and exc.status_code == 416:
                    return False  # the part is no prefix of what the server has now
                raise
            return True

        def fetch_rest(part: policy.Part) -> None:
            offset = part.path.stat().st_size if part.path.is_file() else 0
            if fetch(part, offset):
                return
            part.path.unlink(missing_ok=True)
            if not fetch(part, 0):
                raise Transient(f"job {job_id}: the server sent a range that was not asked for")

        with policy.part_file(dest, resumable=True) as part:
            self._call(lambda: fetch_rest(part), job=job_id, stage="download")
            try:
                return part.finish()
            except Transient as err:
                raise Transient(f"job {job_id}: {err}") from None

    def _official_endpoint(self) -> bool:
        """Whether requests would go to OpenAI's own API, whose Videos endpoints are gone."""
        url = self._base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return urlsplit(url).hostname == "api.openai.com"

    def claim(self, job_id: str) -> None:
        """Mark a job as owned (e.g. journaled by an earlier run), so `find` never hands it to
        another take with the same request."""
        with self._lock:
            self._claimed.add(job_id)

    def close(self) -> None:
        """Close the SDK client's connections (optional: it is reopened on next use)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- the client, errors and warnings --

    def _get_client(self) -> OpenAI:
        """The SDK client, made once on first use: no retries, a bounded timeout."""
        with self._lock:
            if self._client is not None:
                return self._client
            key = self._api_key or os.environ.get(self._api_key_env, "")
            if not key:
                raise Refused(self._no_key())
            import httpx2
            from openai import OpenAI

            client = OpenAI(
                api_key=key,
                base_url=self._base_url,  # None: OPENAI_BASE_URL, else OpenAI's own
                max_retries=0,
                timeout=httpx2.Timeout(self._timeout, connect=min(15.0, self._timeout)),
            )
            # Resolve the SDK's lazy attributes here, under the lock, not racing in threads.
            videos = client.videos
            _ = (videos.with_raw_response, videos.with_streaming_response)
            self._secret = key
            self._client = client
            return client

    def _is_claimed(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._claimed

    def _scrub(self, text: str) -> str:
        """text without the API key, whatever the provider echoed."""
        return policy.scrub(text, self._secret)

    def _call(self, fn: Callable[[], _T], *, stage: policy.Stage, job: str | None = None) -> _T:
        """Run one SDK call with its DeprecationWarning silenced and its errors classified."""
        import openai

        try:
            with _quiet_sdk():
                return fn()
        except openai.APIStatusError as exc:
            raise self._status_error(exc, stage, job) from None
        except openai.APIConnectionError as exc:
            raise self._transport_error(exc, exc.__cause__ or exc.__context__) from None
        except openai.OpenAIError as exc:
            raise Transient(self._scrub(f"openai SDK error: {exc}"), sent=True) from None
        except Exception as exc:
            # httpx2 errors raised while streaming a body, outside the SDK's own wrapping.
            if policy.transport_sent(exc) is not None:
                raise self._transport_error(exc, exc) from None
            raise

    def _transport_error(self, exc: Exception, cause: BaseException | None) -> Transient:
        """A timeout or a dropped or refused connection; `sent` False only when it never left."""
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        where = self._base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        sent = policy.transport_sent(cause) is not False
        return Transient(self._scrub(f"connection to {where} failed ({detail})"), sent=sent)

    def _status_error(self, exc: Any, stage: policy.Stage, job: str | None) -> BackendError:
        """An HTTP error answer: an unknown model names the shutdown; the rest is policy."""
        status: int = exc.status_code
        request_id = exc.request_id
        suffix = f" (HTTP {status}" + (f", request {request_id})" if request_id else ")")
        message = self._scrub(_provider_message(exc)) + suffix
        code = str(exc.code or "")
        if code == "model_not_found" or (stage == "create" and status in (404, 410)):
            return Refused(f"{message}. {SHUTDOWN}")
        return policy.from_status(
            status,
            message,
            stage=stage,
            code=code,
            retry_after=policy.retry_after(exc.response.headers),
            job=job,
            credentials=f"check {self._api_key_env} (or api_key in {TABLE})",
        )


def fit_image(path: Path, width: int, height: int) -> bytes:
    """The image scaled to cover width x height and centre-cropped to it exactly, as PNG.

    The API rejects a reference whose size differs from the video's.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise Refused(f"{path}: cannot read the image reference: {exc}") from None
    if rgb.size != (width, height):
        rgb = ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_filter: Any = None
QUIET_MODULES = r"(runner\.backends\.openai|openai)(\.|$)"
"""Where the SDK's DeprecationWarnings are raised from: our calls, and its own wrappers."""


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """Ignore DeprecationWarnings raised from SDK calls while any thread is inside one.

    The warnings filter list is process-wide (Python 3.11), and `catch_warnings` entered by
    concurrent threads restores snapshots out of order. So the first caller puts one narrow
    filter (DeprecationWarning from this module or the SDK) in front of whatever is there,
    and the last caller takes exactly that filter out again, leaving others' filters alone.
    """
    global _quiet_depth, _quiet_filter
    with _quiet_lock:
        if _quiet_depth == 0:
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=QUIET_MODULES)
            _quiet_filter = warnings.filters[0]
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                with suppress(ValueError):  # someone else's catch_warnings already undid it
                    cast(list[Any], warnings.filters).remove(_quiet_filter)
                _quiet_filter = None


def _identity(video: Video) -> tuple[str, str | None, str, str]:
    """The fields `find` matches on, in the wire format, the prompt whitespace-normalised."""
    seconds = str(video.seconds)
    with suppress(ValueError):
        seconds = _wire_seconds(float(seconds))
    prompt = None if video.prompt is None else policy.normalised(video.prompt)
    return str(video.model), prompt, seconds, str(video.size)


def _range_start(content_range: str | None) -> int | None:
    """The first byte offset of a `Content-Range: bytes START-END/LENGTH` header."""
    if content_range is None:
        return None
    unit, _, spec = content_range.strip().partition(" ")
    start, sep, _ = spec.partition("-")
    if unit.lower() != "bytes" or not sep or not start.strip().isdigit():
        return None
    return int(start)


def _wire_seconds(seconds: float) -> str:
    """Seconds as the wire sends them: "4", not "4.0"."""
    return f"{seconds:g}"


def _provider_message(exc: Any) -> str:
    """The provider's own error message from an SDK status error."""
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str) and inner:
            return inner
    return str(getattr(exc, "message", "") or exc)


__all__ = ["OpenAIBackend", "fit_image"]
