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
