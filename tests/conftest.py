"""Shared fixtures. Like dranspose's own tests: any ERROR log record fails the test
(dranspose logs and swallows exceptions raised in worker and reducer code)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.shared_data import TOOTH_PARTS, shared_path

# Tiers by folder (they mirror how much of the real world a test starts): ``unit`` runs
# by default in seconds; ``integration`` (dranspose replay, HDF REST, HSDS, helm) and
# ``system`` (a real distributed deployment, a real browser) are selected by folder or
# marker, and `make test` runs all three.
TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def fail_on_error_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [r for r in caplog.get_records("call") + caplog.get_records("setup") if r.levelno >= logging.ERROR]
    if errors:
        pytest.fail("ERROR log records:\n" + "\n".join(f"{r.name}: {r.getMessage()}" for r in errors), pytrace=False)


# Real data go through shared_path: it skips where they are missing, but fails where
# STREAMTOMO_REQUIRE_SHARED_DATA is set (.ci/run, where the data are), so such a run
# cannot pass with them skipped.
@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def tooth_h5() -> Path:
    """The APS tooth scan (tomopy's test data): exchange/data, data_white, data_dark, theta."""
    return shared_path(*TOOTH_PARTS)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` where every connection is refused while the test runs:
    a socket bound there and never listening holds the port. A port that free_port()
    found free is free only then: another test run on the machine could listen there
    meanwhile, and a test of "nobody answers" would talk to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
