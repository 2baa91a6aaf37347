"""An aiohttp application served on its own event-loop thread.

Both the reducer's HDF REST server and the viewer run inside processes whose main
thread belongs to someone else (dranspose, the CLI), so each gets a loop thread:
``start`` binds (port 0 picks a free port, read back as :attr:`port`), ``close``
stops the loop and joins the thread.

Each connection is guarded (:class:`GuardedConnection`), since aiohttp has no limit of
its own on either: a connection must complete its first request's headers within
:data:`HEADER_TIMEOUT_S` (aiohttp's keep-alive timer covers later requests), and a
listener holds at most :data:`MAX_CONNECTIONS`, :data:`MAX_CONNECTIONS_PER_CLIENT` of
them from one address, closing new ones beyond. Without them
a client that opened connections and sent half a request line held each one for good:
1100 of them took every file descriptor of the reducer's process (its scan's too),
and the live port, which a chart may put on the network unauthenticated, stopped
answering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
HEADER_TIMEOUT_S = 10.0  # from a connection's opening to its first request's headers
MAX_CONNECTIONS = 256  # open connections per listener; a beamline's readers need far fewer
# Open connections per client address: one client alone cannot take every slot (and
# with them the port); a proxy in front (an Ingress) still has plenty.
MAX_CONNECTIONS_PER_CLIENT = 64
HEADER_ENDS = (b"\r\n\r\n", b"\n\n")


class EnvironmentSettingError(ValueError):
    """A deployment setting from the environment that no listener can use; the message
    names the variable. Raised before anything listens, so that a service refuses to
    start with that message (the CLI: one line, exit 2) instead of a traceback."""


def env_port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port from ``env[name]`` (0: a free one)."""
    text = env.get(name, "")
    if not text.strip():
        return default
    try:
        port = int(text)
    except ValueError:
        raise EnvironmentSettingError(f"{name}={text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise EnvironmentSettingError(f"{name}={text!r}: a port is 0 to 65535 (0: a free one)")
    return port


class ConnectionLimits:
    """What one listener's connections share: the limits and the count of open ones."""

    def __init__(self, name: str, header_timeout: float, max_connections: int, max_per_client: int) -> None:
        self.name = name
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.by_client: Counter[str] = Counter()  # open connections per client address
        self.refused = 0  # over max_connections or max_per_client
        self.timed_out = 0  # headers not complete in time

    @property
    def open(self) -> int:
        """Connections open now, from every client."""
        return sum(self.by_client.values())

    def admit(self, client: str) -> str:
        """Take a slot for a new connection from ``client``; why not ('' when taken)."""
        if self.open >= self.max_connections:
            return f"{self.open} connections open, the most it keeps"
        if self.by_client[client] >= self.max_per_client:
            return f"{self.by_client[client]} connections open from {client}, the most one client may keep"
        self.by_client[client] += 1
        return ""

    def release(self, client: str) -> None:
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the two limits above."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._make_inner = inner
        self._limits = limits
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a header end split across reads
        self._client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._limits
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        refused = limits.admit(client)
        if refused:
            limits.refused += 1
            if limits.refused == 1 or limits.refused % 1000 == 0:
                log.warning("%s: %s: closing new ones (%d so far)", limits.name, refused, limits.refused)
            transport.abort()
            return
        self._client = client
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(limits.header_timeout, self._headers_too_slow)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _headers_too_slow(self) -> None:
        self._deadline = None
        self._limits.timed_out += 1
        log.info(
            "%s: a connection sent no whole request within %.0f s: closed",
            self._limits.name,
            self._limits.header_timeout,
        )
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if any(end in seen for end in HEADER_ENDS):
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._limits.release(self._client)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


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
        self._server: asyncio.Server | None = None
        self.limits = ConnectionLimits(name, HEADER_TIMEOUT_S, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT)
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
            if self._server is not None:
                self._server.close()  # no new connections; runner.cleanup closes the open ones
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            log.info("%s on port %s stopped", self.name, self.port)

    async def _bind(self, runner: web.AppRunner) -> None:
        await runner.setup()
        protocol = runner.server
        assert protocol is not None
        limits = self.limits
        # As web.TCPSite binds, each connection's protocol behind GuardedConnection.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedConnection(protocol, limits),
            self.host or None,
            self.requested_port,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])


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
