"""An aiohttp application served on its own event-loop thread.

Both the reducer's HDF REST server and the viewer run inside processes whose main
thread belongs to someone else (dranspose, the CLI), so each gets a loop thread:
``start`` binds (port 0 picks a free port, read back as :attr:`port`), ``close``
stops the loop and joins the thread.

Each connection is guarded (:class:`GuardedConnection`), since aiohttp has no limit of
its own on any of these: a connection must complete its first request's headers within
:data:`HEADER_TIMEOUT_S` (aiohttp's keep-alive timer covers later requests); a request's
body, once :data:`BODY_TIMEOUT_S` have passed, must have come at :data:`MIN_BODY_RATE`
on average, or its read fails (408) and the connection is closed; and a listener holds
at most :data:`MAX_CONNECTIONS`, :data:`MAX_CONNECTIONS_PER_CLIENT` of them from one
client (every loopback address is one client: :func:`client_of`), closing new ones beyond.
Without them a client that opened connections and sent half a request line held each
one for good: 1100 of them took every file descriptor of the reducer's process (its
scan's too), and the live port, which a chart may put on the network unauthenticated,
stopped answering. With the headers guarded alone, 256 connections that sent whole
headers and then a body byte every 10 s (64 each from 127.0.0.2 to 127.0.0.5) kept the
port from answering anyone for as long as they liked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
HEADER_TIMEOUT_S = 10.0  # from a connection's opening to its first request's headers
# A request's body: after BODY_TIMEOUT_S (as long as headers may take) it must have come
# at MIN_BODY_RATE bytes/s on average since its headers, or it is refused (408) and the
# connection closed. A rate, not one deadline: the largest body any listener takes (16
# MiB of points) may take 17 min at that rate, while one byte in 10 s is cut at the
# first check. Whoever holds a slot this way must keep sending 16 KiB/s for it.
BODY_TIMEOUT_S = 10.0
MIN_BODY_RATE = 16 * 1024
MAX_CONNECTIONS = 256  # open connections per listener; a beamline's readers need far fewer
# Open connections per client (client_of): one client alone cannot take every slot (and
# with them the port); a proxy in front (an Ingress) still has plenty.
MAX_CONNECTIONS_PER_CLIENT = 64
HEADER_ENDS = (b"\r\n\r\n", b"\n\n")
LOOPBACK = "loopback"


def client_of(address: str) -> str:
    """Whose connection this is, for the per-client limit: the address, except that
    every loopback address (127.0.0.0/8, ::1, and 127.x mapped into IPv6) is one client,
    this machine. A process here may connect from any of 16 million loopback addresses,
    so counted apart they gave one client every slot (64 from each of four of them); a
    client that connects to 127.0.0.1 from elsewhere than 127.0.0.1 is a choice, not a
    need. Other addresses stay apart: a subnet (an IPv6 /64) may hold many machines."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # "fe80::1%eth0": the zone is no part of it
    except ValueError:
        return address  # "local" (a Unix socket) or what the transport gave
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOOPBACK if ip.is_loopback else str(ip)


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


class BodyTooSlow(web.HTTPRequestTimeout, TimeoutError):
    """What reading a body the client sent too slowly raises. An HTTPException: a handler
    that lets it go answers 408; a TimeoutError: aiohttp, reading what is left of an
    unread body after the answer, takes it as the end of waiting and closes the connection."""


