"""The `runway` backend: Runway's API (gen4.5, gen4_turbo, veo3.1, ...) through the official
`runwayml` SDK, imported only when the backend is used.

A create is `POST /v1/text_to_video` or `/v1/image_to_video` (the first frame as a data URI);
the task id is the job id, polled with `GET /v1/tasks/{id}`. The SDK's retries are off (by
default it re-sends a create whose answer was lost, and Runway bills each): the runner
retries, journaled. Runway cannot list tasks, so a create whose answer was lost cannot be
found again (`reconciles = False`): the runner stops and asks. A task over the account's
concurrency is accepted as THROTTLED: in flight, never a reason to send again. A FAILED task
with a `SAFETY.*` code is charged and reported in Runway's words; `INTERNAL.*` is refunded,
so the runner may send it again. Output URLs are signed and expire: a URL that no longer
opens is replaced by retrieving the task again, free.

Connection: RUNWAYML_API_SECRET (or `api_key` in `[tool.runner.backends.runway]`);
`base_url` there, else RUNWAYML_BASE_URL, else Runway's API; X-Runway-Version is pinned.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Mapping
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
)
from runner.backends.runway_models import (
    BUILTIN,
    FIXED,
    NEW_ROW,
    RunwayRow,
    body,
    endpoint,
    problem,
)
from runner.backends.table import TableAnswers
from runner.digest import Hashed
from runner.film import model_table

if TYPE_CHECKING:
    import httpx
    from runwayml import RunwayML

RECIPE_VERSION = 1
"""Bumped when the meaning of a request field changes, so cached clips re-render."""
TABLE = "[tool.runner.backends.runway]"
CONFIG_KEYS = ("api_key", "base_url", "models", "timeout", "poll_seconds")
API_VERSION = "2024-11-06"  # X-Runway-Version: pinned, so an SDK upgrade cannot move it
DEFAULT_TIMEOUT = 120.0  # seconds per read; connecting gets at most 15
DEFAULT_POLL = 5.0  # Runway's guides: poll a task no more often than every 5 seconds
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # "base64 data URI ... up to 5MB" (the SDK's docs)
# docs.dev.runwayml.com/errors/errors: 502, 503 and 504 mean Runway shed the request ("May
# retry? Yes"): no task was made. Any other 5xx, a timeout or a lost answer may have made one.
SHED = frozenset({502, 503, 504})
REFUNDED = "INTERNAL"  # failureCode prefix of failures Runway refunds (task-failures page)
NO_KEY = (
    "no API key for the runway backend: set RUNWAYML_API_SECRET in the environment, or "
    f"api_key in {TABLE} of pyproject.toml"
)

_T = TypeVar("_T")


class RunwayBackend(TableAnswers):
    """Renders on Runway's API; safe to share across threads."""

    name = "runway"
    default_model = "gen4.5"
    reconciles = False  # Runway can retrieve or delete a task, never list them
    lands_late = True  # a create sent before a kill can still be made

    _table = TABLE
    _new_row = NEW_ROW
    _models: Mapping[str, RunwayRow]

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        cfg = self._settings(config, CONFIG_KEYS, DEFAULT_TIMEOUT, DEFAULT_POLL)
        models = cfg.get("models", {})
        self._models = model_table.load(
            TABLE, models, BUILTIN, NEW_ROW, fixed=FIXED, row_type=RunwayRow
        )
        self._lock = threading.Lock()
        self._client: RunwayML | None = None
        self._media: httpx.Client | None = None  # the output URLs' client: no key sent there
        self._secret = ""  # the key in use, scrubbed from every message
        self._outputs: dict[str, str] = {}  # task id -> its output URL, once SUCCEEDED

    # -- capability and price tables (pure: planning never touches the network) --

    def _problem(self, shot: ShotRequest, row: Any) -> str | None:
        return problem(shot, row)

    def credentials_problem(self) -> str | None:
        return None if self._key() else NO_KEY

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The create as sent (the image by presence: its digest is hashed by the caller),
        the endpoint and the take; not the key or the base URL."""
        row = self._models.get(shot.model, NEW_ROW)
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "endpoint": endpoint(shot),
            "take": shot.take,
            "body": body(shot, row),
            "image": shot.image is not None,
            # By presence (its digest is hashed by the caller), only when given.
            **({"end_image": True} if shot.end_image is not None else {}),
        }

    # -- the network --

    def connect(self, shot: ShotRequest) -> None:
        """The SDK's client, made before a create is journaled (see Backend.connect)."""
        self._get_client()

    def submit(self, shot: ShotRequest) -> str:
        """Send exactly one create; return the task id."""
        why = self.check(shot)
        if why is not None:
            raise Refused(f"runway cannot render shot {shot.shot!r}: {why}")
        args = body(shot, self._models[shot.model])
        if shot.image is not None and shot.end_image is not None:
            args["prompt_image"] = [
                {"uri": _data_uri(shot.image), "position": "first"},
                {"uri": _data_uri(shot.end_image), "position": "last"},
            ]
        elif shot.image is not None:
            args["prompt_image"] = _data_uri(shot.image)
        client = self._get_client()
        resource = client.image_to_video if shot.image is not None else client.text_to_video
        create: Callable[..., Any] = resource.create
        task = self._call(lambda: create(**args), stage="create")
        task_id = getattr(task, "id", None)
        if not isinstance(task_id, str) or not task_id:
            raise Transient("runway answered the create without a task id", sent=True)
        return task_id

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """No remix here; the planner never sends one (capabilities say remix=False)."""
        raise Refused(f"{self.name} cannot remix a video")

    def find(
        self, shot: ShotRequest, since: float, exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """Always None: Runway's API retrieves and deletes tasks by id but lists none (the
        SDK's `tasks` has `retrieve` and `delete` only), so a lost create cannot be found."""
        return None

    def poll(self, job_id: str) -> JobStatus:
        """PENDING and THROTTLED are queued (in flight), RUNNING reports its progress,
        SUCCEEDED is done (its output URL kept), FAILED and CANCELLED failed in Runway's
        words; an INTERNAL.* failure is marked refunded."""
        task = self._retrieve(job_id)
        status = str(getattr(task, "status", ""))
        after = self.poll_seconds
        if status in ("PENDING", "THROTTLED"):
            return JobStatus("queued", poll_after=after, extra={"throttled": status == "THROTTLED"})
        if status == "RUNNING":
            progress = task.progress if isinstance(task.progress, int | float) else None
            return JobStatus(
                "running", poll_after=after, extra={"progress": task.progress}, progress=progress
            )
        if status == "SUCCEEDED":
            outputs = list(getattr(task, "output", None) or [])
            if not outputs:
                return JobStatus("failed", error=f"runway task {job_id} succeeded with no output")
            with self._lock:
                self._outputs[job_id] = str(outputs[0])
            return JobStatus("done")
        if status == "FAILED":
            code = str(getattr(task, "failure_code", None) or "")
            words = self._scrub(str(getattr(task, "failure", "") or "the task failed"))
            error = f"{words} ({code})" if code else words
            refunded = code.startswith(REFUNDED + ".") or code == REFUNDED
            return JobStatus("failed", error=error, refunded=refunded, extra={"code": code})
        if status == "CANCELLED":
            return JobStatus("failed", error=f"runway task {job_id} was cancelled or deleted")
        return JobStatus("running", poll_after=after, extra={"status": status})

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Stream the task's output to dest through a `.part` file, hashed as it arrives
        (returns its digest and length). A signed URL that has expired (or any URL the CDN
        refuses) is replaced by retrieving the task again."""
        with self._lock:
            url = self._outputs.get(job_id)
        if url is None:
            url = self._fresh_url(job_id)
        with policy.part_file(dest) as part:
            if not self._fetch(url, part, job_id):
                self._fetch(self._fresh_url(job_id), part, job_id, last=True)
            try:
                return part.finish()
            except Transient as err:
                raise Transient(f"runway output of task {job_id}: {err}") from None

    def cancel(self, job_id: str) -> None:
        """Delete a task (Runway cancels it; a task not yet running is not charged)."""
        client = self._get_client()
        self._call(lambda: client.tasks.delete(job_id), stage="job", job=job_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            media, self._media = self._media, None
        if client is not None:
            client.close()
        if media is not None:
            media.close()

    # -- tasks and outputs --

    def _retrieve(self, job_id: str) -> Any:
        client = self._get_client()
        return self._call(lambda: client.tasks.retrieve(job_id), stage="job", job=job_id)

    def _fresh_url(self, job_id: str) -> str:
        """The output URL of a SUCCEEDED task, signed anew (retrieving a task is free)."""
        status = self.poll(job_id)
        if status.state != "done":
            raise Expired(f"runway task {job_id} has no output to download ({status.error})")
        with self._lock:
            return self._outputs[job_id]

    def _fetch(self, url: str, part: policy.Part, job_id: str, *, last: bool = False) -> bool:
        """Write the URL's body to part; False when the URL was refused (signed URLs expire)
        and this is not the `last` try."""
        import httpx

        media = self._get_media()
        try:
            with media.stream("GET", url) as response:
                if response.status_code in (401, 403, 404, 410) and not last:
                    return False
                if response.status_code >= 400:
                    response.read()
                    text = self._scrub(response.text[:300].strip())
                    status = response.status_code
                    message = f"runway output of task {job_id}: HTTP {status}: {text}"
                    if status in (401, 403, 404, 410):  # refused even when freshly signed
                        raise Transient(message)
                    raise policy.from_status(
                        status,
                        message,
                        stage="download",
                        retry_after=policy.retry_after(response.headers),
                        job=job_id,
                    )
                policy.stream_into(part, response.iter_raw(), response.headers)
        except httpx.TransportError as exc:
            raise Transient(self._scrub(f"runway output download failed: {exc}")) from None
        return True

    # -- the client and errors --

    def _key(self) -> str:
        return self._api_key or os.environ.get("RUNWAYML_API_SECRET", "")

    def _get_client(self) -> RunwayML:
        """The SDK client, made once on first use: no retries, a bounded timeout."""
        with self._lock:
            if self._client is not None:
                return self._client
            key = self._key()
            if not key:
                raise Refused(NO_KEY)
            from runwayml import RunwayML

            client = RunwayML(
                api_key=key,
                base_url=self._base_url,  # None: RUNWAYML_BASE_URL, else Runway's API
                runway_version=API_VERSION,
                max_retries=0,
                timeout=policy.http_timeout(self._timeout),
            )
            # Resolve the SDK's lazy resources here, under the lock, not racing in threads.
            _ = (client.text_to_video, client.image_to_video, client.tasks)
            self._secret = key
            self._client = client
            return client

    def _get_media(self) -> httpx.Client:
        with self._lock:
            if self._media is None:
                self._media = policy.media_client(self._timeout)
            return self._media

    def _scrub(self, text: str) -> str:
        return policy.scrub(text, self._secret, self._api_key)

    def _call(self, fn: Callable[[], _T], *, stage: policy.Stage, job: str | None = None) -> _T:
        """Run one SDK call, its failures classified."""
        import runwayml

        try:
            return fn()
        except runwayml.APIStatusError as exc:
            raise self._status_error(exc, stage, job) from None
        except runwayml.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            where = self._base_url or os.environ.get("RUNWAYML_BASE_URL") or "Runway's API"
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            sent = policy.transport_sent(cause) is not False
            text = f"connection to {where} failed ({detail})"
            raise Transient(self._scrub(text), sent=sent) from None
        except runwayml.RunwayMLError as exc:  # an answer that is not Runway's JSON
            raise Transient(self._scrub(f"runway SDK error: {exc}"), sent=True) from None

    def _status_error(self, exc: Any, stage: policy.Stage, job: str | None) -> BackendError:
        status: int = exc.status_code
        message = self._scrub(_runway_message(exc.body, str(exc))) + f" (HTTP {status})"
        if stage == "create" and status in SHED:
            return Transient(f"runway is shedding load: {message}", sent=False)
        return policy.from_status(
            status,
            f"runway: {message}",
            stage=stage,
            retry_after=policy.retry_after(exc.response.headers),
            job=job,
            credentials=f"check RUNWAYML_API_SECRET (or api_key in {TABLE})",
        )


def _data_uri(path: Path) -> str:
    """The first frame as a base64 data URI (Runway takes up to 5 MB this way)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Refused(f"{path}: cannot read the image: {exc}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise Refused(f"{path}: {len(data)} bytes; Runway takes a first frame of at most 5 MB")
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _runway_message(body: Any, fallback: str) -> str:
    """Runway's own words from an error body: `error`, with its validation `issues`."""
    if isinstance(body, Mapping):
        text = str(body.get("error") or "")
        issues = body.get("issues")
        if isinstance(issues, list) and issues:
            parts = []
            for item in issues:
                if isinstance(item, Mapping):
                    where = ".".join(str(p) for p in item.get("path", []))
                    msg = str(item.get("message", item))
                    parts.append(f"{where}: {msg}" if where else msg)
            text = f"{text}: {'; '.join(parts)}" if text else "; ".join(parts)
        if text:
            return text
    return fallback


__all__ = ["RunwayBackend"]
