"""The `openai` backend: the Videos protocol (`/v1/videos`) through the official `openai` SDK.

OpenAI shut its own Videos API and the sora-2 models down on 2026-09-24; gateways still serve
other models on the same protocol, so this backend is mostly used with a gateway's base URL.
The SDK is imported lazily (start-up stays fast), never retries (the runner retries, journaled)
and its DeprecationWarning on the videos methods never reaches users.
"""

from __future__ import annotations

import difflib
import email.utils
import io
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from runner import faults
from runner.backends.base import (
    BackendError,
    Capabilities,
    Expired,
    JobStatus,
    RateLimited,
    Refused,
    ShotRequest,
    Transient,
)
from runner.errors import UserError

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
MODEL_KEYS = ("image", "max_seconds", "price_per_second", "price_per_second_hd", "seconds", "sizes")
DEFAULT_TIMEOUT = 120.0  # seconds per read; connecting gets at most 15
FIND_SLACK = 5.0  # seconds: the provider's created_at is whole seconds on another clock
FIND_PAGE = 50
FIND_MAX_PAGES = 20
HD_AREA = 1280 * 720  # above this many pixels the "hd" price applies
SORA_SECONDS = (4.0, 8.0, 12.0)
SORA_720P = ("1280x720", "720x1280")
SORA_PRO = (*SORA_720P, "1792x1024", "1024x1792", "1920x1080", "1080x1920")


@dataclass(frozen=True)
class ModelRow:
    """What one model accepts and costs; built in, or a row from the pyproject table."""

    sizes: tuple[str, ...] = ()
    seconds: tuple[float, ...] = ()
    max_seconds: float = 60.0
    image: bool = True
    price_per_second: float | None = None
    price_per_second_hd: float | None = None  # above 1280x720; None: same as price_per_second


BUILTIN: dict[str, ModelRow] = {
    "sora-2": ModelRow(SORA_720P, SORA_SECONDS, 12.0, True, 0.10),
    "sora-2-pro": ModelRow(SORA_PRO, SORA_SECONDS, 12.0, True, 0.30, 0.50),
}

_T = TypeVar("_T")


