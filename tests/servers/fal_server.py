"""A loopback server speaking fal's queue protocol, with fault injection for tests.

It answers what the real `fal-client` sends, on one port standing in for all of fal's hosts:
submit (`POST /{endpoint}`), status with queue position and logs, result, cancel (under
`/{owner}/{app}/requests/{id}`), the storage upload (`POST /storage/upload/initiate`, then a
PUT), the request history (`GET /v1/models/requests/by-endpoint?expand=payloads`) and the
result files (`/files/...`, real H.264/AAC MP4s). As on fal, a request never ends FAILED: a
model error is a COMPLETED request whose result is a 422. Reached by fal's host names (through
tests/servers/tls_proxy.py), the URLs it answers with are on fal's hosts too (queue.fal.run,
rest.fal.ai, v3.fal.media), as fal's are; reached by its own address, they are on it.

    with FalServer(job_seconds=0.3, api_key=KEY) as server:
        backend = FalBackend(tmp, {"base_url": server.base_url, "api_key": KEY})
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers import loopback
from tests.servers.clips import mp4_bytes

VEO_DURATIONS = ("4s", "6s", "8s")
QUEUE, REST, CDN = "https://queue.fal.run", "https://rest.fal.ai", "https://v3.fal.media"
NGINX_502 = "<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Request:
    """One queued request; its state follows the clock: a third queued, then running."""

    id: str
    endpoint: str
    input: dict[str, Any]
    sent: float
    seconds: float  # from IN_QUEUE to COMPLETED
    error: tuple[str, str] | None = None  # (message, error_type): COMPLETED with an error
    cancelled: bool = False
    expired: bool = False
    downloads: list[tuple[float, int]] = field(default_factory=list)  # (t, bytes sent)

    def status(self, now: float) -> str:
        elapsed = now - self.sent
        if self.cancelled:
            return "CANCELLED"
        if elapsed < self.seconds / 3:
            return "IN_QUEUE"
        return "IN_PROGRESS" if elapsed < self.seconds else "COMPLETED"

    def video_seconds(self) -> float:
        given = self.input.get("duration")
        if given is not None:
            return float(str(given).rstrip("s"))
        frames, fps = self.input.get("num_frames", 81), self.input.get("frames_per_second", 16)
        return round((int(frames) - 1) / int(fps), 3)


class FalServer(loopback.FaultQueues, loopback.LoopbackServer):
    """fal's queue, storage and history on 127.0.0.1 (port 0) in a background thread. A create
    is fal's submit."""

    normalise_prompts = False  # keep (and echo in the history) prompts whitespace-collapsed
    status_reports_errors = True  # False: a model error shows only in the result (a 422)

    def __init__(self, *, job_seconds: float = 0.3, api_key: str | None = None) -> None:
        super().__init__()
        self.job_seconds = job_seconds
        self.api_key = api_key  # None: any "Key ..." is accepted
        # Observations.
        self.submits: list[dict[str, Any]] = []  # every submit that arrived (refused too)
        self.queue: dict[str, Request] = {}  # the requests made, answered or not
        self.uploads: list[tuple[str, bytes]] = []  # (content type, bytes)
        self.authorizations: set[str] = set()
        self.hosts: Counter[str] = Counter()  # the Host header of every request
        self.in_flight_max = 0
        # Faults.
        self._nginx: list[bool] = []  # beside each create failure: from fal's nginx ingress
        self._model_errors: dict[str, tuple[str, str]] = {}

    def protocol(self) -> type[_Handler]:
        return _Handler

    # -- fault injection --

    def fail_next_creates(self, n: int, status: int | None = None, nginx: bool = False) -> None:
        """The next n submits answer `status`, nothing queued; `nginx`: as fal's ingress does
        (an HTML body, no x-fal-request-id), which fal-client would retry on its own."""
        super().fail_next_creates(n, status)
        with self.lock:
            self._nginx += [nginx] * n

    def model_error(self, substring: str, message: str, error_type: str) -> None:
        """Requests whose prompt has `substring` reach COMPLETED with this error."""
        with self.lock:
            self._model_errors[substring] = (message, error_type)

    def expire(self, request_id: str) -> None:
        """The result and its file are gone (fal keeps results about an hour)."""
        with self.lock:
            self.queue[request_id].expired = True

    # -- observations --

    def billable(self) -> list[Request]:
        """Requests fal would bill: queued and not cancelled while still in the queue."""
        with self.lock:
            return [r for r in self.queue.values() if not r.cancelled]

    def create_posts(self) -> int:
        with self.lock:
            return len(self.submits)

    # -- the protocol (called by the handler) --

    def _submit(self, h: _Handler, endpoint: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            self.submits.append({"endpoint": endpoint, "input": body, "t": now})
            limited = self._take_rate_limit()
            failure = self._take_create_failure()
            nginx = self._nginx.pop(0) if failure is not None else False
        if limited is not None:
            h.send_fal_error(429, "Rate limit exceeded: too many concurrent requests", limited)
            return
        if failure is not None:
            if nginx:
                h.send_raw(failure, NGINX_502.encode(), "text/html")
            else:
                h.send_fal_error(failure, "Internal server error", {"x-fal-request-id": "x"})
            return
        problem = _invalid(endpoint, body)
        if problem is not None:
            h.send_json(422, {"detail": [problem]})
            return
        prompt = str(body.get("prompt", ""))
        kept = dict(body)
        if self.normalise_prompts:
            kept["prompt"] = " ".join(prompt.split())
        with self.lock:
            error = next((e for s, e in self._model_errors.items() if s in prompt), None)
            request = Request(uuid.uuid4().hex, endpoint, kept, now, self.job_seconds, error)
            self.queue[request.id] = request
            busy = sum(1 for r in self.queue.values() if r.status(now) != "COMPLETED")
            self.in_flight_max = max(self.in_flight_max, busy)
            drop = self._take_drop()
        if drop:
            h.drop()
            return
        h.send_json(200, self._urls(h, request) | {"status": "IN_QUEUE", "queue_position": 0})

    def _origin(self, h: _Handler, public: str) -> str:
        """Where the URLs of an answer point: fal's `public` origin for a request that came
        by fal's host names, else this server."""
        host = urlsplit("//" + h.headers.get("Host", "")).hostname
        return self.base_url if host in ("127.0.0.1", "localhost", None) else public

    def _urls(self, h: _Handler, request: Request) -> dict[str, str]:
        owner, app = request.endpoint.split("/")[:2]
        base = f"{self._origin(h, QUEUE)}/{owner}/{app}/requests/{request.id}"
        return {
            "request_id": request.id,
            "response_url": base,
            "status_url": base + "/status",
            "cancel_url": base + "/cancel",
        }

    def _find(self, h: _Handler, request_id: str) -> Request | None:
        with self.lock:
            request = self.queue.get(request_id)
        if request is None:
            h.send_fal_error(404, f"Request {request_id} not found")
        return request

    def _status(self, h: _Handler, request_id: str, logs: bool) -> None:
        with self.lock:
            failure = self._take_poll_failure()
        if failure is not None:
            h.send_fal_error(failure, "Injected failure")
            return
        request = self._find(h, request_id)
        if request is None:
            return
        now = time.time()
        state = request.status(now)
        answer: dict[str, Any] = {"status": state}
        answer["response_url"] = self._urls(h, request)["response_url"]
        if state == "IN_QUEUE":
            with self.lock:
                ahead = [r for r in self.queue.values() if r.status(now) == "IN_QUEUE"]
            answer["queue_position"] = sum(1 for r in ahead if r.sent < request.sent)
        else:
            lines = [{"message": "Generating video", "level": "INFO", "timestamp": _iso(now)}]
            answer["logs"] = lines if logs else None
        if state == "COMPLETED":
            answer["metrics"] = {"inference_time": request.seconds}
            if request.error is not None and self.status_reports_errors:
                answer["error"], answer["error_type"] = request.error
        h.send_json(200, answer)

    def _result(self, h: _Handler, request_id: str) -> None:
        request = self._find(h, request_id)
        if request is None:
            return
        if request.expired:
            h.send_fal_error(404, f"Request {request_id} not found")
        elif request.status(time.time()) != "COMPLETED":
            h.send_fal_error(400, "Request is still in progress")
        elif request.error is not None:
            message, kind = request.error
            item = {"loc": ["body", "prompt"], "msg": message, "type": kind}
            h.send_json(422, {"detail": [item]})
        else:
            url = f"{self._origin(h, CDN)}/files/{request.id}.mp4"
            video = {"url": url, "content_type": "video/mp4", "file_name": "output.mp4"}
            h.send_json(200, {"video": video, "seed": request.input.get("seed", 42)})

    def _cancel(self, h: _Handler, request_id: str) -> None:
        request = self._find(h, request_id)
        if request is None:
            return
        if request.status(time.time()) == "IN_QUEUE":
            with self.lock:
                request.cancelled = True
            h.send_json(202, {"status": "CANCELLATION_REQUESTED"})
        else:
            h.send_json(400, {"status": "ALREADY_COMPLETED"})

    def _file(self, h: _Handler, name: str) -> None:
        with self.lock:
            request = self.queue.get(name.removesuffix(".mp4"))
            truncate = self._take_truncation() if request else None
        if request is None or request.expired:
            h.send_fal_error(404, "File not found")
            return
        data = mp4_bytes(request.video_seconds())
        with self.lock:
            sent = len(data) if truncate is None else len(data) // 2
            request.downloads.append((time.time(), sent))
        if truncate is None:
            h.send_bytes(data)
        else:
            h.send_truncated(data, declare_length=truncate)

    def _history(self, h: _Handler, query: dict[str, list[str]]) -> None:
        endpoints = {e for v in query.get("endpoint_id", []) for e in v.split(",")}
        start = datetime.fromisoformat(query["start"][0]).timestamp() if "start" in query else 0.0
        limit = int(query.get("limit", ["50"])[0])
        page = int(base64.b64decode(query["cursor"][0])) if "cursor" in query else 1
        payloads = "payloads" in query.get("expand", [""])[0]
        now = time.time()
        with self.lock:
            rows = [r for r in self.queue.values() if r.endpoint in endpoints and r.sent >= start]
        rows.sort(key=lambda r: r.sent, reverse=True)
        chunk = rows[(page - 1) * limit : page * limit]
        items = []
        for r in chunk:
            done = r.status(now) == "COMPLETED"
            item: dict[str, Any] = {
                "request_id": r.id,
                "endpoint_id": r.endpoint,
                "sent_at": _iso(r.sent),
                "started_at": _iso(r.sent + r.seconds / 3) if r.status(now) != "IN_QUEUE" else None,
                "ended_at": _iso(r.sent + r.seconds) if done else None,
                "status_code": (422 if r.error else 200) if done else None,
                "duration": r.seconds if done else None,
            }
            if payloads:
                item["json_input"] = r.input | {"enhance_prompt": True}  # fal's defaults too
                item["json_output"] = None
            items.append(item)
        more = len(rows) > page * limit
        cursor = base64.b64encode(str(page + 1).encode()).decode() if more else None
        h.send_json(200, {"items": items, "next_cursor": cursor, "has_more": more})

    def _initiate_upload(self, h: _Handler, body: dict[str, Any]) -> None:
        token = uuid.uuid4().hex
        name = str(body.get("file_name") or "upload.bin")
        kind = body.get("content_type", "")
        # Where fal signs its upload URL is not documented: here, on fal's REST host.
        upload_url = f"{self._origin(h, REST)}/storage/put/{token}?type={kind}"
        file_url = f"{self._origin(h, CDN)}/files/uploads/{token}/{name}"
        h.send_json(200, {"upload_url": upload_url, "file_url": file_url})

    def _put_upload(self, h: _Handler, content_type: str, data: bytes) -> None:
        with self.lock:
            self.uploads.append((content_type, data))
        h.send_json(200, {})


def _invalid(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """A validation item as fal answers it (422) for an input the endpoint rejects."""
    missing = {"msg": "field required", "type": "value_error.missing"}
    if not str(body.get("prompt", "")).strip():
        return {"loc": ["body", "prompt"], **missing}
    if endpoint.endswith("image-to-video") and not body.get("image_url"):
        return {"loc": ["body", "image_url"], **missing}
    if endpoint.endswith("/extend-video"):  # Veo 3.1's: a video_url, 7 s (its default)
        if not body.get("video_url"):
            return {"loc": ["body", "video_url"], **missing}
        if body.get("duration", "7s") != "7s":
            msg = "unexpected value; permitted: '7s'"
            return {"loc": ["body", "duration"], "msg": msg, "type": "value_error.const"}
        return None
    if "tail_image_url" in body and "kling-video" not in endpoint:
        return {"loc": ["body", "tail_image_url"], "msg": "extra fields not permitted"}
    if endpoint.startswith("fal-ai/veo3") and body.get("duration", "8s") not in VEO_DURATIONS:
        allowed = ", ".join(f"'{d}'" for d in VEO_DURATIONS)
        msg = f"unexpected value; permitted: {allowed}"
        return {"loc": ["body", "duration"], "msg": msg, "type": "value_error.const"}
    return None


class _Handler(loopback.Handler):
    server_state: FalServer

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            with self.server_state.lock:
                self.server_state.hosts[self.headers.get("Host", "")] += 1
        return parsed

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        state = self.server_state
        with state.lock:
            state.authorizations.add(auth)
        if auth == f"Key {state.api_key}" or (state.api_key is None and auth.startswith("Key ")):
            return True
        # Echo the key whole, as a careless server would: clients must not repeat it.
        self.send_fal_error(401, f"Invalid key: {auth.removeprefix('Key ')}")
        return False

    def do_GET(self) -> None:
        self._body()
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        state = self.server_state
        if parts[0] == "files":  # fal's CDN: no key needed
            state._file(self, parts[-1])
            return
        if not self._authorised():
            return
        query = parse_qs(url.query)
        if url.path == "/v1/models/requests/by-endpoint":
            state._history(self, query)
        elif len(parts) == 5 and parts[2] == "requests" and parts[4] == "status":
            state._status(self, parts[3], query.get("logs", ["false"])[0].lower() in ("1", "true"))
        elif len(parts) == 4 and parts[2] == "requests":
            state._result(self, parts[3])
        else:
            self.send_fal_error(404, f"Unknown path {url.path}")

    def do_POST(self) -> None:
        raw = self._body()
        if not self._authorised():
            return
        url = urlsplit(self.path)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.send_fal_error(400, "Invalid JSON")
            return
        if url.path == "/storage/upload/initiate":
            self.server_state._initiate_upload(self, body)
        else:
            self.server_state._submit(self, url.path.strip("/"), body)

    def do_PUT(self) -> None:
        raw = self._body()
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts[:2] == ["storage", "put"]:  # a signed URL: no key
            self.server_state._put_upload(self, self.headers.get("Content-Type", ""), raw)
            return
        if not self._authorised():
            return
        if len(parts) == 5 and parts[2] == "requests" and parts[4] == "cancel":
            self.server_state._cancel(self, parts[3])
        else:
            self.send_fal_error(404, f"Unknown path {self.path}")

    def send_fal_error(
        self, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_json(status, {"detail": detail}, headers)
