"""The viewer's proxy against real servers: what it forwards, to whom, and how.

A review found that it held whole answers in memory until a slow page read them
(37 MiB -> 1968 MiB for four slow 250 MiB reads), called an answer that took more than
10 s to read one that "does not answer", forwarded ``?bucket=`` (another bucket's
domain of the pinned name), answered reads to any ``Host`` (a DNS-rebinding site could
read the live scan through a user's browser), and answered a body that was not in its
Content-Encoding with a bare 500.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from streamtomo.app.viewer import server as viewer_server
from streamtomo.app.viewer.server import ViewerServer, ViewerTarget
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer

MiB = 1 << 20
BIG = 128 * MiB  # far more than socket buffers hold between the three of them
PIECE = b"\x07" * MiB


class Upstream:
    """A stand-in endpoint: records each request; /big streams BIG bytes (counting what
    it got written), /slow sends its headers, then a piece every 0.4 s, /late answers
    after 5 s, /broken stops after 1 of its 4 MiB, anything else a small JSON."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.written = 0
        self.big_done = threading.Event()
        self.http = BackgroundHttpServer(self._app, "127.0.0.1", 0, "stand-in endpoint")
        # Answers still being made: a test may end before them (the page was answered
        # 502 at the timeout, a HEAD had its headers), and a server closed under a
        # handler left a pending task whose collection, in a later test, logged
        # "Task was destroyed but it is pending!" (an ERROR: that test failed in CI).
        self._handling = 0
        self._handling_lock = threading.Lock()

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._handling and time.monotonic() < deadline:
            time.sleep(0.05)

    def _app(self) -> web.Application:
        async def record(request: web.Request) -> web.StreamResponse:
            with self._handling_lock:
                self._handling += 1
            try:
                return await answer(request)
            finally:
                with self._handling_lock:
                    self._handling -= 1

        async def answer(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path_qs, dict(request.headers)))
            if request.path == "/big":
                return await big(request)
            if request.path == "/slow":
                return await slow(request)
            if request.path == "/broken":
                return await broken(request)
            if request.path == "/late":
                await asyncio.sleep(5.0)
            return web.json_response({"ok": 1})

        async def broken(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = 4 * MiB
            await response.prepare(request)
            await response.write(PIECE)
            await asyncio.sleep(0.2)
            assert request.transport is not None
            request.transport.abort()  # the endpoint dies in the middle of its answer
            return response

        async def big(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = BIG
            await response.prepare(request)
            try:
                for _ in range(BIG // MiB):
                    await response.write(PIECE)
                    self.written += len(PIECE)
                await response.write_eof()
            except ConnectionError:
                pass
            finally:
                self.big_done.set()
            return response

        async def slow(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = 8
            await response.prepare(request)
            for _ in range(8):
                await asyncio.sleep(0.4)
                await response.write(b"s")
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return app


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    stand_in = Upstream()
    stand_in.http.start()
    try:
        yield stand_in
    finally:
        stand_in.wait_idle(15)
        stand_in.http.close(10)


@pytest.fixture
def fake_static(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "index.html").write_text("<!doctype html><title>viewer</title>")
    return tmp_path


def _viewer(upstream: Upstream, static: Path, host: str = "127.0.0.1") -> ViewerServer:
    endpoint = upstream.http.url()
    target = ViewerTarget(
        endpoint,
        "/home/beamline/live.h5",
        control=endpoint,
        control_token="t" * 32,
        origins=("https://tomo.example.org",),
    )
    return ViewerServer(target, host=host, static_dir=static).start()


def _port(viewer: ViewerServer) -> int:
    return int(viewer.url.rstrip("/").rsplit(":", 1)[1])


def _raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of a request sent byte for byte (a Host no client library sends)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- 2: answers are streamed ---------------------------------------------------------------
def test_a_large_answer_is_streamed_not_held(upstream: Upstream, fake_static: Path) -> None:
    """A page that does not read yet holds the endpoint back (its buffers' worth, not the
    answer); once it reads, the whole answer comes, byte for byte."""
    with _viewer(upstream, fake_static) as viewer:
        page = socket.socket()
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        page.connect(("127.0.0.1", _port(viewer)))
        page.sendall(f"GET /hdf/big HTTP/1.1\r\nHost: 127.0.0.1:{_port(viewer)}\r\nConnection: close\r\n\r\n".encode())
        time.sleep(3.0)  # the page reads nothing (within the viewer's 10 s for a page)
        held_back = upstream.written
        assert not upstream.big_done.is_set()
        # Buffers between the three (sockets, aiohttp) are a few MiB; whole, it was 128.
        assert held_back < 32 * MiB, (
            f"the endpoint wrote {held_back / MiB:.0f} MiB to the viewer for a page that reads nothing"
        )
        page.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            head += page.recv(65536)
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {BIG}".encode() in head
        received, wrong = len(body), body.count(b"\x07") != len(body)
        while chunk := page.recv(1 << 20):
            received += len(chunk)
            wrong = wrong or chunk.count(b"\x07") != len(chunk)
        page.close()
        assert received == BIG and not wrong


def test_the_endpoint_has_time_to_first_byte_not_for_the_whole_answer(
    upstream: Upstream, fake_static: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer whose first byte came at once but whose whole took longer than the
    timeout was cut and reported as 'does not answer (no answer within 10 s)'."""
    # Margins of a second and more each way: the upstream shares this process, and a
    # stall of 0.6 s on a loaded machine turned a 0.4 s gap into a 1 s timeout (502).
    monkeypatch.setattr(viewer_server, "UPSTREAM_TIMEOUT_S", 2.0)
    with _viewer(upstream, fake_static) as viewer:
        slow = requests.get(viewer.url + "hdf/slow", timeout=20)  # 3.2 s in all, a piece each 0.4 s
        assert (slow.status_code, slow.content) == (200, b"s" * 8)
        late = requests.get(viewer.url + "hdf/late", timeout=20)  # nothing for 5 s
        assert late.status_code == 502
        assert late.json()["message"].endswith("does not answer (no answer within 2 s)")
        head = requests.head(viewer.url + "hdf/slow", timeout=20)  # the status and length alone
        assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "8", b"")


def test_an_answer_the_endpoint_breaks_off_is_cut_short_for_the_page(
    upstream: Upstream, fake_static: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its status went out already: the page learns of it by the connection closing
    short of the length (requests raises), and the log says what happened."""
    with _viewer(upstream, fake_static) as viewer:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # urllib3: IncompleteRead
            assert len(requests.get(viewer.url + "hdf/broken", timeout=20).content) < 4 * MiB
        assert "stopped in the middle of an answer" in caplog.text
        assert requests.get(viewer.url + "hdf/", timeout=10).json() == {"ok": 1}  # and goes on


def test_a_page_that_stops_reading_is_cut_off(
    upstream: Upstream, fake_static: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It would hold the endpoint's connection (on our server a slot for large reads)
    for as long as it liked."""
    monkeypatch.setattr(viewer_server, "PAGE_TIMEOUT_S", 1.0)
    with _viewer(upstream, fake_static) as viewer:
        page = socket.socket()
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        page.connect(("127.0.0.1", _port(viewer)))
        page.sendall(f"GET /hdf/big HTTP/1.1\r\nHost: 127.0.0.1:{_port(viewer)}\r\n\r\n".encode())
        assert upstream.big_done.wait(15), "the endpoint is still held"
        assert upstream.written < BIG
        page.close()


# -- 3: only the page's query parameters go on ------------------------------------------
def test_only_the_pages_query_parameters_reach_the_endpoint(upstream: Upstream, fake_static: Path) -> None:
    with _viewer(upstream, fake_static) as viewer:
        answer = requests.get(
            viewer.url + "hdf/datasets/d-1/value",
            params=[
                ("bucket", "otherbucket"),
                ("Bucket", "b2"),
                ("domain", "/x"),
                ("Domain", "/y"),
                ("HOST", "/z"),
                ("SELECT", "[0:1]"),
                ("select", "[5:6]"),
                ("getobjs", "1"),
                ("Limit", "5"),
            ],
            headers={"X-Hdf-bucket": "b3", "X-Hdf-domain": "/q"},
            timeout=10,
        )
        assert answer.json() == {"ok": 1}
        _, path_qs, headers = upstream.seen[-1]
        forwarded = requests.Request("GET", "http://x" + path_qs).prepare()
        query = dict(p.split("=", 1) for p in (forwarded.path_url.split("?", 1)[1]).split("&"))
        assert {k: requests.utils.unquote(v) for k, v in query.items()} == {
            "select": "[0:1]",  # the first one, under the name HSDS reads
            "getobjs": "1",
            "domain": "/home/beamline/live.h5",
        }
        assert not any(name.lower().startswith("x-hdf") for name in headers)


# -- 4: reads answer only this viewer's names --------------------------------------------
@pytest.mark.parametrize("path", ["", "index.html", "viewer.json", "assets/app.js", "hdf/", "hdf/datasets/d-1/value"])
def test_a_rebound_name_reads_nothing(upstream: Upstream, fake_static: Path, path: str) -> None:
    with _viewer(upstream, fake_static) as viewer:
        port = _port(viewer)
        for host in ("evil.com", f"evil.com:{port}", "a:b:c", "[::1", "127.0.0.1.evil.com", "localhost.evil.com"):
            status, body = _raw(port, f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert status == 403, (host, body)
            assert b"is not this viewer's address" in body
        assert upstream.seen == []
        # Its own names: loopback (any port: a port-forward's), an address, its public origin.
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "LOCALHOST:8080",
            f"[::1]:{port}",
            "192.0.2.7",
            "tomo.example.org",
        ):
            status, body = _raw(port, f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert status == 200, (host, body)


def test_on_every_interface_the_machines_names_are_its_own() -> None:
    served_names = viewer_server.served_names
    assert socket.gethostname().lower() in served_names("0.0.0.0")
    assert served_names("tomo-viewer.example.org") == {"tomo-viewer.example.org"}
    assert served_names("127.0.0.1", ("https://Tomo.Example.org",)) == {"127.0.0.1", "tomo.example.org"}


# -- 5: a body that cannot be read -------------------------------------------------------
def test_a_body_not_in_its_encoding_is_a_400(upstream: Upstream, fake_static: Path) -> None:
    with _viewer(upstream, fake_static) as viewer:
        for encoding, body in (("gzip", b'{"value": 31.5}'), ("deflate", b"not deflate")):
            answer = requests.post(
                viewer.url + "control/parameters/center",
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": encoding},
                timeout=10,
            )
            assert answer.status_code == 400, answer.text
            assert "the request body cannot be read" in answer.json()["message"]
        # refused before the body is read (415, 403): no ERROR in the log either (the
        # fixture fails on one), where aiohttp's read of the unread body logged one
        for headers in (
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/json", "Origin": "http://evil.com"},
        ):
            answer = requests.post(
                viewer.url + "control/parameters/center",
                data=b"not gzip",
                headers={**headers, "Content-Encoding": "gzip"},
                timeout=10,
            )
            assert answer.status_code in (403, 415)
        assert upstream.seen == []
        good = requests.post(
            viewer.url + "control/parameters/center",
            data=gzip.compress(b'{"value": 31.5}'),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert good.status_code == 200
        assert upstream.seen[-1][0:2] == ("POST", "/streamtomo/parameters/center")
