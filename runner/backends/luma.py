"""The `luma` backend: Luma's Dream Machine API (Ray 2, Ray Flash 2) through the official
`lumaai` SDK, imported only when the backend is used.

Every call goes out once (`max_retries=0`): the SDK would re-POST an unanswered create and
Luma would bill each. A create whose answer was lost is found again by listing generations
(newest first, each with the echo of its `request`) and matching the shot's request. A failed
generation is refunded by Luma: a moderation failure is reported in Luma's words and not
retried; any other failure is sent again (once more than that is a failed node). Luma answers
429 over the account's concurrency: the pool's concurrency keeps to [limits.luma].

Connection: LUMAAI_API_KEY (or `api_key` in `[tool.runner.backends.luma]`); LUMAAI_BASE_URL
or `base_url` there, with its `/dream-machine/v1` prefix. A first frame goes to Luma as a URL
it can fetch (its docs: "upload and use your own cdn image urls, currently this is the only
way to pass an image"): the runner writes it, named by its digest, to `image_store` (an
fsspec URL: s3://, gs://, file://) and sends `image_url` + the name.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
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
from runner.backends.luma_models import BUILTIN, FIXED, NEW_ROW, SIZES, LumaRow, arguments, problem
from runner.backends.table import TableAnswers
from runner.digest import Hashed
from runner.errors import UserError
from runner.film import model_table

if TYPE_CHECKING:
    import httpx
    from lumaai import LumaAI

RECIPE_VERSION = 1
"""Bumped when the meaning of a request field changes, so cached clips re-render."""
TABLE = "[tool.runner.backends.luma]"
CONFIG_KEYS = (
    "api_key",
    "base_url",
    "models",
    "timeout",
    "poll_seconds",
    "image_store",
    "image_url",
)
DEFAULT_TIMEOUT = 120.0  # seconds per read; connecting gets at most 15
DEFAULT_POLL = 3.0  # seconds between polls (Luma sends no hint)
FIND_SLACK = 10.0  # seconds: created_at is on Luma's clock
FIND_PAGE = 100
FIND_OVERLAP = 10  # each page starts this many before the last one ended: offsets shift
FIND_MAX_PAGES = 20
NO_KEY = (
    "no API key for the luma backend: set LUMAAI_API_KEY in the environment "
    f"(or api_key in {TABLE} of pyproject.toml)"
)
NO_IMAGE_STORE = (
    "Luma takes a first frame only as a URL it can fetch: set image_store (where the runner "
    'writes images, e.g. "s3://bucket/frames") and image_url (where Luma reads them, e.g. '
    f'"https://bucket.s3.amazonaws.com/frames") in {TABLE}'
)
# Luma's failure_reason texts (docs.lumalabs.ai/docs/errors) that sending again cannot fix:
# moderation of the prompt or the frames, and frames Luma could not fetch.
REFUSALS = ("moderation", "blacklisted", "failed to read user input frames")

_T = TypeVar("_T")


class LumaBackend(TableAnswers):
    """Renders on Luma's Dream Machine API; safe to share across threads."""

    name = "luma"
    default_model = "ray-flash-2"
    reconciles = True  # GET /generations lists recent generations with their request
    lands_late = True  # a create sent before a kill can still be made

    _table = TABLE
    _new_row = NEW_ROW
    _models: Mapping[str, LumaRow]

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir
        cfg = self._settings(config, CONFIG_KEYS, DEFAULT_TIMEOUT, DEFAULT_POLL)
        self._image_store = model_table.text_setting(cfg, "image_store", TABLE)
        self._image_url = model_table.text_setting(cfg, "image_url", TABLE)
        if bool(self._image_store) != bool(self._image_url):
            raise UserError(
                f"{model_table.SOURCE}: {TABLE} image_store and image_url go together: "
                + NO_IMAGE_STORE
            )
        self._models = model_table.load(
            TABLE,
            _one_price(cfg.get("models", {})),
            BUILTIN,
            NEW_ROW,
            sizes=SIZES,
            fixed=FIXED,
            row_type=LumaRow,
        )
        self._lock = threading.Lock()
        self._client: LumaAI | None = None
        self._media: httpx.Client | None = None
        self._secret = ""  # the key in use, scrubbed from every message
        self._claimed: set[str] = set()  # generation ids handed out by submit/find here
        self._uploaded: set[str] = set()  # image names known to be in the store

    # -- capability and price tables (pure: planning never touches the network) --

    def price_per_second(self, model: str, width: int, height: int) -> float:
        """USD per second: Luma's price per million pixels at 24 fps, for this frame."""
        row = self._models.get(model)
        return (row.luma_price(width, height) if row else None) or 0.0

    def check(self, shot: ShotRequest) -> str | None:
        """What Luma cannot render about this shot, in words; None when it can."""
        found = super().check(shot)
        images = shot.image is not None or shot.end_image is not None
        if found is None and images and not self._image_store:
            return NO_IMAGE_STORE
        return found

    def _problem(self, shot: ShotRequest, row: Any) -> str | None:
        return problem(shot, row)

    def credentials_problem(self) -> str | None:
        return None if self._key() else NO_KEY

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The create's fields as sent (the image by presence: its digest is hashed by the
        caller) and the take; not the key, the base URL or where images are stored."""
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "take": shot.take,
            "body": arguments(shot),
            "image": shot.image is not None,
            # By presence (the digests are hashed by the caller), only when given.
            **({"end_image": True} if shot.end_image is not None else {}),
            **({"extend": True} if shot.extend_of is not None else {}),
        }

    # -- the network --

    def connect(self, shot: ShotRequest) -> None:
        """The client, and the shot's first frame stored where Luma fetches it (once per
        digest: `submit` finds it there), before a create is journaled (Backend.connect)."""
        self._get_client()
        if self.check(shot) is None:  # else submit refuses it, in words
            self._body(shot, upload=True)

    def submit(self, shot: ShotRequest) -> str:
        """Store the first frame where Luma can fetch it (once per digest), then send exactly
        one create (POST /generations/video); return the generation's id."""
        why = self.check(shot)
        if why is not None:
            raise Refused(f"luma cannot render shot {shot.shot!r}: {why}")
        client = self._get_client()
        body = self._body(shot, upload=True)
        generation = self._call(lambda: client.generations.create(**body), stage="create")
        if not generation.id:
            raise Transient("Luma accepted the create but named no generation", sent=True)
        with self._lock:
            self._claimed.add(generation.id)
        return generation.id

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        raise Refused(f"{self.name} cannot remix a video")

    def find(
        self, shot: ShotRequest, since: float, exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """The oldest unclaimed generation created at or after `since` whose `request` echo
        matches the shot's create (prompts whitespace-normalised).

        The list is newest first by offset; generations created meanwhile push older ones to
        later offsets, and deleted ones pull them earlier, so each page starts FIND_OVERLAP
        entries before the last one ended and ids already seen are skipped."""
        client = self._get_client()
        want = _identity(self._body(shot, upload=False))
        cutoff = since - FIND_SLACK
        seen: set[str] = set()
        found: list[tuple[float, str]] = []
        offset = 0
        for _ in range(FIND_MAX_PAGES):
            page = self._call(partial(_raw_page, client, FIND_PAGE, offset), stage="list")
            items = page.get("generations") or []
            older = False
            for item in items:
                if not isinstance(item, dict):
                    continue
                gid = str(item.get("id") or "")
                created = _timestamp(item.get("created_at"))
                if created is not None and created < cutoff:
                    older = True
                    continue
                if not gid or gid in seen:
                    continue
                seen.add(gid)
                if gid in exclude or self._is_claimed(gid):
                    continue
                echo = item.get("request")
                if isinstance(echo, dict) and _identity(echo, like=want) == want:
                    found.append((created or 0.0, gid))
            more = page.get("has_more")
            if older or not items or more is False or (more is None and len(items) < FIND_PAGE):
                break
            offset += max(1, len(items) - FIND_OVERLAP)
        if not found:
            return None
        gid = min(found)[1]  # the oldest match is the likeliest
        with self._lock:
            self._claimed.add(gid)
        return gid

    def poll(self, job_id: str) -> JobStatus:
        """queued, dreaming (running), completed (done once it names a video) or failed: a
        refusal in Luma's words, or a refunded failure worth sending again."""
        client = self._get_client()
        g = self._call(lambda: client.generations.get(job_id), stage="job", job=job_id)
        extra: dict[str, Any] = {"state": g.state}
        if g.state == "completed":
            if g.assets is None or not g.assets.video:
                # Completed is billed: never sent again on the runner's own initiative.
                why = f"Luma's generation {job_id} completed without a video"
                return JobStatus("failed", error=why, extra=extra)
            return JobStatus("done", extra=extra)
        if g.state == "failed":
            reason = self._scrub(g.failure_reason or "the generation failed without a reason")
            if any(word in reason.lower() for word in REFUSALS):
                if "read user input frames" in reason.lower():
                    reason += f" (check that image_url in {TABLE} is public)"
                return JobStatus("failed", error=reason, extra=extra)
            return JobStatus("failed", error=f"{reason} (refunded by Luma)", refunded=True)
        state = "running" if g.state == "dreaming" else "queued"
        return JobStatus(state, poll_after=self.poll_seconds, extra=extra)

    def download(self, job_id: str, dest: Path) -> Hashed | None:
        """Stream the generation's video (a CDN URL, fetched without the key) to dest, hashed
        as it arrives; returns its digest and length."""
        client = self._get_client()
        g = self._call(lambda: client.generations.get(job_id), stage="download", job=job_id)
        url = g.assets.video if g.assets is not None else None
        if g.state != "completed" or not url:
            raise Expired(f"Luma's generation {job_id} has no video ({g.state})")
        media = self._get_media()

        def fetch(part: policy.Part) -> None:
            with media.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _CdnError(response.status_code, response.text[:300])
                policy.stream_into(part, response.iter_raw(), response.headers)

        with policy.part_file(dest) as part:
            self._call(lambda: fetch(part), stage="download", job=job_id)
            try:
                return part.finish()
            except Transient as err:
                raise Transient(f"luma job {job_id}: {err}") from None

    def claim(self, job_id: str) -> None:
        """Mark a generation as owned, so `find` never hands it to another take."""
        with self._lock:
            self._claimed.add(job_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            media, self._media = self._media, None
        if client is not None:
            client.close()
        if media is not None:
            media.close()

    # -- the create's body and its image --

    def _body(self, shot: ShotRequest, *, upload: bool) -> dict[str, Any]:
        body = arguments(shot)
        keyframes: dict[str, dict[str, str]] = {}
        for slot, image in (("frame0", shot.image), ("frame1", shot.end_image)):
            if image is not None:
                url = self._store_image(image) if upload else self._image_name_url(image)
                keyframes[slot] = {"type": "image", "url": url}
        if shot.extend_of is not None:  # continue that generation forward from its end
            if not shot.extend_job:
                raise Refused(
                    f"luma extends a generation by its id: none is recorded for shot "
                    f"{shot.extend_of!r}; render it again on luma with --rerender"
                )
            keyframes["frame0"] = {"type": "generation", "id": shot.extend_job}
        if keyframes:
            body["keyframes"] = keyframes
        return body

    def _image_name(self, image: Path) -> tuple[str, bytes]:
        try:
            data = image.read_bytes()
        except OSError as exc:
            raise Refused(f"{image}: cannot read the image: {exc}") from None
        kind = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
        return f"{hashlib.sha256(data).hexdigest()}.{kind}", data

    def _image_name_url(self, image: Path) -> str:
        name, _ = self._image_name(image)
        return f"{(self._image_url or '').rstrip('/')}/{name}"

    def _store_image(self, image: Path) -> str:
        """The image's URL: written to image_store once per digest (the name is the digest,
        so a lost create's request can be matched without the network)."""
        if not self._image_store:
            raise Refused(NO_IMAGE_STORE)
        name, data = self._image_name(image)
        url = f"{(self._image_url or '').rstrip('/')}/{name}"
        if name in self._uploaded:
            return url
        import fsspec

        target = f"{self._image_store.rstrip('/')}/{name}"
        try:
            fs, path = fsspec.core.url_to_fs(target)
            if not fs.exists(path):
                parent = path.rpartition("/")[0]
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                with fs.open(path, "wb") as f:
                    f.write(data)
        except OSError as exc:  # nothing was created: the create never left
            text = f"cannot write the first frame to {policy.scrub(self._image_store)}: {exc}"
            raise Transient(self._scrub(text), sent=False) from None
        with self._lock:
            self._uploaded.add(name)
        return url

    # -- the client and errors --

    def _key(self) -> str:
        return self._api_key or os.environ.get("LUMAAI_API_KEY", "")

    def _get_client(self) -> LumaAI:
        """The SDK client, made once on first use: no retries, a bounded timeout."""
        with self._lock:
            if self._client is not None:
                return self._client
            key = self._key()
            if not key:
                raise Refused(NO_KEY)
            from lumaai import LumaAI

            self._client = LumaAI(
                auth_token=key,
                base_url=self._base_url,  # None: LUMAAI_BASE_URL, else Luma's own
                max_retries=0,
                timeout=policy.http_timeout(self._timeout),
            )
            generations = self._client.generations
            _ = generations.with_raw_response  # resolved here, not racing in threads
            self._secret = key
            return self._client

    def _get_media(self) -> httpx.Client:
        """A plain client for the CDN: never the key, no retries."""
        with self._lock:
            if self._media is None:
                self._media = policy.media_client(self._timeout)
            return self._media

    def _is_claimed(self, gid: str) -> bool:
        with self._lock:
            return gid in self._claimed

    def _scrub(self, text: str) -> str:
        return policy.scrub(text, self._secret)

    def _call(self, fn: Callable[[], _T], *, stage: policy.Stage, job: str | None = None) -> _T:
        """Run one SDK or CDN call, its failures classified."""
        import httpx
        import lumaai

        try:
            return fn()
        except lumaai.APIStatusError as exc:
            raise self._status_error(exc, stage, job) from None
        except lumaai.APIConnectionError as exc:
            raise self._transport(exc.__cause__ or exc.__context__ or exc) from None
        except _CdnError as exc:
            raise policy.from_status(
                exc.status, f"Luma's CDN: {exc.text}", stage="download", job=job
            ) from None
        except httpx.TransportError as exc:  # a streamed video cut short
            raise self._transport(exc) from None
        except (lumaai.LumaAIError, ValueError) as exc:  # an answer that is not Luma's JSON
            raise Transient(self._scrub(f"Luma sent an answer it could not read: {exc}")) from None

    def _transport(self, cause: BaseException) -> Transient:
        where = self._base_url or os.environ.get("LUMAAI_BASE_URL") or "api.lumalabs.ai"
        sent = policy.transport_sent(cause) is not False
        text = f"connection to {where} failed ({type(cause).__name__}: {cause})"
        return Transient(self._scrub(text), sent=sent)

    def _status_error(self, exc: Any, stage: policy.Stage, job: str | None) -> BackendError:
        status: int = exc.status_code
        message = self._scrub(_luma_message(exc)) + f" (HTTP {status})"
        return policy.from_status(
            status,
            f"luma: {message}",
            stage=stage,
            retry_after=policy.retry_after(exc.response.headers),
            job=job,
            credentials=f"check LUMAAI_API_KEY (or api_key in {TABLE})",
        )


class _CdnError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


def _one_price(models: object) -> object:
    """pyproject rows as model_table reads them: a row giving one kind of price drops the
    other (a `price_per_second` then holds for every size, as on every backend)."""
    if not isinstance(models, Mapping):
        return models
    out: dict[str, Any] = {}
    for model, row in models.items():
        if isinstance(row, Mapping):
            row = dict(row)
            per_second = "price_per_second" in row or "price" in row
            if per_second and "price_per_million_pixels" not in row:
                row["price_per_million_pixels"] = None
            elif "price_per_million_pixels" in row and not per_second:
                row["price_per_second"] = None  # derived again from the pixel price
        out[model] = row
    return out


def _raw_page(client: LumaAI, limit: int, offset: int) -> dict[str, Any]:
    """One page of GET /generations as Luma sent it (the `request` echoes kept as JSON)."""
    raw = client.generations.with_raw_response.list(limit=limit, offset=offset)
    page = raw.http_response.json()
    if not isinstance(page, dict):
        raise ValueError("the generations list is not an object")
    return page


def _identity(body: Mapping[str, Any], like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields `find` compares: those the runner sends (`like`'s keys), the prompt
    whitespace-normalised; a field the echo leaves out counts as its default."""
    defaults = {"loop": False, "keyframes": None}
    out = {k: body.get(k, defaults.get(k)) for k in (like if like is not None else body)}
    prompt = out.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = policy.normalised(prompt)
    return out


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _luma_message(exc: Any) -> str:
    """Luma's own words from an SDK status error (`detail`, as text or validation items)."""
    body = exc.body
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(getattr(exc, "message", "") or exc)


__all__ = ["LumaBackend"]
