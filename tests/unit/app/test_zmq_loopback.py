"""The ingesters' worker pings: taken as they come, with a poll of a second, not a millisecond."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
import zmq.asyncio

from streamtomo.app import zmq_loopback


class Base:
    """Stands for a dranspose ingester class: ``tolerant_ingester`` subclasses it."""


def test_an_ingester_takes_worker_pings_and_waits_a_second_between_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[Any] = []
    real_poll = zmq.asyncio.Poller.poll

    def recorded(self: zmq.asyncio.Poller, timeout: Any = None) -> Any:
        timeouts.append(timeout)
        return real_poll(self, timeout)

    monkeypatch.setattr(zmq.asyncio.Poller, "poll", recorded)
    worker_id = uuid.uuid4()
    published: list[int] = []

    async def scenario() -> dict[Any, Any]:
        ctx = zmq.asyncio.Context()
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            dealer.setsockopt(zmq.IDENTITY, b"worker-1")  # dranspose's workers name their socket
            dealer.connect(f"tcp://127.0.0.1:{port}")

            async def publish_config() -> None:
                published.append(1)

            ingester = SimpleNamespace(
                out_socket=router, state=SimpleNamespace(connected_workers={}), publish_config=publish_config
            )
            cls = zmq_loopback.tolerant_ingester(Base)
            task = asyncio.create_task(cls.accept_workers(ingester))
            for _ in range(2):  # a new worker, then the same one again
                await dealer.send(worker_id.bytes)
                await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return dict(ingester.state.connected_workers)
        finally:
            router.close(linger=0)
            dealer.close(linger=0)
            ctx.term()

    connected = asyncio.run(scenario())
    assert list(connected) == [worker_id] and connected[worker_id].name == "worker-1"
    assert published == [1]  # the controller hears of a new worker once, at once
    assert timeouts and set(timeouts) == {zmq_loopback.ACCEPT_POLL_MS} and zmq_loopback.ACCEPT_POLL_MS >= 1000


class RouterBase:
    """Stands for dranspose's ingester: ``open_socket`` binds a ROUTER, as it does."""

    def open_socket(self) -> None:
        self.ctx = zmq.Context()
        self.out_socket = self.ctx.socket(zmq.ROUTER)
        self.out_socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.port = self.out_socket.bind_to_random_port("tcp://127.0.0.1")


def test_a_workers_new_connection_takes_its_name_over_from_the_old_one() -> None:
    """A worker stopped for longer than its ping interval reconnects under its name
    while its old connection is still open: the ingester routed the name to the old
    connection, and the worker's events went nowhere (a scan then lost everything)."""
    ingester = zmq_loopback.tolerant_ingester(RouterBase)()
    ingester.open_socket()
    ingester.out_socket.setsockopt(zmq.RCVTIMEO, 2000)  # a message that went nowhere fails, not hangs
    ctx = zmq.Context()
    old, new = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for dealer in (old, new):
            dealer.setsockopt(zmq.IDENTITY, b"worker-1")
            dealer.setsockopt(zmq.RCVTIMEO, 2000)
        old.connect(f"tcp://127.0.0.1:{ingester.port}")
        old.send(b"ping")
        assert ingester.out_socket.recv_multipart()[1] == b"ping"
        new.connect(f"tcp://127.0.0.1:{ingester.port}")  # the old one still connected
        new.send(b"ping again")
        assert ingester.out_socket.recv_multipart()[1] == b"ping again"
        ingester.out_socket.send_multipart([b"worker-1", b"event 0"])
        assert new.recv() == b"event 0"
    finally:
        for s in (old, new, ingester.out_socket):
            s.close(linger=0)
        ctx.term()
        ingester.ctx.term()


def test_a_workers_close_does_not_wait_for_pings_to_a_dead_ingester(monkeypatch: pytest.MonkeyPatch) -> None:
    """dranspose's worker closes with ``ctx.destroy()``: a ping queued to an ingester
    that died (ZeroMQ keeps a connect()ed pipe and queues on it while reconnecting)
    held it forever with ZeroMQ's default linger, and up killed the worker after 10 s."""
    import socket
    import threading

    monkeypatch.setattr(zmq.Socket, "connect", zmq.Socket.connect)  # restored after the test
    monkeypatch.setattr(zmq.Socket, "bind", zmq.Socket.bind)
    zmq_loopback.bound_result_queues()
    with socket.socket() as probe:  # a port nobody listens on: the dead ingester's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"worker-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"ping", zmq.NOBLOCK)  # queued on the reconnecting pipe
    closing = threading.Thread(target=ctx.destroy, daemon=True)
    closing.start()
    closing.join(30)  # not a timing: it returns at once, or never
    assert not closing.is_alive(), "the worker's close waits for a ping nobody takes"
