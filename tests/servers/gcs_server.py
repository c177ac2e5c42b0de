"""A GCS-protocol server on loopback: gcp-storage-emulator, in memory, one per process.

gcsfs reaches it through STORAGE_EMULATOR_HOST (no credentials needed), the way it reaches a
real bucket through its endpoint. Each `GCSServer` is a fresh bucket on it. gcsfs's
experimental zonal-bucket lookup speaks gRPC, which the emulator does not: this module turns it
off (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, read at gcsfs's import), as an emulator user would.
The emulator ignores upload preconditions; real GCS honours them and claims rely on them, so
this module makes it honour them too (`_honour_preconditions`).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from types import TracebackType
from typing import Any

import pytest

# Read by gcsfs when it is imported, so set before anything imports it in a test process.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

_server: Any = None
_endpoint = ""
_lock = threading.Lock()
_uploads = threading.Lock()  # one upload at a time: a precondition and its write are atomic
_lost: dict[str, int] = {}  # bucket -> how many upload answers to lose after storing them
_NOT_MET = "At least one of the pre-conditions you specified did not hold."


def gcs_endpoint() -> str:
    """The endpoint of this process's emulator, started on first use."""
    global _server, _endpoint
    with _lock:
        if _server is None:
            import logging

            from gcp_storage_emulator.server import create_server

            logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
            _honour_preconditions()
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            _server = create_server("127.0.0.1", port, in_memory=True)
            _server.start()
            _endpoint = f"http://127.0.0.1:{port}"
        return _endpoint


def _honour_preconditions() -> None:
    """Make the emulator's one-request uploads (media, multipart: what gcsfs sends below 50 MiB)
    honour `ifGenerationMatch` as GCS does: 0 creates only if the object is absent, N
    overwrites only generation N; otherwise 412, the object untouched.
    gcp-storage-emulator ignores it and overwrites, so a claim test would pass for the wrong
    reason. Also loses the answer to an upload it stored, on request (`GCSServer.lose_answers`).
    """
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.insert
    if getattr(original, "honours_preconditions", False):
        return

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        kind = (request.query.get("uploadType") or [""])[0]
        wanted = request.query.get("ifGenerationMatch")
        bucket = request.params["bucket_name"]
        with _uploads:
            if wanted and kind in ("media", "multipart"):
                if "name" in request.query:
                    name = request.query["name"][0]
                else:
                    name = request.data["meta"].get("name")
                try:
                    generation = int(storage.get_file_obj(bucket, name).get("generation") or 0)
                except NotFound:
                    generation = 0
                if generation != int(wanted[0]):
                    _answer(response, 412, "conditionNotMet", _NOT_MET)
                    return None
            result = original(request, response, storage, *args, **kwargs)
            if _lost.get(bucket, 0) > 0 and response.status == 200:
                _lost[bucket] -= 1  # stored, but the client never hears so
                _answer(response, 503, "backendError", "Backend Error")
            return result

    insert.honours_preconditions = True  # type: ignore[attr-defined]
    objects.insert = insert  # the router's fallback for uploads looks it up here
    for _, handlers in server.HANDLERS:  # the upload route captured the original
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = insert


def _answer(response: Any, status: int, reason: str, message: str) -> None:
    from http import HTTPStatus

    error = {"domain": "global", "reason": reason, "message": message}
    response.status = HTTPStatus(status)
    response.json({"error": {"code": status, "message": message, "errors": [error]}})


def stop_gcs() -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


class GCSServer:
    """A fresh bucket on the process's emulator: `url` is gs://bucket/prefix."""

    def __init__(self) -> None:
        self.bucket = f"team-{uuid.uuid4().hex[:12]}"
        self.prefix = "cache"
        self.endpoint = gcs_endpoint()

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"

    def lose_answers(self, count: int) -> None:
        """Store the next `count` uploads to this bucket but answer each with a 503, as when
        GCS wrote an object and the answer was lost on the way back."""
        with _uploads:
            _lost[self.bucket] = count

    def fs(self) -> Any:
        import gcsfs

        return gcsfs.GCSFileSystem(
            endpoint_url=self.endpoint, token="anon", skip_instance_cache=True
        )

    def __enter__(self) -> GCSServer:
        self.fs().mkdir(self.bucket)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fs = self.fs()
        for path in fs.find(self.bucket):
            fs.rm_file(path)


def gcs_env(monkeypatch: pytest.MonkeyPatch, server: GCSServer) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
