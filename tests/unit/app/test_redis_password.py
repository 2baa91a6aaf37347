"""Redis's password from a file of the Secret into the service's own REDIS_URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamtomo.app.processes import HOST, free_port, wait_for
from streamtomo.app.redis_password import (
    PASSWORD_FILE_VARIABLE,
    RedisPasswordError,
    apply_password_file,
    url_with_password,
)
from streamtomo.app.redis_service import redis_server_argv
from tests.unit.app.test_cluster_service import stop_when_registered, worker_key

PASSWORD = "p@ss:w/rd %20 é"  # every character a URL would misread


def test_the_password_is_quoted_into_the_url() -> None:
    url = url_with_password("redis://r.example:6379/2", PASSWORD)
    parts = urllib.parse.urlsplit(url)
    assert urllib.parse.unquote(parts.password or "") == PASSWORD
    assert (parts.hostname, parts.port, parts.path) == ("r.example", 6379, "/2")
    # A user name and an IPv6 host stay as they were written.
    ipv6 = urllib.parse.urlsplit(url_with_password("rediss://tomo@[::1]:6380/0", "x"))
    assert (ipv6.username, ipv6.password, ipv6.hostname, ipv6.port) == ("tomo", "x", "::1", 6380)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:old@r.example:6379/0", "holds a password already"),
        ("http://r.example:6379/0", "no redis:// or rediss:// URL"),
        ("redis:///0", "no redis:// or rediss:// URL"),
    ],
)
def test_a_url_that_cannot_take_the_password_is_refused(url: str, message: str) -> None:
    with pytest.raises(RedisPasswordError, match=message):
        url_with_password(url, "x")


def test_the_file_is_read_only_where_its_variable_is_set(tmp_path: Path) -> None:
    environ = {"REDIS_URL": "redis://r.example:6379/0"}
    assert apply_password_file(environ) is False
    assert environ == {"REDIS_URL": "redis://r.example:6379/0"}
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")  # a Secret written by hand ends in a newline
    environ[PASSWORD_FILE_VARIABLE] = str(secret)
    assert apply_password_file(environ) is True
    assert environ["REDIS_URL"] == "redis://:s3cret@r.example:6379/0"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_file_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    secret = tmp_path / "redis-password"
    if content is not None:
        secret.write_text(content)
    environ = {"REDIS_URL": "redis://r.example:6379/0", PASSWORD_FILE_VARIABLE: str(secret)}
    with pytest.raises(RedisPasswordError, match=PASSWORD_FILE_VARIABLE):
        apply_password_file(environ)


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis-server that wants a password: (its URL without it, the password)."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port = free_port()
    password = "chart-generated-" + os.urandom(8).hex()
    server = subprocess.Popen(
        [*redis_server_argv(port, tmp_path), "--requirepass", password], stdout=subprocess.DEVNULL
    )
    client = redis.Redis(host=HOST, port=port, password=password)
    try:
        wait_for("redis", lambda: True if _pings(client) else None, 10.0)
        yield f"redis://{HOST}:{port}/0", password
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_service_started_as_the_chart_starts_it_reads_the_password_file(
    protected_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, password = protected_redis
    secret = tmp_path / "redis-password"
    secret.write_text(password)
    name = "chart-worker-password"
    argv = ["worker", "--workerclass", "streamtomo.workers.noop_worker:NoopWorker", "--name", name]
    environment = {k: v for k, v in os.environ.items() if "REDIS" not in k}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamtomo.app.cluster_service", *argv],
        env=environment | {"REDIS_URL": url, PASSWORD_FILE_VARIABLE: str(secret), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = stop_when_registered(process, url_with_password(url, password), worker_key(name))
    assert process.returncode == 0, output
    assert "ERROR" not in output and password not in output, output


def test_a_service_whose_password_file_is_missing_exits_with_status_2(protected_redis: tuple[str, str]) -> None:
    url, _ = protected_redis
    argv = ["worker", "--workerclass", "streamtomo.workers.noop_worker:NoopWorker", "--name", "w"]
    done = subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cluster_service", *argv],
        env={**os.environ, "REDIS_URL": url, PASSWORD_FILE_VARIABLE: "/nonexistent/redis-password"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{PASSWORD_FILE_VARIABLE} /nonexistent/redis-password" in done.stderr
    assert "Traceback" not in done.stderr
