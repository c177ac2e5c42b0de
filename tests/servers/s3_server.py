"""A real S3-protocol server on loopback: moto's standalone server, as s3fs's own tests use.

`S3Server` starts `moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port, creates a
bucket and hands out the endpoint and an `s3://bucket/prefix` URL. `s3_env` puts fake
credentials and the endpoint in the environment for one test only (through monkeypatch), so
the code under test finds them the way it would find real ones. moto keeps its state per
process, so every server gets its own bucket name and resets moto when it stops.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

import pytest

ACCESS_KEY = "AKIALOOPBACKTESTKEY0"
SECRET_KEY = "loopback-SECRET-do-not-print-0123456789"
REGION = "us-east-1"
CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}
# Settings from the machine running the tests that would change which server or account is used.
LEAKY_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
)


class S3Server:
    """moto on loopback with one fresh bucket; a context manager."""

    def __init__(self, prefix: str = "team-cache") -> None:
        self.bucket = f"runner-{uuid.uuid4().hex[:12]}"
        self.prefix = prefix
        self.endpoint = ""
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def client(self) -> Any:
        """A plain boto3 client on the server: for tests that tamper behind the runner's back."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def __enter__(self) -> S3Server:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import urllib.request

        try:  # moto's backends are process-wide: leave nothing behind for the next server
            urllib.request.urlopen(
                urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=5
            ).close()
        finally:
            self._server.stop()


def s3_env(monkeypatch: pytest.MonkeyPatch, server: S3Server | None = None) -> None:
    """Fake credentials (and the server's endpoint) in the environment, for this test only."""
    for name in LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIAL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no probing of 169.254.169.254
    if server is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
