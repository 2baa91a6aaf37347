"""The deployment's Redis: a private ``redis-server`` on loopback, or one given by URL."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from streamtomo.app.deployment_state import DeploymentError
from streamtomo.app.processes import HOST


def redis_server_argv(port: int, run_dir: Path) -> list[str]:
    """``redis-server`` on ``HOST:port`` without persistence: a deployment's Redis
    holds only live coordination state."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise DeploymentError(
            "redis-server not found: install it (apt-get install -y redis-server) or pass --redis URL"
        )
    return [
        binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
        "--protected-mode", "yes", "--dir", str(run_dir), "--daemonize", "no",
    ]  # fmt: skip


def redis_ping(host: str, port: int) -> bool | None:
    """True when a Redis answers PING there (RESP by hand: no client needed)."""
    with socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return True if sock.recv(64).startswith(b"+PONG") else None


def redis_url_ping(url: str) -> bool | None:
    """True when the Redis at ``url`` (auth, database) answers PING."""
    import redis  # redis-py comes with dranspose; only a given URL needs it

    try:
        return True if redis.Redis.from_url(url, socket_timeout=2).ping() else None
    except redis.RedisError:
        return None


def forget_workers(url: str, names: Sequence[str]) -> None:
    """Delete workers' dranspose registrations, which would linger until they expire."""
    if not names:
        return
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.delete(*(f"dranspose:worker:{name}:config" for name in names))
    finally:
        client.close()
