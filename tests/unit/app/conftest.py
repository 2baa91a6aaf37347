"""Fixtures of the app tier's unit tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtomo.app.processes import HOST, free_port, wait_for
from streamtomo.app.redis_service import redis_ping, redis_server_argv


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(redis_server_argv(port, tmp_path), stdout=subprocess.DEVNULL)
    try:
        wait_for("redis", lambda: redis_ping(HOST, port), 10.0)
        yield f"redis://{HOST}:{port}"
    finally:
        server.terminate()
        server.wait(10)
