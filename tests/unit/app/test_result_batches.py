"""The reducer takes queued results together, in order, without holding more than a bound."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import zmq
import zmq.asyncio

from streamtomo.app.result_batches import message_bytes, process_all, receive_batch, reduced_events
from streamtomo.app.result_frames import ReceivedResult


def _batches(messages: list[list[bytes]], **limits: int) -> list[list[list[bytes]]]:
    """Queue ``messages`` on a real PUSH/PULL pair, then take batches until all are taken."""

    async def exchange() -> list[list[list[bytes]]]:
        ctx = zmq.asyncio.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        try:
            pull.bind("inproc://results")
            push.connect("inproc://results")
            for message in messages:
                await push.send_multipart(message)
            await pull.poll()  # inproc: everything sent is queued by now
            batches, taken = [], 0
            while taken < len(messages):
                batch = await receive_batch(pull, **limits)
                batches.append([[bytes(part) for part in parts] for parts in batch])
                taken += len(batch)
            return batches
        finally:
            pull.close(linger=0)
            push.close(linger=0)
            ctx.term()

    return asyncio.run(exchange())


def test_queued_results_come_in_one_batch_in_order() -> None:
    messages = [[b"header %d" % i, b"payload %d" % i] for i in range(5)]
    assert _batches(messages) == [messages]


def test_a_batch_ends_at_its_count() -> None:
    messages = [[b"h", b"%d" % i] for i in range(5)]
    assert [len(b) for b in _batches(messages, limit=2)] == [2, 2, 1]


def test_a_batch_ends_once_it_holds_its_bytes() -> None:
    """Taking results out of ZeroMQ makes room for more there: bytes bound the batch."""
    megabyte = b"x" * (1 << 20)
    messages = [[b"h", megabyte] for _ in range(5)]
    assert [len(b) for b in _batches(messages, limit_bytes=(5 << 20) // 2)] == [3, 2]


def test_the_bytes_of_a_result_received_as_frames() -> None:
    received = ReceivedResult(b"stream", [memoryview(bytearray(1000)), memoryview(bytearray(24))])
    assert message_bytes([b"header", received]) == 6 + 6 + 1024


class Recorder:
    def __init__(self, failing: int) -> None:
        self.failing = failing
        self.seen: list[int] = []

    def process_result(self, result: Any, parameters: Any) -> None:
        self.seen.append(result)
        if result == self.failing:
            raise ValueError(f"result {result} is bad")


@pytest.mark.allow_error_logs
def test_a_failing_result_is_logged_and_the_batch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    reducer = Recorder(failing=2)
    process_all(reducer, [1, 2, 3], {}, logging.getLogger("reducer"))
    assert reducer.seen == [1, 2, 3]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "custom reducer failed: ValueError('result 2 is bad')" in record.getMessage()
    assert "Traceback" in record.getMessage()


def test_a_result_that_carries_held_ones_completes_their_events_first() -> None:
    from dranspose.event import ResultData

    from streamtomo.pipeline.messages import WorkerResult

    carrying = ResultData(
        event_number=9, worker="w", payload=WorkerResult([], carried_events=(5, 7)), parameters_hash=None
    )
    assert reduced_events(carrying) == (5, 7, 9)
    assert reduced_events(ResultData(event_number=3, worker="w", payload=3, parameters_hash=None)) == (3,)
