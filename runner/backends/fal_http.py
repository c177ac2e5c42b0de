"""How the fal backend reaches fal: fal-client's own SyncClient, speaking through an httpx
transport of the runner's that sends every request exactly once.

fal-client 1.0.3 wraps every call in `_maybe_retry_request`: up to 10 attempts on any httpx
transport error or timeout, and on 408, 409, 429 and proxy 502-504 answers. `start_timeout`
stops only the retry of a timeout (and asks fal to drop a request that waits longer in the
queue), not of a dropped connection. A submit whose answer was lost would be sent, and billed,
again. So this transport raises every failure, and every answer of 400 or above, as an
exception that is not httpx's: it passes fal-client's retry loop untouched and reaches the
runner, whose journal decides. Bodies are read inside the transport, so a body cut short
fails here too, not later where fal-client would retry it.

Imported only when the fal backend makes its client (it imports httpx and fal-client).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fal_client
import httpx
from fal_client.client import USER_AGENT

from runner.backends import policy

FAL_HOSTS = ("fal.run", "queue.fal.run", "rest.fal.ai", "api.fal.ai", "falrun.com")
FAL_HOST_SUFFIXES = (".fal.media", ".fal.run", ".falrun.com")
"""fal's host names, hard-coded in fal-client (queue, run, REST, CDN) and in its answers."""


class Answered(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, headers: httpx.Headers, body: bytes, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.headers = headers
        self.body = body


class SendFailed(Exception):
    """The request failed in transport (refused, timed out, dropped, cut short, untrusted)."""

    def __init__(self, cause: httpx.TransportError, host: str) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.host = host  # the host it was sent to (through a proxy: the tunnel's end)


def is_fal_host(host: str) -> bool:
    return host in FAL_HOSTS or host.endswith(FAL_HOST_SUFFIXES)


class OnceTransport(httpx.BaseTransport):
    """Sends each request once; errors and error answers raise past fal-client's retries.

    With `base_url`, requests to fal's hosts go there instead (a stand-in such as the tests'
    loopback server, over plain HTTP). The inner client trusts the environment, as httpx does:
    HTTPS_PROXY / HTTP_PROXY / NO_PROXY and SSL_CERT_FILE / SSL_CERT_DIR.
    """

    def __init__(self, base_url: str | None, timeout: httpx.Timeout, *, buffer: bool) -> None:
        self._base = httpx.URL(base_url.rstrip("/")) if base_url else None
        self._buffer = buffer  # read whole bodies here (API answers; not videos)
        self._inner = httpx.Client(follow_redirects=False, timeout=timeout)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request = self._routed(request)
        try:
            response = self._inner.send(request, stream=True)
        except httpx.TransportError as exc:
            raise SendFailed(exc, request.url.host) from exc
        try:
            if response.status_code >= 400 or self._buffer:
                raw = b"".join(response.iter_raw())
            else:
                return response  # streamed by the caller; its errors are the caller's
        except httpx.TransportError as exc:
            raise SendFailed(exc, request.url.host) from exc
        finally:
            if response.status_code >= 400 or self._buffer:
                response.close()
        if response.status_code >= 400:
            raise Answered(response.status_code, response.headers, raw, str(request.url))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            request=request,
            extensions=response.extensions,
        )

    def _routed(self, request: httpx.Request) -> httpx.Request:
        base = self._base
        if base is None or not is_fal_host(request.url.host):
            return request
        prefix = base.raw_path.rstrip(b"/").decode("ascii")
        url = request.url.copy_with(
            scheme=base.scheme, host=base.host, port=base.port, path=prefix + request.url.path
        )
        headers = request.headers.copy()
        headers["Host"] = url.netloc.decode("ascii")
        return httpx.Request(
            request.method, url, headers=headers, stream=request.stream,
            extensions=request.extensions,
        )  # fmt: skip

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class RunnerClient(fal_client.SyncClient):
    """fal-client's client, its HTTP going through the runner's httpx client."""

    http: httpx.Client | None = field(default=None, repr=False)

    @cached_property
    def _client(self) -> httpx.Client:
        assert self.http is not None, "made by connect()"
        return self.http


@dataclass
class Connection:
    """fal-client for the API, and a plain client (no key) for the result files."""

    client: RunnerClient
    api: httpx.Client  # the same client fal-client uses: the request history
    media: httpx.Client  # videos on fal's CDN: streamed, no Authorization header

    def close(self) -> None:
        self.api.close()
        self.media.close()


def connect(key: str, base_url: str | None, timeout: float) -> Connection:
    limits = policy.http_timeout(timeout)
    api = httpx.Client(
        transport=OnceTransport(base_url, limits, buffer=True),
        headers={"Authorization": f"Key {key}", "User-Agent": USER_AGENT},
        timeout=limits,
        follow_redirects=True,
    )
    media = httpx.Client(
        transport=OnceTransport(base_url, limits, buffer=False),
        headers={"User-Agent": USER_AGENT},
        timeout=limits,
        follow_redirects=True,
    )
    client = RunnerClient(key=key, default_timeout=timeout, http=api)
    return Connection(client, api, media)


def upload(connection: Connection, data: bytes, content_type: str, name: str) -> str:
    """fal-client's upload to fal's storage (through the connection's client, so the base URL
    and proxies hold); the file is kept for 7 days."""
    settings = fal_client.StorageSettings(expires_in="7d")
    url: str = connection.client.upload(
        data,
        content_type,
        file_name=name,
        repository="fal",  # the CDN repository makes clients of its own, outside this one
        fallback_repository=[],
        lifecycle=settings,
    )
    return url


def json_body(data: bytes) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError:
        return None
