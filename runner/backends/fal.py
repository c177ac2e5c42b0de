"""The `fal` backend: the models behind fal's queue (Veo, Kling, Wan, ...) through the official
`fal-client`, imported only when the backend is used.

A model is a fal endpoint id (`fal-ai/veo3/fast`); the job id is `ENDPOINT/requests/ID`.
Every request goes out once (runner/backends/fal_http.py): the runner retries, journaled. A
submit whose answer was lost is found again in fal's request history (`GET api.fal.ai/v1/
models/requests/by-endpoint?expand=payloads`, which fal-client does not wrap), by its input.
A fal request never ends FAILED: it reaches COMPLETED with the model's error (a 422 validation
or content-policy error), reported in fal's words and never retried. IN_QUEUE is in flight.
Results stay about an hour after a request completes, so the video is downloaded as soon as
it does.

Connection: FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), or `api_key` in
`[tool.runner.backends.fal]`; `base_url` there sends everything meant for fal's hosts (queue,
REST, storage, request history, CDN) to one server instead; proxies and CA files come from
the environment, as httpx reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runner.backends import policy
from runner.backends.base import (
    BackendError,
    Expired,
    JobStatus,
    Refused,
    ShotRequest,
    Transient,
    Untrusted,
)
from runner.backends.fal_models import BUILTIN, FIXED, NEW_ROW, SIZES, FalRow, arguments, problem
from runner.backends.table import TableAnswers
from runner.digest import Hashed
from runner.film import model_table

if TYPE_CHECKING:
    from runner.backends.fal_http import Answered, Connection

RECIPE_VERSION = 1
"""Bumped when the meaning of a request field changes, so cached clips re-render."""
TABLE = "[tool.runner.backends.fal]"
CONFIG_KEYS = ("api_key", "base_url", "models", "timeout", "poll_seconds")
HISTORY_URL = "https://api.fal.ai/v1/models/requests/by-endpoint"
DEFAULT_TIMEOUT = 120.0  # seconds per read; connecting gets at most 15
DEFAULT_POLL = 3.0  # seconds between status checks (fal sends no hint)
FIND_SLACK = 10.0  # seconds: fal's sent_at is on another clock; an older identical request
# (another take, already recorded) must not be adopted, so the window stays narrow
FIND_PAGE = 100  # the history's largest page
FIND_MAX_PAGES = 20
UPLOAD_REUSE = 6 * 86400.0  # seconds an uploaded image's URL is reused (uploads live 7 days)
ANY = "<any file>"  # `find` for an image or video whose upload this machine does not know
MODEL_ERRORS = (400, 422)  # a COMPLETED request's result with these is the model's refusal
NO_KEY = (
    "no API key for the fal backend: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET) in the "
    f"environment, or api_key in {TABLE} of pyproject.toml"
)

_T = TypeVar("_T")


class FalBackend(TableAnswers):
    """Renders on fal's queue; safe to share across threads."""

    name = "fal"
    default_model = "fal-ai/veo3/fast"
    reconciles = True  # the request history lists recent requests with their input
    lands_late = True  # a create sent before a kill can still be made

    _table = TABLE
    _new_row = NEW_ROW
    _models: Mapping[str, FalRow]

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        cfg = self._settings(config, CONFIG_KEYS, DEFAULT_TIMEOUT, DEFAULT_POLL)
        models = cfg.get("models", {})
        self._models = model_table.load(
            TABLE, models, BUILTIN, NEW_ROW, sizes=SIZES, fixed=FIXED, row_type=FalRow
        )
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._secret = ""  # the key in use, scrubbed from every message
        self._claimed: set[str] = set()  # request ids handed out by submit/find here
        self._videos: dict[str, str] = {}  # job id -> its video's URL, once completed

    # -- capability and price tables (pure: planning never touches the network) --

    def _problem(self, shot: ShotRequest, row: Any) -> str | None:
        return problem(shot, row)

    def credentials_problem(self) -> str | None:
        """No key, or a CA bundle that cannot be read (checked before the first create)."""
        return policy.ca_bundle_problem() if self._key() else NO_KEY

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The endpoint's input as sent (the image by presence: its digest is hashed by the
        caller), the take, and the endpoint; not the key or the base URL."""
        row = self._models.get(shot.model, NEW_ROW)
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "model": shot.model,
            "take": shot.take,
            "input": arguments(shot, row),
            "image": shot.image is not None,
            # By presence (their digests are hashed by the caller), only when given.
            **({"end_image": True} if shot.end_image is not None else {}),
            **({"extend": True} if shot.extend_of is not None else {}),
        }

    # -- the network --

    def connect(self, shot: ShotRequest) -> None:
        """The client, and the shot's images uploaded (once per digest: `submit` finds them
        there), before a create is journaled (see Backend.connect)."""
        connection = self._connect()
        if self.check(shot) is None:  # else submit refuses it, in words
            for _, path in _files(shot, self._models[shot.model]):
                self._upload(connection, path)

    def submit(self, shot: ShotRequest) -> str:
        """Upload the first frame (once per digest), then send exactly one submit."""
        why = self.check(shot)
        if why is not None:
            raise Refused(f"fal cannot render shot {shot.shot!r}: {why}")
        connection = self._connect()
        row = self._models[shot.model]
        args = arguments(shot, row)
        for field, path in _files(shot, row):
            args[field] = self._upload(connection, path)
        handle = self._call(lambda: connection.client.submit(shot.model, args), stage="create")
        with self._lock:
            self._claimed.add(handle.request_id)
        return _job_id(shot.model, handle.request_id)

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """fal's video endpoints here have no remix; the planner never sends one."""
        raise Refused(f"{self.name} cannot remix a video")

    def find(
        self, shot: ShotRequest, since: float, exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """The oldest unclaimed request in fal's history for the shot's endpoint, sent at or
        after `since`, whose input matches the shot's (prompts whitespace-normalised)."""
        connection = self._connect()
        row = self._models.get(shot.model, NEW_ROW)
        args = arguments(shot, row)
        for field, path in _files(shot, row):
            args[field] = self._uploaded(_digest(path)) or ANY
        want = _identity(args)
        owned = {_request_id(j) for j in exclude}
        start = datetime.fromtimestamp(since - FIND_SLACK, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        params: dict[str, str | int] = {"endpoint_id": shot.model, "expand": "payloads"}
        params |= {"start": start, "limit": FIND_PAGE}
        found: list[tuple[str, str]] = []
        for _ in range(FIND_MAX_PAGES):
            page = self._call(
                lambda: connection.api.get(HISTORY_URL, params=params).json(), stage="list"
            )
            if not isinstance(page, dict):
                raise Transient("fal's request history answered with something else than a page")
            for item in page.get("items") or []:
                rid = str(item.get("request_id") or "")
                if not rid or rid in owned or self._is_claimed(rid):
                    continue
                given = item.get("json_input")
                if isinstance(given, dict) and _identity(given, like=want) == want:
                    found.append((str(item.get("sent_at") or ""), rid))
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                break
            params["cursor"] = str(cursor)
        if not found:
            return None
        rid = min(found)[1]  # the oldest match is the likeliest
        with self._lock:
            self._claimed.add(rid)
        return _job_id(shot.model, rid)

    def poll(self, job_id: str) -> JobStatus:
        """IN_QUEUE (with its queue position), IN_PROGRESS (with fal's last log line), or
        COMPLETED: done once its result names a video, failed with the model's own error."""
        import fal_client

        client = self._connect().client
        endpoint, rid = _split(job_id)
        status = self._call(
            lambda: client.status(endpoint, rid, with_logs=True), stage="job", job=job_id
        )
        if isinstance(status, fal_client.Queued):
            extra = {"queue_position": status.position}
            return JobStatus("queued", poll_after=self.poll_seconds, extra=extra)
        if isinstance(status, fal_client.InProgress):
            return JobStatus("running", poll_after=self.poll_seconds, extra=_last_log(status.logs))
        if isinstance(status, fal_client.Completed) and status.error:
            kind = f" ({status.error_type})" if status.error_type else ""
            return JobStatus("failed", error=self._scrub(f"{status.error}{kind}"))
        refusal = self._completed(job_id)
        if refusal is not None:
            return JobStatus("failed", error=refusal)
        return JobStatus("done")

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Stream the result's video to dest through a `.part` file beside it, hashing it as
        it arrives; returns its digest and length."""
        url = self._video_url(job_id)
        media = self._connect().media

        def fetch(part: policy.Part) -> None:
            with media.stream("GET", url) as response:
                policy.stream_into(part, response.iter_raw(), response.headers)

        with policy.part_file(dest) as part:
            self._call(lambda: fetch(part), stage="download", job=job_id)
            try:
                return part.finish()
            except Transient as err:
                raise Transient(f"fal job {job_id}: {err}") from None

    def cancel(self, job_id: str) -> None:
        """Cancel a request (fal refunds it only while it is still IN_QUEUE)."""
        client = self._connect().client
        endpoint, rid = _split(job_id)
        self._call(lambda: client.cancel(endpoint, rid), stage="job", job=job_id)

    def claim(self, job_id: str) -> None:
        """Mark a request as owned, so `find` never hands it to another take."""
        with self._lock:
            self._claimed.add(_request_id(job_id))

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # -- results and uploads --

    def _completed(self, job_id: str) -> str | None:
        """Fetch a COMPLETED request's result: None when it names a video (kept for the
        download), else the model's error in fal's words."""
        client = self._connect().client
        endpoint, rid = _split(job_id)
        try:
            result = self._call(lambda: client.result(endpoint, rid), stage="job", job=job_id)
        except _ModelError as err:
            return str(err)
        video = result.get("video") if isinstance(result, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        if not isinstance(url, str) or not url:
            keys = ", ".join(sorted(result)) if isinstance(result, dict) else type(result).__name__
            return f"fal's result for {job_id} names no video (it has: {keys})"
        with self._lock:
            self._videos[job_id] = url
        return None

    def _video_url(self, job_id: str) -> str:
        with self._lock:
            url = self._videos.get(job_id)
        if url is None:
            refusal = self._completed(job_id)  # a resumed run: the result, again (free)
            if refusal is not None:
                raise Expired(refusal)
            with self._lock:
                url = self._videos[job_id]
        return url

    def _upload(self, connection: Connection, image: Path) -> str:
        """The image's URL on fal's storage: uploaded once per digest, the URL kept (and
        reused by later runs, so `find` can match the input a lost submit sent)."""
        from runner.backends.fal_http import upload

        try:
            data = image.read_bytes()
        except OSError as exc:
            raise Refused(f"{image}: cannot read the image: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        known = self._uploaded(digest)
        if known is not None:
            return known
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
        if data[4:8] == b"ftyp":  # an MP4: the video an extension continues
            mime = "video/mp4"
        name = f"{digest[:16]}.{mime.rpartition('/')[2]}"
        try:
            url = self._call(lambda: upload(connection, data, mime, name), stage="list")
        except Transient as err:  # nothing was submitted: the create never left
            raise Transient(str(err), sent=False) from None
        record = self.workdir / "uploads" / f"{digest}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "url": url, "uploaded_at": time.time()}))
        os.replace(tmp, record)
        return url

    def _uploaded(self, digest: str) -> str | None:
        """The URL an earlier upload of this image got, while it is still reusable."""
        try:
            record = json.loads((self.workdir / "uploads" / f"{digest}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("version") != 1:
            return None
        fresh = time.time() - float(record.get("uploaded_at", 0)) < UPLOAD_REUSE
        url = record.get("url")
        return url if fresh and isinstance(url, str) else None

    # -- the client and errors --

    def _key(self) -> str:
        if self._api_key:
            return self._api_key
        if os.environ.get("FAL_KEY"):
            return os.environ["FAL_KEY"]
        key_id, secret = os.environ.get("FAL_KEY_ID"), os.environ.get("FAL_KEY_SECRET")
        return f"{key_id}:{secret}" if key_id and secret else ""

    def _connect(self) -> Connection:
        """fal-client and its httpx clients, made once, on first use."""
        with self._lock:
            if self._connection is None:
                key = self._key()
                if not key:
                    raise Refused(NO_KEY)
                from runner.backends.fal_http import connect

                self._secret = key
                self._connection = connect(key, self._base_url, self._timeout)
            return self._connection

    def _is_claimed(self, rid: str) -> bool:
        with self._lock:
            return rid in self._claimed

    def _scrub(self, text: str) -> str:
        return policy.scrub(text, self._secret, *self._secret.split(":"))

    def _call(self, fn: Callable[[], _T], *, stage: policy.Stage, job: str | None = None) -> _T:
        """Run one call through fal-client or httpx, its failures classified."""
        import httpx

        from runner.backends.fal_http import Answered, SendFailed

        try:
            return fn()
        except Answered as exc:
            raise self._answered(exc, stage, job) from None
        except SendFailed as exc:
            raise self._transport(exc.cause, exc.host) from None
        except httpx.TransportError as exc:  # a streamed video cut short
            raise self._transport(exc, _host(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not fal's JSON
            if stage == "download":
                raise
            raise Transient(self._scrub(f"fal sent an answer it could not read: {exc}")) from None

    def _transport(self, cause: Exception, host: str) -> BackendError:
        """A transport failure: retried (Transient), except a certificate this machine does
        not trust, which no retry mends: a refusal, whose message says which CA file to set."""
        why = policy.untrusted(cause)
        if why is not None:
            return Untrusted(self._scrub(policy.untrusted_message(host, why)))
        where = self._base_url or "fal"
        sent = policy.transport_sent(cause) is not False
        text = f"connection to {where} failed ({type(cause).__name__}: {cause})"
        return Transient(self._scrub(text), sent=sent)

    def _answered(self, exc: Answered, stage: policy.Stage, job: str | None) -> BackendError:
        """An HTTP error answer: a COMPLETED request's model error, or policy's classes."""
        from runner.backends.fal_http import json_body

        body = json_body(exc.body)
        message = self._scrub(_fal_message(body, exc.body)) + f" (HTTP {exc.status})"
        if stage == "job" and exc.status in MODEL_ERRORS:
            return _ModelError(message)
        error_type = body.get("error_type") if isinstance(body, dict) else None
        return policy.from_status(
            exc.status,
            f"fal: {message}",
            stage=stage,
            code=str(error_type or exc.headers.get("x-fal-error-type") or ""),
            retry_after=policy.retry_after(exc.headers),
            job=job,
            credentials=f"check FAL_KEY (or api_key in {TABLE})",
        )


class _ModelError(Refused):
    """A COMPLETED request whose result is the model's error (validation, content policy)."""


def _files(shot: ShotRequest, row: FalRow) -> list[tuple[str, Path]]:
    """The input fields that take an uploaded file's URL, and the files: the first frame,
    the last frame, the video extended."""
    files = [("image_url", shot.image)]
    files.append((row.last_frame_field or "", shot.end_image))
    files.append((row.video_field or "", shot.extend_video if shot.extend_of else None))
    return [(field, path) for field, path in files if field and path is not None]


def _job_id(endpoint: str, request_id: str) -> str:
    return f"{endpoint}/requests/{request_id}"


def _split(job_id: str) -> tuple[str, str]:
    endpoint, sep, rid = job_id.rpartition("/requests/")
    if not sep or not endpoint or not rid:
        raise Refused(f"{job_id!r} is not a fal job id (ENDPOINT/requests/ID)")
    return endpoint, rid


def _request_id(job_id: str) -> str:
    return job_id.rpartition("/requests/")[2]


def _identity(args: Mapping[str, Any], like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The input `find` compares: the fields the runner sends (`like`'s keys; others fal
    added are left out), the prompt whitespace-normalised; ANY file matches any file."""
    out = {k: args.get(k) for k in (like if like is not None else args)}
    prompt = out.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = policy.normalised(prompt)
    for key, value in (like or {}).items():  # the first or last frame, the video extended
        if value == ANY and out.get(key):
            out[key] = ANY
    return out


def _host(exc: Any) -> str:
    """The host an httpx error's request went to."""
    try:
        return str(exc.request.url.host)
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when it has none
        return "fal"


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _last_log(logs: list[dict[str, Any]] | None) -> dict[str, Any]:
    if not logs:
        return {}
    last = logs[-1]
    return {"log": str(last.get("message", "")) if isinstance(last, dict) else str(last)}


def _fal_message(body: Any, raw: bytes) -> str:
    """fal's own words from an error body: `detail` as text, or its validation items."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                text = str(item.get("msg", item))
                parts.append(f"{where}: {text}" if where else text)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    text = raw.decode("utf-8", "replace").strip()
    return text[:500] or "no message"


__all__ = ["FalBackend"]
