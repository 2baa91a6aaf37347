"""Each listener's connections are guarded: a client that opened connections and sent
half a request line held each one for good (1100 of them took every file descriptor
of the reducer's process and the live port stopped answering); so did one that sent
whole headers and then its body a byte at a time."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from aiohttp import web

from streamtomo.hsds_bridge import http_thread
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer, ConnectionLimits, read_limited


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


@pytest.fixture
def server() -> Iterator[BackgroundHttpServer]:
    http = BackgroundHttpServer(_app, "127.0.0.1", 0, "test server")
    http.limits.header_timeout = 0.5
    http.limits.max_connections = 8
    http.limits.max_per_client = 8
    http.start()
    try:
        yield http
    finally:
        http.close(10)


def _half_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed it (read returns EOF or a reset) within the socket's timeout."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_request_whose_headers_never_end_is_closed(server: BackgroundHttpServer) -> None:
    assert server.port is not None
    stalled = [_half_request(server.port) for _ in range(4)]
    try:
        assert all(_closed_by_server(sock) for sock in stalled)
        assert server.limits.timed_out == 4
        assert requests.get(f"{server.url()}/", timeout=10).text == "hello"
    finally:
        for sock in stalled:
            sock.close()


def test_connections_beyond_the_limit_are_closed_and_the_rest_are_served(server: BackgroundHttpServer) -> None:
    assert server.port is not None
    server.limits.header_timeout = 60.0  # they stay until the test ends
    held = [_half_request(server.port) for _ in range(8)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        assert _closed_by_server(extra)
        assert server.limits.refused >= 1
    finally:
        for sock in held:
            sock.close()
    # Their slots free again once they close: a whole request is answered.
    session = requests.Session()
    for _ in range(50):
        try:
            if session.get(f"{server.url()}/", timeout=10).text == "hello":
                break
        except requests.ConnectionError:
            continue  # the server has not yet seen every close
    else:
        pytest.fail("no request was served after the held connections closed")


def test_a_whole_request_split_across_reads_is_served(server: BackgroundHttpServer) -> None:
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for part in (b"GET / HTTP/1.1\r\nHost: x\r", b"\n", b"Connection: close\r\n\r", b"\n"):
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
    assert server.limits.timed_out == 0


def _this_machines_other_address() -> str | None:
    """An address of this machine that is not loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: never sent, only routed
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_one_client_cannot_take_every_slot() -> None:
    """A review held all 256 slots from one process and the port answered nobody else;
    then 64 from each of 127.0.0.2 to 127.0.0.5: every loopback address is one client."""
    server = BackgroundHttpServer(_app, "0.0.0.0", 0, "test server")
    server.limits.header_timeout = 60.0
    server.limits.max_per_client = 3
    server.start()
    held = [_half_request(server.port) for _ in range(3)]  # type: ignore[arg-type]
    try:
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.5"):  # all this machine's loopback
            extra = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=(source, 0))
            assert _closed_by_server(extra), source
        assert server.limits.by_client == {"loopback": 3}
        # Another client still gets in: this machine by an address of its network.
        other = _this_machines_other_address()
        if other is None:
            pytest.skip("this machine has no address but loopback")
        with socket.create_connection((other, server.port), timeout=30, source_address=(other, 0)) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        server.close(10)


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # the same client over IPv4 or a dual-stack socket
        ("2001:db8::1", "2001:db8::1"),
        ("2001:db8::2", "2001:db8::2"),  # one /64 may hold many machines: apart
        ("fe80::1%eth0", "fe80::1"),
        ("local", "local"),
    ],
)
def test_whose_connection_it_is(address: str, client: str) -> None:
    assert http_thread.client_of(address) == client
    limits = ConnectionLimits("test", 1.0, max_connections=10, max_per_client=1)
    assert limits.admit(http_thread.client_of(address)) == ""
    assert limits.admit(http_thread.client_of("192.0.2.99")) == ""  # another client still gets in


# -- bodies --------------------------------------------------------------------------------
def _body_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        if request.query.get("wait"):  # a handler that takes the body only later
            await asyncio.sleep(float(request.query["wait"]))
        try:
            body = await read_limited(request, 64 << 20)
        except http_thread.BodyError as error:
            return web.Response(status=error.status, text=str(error))
        return web.Response(text=str(len(body)))

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/", echo)
    return app


@pytest.fixture
def body_server() -> Iterator[BackgroundHttpServer]:
    http = BackgroundHttpServer(_body_app, "127.0.0.1", 0, "test server")
    http.limits.body_timeout = 0.5
    http.limits.min_body_rate = 1000.0
    http.start()
    try:
        yield http
    finally:
        http.close(10)


