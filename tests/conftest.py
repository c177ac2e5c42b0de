"""Session-wide test setup: servers shared by every test in a process are stopped at its end."""

from __future__ import annotations

import pytest

from tests.servers import gcs_server, s3_server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    s3_server.stop_moto()
    gcs_server.stop_gcs()


# The files whose tests take longest (BENCHMARKS.md, "Test suite"), most first. pytest-xdist
# hands tests out in collection order; handed out last, these would leave three workers idle
# while the fourth finishes them. Longest first, the workers finish together.
LONGEST_FIRST = (
    "test_team.py",
    "test_never_pay_twice.py",
    "test_hosted_render.py",
    "test_film_e2e.py",
    "test_remote.py",
    "test_fal_backend.py",
    "test_assemble.py",
    "test_review_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable sort
