"""Each listener's connections are guarded: a client that opened connections and sent
half a request line held each one for good (1100 of them took every file descriptor
of the reducer's process and the live port stopped answering)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests
from aiohttp import web

from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer


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


def test_one_client_cannot_take_every_slot(server: BackgroundHttpServer) -> None:
    """A review held all 256 slots from one process and the port answered nobody else."""
    assert server.port is not None
    server.limits.header_timeout = 60.0
    server.limits.max_per_client = 3
    held = [_half_request(server.port) for _ in range(3)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        assert _closed_by_server(extra)  # a fourth from the same address
        assert server.limits.by_client["127.0.0.1"] == 3
        # Another address still gets in (127.0.0.2 is loopback too on Linux).
        with socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := other.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


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
