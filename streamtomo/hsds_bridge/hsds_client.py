"""The HTTP side of the HSDS writer: one aiohttp session, retries with backoff.

Three kinds of failure, told apart because the writer reacts differently:

* the server is busy or a request timed out (408, 429, 500, 503): retried here with
  exponential backoff and jitter, counted as retries;
* the server is unreachable (connection errors; 502/504 from a proxy in front of it):
  :class:`ConnectionLost`, because what it acknowledged since the last flush may be
  gone and the writer has to re-send it;
* any other refusal (4xx): returned to the caller, which turns it into an
  :class:`HsdsWriterError`; retrying cannot help.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import aiohttp

from streamtomo.hsds_bridge.credentials import Credentials

OK = (200, 201, 204)
RETRY = (408, 429, 500, 503)  # server busy (503 is HSDS back-pressure) or transient
LOST = (502, 504)  # a proxy in front of HSDS reports the server gone


class HsdsWriterError(RuntimeError):
    """A request HSDS refused for good (4xx); carries status, never credentials."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ConnectionLost(Exception):
    """HSDS unreachable: what it acknowledged since the last flush may be gone."""


class DeadlineReached(Exception):
    """close() deadline reached while waiting for HSDS."""


class HsdsClient:
    """Requests against one HSDS domain; create and use it inside the writer's loop."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        domain: Callable[[], str],
        max_connections: int,
        request_timeout: float,
        retry_initial: float,
        retry_max: float,
        on_retry: Callable[[], None],
    ) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self._domain = domain  # the name may change while setup picks a version
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._on_retry = on_retry
        self.deadline: float | None = None  # set by close(): backoff past it aborts
        self._session: aiohttp.ClientSession | None = None
        self._base = endpoint

    async def open(self) -> None:
        if self.endpoint.startswith("http+unix://"):
            # hsds' own notation: the socket path, url-quoted, as the host part
            path = unquote(self.endpoint[len("http+unix://") :])
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=path, limit=self._max_connections)
            self._base = "http://localhost"
        else:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, sock_connect=10)
        headers = {"Authorization": self.credentials.authorization_header()}
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        """One request: (status, JSON body or reason); ConnectionLost if unreachable."""
        assert self._session is not None
        query = {"domain": self._domain(), **(params or {})}
        kwargs: dict[str, Any] = {"params": query}
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {"Content-Type": "application/octet-stream"}
        elif json_body is not None:
            kwargs["json"] = json_body
        try:
            async with self._session.request(method, self._base + path, **kwargs) as resp:
                body = await resp.read()
                status = resp.status
                reason = resp.reason or ""
                content_type = resp.content_type
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionLost(f"{method} {path}: {type(exc).__name__}") from None
        if status in LOST:
            raise ConnectionLost(f"{method} {path}: HTTP {status}")
        if status in OK and body and content_type == "application/json":
            return status, json.loads(body)
        return status, reason

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """:meth:`request`, retried with backoff on busy answers and timeouts."""
        attempt = 0
        while True:
            try:
                status, body = await self.request(method, path, **kwargs)
            except TimeoutError:
                status, body = 408, "timeout"
            if status not in RETRY:
                return status, body
            attempt += 1
            self._on_retry()
            await self.backoff(attempt)

    async def backoff(self, attempt: int) -> None:
        """Sleep ``retry_initial * 2**attempt`` (capped, +-20 %); DeadlineReached past the deadline."""
        delay = min(self._retry_max, self._retry_initial * 2 ** min(attempt, 30))
        delay *= random.uniform(0.8, 1.2)
        if self.deadline is not None and time.monotonic() + delay > self.deadline:
            raise DeadlineReached()
        await asyncio.sleep(delay)

    def refused(self, what: str, status: int, reason: Any) -> HsdsWriterError:
        """An error that says what was refused and, for 401/403, the likely cause."""
        hint = ""
        if status == 401:
            hint = " (wrong username or password)"
        elif status == 403:
            hint = f" (user {self.credentials.username!r} lacks the permission)"
        return HsdsWriterError(f"HSDS refused {what}: {status} {reason}{hint}", status)

    async def probe(self) -> Any:
        """``GET /about``: the server's start time (it changes when HSDS restarts)."""
        status, body = await self.request("GET", "/about")
        if status in (401, 403):
            raise self.refused("GET /about", status, body)
        if status != 200 or not isinstance(body, dict) or body.get("state") != "READY":
            raise ConnectionLost(f"HSDS not ready ({status})")
        return body.get("start_time")
