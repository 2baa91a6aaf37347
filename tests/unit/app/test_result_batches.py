"""The reducer takes queued results together, in order, without holding more than a bound."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
import zmq.asyncio

from streamtomo.app.result_batches import message_bytes, process_all, receive_batch, reduced_events
from streamtomo.app.result_frames import ReceivedResult
from streamtomo.app.task_cancel import cancel_until_done


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


def test_a_result_made_for_another_scan_completes_no_event_of_this_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed loop on a real ZeroMQ socket and a real Redis: a result that a worker
    made for the previous scan (it stalled there and went on late) is handed to the
    reducer class, which refuses it, and no completion of its events reaches this
    scan's controller, which would book this scan's events of those numbers done."""
    import pickle
    import uuid

    import redis.asyncio
    from dranspose.protocol import RedisKeys, ReducerUpdate
    from dranspose.reducer import Reducer

    from streamtomo.app import result_batches
    from streamtomo.pipeline.messages import WorkerResult

    monkeypatch.setattr(Reducer, "work", Reducer.work)  # dranspose's own loop again after the test
    monkeypatch.setattr(result_batches, "_installed", False)
    result_batches.install()
    this_scan, last_scan = uuid.uuid4(), uuid.uuid4()
    seen: list[Any] = []

    class Kept:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def process_result(self, result: Any, parameters: Any) -> None:
            seen.append(result.payload)

    async def main() -> list[int]:
        context = zmq.asyncio.Context()
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        client = redis.asyncio.from_url(f"{redis_url}?decode_responses=True&protocol=3")
        service = SimpleNamespace(
            _logger=logging.getLogger("reducer"),
            custom=Kept,
            custom_context={},
            parameters={},
            state=SimpleNamespace(mapping_uuid=this_scan, processed_events=0),
            in_socket=pull,
            redis=client,
        )
        work = asyncio.create_task(Reducer.work(service))  # type: ignore[arg-type]
        try:
            for event, payload in (
                (3, WorkerResult([], carried_events=(1,), scan=str(last_scan))),
                (4, WorkerResult([], carried_events=(2,), scan=str(this_scan))),
            ):
                header = json.dumps({"event_number": event, "worker": "w", "parameters_hash": None})
                await push.send_multipart([header.encode(), pickle.dumps(payload)])
            ready = RedisKeys.ready(this_scan)  # type: ignore[arg-type]
            for _ in range(500):
                if service.state.processed_events == 2:
                    break
                await asyncio.sleep(0.01)
            entries = await client.xrange(ready)
            return [ReducerUpdate.model_validate_json(fields["data"]).completed for _, fields in entries]
        finally:
            await cancel_until_done(work)
            await client.aclose()
            push.close(0)
            pull.close(0)
            context.term()

    assert asyncio.run(main()) == [2, 4]
    assert [payload.scan for payload in seen] == [str(last_scan), str(this_scan)]
