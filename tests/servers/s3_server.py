"""A real S3-protocol server on loopback: moto's standalone server, as s3fs's own tests use.

One `moto.server.ThreadedMotoServer` per process, on 127.0.0.1 and a free port, started on
first use and kept until `stop_moto()` (the test session's end): starting and stopping one
costs about half a second. Each `S3Server` is a fresh bucket on it: it hands out the endpoint
and an `s3://bucket/prefix` URL, and deletes its bucket when it stops. `s3_env` puts fake
credentials and the endpoint in the environment for one test only (through monkeypatch), so
the code under test finds them the way it would find real ones.
"""

from __future__ import annotations

import threading
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


_moto: Any = None
_moto_lock = threading.Lock()


def moto_endpoint() -> str:
    """The endpoint of this process's moto server, started on first use."""
    global _moto
    with _moto_lock:
        if _moto is None:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            _moto = server
        host, port = _moto.get_host_and_port()
        return f"http://{host}:{port}"


def stop_moto() -> None:
    """Stop this process's moto server, if one was started."""
    global _moto
    with _moto_lock:
        if _moto is not None:
            _moto.stop()
            _moto = None


class S3Server:
    """A fresh bucket on a real S3-protocol server on loopback; a context manager."""

    def __init__(self, prefix: str = "team-cache") -> None:
        self.bucket = f"runner-{uuid.uuid4().hex[:12]}"
        self.prefix = prefix
        self.endpoint = ""

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
        self.endpoint = moto_endpoint()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the bucket and everything in it (uploads cut short too): the server lives on."""
        client = self.client()
        uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=self.bucket)


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
