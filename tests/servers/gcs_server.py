"""A GCS-protocol server on loopback: gcp-storage-emulator, in memory, one per process.

gcsfs reaches it through STORAGE_EMULATOR_HOST (no credentials needed), the way it reaches a
real bucket through its endpoint. Each `GCSServer` is a fresh bucket on it. gcsfs's
experimental zonal-bucket lookup speaks gRPC, which the emulator does not: this module turns it
off (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, read at gcsfs's import), as an emulator user would.
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


def gcs_endpoint() -> str:
    """The endpoint of this process's emulator, started on first use."""
    global _server, _endpoint
    with _lock:
        if _server is None:
            import logging

            from gcp_storage_emulator.server import create_server

            logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            _server = create_server("127.0.0.1", port, in_memory=True)
            _server.start()
            _endpoint = f"http://127.0.0.1:{port}"
        return _endpoint


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
