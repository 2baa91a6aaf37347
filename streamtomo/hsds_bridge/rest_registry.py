"""The served domains, their ids, timestamps, limits and counters.

Shared by the aiohttp handlers (event-loop thread), the executor threads that touch
the numpy arrays under ``domain.lock``, and :class:`HdfRestServer` (caller threads).
"""

from __future__ import annotations

import asyncio
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.publisher import PublisherStats
from streamtomo.hsds_bridge.rest_ids import IdIndex

T = TypeVar("T")

OWNER = "streamtomo"


@dataclass
class ServedDomain:
    """One registered domain plus what the REST view needs about it."""

    domain: Domain
    ids: IdIndex
    created: float
    _last_modified: float
    _seen_generation: int

    @classmethod
    def create(cls, domain: Domain) -> ServedDomain:
        now = time.time()
        return cls(domain, IdIndex.for_domain(domain), now, now, domain.generation)

    @property
    def name(self) -> str:
        return self.domain.name

    def last_modified(self) -> float:
        """Time the generation was first seen to change (commit() bumps it)."""
        generation = self.domain.generation  # an int read: no lock needed
        if generation != self._seen_generation:
            self._seen_generation = generation
            self._last_modified = time.time()
        return self._last_modified


def normalise_domain_name(name: str) -> str:
    name = name.strip()
    if not name.startswith("/"):
        name = "/" + name
    if len(name) > 1:
        name = name.rstrip("/") or "/"
    return posixpath.normpath(name) if name != "/" else name


@dataclass
class Limits:
    max_response_bytes: int = 1 << 30  # 1 GiB: larger reads answer 413
    max_json_bytes: int = 64 << 20  # JSON is ~10x the binary size: ask for binary
    max_request_body: int = 64 << 20  # point lists in POST bodies


@dataclass
class Counters:
    requests: int = 0
    bytes_sent: int = 0
    errors: int = 0  # 5xx answers
    client_errors: int = 0  # 4xx answers
    notifications: int = 0
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, bytes_sent: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_sent += bytes_sent

    def record_status(self, status: int, message: str) -> None:
        with self._lock:
            if status >= 500:
                self.errors += 1
                self.last_error = message
            elif status >= 400:
                self.client_errors += 1

    def notified(self) -> None:
        with self._lock:
            self.notifications += 1


class DomainRegistry:
    """Domains by name, and the thread pool that reads their arrays."""

    def __init__(self, limits: Limits, workers: int = 8, serve_domain_objs: bool = True) -> None:
        self.limits = limits
        self.counters = Counters()
        self.serve_domain_objs = serve_domain_objs
        self.started = time.time()
        self._domains: dict[str, ServedDomain] = {}
        self._guard = threading.Lock()
        # Lock waits and array copies run here, never on the event loop: a writer
        # holding domain.lock for a long update must not stall every other reader.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hdf-rest-read")

    def add(self, domain: Domain) -> ServedDomain:
        served = ServedDomain.create(domain)
        with self._guard:
            self._domains[normalise_domain_name(domain.name)] = served
        return served

    def get(self, name: str) -> ServedDomain | None:
        with self._guard:
            return self._domains.get(normalise_domain_name(name))

    def all(self) -> list[ServedDomain]:
        with self._guard:
            return list(self._domains.values())

    def is_folder(self, name: str) -> bool:
        prefix = normalise_domain_name(name).rstrip("/") + "/"
        return any(s.name.startswith(prefix) for s in self.all())

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run_locked(self, served: ServedDomain, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with served.domain.lock:
                return fn()

        return await self.run(locked)

    def stats(self) -> PublisherStats:
        c = self.counters
        with c._lock:
            return PublisherStats(
                updates_published=c.notifications,
                bytes_sent=c.bytes_sent,
                errors=c.errors,
                last_error=c.last_error,
                extra={
                    "requests": float(c.requests),
                    "client_errors": float(c.client_errors),
                    "domains": float(len(self._domains)),
                },
            )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
