"""What every loopback provider server shares: the life cycle of an HTTP server on 127.0.0.1
(port 0) in a background thread, a handler with the answers all of them send, and the fault
queues the hosted servers are driven with. Each server keeps its own protocol.

    class FalServer(FaultQueues, LoopbackServer):
        def protocol(self) -> type[Handler]:
            return _Handler  # the provider's requests, a subclass of loopback.Handler
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class LoopbackServer:
    """A provider's API on 127.0.0.1 (port 0), served from a background thread."""

    prefix = ""  # the path base_url adds to the server's root

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int | None]] = []  # (method, path, status)
        # Requests whose body ended before its Content-Length: (method, path, got, announced).
        self.cut_requests: list[tuple[str, str, int, int]] = []
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def protocol(self) -> type[Handler]:
        """The handler of the provider's requests."""
        raise NotImplementedError

    def start(self) -> None:
        handler = type("Handler", (self.protocol(),), {"server_state": self})
        httpd = HTTPServer(("127.0.0.1", 0), handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return int(self._httpd.server_address[1])

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Where the provider's SDK is pointed: the root and the API's prefix."""
        return self.root + self.prefix


def retry_after(value: float | str | None) -> dict[str, str]:
    """The Retry-After header of a 429: seconds, or a str sent verbatim; None, no header."""
    if value is None:
        return {}
    return {"Retry-After": value if isinstance(value, str) else f"{value:g}"}


def most_in_window(times: Iterable[float], seconds: float) -> int:
    """The most of `times` within any `seconds`-long window: what a requests-per-minute
    limit counts."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


class FaultQueues:
    """The faults a hosted provider really has, queued by tests and met once each, in order:
    429s and failures of creates, creates made (and billed) but never answered, failed polls
    and downloads cut short. Each server answers them in its own protocol's words."""

    lock: threading.Lock
    create_failure_status = 500  # what fail_next_creates answers unless told
    poll_failure_status = 503  # likewise fail_next_polls

    def __init__(self) -> None:
        super().__init__()
        self._rate_limits: list[float | None] = []
        self._create_failures: list[int] = []
        self._drops = 0
        self._poll_failures: list[int] = []
        self._truncations: list[bool] = []

    def rate_limit_next(self, n: int, retry_after: float | None = 1.0) -> None:
        """The next n creates answer 429 (with Retry-After when given); nothing is made."""
        with self.lock:
            self._rate_limits += [retry_after] * n

    def fail_next_creates(self, n: int, status: int | None = None) -> None:
        """The next n creates answer `status`; nothing is made."""
        with self.lock:
            self._create_failures += [status or self.create_failure_status] * n

    def drop_next_creates(self, n: int) -> None:
        """The next n creates are made (and billed), then the connection closes unanswered."""
        with self.lock:
            self._drops += n

    def fail_next_polls(self, n: int, status: int | None = None) -> None:
        with self.lock:
            self._poll_failures += [status or self.poll_failure_status] * n

    def truncate_next_downloads(self, n: int, declare_length: bool = False) -> None:
        """The next n video downloads send half the bytes, then close. With `declare_length`
        the full Content-Length is announced (the client can tell); without, the body is
        close-delimited (only decoding the file can tell)."""
        with self.lock:
            self._truncations += [declare_length] * n

    def faults_left(self) -> int:
        """Injected faults not yet met."""
        with self.lock:
            queued = len(self._rate_limits) + len(self._create_failures) + self._drops
            return queued + len(self._poll_failures) + len(self._truncations)

    # -- taking the next fault (called with the lock held) --

    def _take_rate_limit(self) -> dict[str, str] | None:
        """The headers of the 429 to answer a create with; None: no 429 is queued."""
        return retry_after(self._rate_limits.pop(0)) if self._rate_limits else None

    def _take_create_failure(self) -> int | None:
        return _take(self._create_failures)

    def _take_drop(self) -> bool:
        """Whether to close this create's connection unanswered (its job made)."""
        drop = self._drops > 0
        self._drops -= int(drop)
        return drop

    def _take_poll_failure(self) -> int | None:
        return _take(self._poll_failures)

    def _take_truncation(self) -> bool | None:
        """None: send the whole video; else cut it short, declaring its length or not."""
        return _take(self._truncations)


def _take(queue: list[T]) -> T | None:
    return queue.pop(0) if queue else None


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not block stop()
    request_queue_size = 128  # many clients connect at once: 5 drops SYNs, a 1 s retry each

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout, test over) is no error of the server's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class CutShort(ConnectionError):
    """A request whose body ended before its Content-Length: its sender died mid-send. Raised
    out of the handler, it drops the request unanswered (HTTPServer.handle_error ignores it)."""


def read_body(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> bytes:
    """A request's body, all Content-Length bytes of it; CutShort when fewer came.

    An HTTP server drops such a request, so a provider never bills it. A job made of the
    fields that did arrive would be a create the client never asked for (the default size
    in place of a missing one), which a rerun rightly never adopts and sends again.
    """
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    if len(body) < length:
        with server.lock:
            server.cut_requests.append((handler.command, handler.path, len(body), length))
        handler.close_connection = True
        raise CutShort(f"{handler.command} {handler.path}: {len(body)} of {length} bytes")
    return body


class Handler(BaseHTTPRequestHandler):
    """The answers every provider's handler sends; it records each in the server's requests."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    disable_nagle_algorithm = True  # headers and body go in separate writes: no 40 ms stalls
    timeout = 30
    server_state: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server's record is `requests`."""

    def _log(self, status: int | None) -> None:
        with self.server_state.lock:
            self.server_state.requests.append((self.command, urlsplit(self.path).path, status))

    def _body(self) -> bytes:
        return read_body(self, self.server_state)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._log(status)  # before answering: a test may look as soon as it has the answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _send_video_head(self, data: bytes, start: int | None, length: int | None) -> bytes:
        """Status and headers of a video answer (206 for a range); returns the body."""
        body = data if start is None else data[start:]
        status = 200 if start is None else 206
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if length is not None:
            self.send_header("Content-Length", str(length))
        return body

    def send_bytes(self, data: bytes, start: int | None = None) -> None:
        """The video, or from byte `start` on as a 206 answer to a Range request."""
        body = self._send_video_head(data, start, len(data) - (start or 0))
        self.end_headers()
        for i in range(0, len(body), 1 << 14):
            self.wfile.write(body[i : i + (1 << 14)])

    def send_truncated(
        self, data: bytes, start: int | None = None, *, declare_length: bool
    ) -> None:
        """Half of what send_bytes would send, then close."""
        body = self._send_video_head(
            data, start, len(data) - (start or 0) if declare_length else None
        )
        self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def drop(self) -> None:
        """Close the connection without an answer."""
        self.close_connection = True
        self._log(None)
