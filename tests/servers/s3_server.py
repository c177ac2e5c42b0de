"""A real S3-protocol server on loopback: moto's standalone server, as s3fs's own tests use.

One `moto.server.ThreadedMotoServer` per process, on 127.0.0.1 and a free port, started on
first use and kept until `stop_moto()` (the test session's end): starting and stopping one
costs about half a second. Each `S3Server` is a fresh bucket on it: it hands out the endpoint
and an `s3://bucket/prefix` URL, and deletes its bucket when it stops. `s3_env` puts fake
credentials and the endpoint in the environment for one test only (through monkeypatch), so
the code under test finds them the way it would find real ones. `S3Server.lose_answers` makes
the server store a PUT and answer 503, as when S3 wrote an object and the answer was lost.
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
_lost: dict[str, int] = {}  # bucket -> how many PUT answers to lose after storing them
_lost_lock = threading.Lock()
_LOST_ANSWER = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>ServiceUnavailable</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


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
            server._server.app = _LoseAnswers(server._server.app)  # werkzeug reads it per request
            _moto = server
        host, port = _moto.get_host_and_port()
        return f"http://{host}:{port}"


class _LoseAnswers:
    """WSGI middleware before moto: a PUT to a bucket in `_lost` is stored, then answered 503."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        bucket, _, key = str(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        with _lost_lock:
            lose = environ["REQUEST_METHOD"] == "PUT" and bool(key) and _lost.get(bucket, 0) > 0
        if not lose:
            return self.app(environ, start_response)
        answers: list[tuple[str, Any]] = []
        body = b"".join(self.app(environ, lambda *answer: answers.append(answer[:2])))
        if not answers[0][0].startswith("200"):
            start_response(*answers[0])
            return [body]
        with _lost_lock:
            _lost[bucket] -= 1  # stored, but the client never hears so
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(_LOST_ANSWER)))]
        start_response("503 Service Unavailable", headers)
        return [_LOST_ANSWER]


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

    def lose_answers(self, count: int) -> None:
        """Store the next `count` object PUTs to this bucket but answer each with a 503."""
        with _lost_lock:
            _lost[self.bucket] = count

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
