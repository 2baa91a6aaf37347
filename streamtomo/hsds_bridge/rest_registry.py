"""The served domains, their ids, timestamps, limits and counters.

Shared by the aiohttp handlers (event-loop thread), the executor threads that touch
the numpy arrays under ``domain.lock``, and :class:`HdfRestServer` (caller threads).
"""

from __future__ import annotations

import asyncio
import posixpath
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
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
    # JSON is ~5x the binary size and costs ~0.5 s of CPU per 4 MiB of float32 values
    # (rest_types.array_json_pieces, in pieces so other threads run in between). 16 MiB:
    # one 2048 x 2048 float32 slice, what h5web (JSON only) asks to show one image.
    max_json_bytes: int = 16 << 20
    max_request_body: int = 16 << 20  # point lists in POST bodies (binary uint64, as h5pyd sends them)
    # JSON bodies (a long select, points as JSON, attr_names): json.loads holds the GIL
    # throughout, ~30 ms per MiB of points, stalling every thread (the event loop and the
    # reducer included); unbounded, 15 MiB held every reader for seconds. 1 MiB: a
    # select of ~150000 coordinates, or ~100000 points as JSON.
    max_json_request_body: int = 1 << 20
    large_read_bytes: int = 1 << 20  # reads above this take a slot ...
    large_reads_per_client: int = 2  # ... of which one client (address) holds at most this many
    large_reads_total: int = 4  # ... and all clients together this many (fewer than the pool's threads)
    queued_per_client: int = 16  # more large reads waiting from one client answer 429


class TooManyReads(Exception):
    """One client has more large reads waiting than ``Limits.queued_per_client``."""


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
        # Event-loop state only (created and used on the server's loop thread).
        self._client_slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._total_slots: asyncio.Semaphore | None = None
        self._total_limit = max(1, min(limits.large_reads_total, workers - 1))

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

    @asynccontextmanager
    async def read_slot(self, client: str, nbytes: int) -> AsyncIterator[None]:
        """Hold a large-read slot of ``client`` and of the server while reading ``nbytes``.

        Small reads pass at once. Large ones queue per client, so one client's many
        large reads delay only that client, and at most ``large_reads_total`` run at
        all, so the pool always has threads left for small reads.
        """
        if nbytes <= self.limits.large_read_bytes:
            yield
            return
        if self._total_slots is None:
            self._total_slots = asyncio.Semaphore(self._total_limit)
        slot = self._client_slots.get(client)
        if slot is None:
            slot = self._client_slots[client] = (asyncio.Semaphore(self.limits.large_reads_per_client), [0])
        semaphore, users = slot
        if users[0] >= self.limits.large_reads_per_client + self.limits.queued_per_client:
            raise TooManyReads(f"{users[0]} large reads of this client are running or waiting")
        users[0] += 1
        try:
            async with semaphore, self._total_slots:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._client_slots[client]  # no table that grows with every address seen

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
