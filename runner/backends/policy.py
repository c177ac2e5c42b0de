"""What every hosted backend decides the same way, whatever its protocol: which provider
answers are refusals, pauses, retries or expiries; whether a create that failed may have
reached the provider; a certificate or CA bundle this machine cannot trust; how long a 429
asks us to wait; keys kept out of messages; and a download written beside its destination,
hashed as it arrives, until it is whole.

A backend turns its SDK's errors into a status, a code and a message and asks here.
"""

from __future__ import annotations

import email.utils
import importlib
import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner import faults
from runner.backends.base import BackendError, Expired, RateLimited, Refused, Transient
from runner.digest import Hashed, HashingWriter
from runner.errors import scrub_urls

if TYPE_CHECKING:
    import httpx

Stage = Literal["create", "job", "download", "list"]
"""What the failed call was: a (paid) create, a poll of a job, a download of its video, or a
listing of recent jobs."""

QUOTA_CODES = frozenset({"insufficient_quota"})  # a 429 about billing: waiting will not help


def from_status(
    status: int,
    message: str,
    *,
    stage: Stage,
    code: str = "",
    retry_after: float | None = None,
    job: str | None = None,
    credentials: str = "",
) -> BackendError:
    """An HTTP error answer as the runner's error classes.

    `message` is the provider's own words (scrubbed); `credentials` says where the key is set,
    added to a 401 or 403. After the create, a 404 or 410 means the job is gone (Expired);
    the runner keeps a journaled job over any refusal, so a refused poll never drops it.
    """
    if status == 429 and code in QUOTA_CODES:
        return Refused(f"{message}; check the account's quota and billing")
    if status == 429 or code == "RESOURCE_EXHAUSTED":
        return RateLimited(f"rate limited: {message}", retry_after)
    if status == 408 or status >= 500:
        return Transient(f"server error: {message}", sent=True)
    gone = status in (404, 410) or (stage == "download" and "expire" in message.lower())
    if stage in ("job", "download") and gone:
        return Expired(f"the provider no longer has job {job}: {message}")
    if status in (401, 403) and credentials and "model" not in message.lower():
        return Refused(f"{message}; {credentials}")
    return Refused(message)


def transport_sent(exc: BaseException | None) -> bool | None:
    """For a transport failure (httpx, httpx2, sockets): may the request have reached the
    server? False only when it certainly did not (no connection was made); None when `exc`
    is no transport failure."""
    for name in ("httpx2", "httpx"):
        try:
            http = importlib.import_module(name)
        except ImportError:
            continue
        if isinstance(exc, http.ConnectError | http.ConnectTimeout | http.PoolTimeout):
            return False
        if isinstance(exc, http.TransportError):
            return True
    if isinstance(exc, ConnectionRefusedError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return None


def untrusted(exc: BaseException | None) -> str | None:
    """For a TLS handshake that failed because the server's certificate is not trusted (a
    proxy that inspects HTTPS, its CA missing from the bundle): the verifier's words; else
    None. Nothing was sent, and sending again cannot help."""
    import ssl

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return str(exc.verify_message or exc.reason or exc)
        exc = exc.__cause__ or exc.__context__
    return None


def untrusted_message(host: str, why: str) -> str:
    """What an untrusted certificate means and what to do, naming the CA bundle in use (as
    httpx chooses it: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's)."""
    if os.environ.get("SSL_CERT_FILE"):
        trusting = f"SSL_CERT_FILE={os.environ['SSL_CERT_FILE']}"
    elif os.environ.get("SSL_CERT_DIR"):
        trusting = f"SSL_CERT_DIR={os.environ['SSL_CERT_DIR']}"
    else:
        trusting = "certifi's bundle, as SSL_CERT_FILE is not set"
    return (
        f"the TLS certificate presented for {host} is not trusted ({why}; trusting {trusting}); "
        "behind a proxy that inspects HTTPS, set SSL_CERT_FILE to a CA bundle that holds the "
        "proxy's CA"
    )


def ca_bundle_problem() -> str | None:
    """What is wrong with the CA bundle the environment names for httpx (SSL_CERT_FILE, else
    SSL_CERT_DIR), read offline before the first create; None when it loads or none is named."""
    import ssl

    path = os.environ.get("SSL_CERT_FILE")
    if path:
        try:
            ssl.create_default_context(cafile=path)
        except OSError as exc:  # ssl.SSLError too: no certificate in the file
            return (
                f"SSL_CERT_FILE={path} is not a CA bundle ({exc.strerror or exc}): point it at "
                "a PEM file of CA certificates (the proxy's CA among them), or unset it"
            )
    elif os.environ.get("SSL_CERT_DIR") and not os.path.isdir(os.environ["SSL_CERT_DIR"]):
        return f"SSL_CERT_DIR={os.environ['SSL_CERT_DIR']} is not a folder: fix it or unset it"
    return None


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); else None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def normalised(prompt: str) -> str:
    """A prompt as `find` compares it: runs of whitespace collapsed to one space, its ends
    stripped (servers may strip and collapse what they echo)."""
    return " ".join(prompt.split())


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced: keys never reach a message, log or record. Strings
    too short to be a key are left alone, so a message is never mangled. Every URL loses its
    userinfo and query values (a base URL may carry a password or an api-key)."""
    text = scrub_urls(text)
    for secret in secrets:
        secret = (secret or "").strip()
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class Part:
    """A download being written beside its destination: hashed and counted as it is written
    (the store then names it without reading it again), and held to the length the server
    announced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.announced: int | None = None  # the whole file's length, when the server said
        self._writer: HashingWriter | None = None

    @contextmanager
    def open(self, offset: int = 0) -> Iterator[HashingWriter]:
        """Write from `offset`: 0 starts the file over; otherwise the bytes already there are
        kept (hashed first) and what is written is appended."""
        resume = offset > 0
        with self.path.open("ab" if resume else "wb") as out:
            self._writer = HashingWriter(out, prefix=self.path if resume else None)
            yield self._writer

    def write_bytes(self, data: bytes) -> None:
        with self.open() as out:
            out.write(data)

    def announce(self, length: int | None) -> None:
        """The length of the whole file, as the server announced it (None: it did not)."""
        self.announced = length

    def finish(self) -> Hashed | None:
        """The digest and length of what was written, when it is all there: a transfer that
        stopped short of (or ran past) the announced length is Transient, and retried."""
        if self._writer is None:
            return None
        if self.announced is not None and self._writer.size != self.announced:
            raise Transient(
                f"the download stopped at {self._writer.size} of the {self.announced} bytes "
                "the server announced"
            )
        return self._writer.hashed()


