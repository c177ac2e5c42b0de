"""A loopback server speaking OpenAI's Videos protocol, with fault injection for tests.

It answers what the real `openai` SDK sends (multipart create, retrieve with the
`openai-poll-after-ms` header, list with cursor pagination, content download) with JSON shaped
like the real `Video` object, and serves real H.264/AAC MP4s (small, made once per length with
the pinned ffmpeg). Knobs inject the failures a provider really has: 429s, 5xx, creates that
are made but never answered, moderation, truncated downloads, expired content, unknown models.

    with OpenAIServer(job_seconds=0.3, poll_after_ms=50) as server:
        client = OpenAI(base_url=server.base_url, api_key=server.api_key)
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers import loopback
from tests.servers.clips import CLIP_SIZE, labelled, mp4_bytes

SORA_SIZES = {
    "sora-2": ("720x1280", "1280x720"),
    "sora-2-pro": ("720x1280", "1280x720", "1024x1792", "1792x1024", "1080x1920", "1920x1080"),
}
SORA_SECONDS = ("4", "8", "12")
MODERATION_MESSAGE = "Your request was blocked by our moderation system."
REFUSAL_MESSAGE = "Your request was rejected by our safety system."
EXPIRED_MESSAGE = "The video content has expired and is no longer available."


def unique_mp4_bytes(seconds: float, label: str, size: str = CLIP_SIZE) -> bytes:
    """The clip of `seconds`, labelled: different bytes per job, as a hosted model gives (its
    renders are not reproducible)."""
    return labelled(mp4_bytes(seconds, size), label)


@dataclass
class Job:
    """One video job, its state derived from the clock."""

    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created: float  # time.time() at create
    duration: float  # seconds the job takes
    moderated: bool
    has_image: bool
    image_size: tuple[int, int] | None
    expired: bool = False
    remixed_from: str | None = None
    served: list[tuple[float, int, int]] = field(default_factory=list)  # (t, start, bytes sent)

    def status(self, now: float) -> tuple[str, int]:
        """(status, progress) at `now`: queued for the first fifth, then in_progress."""
        elapsed = now - self.created
        if elapsed >= self.duration:
            return ("failed" if self.moderated else "completed"), 100
        progress = int(100 * elapsed / self.duration) if self.duration > 0 else 0
        return ("queued" if elapsed < self.duration / 5 else "in_progress"), progress

    def busy(self, now: float) -> bool:
        return now - self.created < self.duration

    def to_json(self, now: float) -> dict[str, Any]:
        """The job as the real API's `Video` object."""
        status, progress = self.status(now)
        created_at = int(self.created)
        done = status in ("completed", "failed")
        error = {"code": "moderation_blocked", "message": MODERATION_MESSAGE}
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
            "created_at": created_at,
            "completed_at": int(self.created + self.duration) if done else None,
            "expires_at": (int(now) if self.expired else created_at + 3600) if done else None,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
            "remixed_from_video_id": self.remixed_from,
            "error": error if status == "failed" else None,
        }