def payload_error_reason(error: BaseException) -> str:
    """The reason in aiohttp's payload error: its text is "400, message:\\n  Can not
    decode content-encoding: gzip"; its cause (an HttpProcessingError) holds the reason alone."""
    reason = getattr(error.__cause__, "message", "") or str(error).rsplit("\n", 1)[-1].strip()
    return str(reason) or "malformed"


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, where a body the client sent that cannot be decoded (a
    "gzip" body that is not gzip) is said at INFO, as the client's doing. aiohttp logged
    it as an ERROR with its traceback: where a handler let it go, and where the handler
    answered without reading the body (a 401 for no token, a 403) and aiohttp read the
    rest of it after the answer; so anyone could fill the log with ERRORs. So is a request
    aiohttp's parser refused (a request line or header over 8190 bytes, a bad request
    line, a bad Content-Length): it answers 400, and logged an ERROR with a traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, web.RequestPayloadError):
            self.logger.info("%s: a request body that cannot be read (%s)", msg, payload_error_reason(error))
            return
        if isinstance(error, HttpProcessingError):
            text = msg % args if args and isinstance(msg, str) else str(msg)
            self.logger.info("%s: a malformed request (%s)", text, type(error).__name__)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class ConnectionLimits:
    """What one listener's connections share: the limits and the count of open ones."""

    def __init__(
        self,
        name: str,
        header_timeout: float,
        max_connections: int,
        max_per_client: int,
        body_timeout: float = BODY_TIMEOUT_S,
        min_body_rate: float = MIN_BODY_RATE,
    ) -> None:
        self.name = name
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.by_client: Counter[str] = Counter()  # open connections per client (client_of)
        self.refused = 0  # over max_connections or max_per_client
        self.timed_out = 0  # headers not complete in time
        self.body_timed_out = 0  # a body slower than min_body_rate

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
    """aiohttp's protocol for one connection, behind the limits above."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._make_inner = inner
        self._limits = limits
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a header end split across reads
        self._client = ""
        self._received = 0  # bytes from the client, all told
        # The body being watched (watch_body): its payload, when its watch began, how
        # many bytes the connection had received by then, and the next check.
        self._body: StreamReader | None = None
        self._body_since = (0.0, 0)
        self._body_check: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._limits
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        client = client_of(str(peer[0])) if isinstance(peer, tuple) and peer else "local"
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

    def watch_body(self, payload: StreamReader) -> None:
        """Fail ``payload`` (a request's body, its headers just read) unless it comes
        at the limits' rate. Called for each request (aiohttp's handler reads the body
        while it comes in, so nothing here knows where it ends)."""
        self._stop_watching_body()
        self._body = payload
        if self._transport is None or payload.is_eof() or payload.exception() is not None:
            return
        loop = asyncio.get_running_loop()
        self._body_since = (loop.time(), self._received)
        self._body_check = loop.call_later(self._limits.body_timeout, self._check_body)
        payload.on_eof(lambda: self._body_done(payload))

    def _body_done(self, payload: StreamReader) -> None:
        if self._body is payload:
            self._stop_watching_body()

    def _stop_watching_body(self) -> None:
        if self._body_check is not None:
            self._body_check.cancel()
            self._body_check = None

    def _check_body(self) -> None:
        self._body_check = None
        transport, payload, limits = self._transport, self._body, self._limits
        if transport is None or payload is None or payload.is_eof() or payload.exception() is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not transport.is_reading():
            # aiohttp stopped reading: the handler has not taken what came (its buffer
            # is full). The wait is the server's, not the client's: count from now.
            self._body_since = (now, self._received)
            self._body_check = loop.call_later(limits.body_timeout, self._check_body)
            return
        since, received_then = self._body_since
        came = self._received - received_then
        if came < limits.min_body_rate * (now - since - limits.body_timeout):
            limits.body_timed_out += 1
            log.info(
                "%s: a request body came at %.0f bytes/s, slower than %.0f, after %.0f s: refused, closed",
                limits.name,
                came / max(now - since, 1e-9),
                limits.min_body_rate,
                now - since,
            )
            # Not transport.abort(): a handler reading the body would get "Connection
            # lost", which aiohttp answers 500 and logs as an ERROR. This fails the read
            # (aiohttp answers 408), and aiohttp, having no body to wait for, then
            # closes the connection.
            payload.set_exception(
                BodyTooSlow(text=f"the request body came slower than {limits.min_body_rate:.0f} bytes/s")
            )
            return
        # On time so far: the next look when, with nothing more, it would be late.
        due = since + limits.body_timeout + came / limits.min_body_rate
        self._body_check = loop.call_at(max(due, now + 0.5), self._check_body)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        self._received += len(data)
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
        self._stop_watching_body()
        self._body = None
        self._transport = None
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
        runner = web.AppRunner(
            self._app_factory(),
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            logger=ServerLog(logging.getLogger("aiohttp.server")),
        )
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
        # Each request, as aiohttp makes it from the headers, has its body watched by its
        # connection's guard (the only place that sees where one request's headers end).
        make_request = protocol.request_factory

        def request_factory(*args: Any, **kwargs: Any) -> web.BaseRequest:
            request = make_request(*args, **kwargs)
            transport = request.transport
            guard = transport.get_protocol() if transport is not None else None
            if isinstance(guard, GuardedConnection):
                guard.watch_body(request.content)
            return request

        protocol.request_factory = request_factory
        # As web.TCPSite binds, each connection's protocol behind GuardedConnection.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedConnection(protocol, limits),
            self.host or None,
            self.requested_port,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])


class BodyError(ValueError):
    """A request body that cannot be read (the caller answers :attr:`status` with the
    message): not in its ``Content-Encoding`` (a "gzip" body that is not gzip), 400, or
    sent too slowly (:class:`BodyTooSlow`), 408."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request's body, or its first ``limit + 1`` bytes when it is longer (the
    caller answers 413). ``content.read(n)`` returns what is buffered: a body that
    came in two TCP segments was cut at the first (measured: 20 of 113 bytes).
    Raises :class:`BodyError` for a body that cannot be decoded (uncaught, aiohttp's
    payload error was a bare 500 with a traceback in the log) or came too slowly."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = await request.content.read(limit + 1 - size)
        except BodyTooSlow as error:
            raise BodyError(error.text or error.reason, error.status) from None
        except web.RequestPayloadError as error:
            # Nothing more of it is read: ended, aiohttp does not read the rest after the
            # answer (which raised this again); the caller's answer closes the connection.
            request.content.feed_eof()
            raise BodyError(f"the request body cannot be read: {payload_error_reason(error)}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