@contextmanager
def part_file(dest: Path, *, resumable: bool = False) -> Iterator[Part]:
    """The `.part` file beside `dest` to write the video into; renamed onto `dest` when the
    block ends. A failure removes it, except a transfer cut short (Transient, RateLimited) of
    a `resumable` download: its next call asks for the rest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Part(dest.with_name(dest.name + ".part"))
    try:
        yield part
        os.replace(part.path, dest)
    except (Transient, RateLimited):
        if not resumable:
            part.path.unlink(missing_ok=True)
        raise
    except BaseException:
        part.path.unlink(missing_ok=True)
        raise


def stream_into(part: Part, chunks: Iterable[bytes], headers: Any) -> None:
    """Write a whole response body into `part` as it arrives (a fixed-size chunker would drop
    the tail of a cut transfer), held to the length its `headers` announce."""
    part.announce(content_length(headers))
    with part.open() as f:
        for n, chunk in enumerate(chunks):
            f.write(chunk)
            if n == 0:
                f.out.flush()  # a kill here leaves the first bytes in the part
                faults.point("mid-download")


def content_length(headers: Any) -> int | None:
    """The whole file's length an answer announces: a 206's Content-Range total, else its
    Content-Length; None when it announces none (a close-delimited body) or sends the body
    compressed (its decoded length is not announced)."""
    if str(headers.get("content-encoding") or "identity").lower() != "identity":
        return None
    content_range = headers.get("content-range")
    if content_range:
        _, _, total = str(content_range).rpartition("/")
        return int(total) if total.strip().isdigit() else None
    length = headers.get("content-length")
    return int(length) if length is not None and str(length).strip().isdigit() else None


CONNECT_TIMEOUT = 15.0
"""Seconds connecting to a provider may take at most, whatever its read timeout."""


def http_timeout(seconds: float) -> httpx.Timeout:
    """httpx's timeout for a provider's client: `seconds` per read, connecting capped."""
    import httpx

    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT, seconds))


def media_client(seconds: float) -> httpx.Client:
    """A plain client for a provider's CDN or signed output URLs: no key, no retries,
    redirects followed."""
    import httpx

    return httpx.Client(timeout=http_timeout(seconds), follow_redirects=True)
