"""The controller client against a small real HTTP server on 127.0.0.1 that speaks the
part of dranspose's controller API the client uses."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from streamtomo.controller_client import (
    ControllerClient,
    ControllerError,
    ControllerTimeout,
    parameters_consistent,
    post_parameter,
)


class FakeController:
    """Parameters as bytes, a parameters hash that changes with every POST, services
    that take a new hash after ``lag`` config reads."""

    def __init__(self) -> None:
        self.parameters: dict[str, bytes] = {"known": b"1"}
        self.version = 0
        self.posts: list[tuple[str, bytes]] = []
        self.sequences: list[Any] = []
        self.stopped = 0
        self.lag = 2
        self._reads_since_post = 0

    @property
    def hash(self) -> str:
        return f"h{self.version}"

    async def get_parameter(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.parameters:
            return web.Response(status=404, text="no such parameter")
        return web.Response(body=self.parameters[name])

    async def post_parameter(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "forbidden":
            return web.Response(status=422, text="refused")
        data = await request.read()
        self.parameters[name] = data
        self.posts.append((name, data))
        self.version += 1
        self._reads_since_post = 0
        return web.json_response(self.hash)

    async def config(self, request: web.Request) -> web.Response:
        self._reads_since_post += 1
        service_hash = self.hash if self._reads_since_post > self.lag else f"h{self.version - 1}"
        service = {"parameters_hash": service_hash}
        return web.json_response(
            {"parameters_hash": self.hash, "ingesters": [service], "workers": [service], "reducer": service}
        )

    async def parameters_list(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": n} for n in self.parameters])

    async def sequence(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("parts"):
            return web.Response(status=400, text="no parts")
        self.sequences.append(body)
        return web.json_response("uuid-1")

    async def stop(self, request: web.Request) -> web.Response:
        self.stopped += 1
        return web.json_response(None)

    async def progress(self, request: web.Request) -> web.Response:
        return web.json_response({"completed_events": 3, "total_events": 5, "finished": False})

    # /api/v1/reduction: streamtomo's controller adds it (reduction_progress); dranspose's has none.
    reduction_status = 404

    async def reduction(self, request: web.Request) -> web.Response:
        if self.reduction_status != 200:
            return web.Response(status=self.reduction_status, text="Not Found" if self.reduction_status == 404 else "")
        return web.json_response({"completed_events": 3, "to_reduce": 2, "total_events": 5})


@pytest.fixture
def controller() -> Iterator[tuple[str, FakeController]]:
    fake = FakeController()
    app = web.Application()
    app.router.add_get("/api/v1/parameter/{name}", fake.get_parameter)
    app.router.add_post("/api/v1/parameter/{name}", fake.post_parameter)
    app.router.add_get("/api/v1/config", fake.config)
    app.router.add_get("/api/v1/parameters", fake.parameters_list)
    app.router.add_get("/api/v1/progress", fake.progress)
    app.router.add_get("/api/v1/reduction", fake.reduction)
    app.router.add_post("/api/v1/sequence", fake.sequence)
    app.router.add_post("/api/v1/stop", fake.stop)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/", fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_post_parameter_sends_bytes_and_returns_the_hash(controller: tuple[str, FakeController]) -> None:
    url, fake = controller
    data = bytes(range(256)) * 4  # binary, as the references are
    assert post_parameter(url, "references", data, timeout=5) == "h1"
    assert fake.posts == [("references", data)]


def test_post_parameter_raises_unless_tolerant(
    controller: tuple[str, FakeController], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = controller
    with pytest.raises(ControllerError, match="422 refused"):
        post_parameter(url, "forbidden", b"x")
    with caplog.at_level(logging.WARNING, logger="streamtomo.controller_client"):
        assert post_parameter(url, "forbidden", b"x", tolerant=True) is None
    ours = [r for r in caplog.records if r.name == "streamtomo.controller_client"]
    assert [r.levelno for r in ours] == [logging.WARNING]
    assert "forbidden" in ours[0].getMessage()


def test_unreachable_controller(caplog: pytest.LogCaptureFixture, refused_url: str) -> None:
    url = refused_url
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        post_parameter(url, "references", b"x", timeout=2)
    with caplog.at_level(logging.WARNING, logger="streamtomo.controller_client"):
        assert post_parameter(url, "references", b"x", timeout=2, tolerant=True) is None
    ours = [r for r in caplog.records if r.name == "streamtomo.controller_client"]
    assert [r.levelno for r in ours] == [logging.WARNING]


def test_client_reads_and_changes(controller: tuple[str, FakeController]) -> None:
    url, fake = controller
    client = ControllerClient(url)
    assert client.get_parameter("known") == b"1"
    assert client.get_parameter("missing") is None
    assert client.set_parameter_if_changed("known", b"1") is None  # same value: no update
    assert fake.posts == []
    assert client.set_parameter_if_changed("known", b"2") == "h1"
    assert sorted(client.parameter_names()) == ["known"]
    assert client.progress()["total_events"] == 5
    mapping = {"parts": {"p": {"detector": [[{"tags": ["generic"], "constraint": None}]]}}, "sequence": ["p"]}
    assert client.set_sequence(mapping) == "uuid-1"
    assert fake.sequences == [json.loads(json.dumps(mapping))]
    with pytest.raises(ControllerError, match="400 no parts"):
        client.set_sequence({"parts": {}, "sequence": []})
    client.stop()
    assert fake.stopped == 1


def test_wait_consistent(controller: tuple[str, FakeController]) -> None:
    url, fake = controller
    client = ControllerClient(url)
    target = client.set_parameter("known", b"3")
    client.wait_consistent(target, timeout=10, interval=0.05)  # services catch up after two reads
    assert parameters_consistent(client.config(), target)
    fake.lag = 10**9  # services never take the new hash
    target = client.set_parameter("known", b"4")
    with pytest.raises(ControllerTimeout):
        client.wait_consistent(target, timeout=0.5, interval=0.05)


def test_reduction_of_a_controller_without_it_is_none_and_other_errors_are_raised(
    controller: tuple[str, FakeController],
) -> None:
    """play asks whether the reducer still owes results; dranspose's own controller has
    no such route (404: None, counted as reduced), and any other failure is not that."""
    url, fake = controller
    client = ControllerClient(url)
    assert client.reduction() is None
    fake.reduction_status = 200
    assert client.reduction() == {"completed_events": 3, "to_reduce": 2, "total_events": 5}
    fake.reduction_status = 500
    with pytest.raises(ControllerError) as raised:
        client.reduction()
    assert raised.value.status == 500