def _post_head(length: int, query: str = "") -> bytes:
    return f"POST /{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_body_that_comes_too_slowly_is_closed(body_server: BackgroundHttpServer) -> None:
    """Whole headers, then a body byte now and then: held each connection for good (256
    of them: the port answered nobody)."""
    assert body_server.port is not None
    slow = socket.create_connection(("127.0.0.1", body_server.port), timeout=30)
    slow.sendall(_post_head(1000))
    start = time.monotonic()
    answer = b""
    slow.settimeout(0.2)
    while time.monotonic() - start < 10:
        try:
            slow.sendall(b"x")
            chunk = slow.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    closed_after = time.monotonic() - start
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert answer.endswith(b"the request body came slower than 1000 bytes/s")
    assert closed_after < 3, "a body of one byte in 0.2 s (1000 bytes/s asked for) was not cut at the first look"
    assert body_server.limits.body_timed_out == 1
    assert requests.post(f"{body_server.url()}/", data=b"y" * 5000, timeout=10).text == "5000"


def test_a_body_that_keeps_the_rate_is_served(body_server: BackgroundHttpServer) -> None:
    """In pieces, longer than the grace in all, but never behind the rate."""
    assert body_server.port is not None
    with socket.create_connection(("127.0.0.1", body_server.port), timeout=30) as sock:
        sock.sendall(_post_head(3000))
        for _ in range(6):
            time.sleep(0.25)
            sock.sendall(b"z" * 500)  # 2000 bytes/s
        assert _answer(sock).endswith(b"\r\n\r\n3000")
    assert body_server.limits.body_timed_out == 0


def test_a_body_the_handler_takes_late_is_not_the_clients_delay(body_server: BackgroundHttpServer) -> None:
    """32 MiB sent at once to a handler that reads it after 1.5 s: aiohttp stops reading
    the socket meanwhile (its buffer is full), and the client is not to blame."""
    assert body_server.port is not None
    size = 32 << 20
    answer = requests.post(f"{body_server.url()}/?wait=1.5", data=b"w" * size, timeout=30)
    assert answer.text == str(size)
    assert body_server.limits.body_timed_out == 0


def test_a_body_not_in_its_content_encoding_is_a_body_error(body_server: BackgroundHttpServer) -> None:
    """aiohttp's payload error went up uncaught: a bare 500, a traceback in the log."""
    for encoding in ("gzip", "deflate"):
        answer = requests.post(
            f"{body_server.url()}/", data=b"plain text", headers={"Content-Encoding": encoding}, timeout=10
        )
        assert answer.status_code == 400
        assert answer.text == f"the request body cannot be read: Can not decode content-encoding: {encoding}"
    good = requests.post(
        f"{body_server.url()}/", data=gzip.compress(b"a" * 100), headers={"Content-Encoding": "gzip"}, timeout=10
    )
    assert good.text == "100"


@pytest.mark.parametrize(
    ("text", "port", "message"),
    [
        ("", 8100, ""),
        ("0", 0, ""),  # a free one
        ("65535", 65535, ""),
        ("abc", None, "STREAMTOMO_X_PORT='abc' is not a port number"),
        ("99999", None, "STREAMTOMO_X_PORT='99999': a port is 0 to 65535"),
        ("-1", None, "STREAMTOMO_X_PORT='-1': a port is 0 to 65535"),
    ],
)
def test_a_port_from_the_environment_is_one_or_names_its_variable(text: str, port: int | None, message: str) -> None:
    from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError, env_port

    if port is not None:
        assert env_port({"STREAMTOMO_X_PORT": text}, "STREAMTOMO_X_PORT", 8100) == port
    else:
        with pytest.raises(EnvironmentSettingError, match=message.replace("(", r"\(")):
            env_port({"STREAMTOMO_X_PORT": text}, "STREAMTOMO_X_PORT", 8100)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /?domain=/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line over 8190 bytes
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",  # a header over 8190 bytes
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
    ],
)
def test_a_request_the_parser_refuses_is_the_clients_doing_not_an_error(
    body_server: BackgroundHttpServer, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answered 400 and logged an ERROR with its traceback: one unauthenticated
    request per line of ERROR on every listener."""
    assert body_server.port is not None
    with socket.create_connection(("127.0.0.1", body_server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        assert _answer(sock).startswith(b"HTTP/1.0 400")
    time.sleep(0.2)  # the log line is written after the answer
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("a malformed request" in r.getMessage() for r in caplog.records)
