"""Session-wide test setup: servers shared by every test in a process are stopped at its end."""

from __future__ import annotations

import pytest

from tests.servers import gcs_server, s3_server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    s3_server.stop_moto()
    gcs_server.stop_gcs()
