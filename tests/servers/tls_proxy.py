"""An HTTPS proxy on loopback standing where a corporate proxy stands, for fal's host names.

It answers HTTP CONNECT for fal's hosts only, terminates TLS with a certificate for the host
named in the CONNECT, minted at test time by a CA of its own (`TestCA`), and relays the
decrypted bytes, untouched, to the loopback fal server. A client reaches it as fal-client
reaches fal: `https://queue.fal.run/...` with `HTTPS_PROXY` pointing here and `SSL_CERT_FILE`
at the CA's bundle; the server then sees fal's host names in the `Host` header.

    ca = TestCA(tmp_path / "ca")
    with FalServer() as server, TLSProxy(server.base_url, ca) as proxy:
        env = {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(ca.bundle)}
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FAL_DOMAINS = ("fal.run", "fal.ai", "fal.media", "falrun.com")
"""fal's domains: queue.fal.run, fal.run, rest.fal.ai, api.fal.ai, v3.fal.media, ..."""


def is_fal_name(host: str) -> bool:
    return any(host == d or host.endswith("." + d) for d in FAL_DOMAINS)


class TestCA:
    """A certificate authority made for one test: its bundle (`bundle`, PEM) is what a client
    trusts; `context(host)` is a TLS server context with a certificate for `host` it signed."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "runner loopback proxy CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        public = self._key.public_key()
        self.cert = (
            _builder(subject, subject, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle = folder / "ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def context(self, host: str) -> ssl.SSLContext:
        """A server context presenting a certificate for `host` (made once per host)."""
        with self._lock:
            if host not in self._contexts:
                self._contexts[host] = self._mint(host)
            return self._contexts[host]

    def _mint(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        issuer_key = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        cert = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pem = self.folder / f"{host}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
        return context


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
    )


class TLSProxy:
    """The proxy on 127.0.0.1 (port 0), its event loop in a background thread."""

    def __init__(self, upstream: str, ca: TestCA) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self._upstream = (parts.hostname, parts.port)
        self._ca = ca
        self._lock = threading.Lock()
        # Observations, per host named in a CONNECT.
        self.connects: Counter[str] = Counter()  # every CONNECT that arrived
        self.refused: Counter[str] = Counter()  # not fal's: answered 403, nothing relayed
        self.rejected: Counter[str] = Counter()  # the client refused the TLS handshake
        self.heads: list[bytes] = []  # what arrived in the clear (the CONNECT requests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TLSProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One CONNECT: TLS for the named host with the CA's certificate, then a relay."""
        with contextlib.suppress(asyncio.CancelledError):  # the proxy stops: tunnels end
            await self._open(reader, writer)

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, _, target = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = target.partition(" ")[0]
        host, _, port = target.rpartition(":") if method == "CONNECT" else (target, "", "")
        with self._lock:
            self.heads.append(head)
            if method == "CONNECT":
                self.connects[host] += 1
        if method != "CONNECT" or port != "443" or not is_fal_name(host):
            # Only fal's names, on 443: nothing else is relayed (nor reaches the internet).
            with self._lock:
                self.refused[host] += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await _close(writer)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            await writer.drain()
            await writer.start_tls(self._ca.context(host))
        except (ssl.SSLError, ConnectionError, OSError):
            with self._lock:
                self.rejected[host] += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy bytes until either side ends; then the tunnel ends (HTTP/1.1 never half-closes)."""
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        await _close(dst)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        await writer.wait_closed()
