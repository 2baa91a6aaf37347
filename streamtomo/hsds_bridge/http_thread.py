"""An aiohttp application served on its own event-loop thread.

Both the reducer's HDF REST server and the viewer run inside processes whose main
thread belongs to someone else (dranspose, the CLI), so each gets a loop thread:
``start`` binds (port 0 picks a free port, read back as :attr:`port`), ``close``
stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0


class BackgroundHttpServer:
    def __init__(
        self, app_factory: Callable[[], web.Application], host: str, port: int, name: str, shutdown_timeout: float = 2.0
    ) -> None:
        self._app_factory = app_factory
        self.host = host
        self.requested_port = port
        self.name = name
        # close() must not wait for slow clients or a browser's keep-alive connections.
        self._shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port if self.port is not None else self.requested_port}"

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._serve, args=(ready, failure), name=self.name, daemon=True)
        thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT_S} s")
        if failure:
            thread.join()
            raise OSError(f"{self.name} cannot listen on {self.host}:{self.requested_port}: {failure[0]}") from failure[
                0
            ]
        self._thread = thread

    def close(self, timeout: float) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s thread did not stop within %.1f s", self.name, timeout)

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app_factory(), access_log=None, shutdown_timeout=self._shutdown_timeout)
        try:
            loop.run_until_complete(self._bind(runner))
        except BaseException as error:  # reported to start() in the caller's thread
            failure.append(error)
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
            log.info("%s on port %s stopped", self.name, self.port)

    async def _bind(self, runner: web.AppRunner) -> None:
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.requested_port)
        await site.start()
        self.port = int(runner.addresses[0][1])


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request's body, or its first ``limit + 1`` bytes when it is longer (the
    caller answers 413). ``content.read(n)`` returns what is buffered: a body that
    came in two TCP segments was cut at the first (measured: 20 of 113 bytes)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
