"""A loopback server speaking Runway's API, with fault injection for tests.

It answers what the real `runwayml` SDK sends: `POST /v1/text_to_video` and
`/v1/image_to_video` (camelCase JSON, checked per model), `GET` and `DELETE /v1/tasks/{id}`,
with `Authorization: Bearer KEY` and `X-Runway-Version: 2024-11-06` required. Tasks over the
account's concurrency are accepted as THROTTLED and start as others finish; a task is then
PENDING, RUNNING (with progress) and SUCCEEDED or FAILED with a `failureCode`. Outputs are
signed URLs (`/outputs/ID.mp4?exp=...&sig=...`, real H.264/AAC MP4s) that stop opening after
`url_ttl` seconds, as Runway's do. Billing as Runway's docs say: SAFETY.* failures are charged,
INTERNAL.* ones refunded, a task deleted before it runs is not charged.

    with RunwayServer(job_seconds=0.3, api_key=KEY) as server:
        backend = RunwayBackend(tmp, {"base_url": server.base_url, "api_key": KEY})
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers import loopback
from tests.servers.clips import mp4_bytes

VERSION = "2024-11-06"
GEN4_RATIOS = ("1280:720", "720:1280", "1104:832", "960:960", "832:1104", "1584:672")
VEO_RATIOS = ("1280:720", "720:1280", "1080:1920", "1920:1080")
MODELS: dict[str, dict[str, Any]] = {  # model -> endpoints, ratios per endpoint, durations
    "gen4.5": {
        "text_to_video": ("1280:720", "720:1280"),
        "image_to_video": GEN4_RATIOS,
        "durations": tuple(range(2, 11)),
    },
    "gen4_turbo": {"image_to_video": GEN4_RATIOS, "durations": tuple(range(2, 11))},
    "veo3.1": {
        "text_to_video": VEO_RATIOS,
        "image_to_video": VEO_RATIOS,
        "durations": (4, 6, 8),
        "positions": ("first", "last"),
    },
    "veo3.1_fast": {
        "text_to_video": VEO_RATIOS,
        "image_to_video": VEO_RATIOS,
        "durations": (4, 6, 8),
        "positions": ("first", "last"),
    },
}
EXPIRED = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Task:
    """One task; it waits THROTTLED while the account is at its concurrency, then runs."""

    id: str
    endpoint: str
    body: dict[str, Any]
    created: float
    seconds: float  # from start to the end
    failure: tuple[str, str] | None = None  # (failureCode, failure)
    started: float | None = None
    cancelled: bool = False  # deleted before it ended
    deleted: bool = False  # gone: a retrieve answers 404
    throttled: bool = False  # was THROTTLED at some point

    def ended(self, now: float) -> bool:
        return self.cancelled or (self.started is not None and now >= self.started + self.seconds)

    def refunded(self) -> bool:
        """Runway refunds INTERNAL.* failures and tasks cancelled before they ran."""
        code = self.failure[0] if self.failure else ""
        return code.startswith("INTERNAL") or (self.cancelled and self.started is None)


class RunwayServer(loopback.FaultQueues, loopback.LoopbackServer):
    """Runway's task API and its output CDN on 127.0.0.1 (port 0) in a background thread."""

    normalise_prompts = False  # keep prompts whitespace-collapsed (as a server may)
    create_failure_status = 503  # Runway sheds load with 502/503/504
    poll_failure_status = 502

    def __init__(
        self,
        *,
        job_seconds: float = 0.3,
        api_key: str | None = None,
        account_concurrency: int = 100,
        url_ttl: float = 3600.0,
    ) -> None:
        super().__init__()
        self.job_seconds = job_seconds
        self.api_key = api_key  # None: any bearer token is accepted
        self.account_concurrency = account_concurrency  # over it, tasks are THROTTLED
        self.url_ttl = url_ttl  # seconds a signed output URL opens
        self._secret = uuid.uuid4().bytes  # signs output URLs
        # Observations.
        self.posts: list[dict[str, Any]] = []  # every create that arrived (refused too)
        self.tasks: dict[str, Task] = {}
        self.authorizations: set[str] = set()
        self.versions: set[str] = set()  # X-Runway-Version headers seen
        self.in_flight_max = 0  # tasks not ended at once (THROTTLED ones too)
        self.downloads: list[tuple[str, int]] = []  # (task id, bytes sent)
        # Faults.
        self._next_failures: list[tuple[str, str]] = []
        self._failures: dict[str, tuple[str, str]] = {}

    def protocol(self) -> type[_Handler]:
        return _Handler

    # -- fault injection --

    def fail_next_tasks(self, n: int, code: str, message: str) -> None:
        """The next n tasks made end FAILED with this failureCode."""
        with self.lock:
            self._next_failures += [(code, message)] * n

    def fail_prompts(self, substring: str, code: str, message: str) -> None:
        """Tasks whose prompt has `substring` end FAILED with this failureCode."""
        with self.lock:
            self._failures[substring] = (code, message)

    def forget(self, task_id: str) -> None:
        """The task is gone (a retrieve answers 404)."""
        with self.lock:
            self.tasks[task_id].deleted = True

    # -- observations --

    def billable(self) -> list[Task]:
        """Tasks Runway charges for: made, and not refunded."""
        with self.lock:
            self._advance(time.time())
            return [t for t in self.tasks.values() if not t.refunded()]

    def refunded(self) -> list[Task]:
        with self.lock:
            return [t for t in self.tasks.values() if t.refunded()]

    def throttled(self) -> int:
        with self.lock:
            return sum(1 for t in self.tasks.values() if t.throttled)

    def create_posts(self) -> int:
        with self.lock:
            return len(self.posts)

    def faults_left(self) -> int:
        with self.lock:
            next_failures = len(self._next_failures)
        return super().faults_left() + next_failures

    # -- the task clock (called with the lock held) --

    def _advance(self, now: float) -> None:
        """Start THROTTLED tasks, oldest first, as running ones end."""
        busy = sum(1 for t in self.tasks.values() if t.started is not None and not t.ended(now))
        for task in sorted(self.tasks.values(), key=lambda t: t.created):
            if task.started is None and not task.cancelled:
                if busy >= self.account_concurrency:
                    task.throttled = True
                    continue
                task.started = now
                busy += 1

    def _status(self, task: Task, now: float) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": task.id, "createdAt": _iso(task.created)}
        credits = {"credits": 10 * int(task.body.get("duration", 5))}
        if task.cancelled:
            return answer | {"status": "CANCELLED", "cost": {"credits": 0}}
        if task.started is None:
            return answer | {"status": "THROTTLED", "estimatedCost": credits}
        elapsed = now - task.started
        if elapsed < task.seconds / 3:
            return answer | {"status": "PENDING", "estimatedCost": credits}
        if elapsed < task.seconds:
            progress = round(elapsed / task.seconds, 2)
            return answer | {"status": "RUNNING", "progress": progress, "estimatedCost": credits}
        cost = {"credits": 0 if task.refunded() else credits["credits"]}
        if task.failure is not None:
            code, message = task.failure
            return (
                answer
                | {"status": "FAILED", "failure": message, "failureCode": code}
                | {"cost": cost}
            )
        return answer | {"status": "SUCCEEDED", "output": [self._sign(task.id, now)], "cost": cost}

    def _sign(self, task_id: str, now: float) -> str:
        exp = f"{now + self.url_ttl:.3f}"
        sig = hmac.new(self._secret, f"{task_id}:{exp}".encode(), hashlib.sha256).hexdigest()
        return f"{self.base_url}/outputs/{task_id}.mp4?exp={exp}&sig={sig}"

    # -- the protocol (called by the handler) --

    def _create(self, h: _Handler, endpoint: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            self.posts.append({"endpoint": endpoint, "body": body, "t": now})
            limited = self._take_rate_limit()
            failure = self._take_create_failure()
        if limited is not None:
            h.send_json(429, {"error": "You have exceeded the rate limit."}, limited)
            return
        if failure is not None:
            h.send_json(failure, {"error": "The service is shedding load; try again."})
            return
        issues = _invalid(endpoint, body)
        if issues:
            h.send_json(400, {"error": "Validation of body failed", "issues": issues})
            return
        kept = dict(body)
        prompt = str(body.get("promptText", ""))
        if self.normalise_prompts:
            kept["promptText"] = " ".join(prompt.split())
        with self.lock:
            fail = next((f for s, f in self._failures.items() if s in prompt), None)
            if fail is None and self._next_failures:
                fail = self._next_failures.pop(0)
            task = Task(uuid.uuid4().hex, endpoint, kept, now, self.job_seconds, fail)
            self.tasks[task.id] = task
            self._advance(now)
            live = sum(1 for t in self.tasks.values() if not t.ended(now))
            self.in_flight_max = max(self.in_flight_max, live)
            drop = self._take_drop()
        if drop:
            h.drop()
            return
        h.send_json(200, {"id": task.id})

    def _get(self, h: _Handler, task_id: str) -> None:
        with self.lock:
            failure = self._take_poll_failure()
        if failure is not None:
            h.send_json(failure, {"error": "Injected failure"})
            return
        now = time.time()
        with self.lock:
            self._advance(now)
            task = self.tasks.get(task_id)
            answer = None if task is None or task.deleted else self._status(task, now)
        if answer is None:
            h.send_json(404, {"error": "Task not found"})
        else:
            h.send_json(200, answer)

    def _delete(self, h: _Handler, task_id: str) -> None:
        now = time.time()
        with self.lock:
            self._advance(now)
            task = self.tasks.get(task_id)
            if task is not None and not task.deleted:
                if task.ended(now):
                    task.deleted = True
                else:
                    task.cancelled = True
        if task is None:
            h.send_json(404, {"error": "Task not found"})
            return
        h._log(204)
        h.send_response(204)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _output(self, h: _Handler, task_id: str, query: dict[str, list[str]]) -> None:
        exp = query.get("exp", [""])[0]
        sig = query.get("sig", [""])[0]
        want = hmac.new(self._secret, f"{task_id}:{exp}".encode(), hashlib.sha256).hexdigest()
        with self.lock:
            task = self.tasks.get(task_id)
        if task is None or task.deleted or not hmac.compare_digest(sig, want):
            h.send_raw(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            return
        if float(exp) < time.time():
            h.send_raw(403, EXPIRED.encode(), "application/xml")
            return
        data = mp4_bytes(float(task.body.get("duration", 5)))
        with self.lock:
            truncate = self._take_truncation()
            self.downloads.append((task_id, len(data) if truncate is None else len(data) // 2))
        if truncate is None:
            h.send_bytes(data)
        else:
            h.send_truncated(data, declare_length=truncate)


def _invalid(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation issues as Runway answers them (400), for a body its schema rejects."""
    model = str(body.get("model", ""))
    spec = MODELS.get(model)
    if spec is None or endpoint not in spec:
        return [{"path": ["model"], "message": f"Invalid model {model!r} for /v1/{endpoint}"}]
    issues = []
    if body.get("ratio") not in spec[endpoint]:
        allowed = ", ".join(spec[endpoint])
        issues.append({"path": ["ratio"], "message": f"Expected one of {allowed}"})
    if body.get("duration", spec["durations"][-1]) not in spec["durations"]:
        issues.append({"path": ["duration"], "message": "Invalid duration"})
    prompt = body.get("promptText")
    if endpoint == "text_to_video" and not (isinstance(prompt, str) and prompt.strip()):
        issues.append({"path": ["promptText"], "message": "Required"})
    if isinstance(prompt, str) and len(prompt.encode("utf-16-le")) // 2 > 1000:
        issues.append({"path": ["promptText"], "message": "String must have at most 1000"})
    image = body.get("promptImage")
    # A string is the first frame; a list holds {uri, position} items, "last" only on models
    # whose SDK type allows it, and never a last frame alone.
    items = [{"uri": image, "position": "first"}] if isinstance(image, str) else image
    if endpoint == "image_to_video" and not (
        isinstance(items, list)
        and items
        and all(isinstance(i, dict) and _image_uri(i.get("uri")) for i in items)
    ):
        issues.append({"path": ["promptImage"], "message": "Invalid image"})
    elif endpoint == "image_to_video":
        positions = [i.get("position") for i in items]
        if any(p not in spec.get("positions", ("first",)) for p in positions):
            issues.append({"path": ["promptImage", "position"], "message": "Invalid position"})
        elif "first" not in positions or len(set(positions)) != len(positions):
            message = "a first frame is required, once; a last frame at most once"
            issues.append({"path": ["promptImage"], "message": message})
    return issues


def _image_uri(uri: object) -> bool:
    return isinstance(uri, str) and uri.startswith(("data:image/", "https://"))


class _Handler(loopback.Handler):
    server_state: RunwayServer

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        version = self.headers.get("X-Runway-Version", "")
        state = self.server_state
        with state.lock:
            state.authorizations.add(auth)
            state.versions.add(version)
        if version != VERSION:
            self.send_json(400, {"error": f"Invalid API version {version!r}; use {VERSION}"})
            return False
        if auth == f"Bearer {state.api_key}" or (state.api_key is None and len(auth) > 7):
            return True
        # Echo the key whole, as a careless server would: clients must not repeat it.
        self.send_json(401, {"error": f"Invalid API key: {auth.removeprefix('Bearer ')}"})
        return False

    def do_GET(self) -> None:
        self._body()
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        state = self.server_state
        if len(parts) == 2 and parts[0] == "outputs":  # the CDN: signed, no key
            state._output(self, parts[1].removesuffix(".mp4"), parse_qs(url.query))
            return
        if not self._authorised():
            return
        if len(parts) == 3 and parts[:2] == ["v1", "tasks"]:
            state._get(self, parts[2])
        else:
            self.send_json(404, {"error": f"Unknown path {url.path}"})

    def do_POST(self) -> None:
        raw = self._body()
        if not self._authorised():
            return
        path = urlsplit(self.path).path
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.send_json(400, {"error": "Invalid JSON"})
            return
        if path in ("/v1/text_to_video", "/v1/image_to_video"):
            self.server_state._create(self, path.rpartition("/")[2], body)
        else:
            self.send_json(404, {"error": f"Unknown path {path}"})

    def do_DELETE(self) -> None:
        self._body()
        if not self._authorised():
            return
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["v1", "tasks"]:
            self.server_state._delete(self, parts[2])
        else:
            self.send_json(404, {"error": f"Unknown path {self.path}"})