class OpenAIBackend:
    """Renders on any server speaking OpenAI's Videos protocol; safe to share across threads."""

    name = "openai"
    default_model = "sora-2"
    reconciles = True  # GET /v1/videos lists recent jobs: `find` can look for a lost create

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        config = dict(config or {})
        _reject_unknown(config, CONFIG_KEYS, TABLE)
        self._base_url = _optional_str(config, "base_url")
        self._api_key = _optional_str(config, "api_key")
        self._api_key_env = _optional_str(config, "api_key_env") or "OPENAI_API_KEY"
        timeout = config.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise UserError(f"{TABLE} timeout: expected a number of seconds, got {timeout!r}")
        self._timeout = float(timeout)
        self._models = dict(BUILTIN)
        models = config.get("models", {})
        if not isinstance(models, Mapping):
            raise UserError(f"{TABLE} models: expected a table of model rows, got {models!r}")
        for model, row in models.items():
            self._models[model] = _model_row(model, row, BUILTIN.get(model, ModelRow()))
        self._lock = threading.Lock()
        self._client: OpenAI | None = None
        self._secret = ""  # the key in use, scrubbed from every message
        self._claimed: set[str] = set()  # job ids handed out by submit/find in this process

    # -- capability and price tables (pure: planning never touches the network) --

    def capabilities(self, model: str) -> Capabilities:
        """The model's row; permissive for an unknown model (`check` then says what to add)."""
        row = self._models.get(model, ModelRow())
        return Capabilities(
            sizes=row.sizes,
            seconds=row.seconds,
            max_seconds=row.max_seconds,
            image=row.image,
            seed=False,
            negative_prompt=False,  # no such field: `avoid` stays in the compiled text
            remix=True,
        )

    def price_per_second(self, model: str, width: int, height: int) -> float:
        """USD per second of video; sora-2-pro costs more above 720p."""
        row = self._models.get(model)
        if row is None or row.price_per_second is None:
            return 0.0
        if width * height > HD_AREA and row.price_per_second_hd is not None:
            return row.price_per_second_hd
        return row.price_per_second

    def check(self, shot: ShotRequest) -> str | None:
        """What this backend cannot render about the shot, in words; None when it can."""
        row = self._models.get(shot.model)
        add_row = (
            f'add a row to {TABLE}, e.g. models = {{ "{shot.model}" = {{ sizes = ["1280x720"], '
            "seconds = [5, 10], price_per_second = 0.2 } }"
        )
        if self._official_endpoint():
            return (
                f"it would send to api.openai.com. {SHUTDOWN} (a gateway that serves {shot.model})"
            )
        if row is None:
            return f"model {shot.model!r} is not in the openai backend's table; {add_row}"
        if row.price_per_second is None:
            return f"model {shot.model!r} has no price_per_second; {add_row}"
        size = f"{shot.width}x{shot.height}"
        if row.sizes and size not in row.sizes:
            return f"size {size} is not supported by {shot.model}; allowed: {', '.join(row.sizes)}"
        if row.seconds and shot.seconds not in row.seconds:
            allowed = ", ".join(f"{s:g}" for s in row.seconds)
            return f"seconds {shot.seconds:g} is not supported by {shot.model}; allowed: {allowed}"
        if not 0 < shot.seconds <= row.max_seconds:
            return f"seconds {shot.seconds:g} is not in (0, {row.max_seconds:g}] for {shot.model}"
        if shot.image is not None and not row.image:
            return f"{shot.model} takes no image reference"
        return None

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
        video = self._call(lambda: client.videos.create(**kwargs), creating=True)
        with self._lock:
            self._claimed.add(video.id)
        return video.id

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """Send exactly one remix of an earlier job (POST /v1/videos/{id}/remix)."""
        client = self._get_client()
        video = self._call(
            lambda: client.videos.remix(source_job_id, prompt=shot.prompt), creating=True
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
        want = (shot.model, _normalised(shot.prompt), _wire_seconds(shot.seconds), size)
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

        self._call(scan)
        if found is not None:
            with self._lock:
                self._claimed.add(found)
        return found

    def poll(self, job_id: str) -> JobStatus:
        """The job's state; `poll_after` follows the server's `openai-poll-after-ms` header."""
        client = self._get_client()
        raw = self._call(lambda: client.videos.with_raw_response.retrieve(job_id), job=job_id)
        video: Video = self._call(raw.parse, job=job_id)
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
        return JobStatus(state, poll_after=poll_after, extra=extra)

    def download(self, job_id: str, dest: Path) -> None:
        """Stream the video to dest through a `.part` file beside it (never whole in memory).

        A transfer cut short keeps its `.part`: the next call asks for the rest with a Range
        request and appends it on 206; a 200 or a 416 starts the file over.
        """
        import openai

        client = self._get_client()
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")

        def fetch(offset: int) -> bool:
            """Write the body to part from offset; False when the server did not resume there."""
            headers = {"Range": f"bytes={offset}-"} if offset else None
            try:
                with client.videos.with_streaming_response.download_content(
                    job_id, extra_headers=headers
                ) as response:
                    if response.status_code == 206:
                        if _range_start(response.headers.get("content-range")) != offset:
                            return False
                        mode = "ab"
                    else:
                        mode = "wb"  # a 200 is the whole file, Range or not
                    with part.open(mode) as f:
                        # As received: a fixed-size chunker drops the tail of a cut transfer.
                        for n, chunk in enumerate(response.iter_bytes()):
                            f.write(chunk)
                            if n == 0:
                                f.flush()  # a kill here leaves the first bytes in the part
                                faults.point("mid-download")
            except openai.APIStatusError as exc:
                if offset and exc.status_code == 416:
                    return False  # the part is no prefix of what the server has now
                raise
            return True

        def fetch_rest() -> None:
            offset = part.stat().st_size if part.is_file() else 0
            if fetch(offset):
                return
            part.unlink(missing_ok=True)
            if not fetch(0):
                raise Transient(f"job {job_id}: the server sent a range that was not asked for")

        keep = False
        try:
            self._call(fetch_rest, job=job_id, downloading=True)
            os.replace(part, dest)
        except (Transient, RateLimited):
            keep = True  # cut short, or never started: the next call resumes
            raise
        finally:
            if not keep:
                part.unlink(missing_ok=True)

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
        secret = self._secret
        return text.replace(secret, "***") if len(secret) >= 4 else text

    def _call(
        self,
        fn: Callable[[], _T],
        *,
        job: str | None = None,
        creating: bool = False,
        downloading: bool = False,
    ) -> _T:
        """Run one SDK call with its DeprecationWarning silenced and its errors classified."""
        import openai

        try:
            with _quiet_sdk():
                return fn()
        except openai.APIStatusError as exc:
            raise self._status_error(exc, job, creating, downloading) from None
        except openai.APIConnectionError as exc:
            raise self._transport_error(exc, exc.__cause__ or exc.__context__) from None
        except openai.OpenAIError as exc:
            raise Transient(self._scrub(f"openai SDK error: {exc}"), sent=True) from None
        except Exception as exc:
            # httpx2 errors raised while streaming a body, outside the SDK's own wrapping.
            import httpx2

            if isinstance(exc, httpx2.TransportError):
                raise self._transport_error(exc, exc) from None
            raise

    def _transport_error(self, exc: Exception, cause: BaseException | None) -> Transient:
        """A timeout or a dropped or refused connection; `sent` False only when it never left."""
        import httpx2

        never_left = isinstance(cause, httpx2.ConnectError | httpx2.ConnectTimeout)
        never_left |= isinstance(cause, httpx2.PoolTimeout)
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        where = self._base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        return Transient(
            self._scrub(f"connection to {where} failed ({detail})"), sent=not never_left
        )

    def _status_error(
        self, exc: Any, job: str | None, creating: bool, downloading: bool
    ) -> BackendError:
        """Classify an HTTP error answer: 429, refusals, unknown models, expiry, 5xx."""
        status: int = exc.status_code
        message = self._scrub(_provider_message(exc))
        request_id = exc.request_id
        suffix = f" (HTTP {status}" + (f", request {request_id})" if request_id else ")")
        code = str(exc.code or "")
        if status == 429 and code == "insufficient_quota":  # billing, not pace: waiting won't help
            return Refused(f"{message}{suffix}; check the account's quota and billing")
        if status == 429:
            return RateLimited(f"rate limited: {message}{suffix}", _retry_after(exc.response))
        if status >= 500 or status == 408:
            return Transient(f"server error: {message}{suffix}", sent=True)
        if downloading and (status in (404, 410) or "expire" in message.lower()):
            return Expired(f"job {job}: {message}{suffix}")
        if status in (401, 403) and "model" not in message.lower():
            return Refused(f"{message}{suffix}; check {self._api_key_env} (or api_key in {TABLE})")
        if code == "model_not_found" or (creating and status in (404, 410)):
            return Refused(f"{message}{suffix}. {SHUTDOWN}")
        if status == 404 and job is not None:
            return Expired(f"the provider no longer has job {job}: {message}{suffix}")
        return Refused(f"{message}{suffix}")


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
    prompt = None if video.prompt is None else _normalised(video.prompt)
    return str(video.model), prompt, seconds, str(video.size)


def _normalised(prompt: str) -> str:
    """The prompt with runs of whitespace collapsed to one space and its ends stripped."""
    return " ".join(prompt.split())


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


def _retry_after(response: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); else None."""
    headers = response.headers
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise UserError(
                f"{where}: unknown key {key!r}{did_you_mean} (allowed: {', '.join(allowed)})"
            )


def _optional_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    # Never echo the value: it may be a key.
    raise UserError(f"{TABLE} {key}: expected a non-empty string")


def _model_row(model: str, row: Any, base: ModelRow) -> ModelRow:
    """A `models` row from the pyproject table, over the built-in row of the same model."""
    where = f"{TABLE} models.{model}"
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a table, e.g. {{ sizes = [...], seconds = [...] }}")
    _reject_unknown(row, MODEL_KEYS, where)

    def number(key: str) -> float | None:
        value = row.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise UserError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        return float(value)

    sizes = row.get("sizes", base.sizes)
    if not isinstance(sizes, list | tuple) or not all(_is_size(s) for s in sizes):
        raise UserError(f'{where}.sizes: expected a list like ["1280x720"], got {sizes!r}')
    seconds = row.get("seconds", base.seconds)
    if not isinstance(seconds, list | tuple) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in seconds
    ):
        raise UserError(f"{where}.seconds: expected a list like [5, 10], got {seconds!r}")
    image = row.get("image", base.image)
    if not isinstance(image, bool):
        raise UserError(f"{where}.image: expected true or false, got {image!r}")
    max_seconds = number("max_seconds")
    if max_seconds is None:
        max_seconds = max(seconds) if seconds and "seconds" in row else base.max_seconds
    price = number("price_per_second")
    price_hd = number("price_per_second_hd")
    return ModelRow(
        sizes=tuple(str(s) for s in sizes),
        seconds=tuple(float(s) for s in seconds),
        max_seconds=float(max_seconds),
        image=image,
        price_per_second=base.price_per_second if price is None else price,
        price_per_second_hd=(
            (base.price_per_second_hd if price is None else None) if price_hd is None else price_hd
        ),
    )


def _is_size(value: object) -> bool:
    if not isinstance(value, str):
        return False
    w, sep, h = value.partition("x")
    return bool(sep) and w.isdigit() and h.isdigit()


__all__ = ["OpenAIBackend", "fit_image"]
