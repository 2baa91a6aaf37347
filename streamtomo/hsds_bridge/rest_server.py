"""A read-only HDF REST server (HSDS dialect) over live in-memory domains.

:class:`HdfRestServer` implements the :class:`~streamtomo.hsds_bridge.publisher.Publisher`
protocol by serving each started :class:`~streamtomo.hsds_bridge.domain.Domain` in place: no
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

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.host_names import served_names
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer
from streamtomo.hsds_bridge.publisher import PublisherStats
from streamtomo.hsds_bridge.rest_app import build_app
from streamtomo.hsds_bridge.rest_registry import DomainRegistry, Limits

log = logging.getLogger(__name__)


class HdfRestServer:
    """Serve domains over the HDF REST API (read-only) on ``host:port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cors_origins: Sequence[str] = (),
        *,
        host_names: Sequence[str] = (),
        limits: Limits | None = None,
        workers: int = 8,
        serve_domain_objs: bool = True,
    ) -> None:
        """``port=0`` binds a free port (read it back from :attr:`url`).

        ``cors_origins``: browser origins allowed to read (``"*"`` only if listed).
        ``host_names``: names browsers may know this server by, besides ``host``,
        localhost, IP addresses and the CORS origins' names (DNS rebinding:
        :mod:`streamtomo.hsds_bridge.host_names`).
        ``serve_domain_objs``: answer h5pyd's ``getobjs`` with all object metadata so
        that opening a file takes one request.

        Nothing here changes a pipeline: parameter changes go through the control
        API (:mod:`streamtomo.hsds_bridge.control_api`) on a listener of its own,
        so this port can be exposed to readers without exposing control.
        """
        self._host = host
        self._port = port
        self._cors_origins = tuple(cors_origins)
        self._host_names = served_names(host, cors_origins, host_names)
        self._registry = DomainRegistry(limits or Limits(), workers, serve_domain_objs)
        self._guard = threading.Lock()
        self._http = BackgroundHttpServer(
            lambda: build_app(self._registry, self._cors_origins, self._host_names),
            host,
            port,
            "HDF REST server",
        )
        self._closed = False

    # -- Publisher protocol ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://host:port``; with ``port=0`` the real port is known after ``start``.

        Never raises (``isinstance(x, Publisher)`` reads it): before the first
        ``start`` it shows the configured port.
        """
        return self._http.url()

    def start(self, domain: Domain) -> None:
        """Serve ``domain`` (by its name); the first call starts the HTTP server."""
        with self._guard:
            if self._closed:
                raise RuntimeError("HdfRestServer is closed")
            self._registry.add(domain)
            if not self._http.started:
                self._http.start()
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
        self._http.close(timeout)
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
