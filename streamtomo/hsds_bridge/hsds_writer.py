"""Mirror a live :class:`~streamtomo.hsds_bridge.domain.Domain` into a real HSDS server.

The reducer thread only copies: :meth:`HsdsWriter.notify` takes the dirty chunks
under ``domain.lock`` into a bounded, coalescing backlog (:mod:`chunk_backlog`). A
background thread with its own asyncio loop ships them over HSDS's REST API:

* :mod:`hsds_client`: one aiohttp session; busy answers retried with backoff;
* :mod:`hsds_domain_setup`: folders, the domain (never overwriting another's:
  ``_v2``...), ACLs and objects, with ids chosen here so every step is idempotent;
* :mod:`chunk_plan` and :mod:`hsds_sender`: only what changed, in few requests;
  data first, status next, the generation counter last;
* :mod:`hsds_mirror`: flushes to storage, re-sends what a lost or restarted server
  may have dropped, and at close checks the domain as h5pyd reads it, every
  scalar (the status) as HSDS answers it now (:mod:`hsds_verify`), before calling
  it complete.

Settings are one :class:`~streamtomo.hsds_bridge.hsds_settings.HsdsWriterSettings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from streamtomo.hsds_bridge.chunk_backlog import ChunkBacklog
from streamtomo.hsds_bridge.chunk_plan import NodeSnapshot
from streamtomo.hsds_bridge.credentials import Credentials, load_credentials
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_client import HsdsClient, HsdsWriterError
from streamtomo.hsds_bridge.hsds_domain_setup import DomainSetup
from streamtomo.hsds_bridge.hsds_ids import versioned_name
from streamtomo.hsds_bridge.hsds_mirror import HsdsMirror
from streamtomo.hsds_bridge.hsds_settings import HsdsWriterSettings
from streamtomo.hsds_bridge.publisher import PublisherStats

__all__ = ["HsdsWriter", "HsdsWriterError", "HsdsWriterSettings", "versioned_name"]

log = logging.getLogger(__name__)
# close() looks this often whether it must give way (give_way) while it waits.
CLOSE_POLL_S = 0.1


class HsdsWriter:
    """Publisher that mirrors a domain into HSDS (see module docstring).

    ``domain_name`` is the HSDS path (``/home/streamtomo/scan_0001.h5``); None uses
    the domain's own name. With ``on_exists="version"`` an existing domain is never
    touched: ``_v2``, ``_v3``... is appended and :attr:`domain_name` reports the
    final name.
    """

    def __init__(
        self,
        endpoint: str,
        domain_name: str | None = None,
        credentials: Credentials | None = None,
        settings: HsdsWriterSettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else HsdsWriterSettings()
        self._endpoint = endpoint.rstrip("/")
        self._requested_name = domain_name
        self._credentials = credentials if credentials is not None else load_credentials()
        self._domain: Domain | None = None
        self._backlog = ChunkBacklog(self.settings)
        self._setup: DomainSetup | None = None
        self._mirror: HsdsMirror | None = None
        self._client: HsdsClient | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._main_future: concurrent.futures.Future[None] | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._main_done = threading.Event()
        # close() may return before the loop is done (HSDS away); the loop then
        # finishes the domain in the background and stops itself.
        self._detach_lock = threading.Lock()
        self._detached = False

    # -- Publisher protocol ----------------------------------------------------------
    @property
    def url(self) -> str:
        return self._endpoint

    @property
    def domain_name(self) -> str:
        """Final HSDS domain name (after versioning), or the requested one."""
        if self._setup is not None and self._setup.name:
            return self._setup.name
        return self._requested_name or (self._domain.name if self._domain else "")

    @property
    def complete(self) -> bool:
        """Everything is acknowledged, flushed, and a reader sees the domain as written."""
        return self._mirror is not None and self._mirror.complete

    def start(self, domain: Domain) -> None:
        """Create the domain on HSDS (folders, objects, ACLs) and begin mirroring.

        Waits up to ``start_timeout`` for the setup; a refusal (401/403/409 with
        ``on_exists="fail"``...) raises. If HSDS is merely unreachable, setup goes on
        in the background and updates queue up meanwhile.
        """
        if self._domain is not None:
            raise RuntimeError("HsdsWriter.start() called twice")
        name = self._requested_name or domain.name
        if not name.startswith("/") or name.endswith("/"):
            raise ValueError(f"invalid HSDS domain name {name!r}")
        self._domain, self._requested_name = domain, name
        with domain.lock:
            nodes = self._backlog.capture(domain)
            self._backlog.enqueue(domain, domain.take_dirty(), force=True)
        self._start_loop(name, nodes)
        try:
            final = self._ready.result(self.settings.start_timeout)
        except concurrent.futures.TimeoutError:
            log.warning(
                "HSDS setup of %s not finished after %.0fs (server unreachable?); continuing in the background",
                name, self.settings.start_timeout,
            )  # fmt: skip
            return
        except BaseException:
            self._stop_loop()
            self._domain = None
            raise
        log.info("publishing to %s%s", self._endpoint, f"/?domain={final}")

    def notify(self) -> None:
        """Queue copies of the chunks changed since the last call (no network I/O).

        After close() this still reaches a domain the loop is finishing in the
        background (e.g. the final count of dropped updates).
        """
        domain = self._domain
        if domain is None or self._main_done.is_set():
            return
        with domain.lock:
            self._backlog.enqueue(domain, domain.take_dirty(), force=self._closing)
        self._kick()

    def stats(self) -> PublisherStats:
        return self._backlog.snapshot()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything notified so far is acknowledged by HSDS (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.done() and not self._backlog.has_work():
                with self._backlog.lock:
                    if not self._backlog.busy:
                        return True
            time.sleep(0.01)
        return False

    def wait_complete(self, timeout: float) -> bool:
        """After close(): block until the background loop has finished the domain."""
        return self._main_done.wait(timeout) and self.complete

    def close(self, timeout: float = 30.0, give_way: Callable[[], bool] | None = None) -> None:
        """Send everything still dirty or queued, flush, verify, stop the background loop.

        If HSDS does not answer within ``timeout``, or ``give_way()`` turns true first
        (the next scan has started: the reducer's end of scan must not hold it back),
        what is still queued is counted as dropped (so the caller can record it) and
        close returns; the loop keeps going in the background, for up to
        ``give_up_after`` seconds, and ends the domain complete once HSDS answers again.
        """
        if self._domain is None or self._loop is None or self._closing:
            return
        assert self._client is not None and self._mirror is not None
        with self._domain.lock:
            # force: at the end of a scan the backlog limit gives way to completeness
            self._backlog.enqueue(self._domain, self._domain.take_dirty(), force=True)
        self._client.deadline = time.monotonic() + timeout + self.settings.give_up_after
        self._closing = True
        self._mirror.closing = True
        self._kick()
        started = time.monotonic()
        while not self._main_done.wait(min(CLOSE_POLL_S, max(0.0, started + timeout - time.monotonic()))):
            if time.monotonic() >= started + timeout or (give_way is not None and give_way()):
                break
        with self._detach_lock:
            if not self._main_done.is_set():
                self._detached = True
        if self._detached:
            # From now, as said: a close that gave way early kept the whole timeout's too.
            self._client.deadline = time.monotonic() + self.settings.give_up_after
            left = self._backlog.undelivered_at_close(len(self._mirror.inflight))
            log.warning(
                "HSDS domain %s not complete after %.0f s (%d chunk(s) not delivered, counted as dropped); "
                "the writer keeps trying in the background for up to %.0f s",
                self.domain_name, time.monotonic() - started, left, self.settings.give_up_after,
            )  # fmt: skip
            return
        self._stop_loop()
        self._log_result()

    @property
    def behind(self) -> bool:
        """close() returned and the writer still tries in the background (HSDS down)."""
        return self._detached and not self._main_done.is_set()

    @property
    def held_bytes(self) -> int:
        """Bytes of chunk copies the writer holds: queued, in flight, and acknowledged
        but not yet flushed (kept to be resent should the server lose them)."""
        held = self._backlog.pending_bytes
        mirror = self._mirror
        if mirror is not None:  # list(): a C-level copy, safe against its loop thread
            held += sum(c.nbytes for c in list(mirror.inflight.values()) + list(mirror.unflushed.values()))
        return held

    def abandon(self, timeout: float = 10.0) -> None:
        """Stop now a writer that close() left trying in the background: what it holds is
        dropped, and its domain is logged as not complete (an ERROR, as when it gives up
        by itself after ``give_up_after``). A writer that finished is left as it is."""
        loop, task, thread = self._loop, self._main_task, self._thread
        if not self.behind or loop is None or task is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop closed in between: it ended
            loop.call_soon_threadsafe(task.cancel)
        # _main's end logs the result, then stops the loop: its thread ends after both.
        if thread is not None:
            thread.join(timeout)

    def _log_result(self) -> None:
        future = self._main_future
        if future is not None and future.done() and not future.cancelled() and future.exception() is not None:
            log.debug("writer loop ended with %r", future.exception())
        if not self.complete:
            left = self._backlog.undelivered_at_close(0)
            refused = len(self._mirror.refused) if self._mirror is not None else 0
            self._backlog.error(
                f"HSDS domain {self.domain_name} is NOT complete ({left} chunk(s) not delivered, {refused} refused)"
            )
        s = self.stats()
        log.info(
            "HSDS writer closed: %s %s, %d updates, %.1f MB, %d retries, %d dropped, %d errors",
            self.domain_name, "complete" if self.complete else "INCOMPLETE", s.updates_published,
            s.bytes_sent / 1e6, s.retries, s.dropped_updates, s.errors,
        )  # fmt: skip

    def __enter__(self) -> HsdsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HsdsWriter({self._endpoint!r}, {self.domain_name!r}, user={self._credentials.username!r})"

    # -- loop thread lifecycle ---------------------------------------------------------------
    def _start_loop(self, name: str, nodes: list[NodeSnapshot]) -> None:
        s = self.settings
        self._client = HsdsClient(
            self._endpoint, self._credentials, domain=lambda: self.domain_name,
            max_connections=s.max_concurrency + 4, request_timeout=s.request_timeout,
            retry_initial=s.retry_initial, retry_max=s.retry_max, on_retry=self._backlog.count_retry,
        )  # fmt: skip
        self._setup = DomainSetup(self._client, name, s, forget_chunks=lambda path: mirror.forget_chunks(path))
        mirror = self._mirror = HsdsMirror(self._client, self._setup, self._backlog, s)
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="hsds-writer", daemon=True)
        self._thread.start()
        self._main_future = asyncio.run_coroutine_threadsafe(self._main(nodes), loop)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        task = self._main_task
        if task is not None and not self._main_done.is_set():
            # Cancel the task itself (not the thread-safe future, which would report
            # done at once) so that the session closes inside the loop.
            loop.call_soon_threadsafe(task.cancel)
            if not self._main_done.wait(10):
                log.warning("HSDS writer loop did not stop within 10 s")
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def _kick(self) -> None:
        loop, mirror = self._loop, self._mirror
        if loop is not None and mirror is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between
                loop.call_soon_threadsafe(mirror.wake.set)

    async def _main(self, nodes: list[NodeSnapshot]) -> None:
        self._main_task = asyncio.current_task()
        assert self._client is not None and self._mirror is not None
        try:
            await self._client.open()
            try:
                try:
                    await self._mirror.setup_with_retries(nodes)
                except BaseException as exc:
                    if not self._ready.done():
                        self._ready.set_exception(exc)
                    raise
                self._ready.set_result(self.domain_name)
                await self._mirror.run()
            finally:
                await self._client.close()
        finally:
            with self._detach_lock:
                self._main_done.set()
                detached = self._detached
            if detached:  # close() returned long ago: report and stop the loop here
                self._log_result()
                asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)
