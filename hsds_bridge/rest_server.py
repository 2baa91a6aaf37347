"""A read-only HDF REST server (HSDS dialect) over live in-memory domains.

:class:`HdfRestServer` implements the :class:`~hsds_bridge.publisher.Publisher`
protocol by serving each started :class:`~hsds_bridge.domain.Domain` in place: no
copies, no background shipping, ``notify()`` has nothing to do. Readers (h5pyd 1.0,
h5web's HsdsProvider, plain ``fetch`` with ``Accept: application/octet-stream``) see
the arrays as of their request.

Reader notes (h5pyd 1.0):

* ``h5pyd.File(domain, "r", endpoint=server.url)``; no credentials are needed.
* h5pyd caches all *metadata* (links, attributes, shapes) for the life of the
  ``File``; dataset *values* are fetched on every ``dset[...]``. To see new
  datasets or groups, open a new ``File``.
* Each read is consistent per request: the block is copied under ``domain.lock``.

The aiohttp application runs on its own event loop in a background thread; array
reads run in a small thread pool so the event loop never waits for ``domain.lock``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from aiohttp import web

from hsds_bridge.control_api import ParameterSink, ParameterSource
from hsds_bridge.domain import Domain
from hsds_bridge.publisher import PublisherStats
from hsds_bridge.rest_app import build_app
from hsds_bridge.rest_registry import DomainRegistry, Limits

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0


class HdfRestServer:
    """Serve domains over the HDF REST API (read-only) on ``host:port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cors_origins: Sequence[str] = (),
        *,
        limits: Limits | None = None,
        workers: int = 8,
        serve_domain_objs: bool = True,
        parameter_sink: ParameterSink | None = None,
        parameter_source: ParameterSource | None = None,
    ) -> None:
        """``port=0`` binds a free port (read it back from :attr:`url`).

        ``cors_origins``: browser origins allowed to read (``"*"`` only if listed).
        ``serve_domain_objs``: answer h5pyd's ``getobjs`` with all object metadata so
        that opening a file takes one request.
        """
        self._host = host
        self._port = port
        self._cors_origins = tuple(cors_origins)
        self._parameter_sink = parameter_sink
        self._parameter_source = parameter_source
        self._registry = DomainRegistry(limits or Limits(), workers, serve_domain_objs)
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound_port: int | None = None
        self._closed = False

    # -- Publisher protocol ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://host:port``; with ``port=0`` the real port is known after ``start``.

        Never raises (``isinstance(x, Publisher)`` reads it): before the first
        ``start`` it shows the configured port.
        """
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        host = f"[{host}]" if ":" in host else host
        port = self._bound_port if self._bound_port is not None else self._port
        return f"http://{host}:{port}"

    def start(self, domain: Domain) -> None:
        """Serve ``domain`` (by its name); the first call starts the HTTP server."""
        with self._guard:
            if self._closed:
                raise RuntimeError("HdfRestServer is closed")
            self._registry.add(domain)
            if self._thread is None:
                self._launch()
        log.info("serving domain %s at %s", domain.name, self.url)

    def notify(self) -> None:
        """Nothing to publish: readers read the live arrays. Only counted."""
        self._registry.counters.notified()

    def stats(self) -> PublisherStats:
        return self._registry.stats()

    def close(self, timeout: float = 30.0) -> None:
        """Stop serving (in-flight requests get a short grace period) and join the thread."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            thread, loop = self._thread, self._loop
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                log.warning("HDF REST server thread did not stop within %.1f s", timeout)
        self._registry.shutdown()

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> HdfRestServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- background thread ---------------------------------------------------------------
    def _launch(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._serve, args=(ready, failure), name="hdf-rest-server", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"HDF REST server did not start within {_START_TIMEOUT} s")
        if failure:
            thread.join()
            raise RuntimeError(f"HDF REST server failed to bind {self._host}:{self._port}") from failure[0]
        self._thread = thread

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # A short shutdown grace period: close() must not hang on a slow client.
        runner = web.AppRunner(build_app(self._registry, self._cors_origins, self._parameter_sink, self._parameter_source), access_log=None, shutdown_timeout=2.0)
        try:
            loop.run_until_complete(self._bind(runner))
        except BaseException as exc:  # reported to start() in the caller's thread
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            log.info("HDF REST server on port %s stopped", self._bound_port)

    async def _bind(self, runner: web.AppRunner) -> None:
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        address = runner.addresses[0]
        self._bound_port = int(address[1])
