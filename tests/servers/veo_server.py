"""A loopback Vertex AI server for Veo: the endpoints google-genai 3.6.1 calls in enterprise mode.

- `POST /{version}/[projects/P/locations/L/]publishers/google/models/M:predictLongRunning`
  with `{"instances": [{"prompt", "image"?, "lastFrame"?, "video"?}], "parameters": {...}}`
  answers `{"name": op}`; a `video` (extension) comes back as that video plus the new part.
- `POST /{version}/projects/P/locations/L/publishers/google/models/M:fetchPredictOperation`
  with `{"operationName": op}` answers the operation: `{"name", "done"}`, then `response`
  (`videos[].bytesBase64Encoded` or `gcsUri`, `raiMediaFilteredCount/Reasons`) or `error`.
- `GET /storage/v1/b/{bucket}/o/{object}?alt=media`: a Cloud Storage download, for `gcsUri`.

Videos are real H.264/AAC MP4s (160x90, the requested length) made with the pinned ffmpeg.
Auth: an `x-goog-api-key` equal to `api_key` (express mode) or `Authorization: Bearer` equal to
`token` (project mode); anything else is 401, echoing the key received (a pessimistic server,
so tests prove the backend scrubs keys from messages). Fault knobs and observations are thread-safe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.servers import loopback
from tests.servers.clips import mp4_bytes

MODEL_PATH = re.compile(
    r"^/(?P<version>[^/]+)/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"publishers/google/models/(?P<model>[^/:]+):(?P<method>predictLongRunning|fetchPredictOperation)$"
)
STORAGE_PATH = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>[^/]+)$")
BUCKET = "veo-loopback"
FILTER_REASON = (
    "Your current safety settings for person generation prevented this video from being "
    "generated. Support code: 58061214"
)


@dataclass
class Job:
    """One operation: created at `t`, done at `done_at`."""

    name: str
    prompt: str
    seconds: float
    done_at: float
    filtered: bool = False


class VeoServer(loopback.LoopbackServer):
    """`with VeoServer(job_seconds=0.3) as server:` then point the backend at `server.base_url`."""

    def __init__(
        self,
        *,
        job_seconds: float = 0.3,
        api_key: str | None = "loopback-key",
        token: str | None = "loopback-token",
        gcs_output: bool = False,
    ) -> None:
        super().__init__()
        self.job_seconds = job_seconds
        self.api_key = api_key
        self.token = token
        self.gcs_output = gcs_output  # answer with gcsUri (served below) instead of inline bytes
        self.normalise_prompts = False  # keep prompts stripped, whitespace collapsed, as sent back
        self._jobs: dict[str, Job] = {}
        self._rate_limited = 0
        self._retry_after: float | None = None
        self._failing = 0
        self._fail_status = 500
        self._dropping = 0
        self._poll_failing = 0
        self._poll_fail_status = 503
        self._filters: list[str] = []
        # The server's own ledger: every billable create (one that made an operation, answered
        # or dropped), so tests count what was bought on the provider's side.
        self.creates: list[dict[str, Any]] = []
        self.create_attempts = 0  # every create request received, answered or not
        self.create_times: list[float] = []
        self.in_flight_max = 0
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.auth_seen: list[str] = []  # "api_key" | "bearer" per request

    def protocol(self) -> type[_Handler]:
        return _Handler

    # -- fault knobs -----------------------------------------------------------------------

    def rate_limit_next(self, n: int, retry_after: float | None = None) -> None:
        """The next n creates get 429 RESOURCE_EXHAUSTED (with Retry-After when given)."""
        with self.lock:
            self._rate_limited, self._retry_after = n, retry_after

    def fail_next_creates(self, n: int, status: int = 500) -> None:
        """The next n creates fail with `status` and create nothing."""
        with self.lock:
            self._failing, self._fail_status = n, status

    def drop_next_creates(self, n: int) -> None:
        """The next n creates make an operation, then close the connection without answering."""
        with self.lock:
            self._dropping = n

    def fail_next_polls(self, n: int, status: int = 503) -> None:
        """The next n fetchPredictOperation calls fail with `status`."""
        with self.lock:
            self._poll_failing, self._poll_fail_status = n, status

    def filter_prompts(self, substring: str) -> None:
        """Jobs whose prompt contains `substring` finish with no video, RAI-filtered."""
        with self.lock:
            self._filters.append(substring)

    def expire_jobs(self) -> None:
        """Forget every operation: polls and downloads get 404 NOT_FOUND."""
        with self.lock:
            self._jobs.clear()

    # -- observations ----------------------------------------------------------------------

    def max_creates_in_window(self, seconds: float = 60.0) -> int:
        """The most creates in any window of `seconds` (to check requests/min limits)."""
        with self.lock:
            times = list(self.create_times)
        return loopback.most_in_window(times, seconds)

    # -- handlers --------------------------------------------------------------------------

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(loopback.read_body(h, self) or b"{}")
        path = urlsplit(h.path).path
        match = MODEL_PATH.match(path)
        if match is None:
            return self._error(h, 404, "NOT_FOUND", f"no such method: {path}")
        if not self._authorized(h):
            return self._unauthorized(h)
        if match["method"] == "predictLongRunning":
            return self._create(h, match, body)
        return self._fetch(h, body)

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        key = h.headers.get("x-goog-api-key")
        bearer = h.headers.get("Authorization", "")
        with self.lock:
            if key is not None and key == self.api_key:
                self.auth_seen.append("api_key")
                return True
            if self.token is not None and bearer == f"Bearer {self.token}":
                self.auth_seen.append("bearer")
                return True
        return False

    def _unauthorized(self, h: BaseHTTPRequestHandler) -> None:
        """401, echoing the key it got: a pessimistic server, to prove keys are scrubbed."""
        key = h.headers.get("x-goog-api-key")
        return self._error(h, 401, "UNAUTHENTICATED", f"API key not valid: {key}")

    def _create(self, h: BaseHTTPRequestHandler, match: re.Match[str], body: Any) -> None:
        instance = (body.get("instances") or [{}])[0]
        params = body.get("parameters") or {}
        now = time.time()
        with self.lock:
            self.create_attempts += 1
            if self._rate_limited:
                self._rate_limited -= 1
                retry_after = self._retry_after
                rate_limited = True
            else:
                rate_limited = False
            failing = not rate_limited and self._failing > 0
            if failing:
                self._failing -= 1
        if rate_limited:
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return self._error(
                h,
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per"
                "_base_model with base model: veo. Please submit a quota increase request.",
                headers,
            )
        if failing:
            return self._error(h, self._fail_status, "INTERNAL", "Internal error encountered.")
        prompt = str(instance.get("prompt") or "")
        if self.normalise_prompts:
            prompt = " ".join(prompt.split())
        seconds = float(params.get("durationSeconds") or 8)
        image = instance.get("image") or {}
        last = instance.get("lastFrame") or {}
        video = instance.get("video") or {}
        if video and image:  # the SDK's own docs: "Not allowed if video is provided"
            return self._error(h, 400, "INVALID_ARGUMENT", "image and video are exclusive.")
        if last and not image:
            return self._error(h, 400, "INVALID_ARGUMENT", "lastFrame needs an image.")
        video_bytes = base64.b64decode(video.get("bytesBase64Encoded") or "")
        if video:  # the answer is the video given, then the extension: one file
            seconds += _duration(video_bytes)
        project = match["project"] or "loopback"
        location = match["location"] or "us-central1"
        name = (
            f"projects/{project}/locations/{location}/publishers/google/models/"
            f"{match['model']}/operations/{uuid.uuid4()}"
        )
        with self.lock:
            filtered = any(s in prompt for s in self._filters)
            self._jobs[name] = Job(name, prompt, seconds, now + self.job_seconds, filtered)
            running = sum(1 for j in self._jobs.values() if j.done_at > now)
            self.in_flight_max = max(self.in_flight_max, running)
            self.create_times.append(now)
            self.creates.append(
                {
                    "name": name,
                    "model": match["model"],
                    "version": match["version"],
                    "project": match["project"],
                    "location": match["location"],
                    "prompt": prompt,
                    "negativePrompt": params.get("negativePrompt"),
                    "seed": params.get("seed"),
                    "durationSeconds": params.get("durationSeconds"),
                    "aspectRatio": params.get("aspectRatio"),
                    "resolution": params.get("resolution"),
                    "generateAudio": params.get("generateAudio"),
                    "sampleCount": params.get("sampleCount"),
                    "has_image": bool(image),
                    "reference_images": len(instance.get("referenceImages") or []),
                    "image_mime": image.get("mimeType"),
                    "image_bytes": base64.b64decode(image.get("bytesBase64Encoded") or ""),
                    "last_frame_bytes": base64.b64decode(last.get("bytesBase64Encoded") or ""),
                    "video_bytes": video_bytes,
                    "video_mime": video.get("mimeType"),
                    "t": now,
                }
            )
            dropping = self._dropping > 0
            if dropping:
                self._dropping -= 1
        if dropping:
            self._drop(h)
            return None
        return self._json(h, 200, {"name": name})

    def _fetch(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        name = str(body.get("operationName") or "")
        with self.lock:
            failing = self._poll_failing > 0
            if failing:
                self._poll_failing -= 1
            job = self._jobs.get(name)
        if failing:
            return self._error(h, self._poll_fail_status, "UNAVAILABLE", "The service is down.")
        if job is None:
            return self._error(h, 404, "NOT_FOUND", f"Operation {name} not found.")
        if time.time() < job.done_at:
            return self._json(h, 200, {"name": name, "done": False})
        response: dict[str, Any] = {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
        }
        if job.filtered:
            response["raiMediaFilteredCount"] = 1
            response["raiMediaFilteredReasons"] = [FILTER_REASON]
        elif self.gcs_output:
            object_name = name.rsplit("/", 1)[1] + "/sample_0.mp4"
            response["videos"] = [
                {"gcsUri": f"gs://{BUCKET}/{object_name}", "mimeType": "video/mp4"}
            ]
        else:
            data = base64.b64encode(mp4_bytes(job.seconds)).decode()
            response["videos"] = [{"bytesBase64Encoded": data, "mimeType": "video/mp4"}]
        return self._json(h, 200, {"name": name, "done": True, "response": response})

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        match = STORAGE_PATH.match(path)
        if match is None:
            return self._error(h, 404, "NOT_FOUND", f"no such resource: {path}")
        if not self._authorized(h):
            return self._unauthorized(h)
        op_id = unquote(match["object"]).split("/", 1)[0]
        with self.lock:
            job = next((j for j in self._jobs.values() if j.name.endswith(op_id)), None)
        if job is None or match["bucket"] != BUCKET:
            return self._error(h, 404, "NOT_FOUND", "No such object.")
        data = mp4_bytes(job.seconds)
        self._reply(h, 200, data, "video/mp4")
        return None

    # -- wire helpers ----------------------------------------------------------------------

    def _error(
        self,
        h: BaseHTTPRequestHandler,
        code: int,
        status: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        payload = {"error": {"code": code, "message": message, "status": status}}
        self._json(h, code, payload, headers)

    def _json(
        self,
        h: BaseHTTPRequestHandler,
        code: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._reply(h, code, json.dumps(payload).encode(), "application/json", headers)

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        code: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            self.log.append((h.command, urlsplit(h.path).path, code))
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)

    def _drop(self, h: BaseHTTPRequestHandler) -> None:
        """Close the connection without a byte of answer (the create did happen)."""
        with self.lock:
            self.log.append((h.command, urlsplit(h.path).path, 0))
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)


class _Handler(loopback.Handler):
    server_state: VeoServer

    def do_POST(self) -> None:
        self.server_state._post(self)

    def do_GET(self) -> None:
        self.server_state._get(self)


def _duration(mp4: bytes) -> float:
    """The length of an MP4 given as bytes (an extension's source)."""
    import tempfile
    from pathlib import Path

    from runner.media import ffmpeg

    with tempfile.TemporaryDirectory(prefix="veo-source-") as tmp:
        path = Path(tmp) / "source.mp4"
        path.write_bytes(mp4)
        return round(ffmpeg.probe(path).duration, 2)