class OpenAIServer(loopback.LoopbackServer):
    """The Videos protocol on 127.0.0.1 (port 0) in a background thread; thread-safe knobs."""

    prefix = "/v1"

    # Behaviours of a gateway in front of the model; set on an instance before use.
    normalise_prompts = False  # store and echo prompts stripped, whitespace collapsed
    honour_ranges = True  # False: a download's Range header is ignored (200, whole file)

    def __init__(
        self,
        *,
        job_seconds: float = 0.3,
        poll_after_ms: int | None = 50,
        api_key: str | None = None,
        missing_models: set[str] | None = None,
        rpm: int | None = None,
        rpm_window: float = 60.0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__()
        self.job_seconds = job_seconds
        self.unique_videos = False  # True: every job's video has its own bytes
        self.clip_size = CLIP_SIZE  # the frame size of every video served
        self.poll_after_ms = poll_after_ms  # None: no header
        self.api_key = api_key  # None: any non-empty bearer key is accepted
        self.missing_models: set[str] = set(missing_models or ())  # answer 404 model_not_found
        self.rpm = rpm  # accepted creates per `rpm_window` seconds before 429s; None: unlimited
        self.rpm_window = rpm_window  # seconds the rpm limit counts in (60: a real minute)
        # The Retry-After of rpm 429s; None: the honest time until the window frees a slot.
        self.rpm_retry_after = retry_after
        # Observations.
        self.creates: list[dict[str, Any]] = []  # creates that made a job (answered or not)
        self.create_attempts: list[dict[str, Any]] = []  # every parsed create, refused too
        self.jobs: dict[str, Job] = {}
        self.authorizations: set[str] = set()  # Authorization headers seen
        self.in_flight_max = 0
        # Faults.
        self._rate_limits: list[float | str | None] = []
        self._create_failures: list[tuple[int, str | None, str | None]] = []
        self._drops = 0
        self._delays: list[float] = []
        self._poll_failures: list[tuple[int, float | str | None]] = []
        self._truncations: list[bool] = []
        self._moderated: set[str] = set()
        self._refused: dict[str, float] = {}  # prompt substring -> seconds before the 400

    def protocol(self) -> type[_Handler]:
        return _Handler

    # -- fault injection --

    def rate_limit_next(self, n: int, retry_after: float | str | None = 1.0) -> None:
        """The next n creates answer 429 (Retry-After: seconds, or a str sent verbatim)."""
        with self.lock:
            self._rate_limits += [retry_after] * n

    def fail_next_creates(
        self, n: int, status: int = 500, message: str | None = None, code: str | None = None
    ) -> None:
        """The next n creates answer `status` with an error body (and `code`); no job is made."""
        with self.lock:
            self._create_failures += [(status, message, code)] * n

    def drop_next_creates(self, n: int) -> None:
        """The next n creates make their job, then close the connection without an answer."""
        with self.lock:
            self._drops += n

    def delay_next_creates(self, n: int, seconds: float) -> None:
        """The next n creates make their job, then wait `seconds` before answering (a client
        with a shorter timeout gives up on an answer that was coming)."""
        with self.lock:
            self._delays += [seconds] * n

    def fail_next_polls(
        self, n: int, status: int = 500, retry_after: float | str | None = None
    ) -> None:
        """The next n retrieves of a job answer `status` (429 with Retry-After when given)."""
        with self.lock:
            self._poll_failures += [(status, retry_after)] * n

    def moderate(self, substring: str) -> None:
        """Jobs whose prompt contains `substring` end failed with a moderation error."""
        with self.lock:
            self._moderated.add(substring)

    def refuse(self, substring: str, after: float = 0.0) -> None:
        """Creates whose prompt contains `substring` answer 400 (a safety refusal, no job
        made, nothing billed) after `after` seconds."""
        with self.lock:
            self._refused[substring] = after

    def truncate_next_downloads(self, n: int, declare_length: bool = False) -> None:
        """The next n downloads send half the bytes, then close. With `declare_length` the
        full Content-Length is announced (the client can tell); without, the body is
        close-delimited (only decoding the file can tell)."""
        with self.lock:
            self._truncations += [declare_length] * n

    def expire(self, job_id: str) -> None:
        """The job's content is gone: downloads answer 404 with an "expired" message."""
        with self.lock:
            self.jobs[job_id].expired = True

    # -- observations --

    @property
    def downloads(self) -> list[tuple[str, int, int]]:
        """Every video body served, in order: (job id, range start, bytes sent)."""
        with self.lock:
            served = [(t, j.id, start, n) for j in self.jobs.values() for t, start, n in j.served]
        return [(job_id, start, n) for _, job_id, start, n in sorted(served)]

    @property
    def create_times(self) -> list[float]:
        """When each job-making create arrived."""
        with self.lock:
            return [c["t"] for c in self.creates]

    def create_requests(self) -> int:
        """How many POST /v1/videos arrived (answered or not)."""
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == "POST" and p == "/v1/videos")

    def max_creates_in_window(self, seconds: float = 60.0, accepted_only: bool = False) -> int:
        """The most create requests (refused ones too, unless `accepted_only`) that arrived
        within any `seconds`-long window: what a requests-per-minute limit counts."""
        with self.lock:
            records = self.creates if accepted_only else self.create_attempts
            times = [c["t"] for c in records]
        return loopback.most_in_window(times, seconds)

    # -- the protocol (called by the handler) --

    def _remix(self, h: _Handler, source_id: str, body: bytes) -> None:
        """POST /v1/videos/{id}/remix: a new job editing a finished one, with a new prompt."""
        try:
            prompt = str(json.loads(body or b"{}")["prompt"])
        except (ValueError, KeyError, TypeError):
            h.send_error_json(400, "Missing required parameter: 'prompt'.", None, "invalid")
            return
        with self.lock:
            source = self.jobs.get(source_id)
        if source is None or source.expired:
            h.send_error_json(404, f"No video found with id '{source_id}'.", None, "invalid")
            return
        fields = {"prompt": prompt, "model": source.model, "seconds": source.seconds}
        self._create(h, {**fields, "size": source.size}, None, remix_of=source_id)

    def _create(
        self,
        h: _Handler,
        fields: dict[str, str],
        image: bytes | None,
        remix_of: str | None = None,
    ) -> None:
        now = time.time()
        prompt = fields.get("prompt", "")
        model = fields.get("model", "sora-2")
        seconds = fields.get("seconds", "4")
        size = fields.get("size", "720x1280")
        image_size = _image_size(image) if image is not None else None
        record: dict[str, Any] = {
            "prompt": prompt,
            "model": model,
            "seconds": seconds,
            "size": size,
            "has_image": image is not None,
            "image_size": image_size,
            "t": now,
            "status": None,
            "job_id": None,
            "remix_of": remix_of,
        }
        with self.lock:
            self.create_attempts.append(record)
            rate_limit = self._rate_limits.pop(0) if self._rate_limits else False
            failure = self._create_failures.pop(0) if self._create_failures else None
            if rate_limit is False and failure is None and self.rpm is not None:
                window = [c["t"] for c in self.creates if now - c["t"] < self.rpm_window]
                if len(window) >= self.rpm:
                    honest = max(1.0, self.rpm_window - (now - min(window)))
                    fixed = self.rpm_retry_after
                    rate_limit = honest if fixed is None else fixed
        if rate_limit is not False:
            record["status"] = 429
            message = "Rate limit reached for requests per minute. Please try again later."
            headers = loopback.retry_after(rate_limit)
            h.send_error_json(429, message, "rate_limit_exceeded", "requests", headers=headers)
            return
        if failure is not None:
            status, injected, code = failure
            record["status"] = status
            h.send_error_json(status, injected or f"Injected failure ({status}).", code, "server")
            return
        with self.lock:
            refusal = next((t for s, t in self._refused.items() if s in prompt), None)
        if refusal is not None:
            time.sleep(refusal)
            record["status"] = 400
            h.send_error_json(400, REFUSAL_MESSAGE, "content_policy_violation", "invalid_request")
            return
        problem = _invalid(prompt, model, seconds, size, image_size)
        if model in self.missing_models:
            record["status"] = 404
            message = f"The model `{model}` does not exist or you do not have access to it."
            h.send_error_json(404, message, "model_not_found", "invalid_request_error", "model")
            return
        if problem is not None:
            record["status"] = 400
            h.send_error_json(400, problem[1], None, "invalid_request_error", problem[0])
            return
        with self.lock:
            job = Job(
                id=f"video_{uuid.uuid4().hex}",
                model=model,
                prompt=" ".join(prompt.split()) if self.normalise_prompts else prompt,
                seconds=seconds,
                size=size,
                created=now,
                duration=self.job_seconds,
                moderated=any(s in prompt for s in self._moderated),
                has_image=image is not None,
                image_size=image_size,
                remixed_from=remix_of,
            )
            self.jobs[job.id] = job
            record["job_id"] = job.id
            self.creates.append(record)
            self.in_flight_max = max(
                self.in_flight_max, sum(1 for j in self.jobs.values() if j.busy(now))
            )
            drop = self._drops > 0
            self._drops -= int(drop)
            delay = self._delays.pop(0) if self._delays else 0.0
        time.sleep(delay)
        if drop:
            h.drop()
            return
        with self.lock:
            record["status"] = 200
        h.send_json(200, job.to_json(now))

    def _retrieve(self, h: _Handler, job_id: str) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            failure = self._poll_failures.pop(0) if self._poll_failures and job else None
        if job is None:
            h.send_error_json(404, f"Video with id '{job_id}' not found.", None, "invalid_request")
            return
        if failure is not None:
            status, retry_after = failure
            headers = loopback.retry_after(retry_after)
            h.send_error_json(
                status, f"Injected failure ({status}).", None, "server", headers=headers
            )
            return
        headers = {}
        if self.poll_after_ms is not None:
            headers["openai-poll-after-ms"] = str(self.poll_after_ms)
        h.send_json(200, job.to_json(time.time()), headers)

    def _list(self, h: _Handler, query: dict[str, list[str]]) -> None:
        limit = max(1, min(100, int(query.get("limit", ["20"])[0])))
        after = query.get("after", [None])[0]
        now = time.time()
        with self.lock:
            jobs = list(self.jobs.values())  # creation order
        if query.get("order", ["desc"])[0] != "asc":
            jobs.reverse()
        if after is not None:
            ids = [j.id for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        page = jobs[:limit]
        h.send_json(
            200,
            {
                "object": "list",
                "data": [j.to_json(now) for j in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(jobs) > limit,
            },
        )

    def _content(self, h: _Handler, job_id: str) -> None:
        now = time.time()
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            h.send_error_json(404, f"Video with id '{job_id}' not found.", None, "invalid_request")
            return
        status, _ = job.status(now)
        if job.expired:
            h.send_error_json(404, EXPIRED_MESSAGE, "video_expired", "invalid_request_error")
            return
        if status != "completed":
            message = f"Video '{job_id}' is not ready for download (status {status})."
            h.send_error_json(400, message, None, "invalid_request_error")
            return
        if self.unique_videos:
            data = unique_mp4_bytes(float(job.seconds), job.id, self.clip_size)
        else:
            data = mp4_bytes(float(job.seconds), self.clip_size)
        start = _range_start(h.headers.get("Range")) if self.honour_ranges else None
        if start is not None and start >= len(data):
            headers = {"Content-Range": f"bytes */{len(data)}"}
            h.send_error_json(
                416, "Range not satisfiable.", None, "invalid_request_error", None, headers
            )
            return
        with self.lock:
            truncate = self._truncations.pop(0) if self._truncations else None
            body = len(data) - (start or 0)
            job.served.append((time.time(), start or 0, body if truncate is None else body // 2))
        if truncate is None:
            h.send_bytes(data, start)
        else:
            h.send_truncated(data, start, declare_length=truncate)


class _Handler(loopback.Handler):
    server_state: OpenAIServer

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        state = self.server_state
        with state.lock:
            state.authorizations.add(auth)
        if auth == f"Bearer {state.api_key}" or (
            state.api_key is None and auth.startswith("Bearer ") and len(auth) > 7
        ):
            return True
        given = auth.removeprefix("Bearer ")
        # Echo the key whole, as a careless gateway would: clients must not repeat it.
        message = f"Incorrect API key provided: {given}."
        self.send_error_json(401, message, "invalid_api_key", "invalid_request_error")
        return False

    def do_GET(self) -> None:
        self._body()
        if not self._authorised():
            return
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        state = self.server_state
        if parts == ["v1", "videos"]:
            state._list(self, parse_qs(url.query))
        elif len(parts) == 3 and parts[:2] == ["v1", "videos"]:
            state._retrieve(self, parts[2])
        elif len(parts) == 4 and parts[:2] == ["v1", "videos"] and parts[3] == "content":
            state._content(self, parts[2])
        else:
            self.send_error_json(404, f"Unknown path {url.path}", None, "invalid_request_error")

    def do_POST(self) -> None:
        body = self._body()
        if not self._authorised():
            return
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "videos"] and parts[3] == "remix":
            self.server_state._remix(self, parts[2], body)
            return
        if urlsplit(self.path).path != "/v1/videos":
            self.send_error_json(404, f"Unknown path {self.path}", None, "invalid_request_error")
            return
        fields, image = _multipart(self.headers.get("Content-Type", ""), body)
        if "prompt" not in fields:
            self.send_error_json(400, "Missing required parameter: 'prompt'.", None, "invalid")
            return
        self.server_state._create(self, fields, image)

    def send_error_json(
        self,
        status: int,
        message: str,
        code: str | None,
        kind: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": kind, "param": param, "code": code}
        self.send_json(status, {"error": error}, headers)


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], bytes | None]:
    """Form fields and the `input_reference` file part of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    image: bytes | None = None
    if not message.is_multipart():
        return fields, image
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if name == "input_reference" and part.get_filename() is not None:
            image = payload
        elif name:
            fields[str(name)] = payload.decode()
    return fields, image


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except OSError:
        return None


def _invalid(
    prompt: str, model: str, seconds: str, size: str, image_size: tuple[int, int] | None
) -> tuple[str, str] | None:
    """(param, message) for a create the real API would reject; None when it is valid."""
    if not prompt.strip():
        return "prompt", "Invalid 'prompt': empty string."
    try:
        if float(seconds) <= 0:
            raise ValueError
    except ValueError:
        return "seconds", f"Invalid value: '{seconds}'. Expected a number of seconds."
    w, _, h = size.partition("x")
    if not (w.isdigit() and h.isdigit()):
        return "size", f"Invalid value: '{size}'. Expected WIDTHxHEIGHT."
    if model in SORA_SIZES:
        if size not in SORA_SIZES[model]:
            allowed = ", ".join(f"'{s}'" for s in SORA_SIZES[model])
            return "size", f"Invalid value: '{size}'. Supported values are: {allowed}."
        if seconds not in SORA_SECONDS:
            allowed = ", ".join(f"'{s}'" for s in SORA_SECONDS)
            return "seconds", f"Invalid value: '{seconds}'. Supported values are: {allowed}."
    if image_size is not None and image_size != (int(w), int(h)):
        return "input_reference", "Inpaint image must match the requested width and height."
    return None


def _range_start(header: str | None) -> int | None:
    """N of a `Range: bytes=N-` header (the rest of the file); None for any other header."""
    if header is None or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    first = header.removeprefix("bytes=").removesuffix("-")
    return int(first) if first.isdigit() else None


def main() -> None:
    """Serve from a process of its own, so a benchmark counts only the runner's CPU:
    `python -m tests.servers.openai_server --job-seconds 2 --clip-size 720x1280 --unique`
    makes the clip, prints the base URL, serves until its stdin closes, then prints what it
    saw as JSON (creates, first create's time, most jobs in flight)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--job-seconds", type=float, default=0.3)
    parser.add_argument("--poll-after-ms", type=int, default=50)
    parser.add_argument("--clip-size", default=CLIP_SIZE)
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--unique", action="store_true", help="every job its own bytes")
    args = parser.parse_args()
    server = OpenAIServer(job_seconds=args.job_seconds, poll_after_ms=args.poll_after_ms)
    server.clip_size, server.unique_videos = args.clip_size, args.unique
    mp4_bytes(args.clip_seconds, args.clip_size)  # made before the first job needs it
    with server:
        print(server.base_url, flush=True)
        sys.stdin.read()
        times = server.create_times
        seen = {"creates": len(times), "first_create": min(times, default=None)}
        print(json.dumps({**seen, "in_flight_max": server.in_flight_max}), flush=True)


if __name__ == "__main__":
    main()
