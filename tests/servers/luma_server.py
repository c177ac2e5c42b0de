"""A loopback server speaking Luma's Dream Machine API (`/dream-machine/v1`), with fault
injection for tests.

It answers what the real `lumaai` SDK sends: create (`POST /generations` and
`/generations/video`), get (`GET /generations/{id}`), list (`GET /generations?limit&offset`,
newest first, each generation with the echo of its `request`) and delete, with the states
queued -> dreaming -> completed | failed and the video at `assets.video` on a CDN path that
needs no key. As on Luma: creates over the account's concurrency answer 429; a failed
generation has a `failure_reason` and is refunded; a keyframe image must be a URL the server
can fetch (a data URI or an unreachable URL fails the generation with "Failed to read user
input frames"). `/images/` serves a folder, standing in for the bucket a team publishes
first frames from.

    with LumaServer(job_seconds=0.3, api_key=KEY) as server:
        backend = LumaBackend(tmp, {"base_url": server.base_url, "api_key": KEY})
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers import loopback
from tests.servers.clips import mp4_bytes

PREFIX = "/dream-machine/v1"
MODELS = ("ray-2", "ray-flash-2")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
DURATIONS = ("5s", "9s")
RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
UNREADABLE = "Failed to read user input frames"
LIST_MAX = 100  # the largest page the list answers


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Generation:
    """One generation; its state follows the clock: a third queued, then dreaming."""

    id: str
    request: dict[str, Any]
    created: float
    seconds: float  # from queued to completed (or failed)
    failure: str | None = None  # failure_reason: it ends failed (and is refunded)
    deleted: bool = False
    downloads: list[tuple[float, int]] = field(default_factory=list)  # (t, bytes sent)
    extends: float = 0.0  # the length of the generation it continues, repeated before it

    def state(self, now: float) -> str:
        elapsed = now - self.created
        if elapsed < self.seconds / 3:
            return "queued"
        if elapsed < self.seconds:
            return "dreaming"
        return "failed" if self.failure is not None else "completed"

    def video_seconds(self) -> float:
        """Its length; an extension (frame0 a generation) is that video and then its own."""
        own = float(str(self.request.get("duration", "5s")).rstrip("s"))
        return own + self.extends


class LumaServer(loopback.FaultQueues, loopback.LoopbackServer):
    """Luma's API and CDN on 127.0.0.1 (port 0) in a background thread."""

    prefix = PREFIX  # what LUMAAI_BASE_URL would be: with the `/dream-machine/v1` prefix
    normalise_prompts = False  # keep (and echo) prompts whitespace-collapsed

    def __init__(
        self,
        *,
        job_seconds: float = 0.3,
        api_key: str | None = None,
        concurrency: int = 4,
        images: Path | None = None,
    ) -> None:
        super().__init__()
        self.job_seconds = job_seconds
        self.api_key = api_key  # None: any bearer token is accepted
        self.concurrency = concurrency  # generations queued or dreaming at once
        self.images = images  # served at /images/
        # Observations.
        self.creates: list[dict[str, Any]] = []  # every create that arrived (refused too)
        self.generations: dict[str, Generation] = {}  # made, answered or not
        self.authorizations: set[str] = set()
        self.in_flight_max = 0
        self.over_limit = 0  # creates refused because the account's concurrency was full
        # Faults.
        self._failures: dict[str, list[str]] = {}  # prompt substring -> reasons, one each

    def protocol(self) -> type[_Handler]:
        return _Handler

    # -- fault injection --

    def fail_generations(self, substring: str, *reasons: str) -> None:
        """The next generations whose prompt has `substring` end failed, one per reason."""
        with self.lock:
            self._failures.setdefault(substring, []).extend(reasons)

    # -- observations --

    def billable(self) -> list[Generation]:
        """Generations Luma bills: every one made that did not fail (failures are refunded)."""
        now = time.time()
        with self.lock:
            return [g for g in self.generations.values() if g.state(now) != "failed"]

    def faults_left(self) -> int:
        with self.lock:
            failures = sum(map(len, self._failures.values()))
        return super().faults_left() + failures

    def create_posts(self) -> int:
        with self.lock:
            return len(self.creates)

    # -- the protocol (called by the handler) --

    def _json(self, g: Generation, now: float) -> dict[str, Any]:
        state = g.state(now)
        video = f"{self.root}/cdn/{g.id}/video.mp4" if state == "completed" else None
        return {
            "id": g.id,
            "generation_type": "video",
            "state": state,
            "failure_reason": g.failure if state == "failed" else None,
            "created_at": _iso(g.created),
            "model": g.request.get("model"),
            "assets": {"video": video, "image": None, "progress_video": None},
            "request": g.request,
        }

    def _create(self, h: _Handler, body: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            self.creates.append({"body": body, "t": now})
            limited = self._take_rate_limit()
            failure = self._take_create_failure()
        if limited is not None:
            h.send_detail(429, "Rate limit exceeded", limited)
            return
        if failure is not None:
            h.send_detail(failure, "Internal Server Error")
            return
        problem = _invalid(body)
        if problem is not None:
            h.send_detail(400, problem)
            return
        prompt = str(body.get("prompt", ""))
        kept = {"generation_type": "video", **body}
        if self.normalise_prompts:
            kept["prompt"] = " ".join(prompt.split())
        reason = self._frames_problem(body)
        with self.lock:
            source = _source(body, self.generations)
            unknown = source is False
            busy = sum(
                1
                for g in self.generations.values()
                if not g.deleted and g.state(now) in ("queued", "dreaming")
            )
            if unknown:
                full = False
            elif busy >= self.concurrency:
                self.over_limit += 1
                full = True
            else:
                full = False
                if reason is None:
                    for substring, reasons in self._failures.items():
                        if substring in prompt and reasons:
                            reason = reasons.pop(0)
                            break
                g = Generation(uuid.uuid4().hex, kept, now, self.job_seconds, reason)
                g.extends = source.video_seconds() if isinstance(source, Generation) else 0.0
                self.generations[g.id] = g
                self.in_flight_max = max(self.in_flight_max, busy + 1)
                drop = self._take_drop()
        if unknown:
            h.send_detail(400, "Generation not found: a keyframe names no completed generation")
            return
        if full:
            h.send_detail(429, "Too many concurrent generations; wait for one to finish")
            return
        if drop:
            h.drop()
            return
        h.send_json(201, self._json(g, now))

    def _frames_problem(self, body: dict[str, Any]) -> str | None:
        """What Luma does with keyframe images: fetch each URL (a data URI cannot be)."""
        keyframes = body.get("keyframes") or {}
        for frame in keyframes.values() if isinstance(keyframes, dict) else ():
            if not isinstance(frame, dict) or frame.get("type") != "image":
                continue
            url = str(frame.get("url", ""))
            if urlsplit(url).scheme not in ("http", "https"):
                return UNREADABLE
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    data = response.read()
            except OSError:
                return UNREADABLE
            if not (data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff")):
                return UNREADABLE
        return None

    def _generation(self, h: _Handler, gid: str) -> Generation | None:
        with self.lock:
            g = self.generations.get(gid)
        if g is None or g.deleted:
            h.send_detail(404, "Generation not found")
            return None
        return g

    def _get(self, h: _Handler, gid: str) -> None:
        with self.lock:
            failure = self._take_poll_failure()
        if failure is not None:
            h.send_detail(failure, "Injected failure")
            return
        g = self._generation(h, gid)
        if g is not None:
            h.send_json(200, self._json(g, time.time()))

    def _list(self, h: _Handler, query: dict[str, list[str]]) -> None:
        limit = min(LIST_MAX, int(query.get("limit", ["10"])[0]))
        offset = int(query.get("offset", ["0"])[0])
        now = time.time()
        with self.lock:
            rows = [g for g in self.generations.values() if not g.deleted]
        rows.sort(key=lambda g: g.created, reverse=True)
        chunk = rows[offset : offset + limit]
        h.send_json(
            200,
            {
                "generations": [self._json(g, now) for g in chunk],
                "count": len(chunk),
                "has_more": len(rows) > offset + limit,
                "limit": limit,
                "offset": offset,
            },
        )

    def _delete(self, h: _Handler, gid: str) -> None:
        g = self._generation(h, gid)
        if g is not None:
            with self.lock:
                g.deleted = True
            h.send_raw(204, b"", "application/json")

    def _video(self, h: _Handler, gid: str) -> None:
        with self.lock:
            g = self.generations.get(gid)
            truncate = self._take_truncation() if g else None
        if g is None or g.deleted or g.state(time.time()) != "completed":
            h.send_raw(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return
        data = mp4_bytes(g.video_seconds())
        with self.lock:
            g.downloads.append((time.time(), len(data) if truncate is None else len(data) // 2))
        if truncate is None:
            h.send_bytes(data)
        else:
            h.send_truncated(data, declare_length=truncate)

    def _image(self, h: _Handler, name: str) -> None:
        path = (self.images / name) if self.images is not None and "/" not in name else None
        if path is None or not path.is_file():
            h.send_raw(404, b"not found", "text/plain")
            return
        h.send_raw(200, path.read_bytes(), "image/png")


def _invalid(body: dict[str, Any]) -> str | None:
    """Luma's answer (400) to a create body it rejects, in its words where its docs give
    them (docs.lumalabs.ai/docs/errors)."""
    if body.get("model") not in MODELS:
        return f"Invalid model: {body.get('model')!r}"
    prompt = body.get("prompt")
    keyframes = body.get("keyframes")
    if not prompt and not keyframes:
        return "Prompt is required"
    if isinstance(prompt, str) and len(prompt) < 3:
        return "Prompt is too short, minimum length is 3 characters"
    if isinstance(prompt, str) and len(prompt) > 5000:
        return "Prompt is too long, maximum length is 5000 characters"
    for key, allowed in (
        ("resolution", RESOLUTIONS),
        ("duration", DURATIONS),
        ("aspect_ratio", RATIOS),
    ):
        if key in body and body[key] not in allowed:
            return f"Invalid {key}: {body[key]!r}; allowed: {', '.join(allowed)}"
    if keyframes is not None:
        if not isinstance(keyframes, dict) or not keyframes:
            return "No keyframes provided"
        for slot, frame in keyframes.items():
            if slot not in ("frame0", "frame1") or not isinstance(frame, dict):
                return "Unknown request type"
            if frame.get("type") == "image" and not frame.get("url"):
                return f"keyframes.{slot}.url is required"
            if frame.get("type") == "generation" and not frame.get("id"):
                return f"keyframes.{slot}.id is required"
        if body.get("loop") and "frame1" in keyframes:
            return "Loop is not supported for end frame"
    return None


def _source(body: dict[str, Any], generations: dict[str, Generation]) -> Generation | bool | None:
    """The completed generation frame0 extends; None for no extension; False for an id that
    names no completed generation."""
    keyframes = body.get("keyframes")
    frame0 = keyframes.get("frame0") if isinstance(keyframes, dict) else None
    if not isinstance(frame0, dict) or frame0.get("type") != "generation":
        return None
    g = generations.get(str(frame0.get("id")))
    if g is None or g.deleted or g.state(time.time()) != "completed":
        return False
    return g


class _Handler(loopback.Handler):
    server_state: LumaServer

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        state = self.server_state
        with state.lock:
            state.authorizations.add(auth)
        if auth == f"Bearer {state.api_key}" or (
            state.api_key is None and auth.startswith("Bearer ") and len(auth) > 7
        ):
            return True
        # Echo the key whole, as a careless server would: clients must not repeat it.
        self.send_detail(401, f"Invalid API key: {auth.removeprefix('Bearer ')}")
        return False

    def _route(self) -> tuple[list[str], dict[str, list[str]]] | None:
        url = urlsplit(self.path)
        if not url.path.startswith(PREFIX + "/"):
            return None
        return url.path[len(PREFIX) :].strip("/").split("/"), parse_qs(url.query)

    def do_GET(self) -> None:
        self._body()
        parts = urlsplit(self.path).path.strip("/").split("/")
        state = self.server_state
        if parts[0] == "cdn" and len(parts) == 3:  # Luma's CDN: no key
            state._video(self, parts[1])
            return
        if parts[0] == "images" and len(parts) == 2:  # the team's public bucket
            state._image(self, parts[1])
            return
        route = self._route()
        if route is None or not self._authorised():
            if route is None:
                self.send_detail(404, "Not Found")
            return
        parts, query = route
        if parts == ["generations"]:
            state._list(self, query)
        elif len(parts) == 2 and parts[0] == "generations":
            state._get(self, parts[1])
        else:
            self.send_detail(404, "Not Found")

    def do_POST(self) -> None:
        raw = self._body()
        route = self._route()
        if route is None:
            self.send_detail(404, "Not Found")
            return
        if not self._authorised():
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.send_detail(400, "Invalid JSON")
            return
        if route[0] in (["generations"], ["generations", "video"]) and isinstance(body, dict):
            self.server_state._create(self, body)
        else:
            self.send_detail(404, "Not Found")

    def do_DELETE(self) -> None:
        self._body()
        route = self._route()
        if route is None or not self._authorised():
            if route is None:
                self.send_detail(404, "Not Found")
            return
        parts = route[0]
        if len(parts) == 2 and parts[0] == "generations":
            self.server_state._delete(self, parts[1])
        else:
            self.send_detail(404, "Not Found")

    def send_detail(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.send_json(status, {"detail": detail}, headers)
