"""The worker service's loop sends what a worker holds in time, as the last held event's result."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import uuid
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from streamtomo.app import held_result_loop
from streamtomo.app.result_batches import carried_events
from streamtomo.app.task_cancel import cancel_until_done
from streamtomo.pipeline.messages import DetectorInfo, ProjectionRows, WorkerResult
from streamtomo.workers.held_results import HeldResults


def rows(index: int) -> WorkerResult:
    values = np.full(8, index, np.float32)
    return WorkerResult(
        [ProjectionRows(index, float(index), True, values, 1, "r", DetectorInfo(1, 8, "uint16"), index)]
    )


def test_it_replaces_dransposes_loop_only_where_it_knows_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dranspose.worker import Worker

    monkeypatch.setattr(Worker, "work", Worker.work)  # dranspose's own loop again after the test
    monkeypatch.setattr(held_result_loop, "_installed", False)
    assert held_result_loop.install() and Worker.work is held_result_loop._work
    monkeypatch.setattr(held_result_loop, "_installed", False)
    monkeypatch.setattr(held_result_loop, "EXPECTED", ("a line no dranspose has",))
    with caplog.at_level(logging.WARNING, logger=held_result_loop.__name__):
        assert not held_result_loop.install()
    assert "results go one per event" in caplog.text


def test_what_is_held_goes_by_its_deadline_while_the_worker_waits(redis_url: str) -> None:
    from dranspose.worker import Worker, WorkerSettings

    held = HeldResults()
    held.enable()
    received: list[tuple[dict[str, Any], Any]] = []

    async def main() -> Any:
        worker = Worker(WorkerSettings(worker_name="w-held", redis_url=redis_url))
        worker.state.mapping_uuid = uuid.uuid4()
        context = zmq.asyncio.Context()
        pull = context.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        worker.out_socket = context.socket(zmq.PUSH)
        worker.out_socket.connect(f"tcp://127.0.0.1:{port}")
        try:
            assert held.offer(rows(4), 4, age_limit=0.2) is None
            assert held.offer(rows(5), 5, age_limit=0.2) is None
            worker.dequeue_task = asyncio.create_task(worker.assignment_queue.get())
            waiting = asyncio.create_task(held_result_loop.sending_held_meanwhile(worker, held, worker.dequeue_task))
            header, body = await asyncio.wait_for(pull.recv_multipart(), 10)  # sent without a next event
            received.append((json.loads(header), pickle.loads(body)))
            assert not waiting.done()  # and it still waits for the next event
            await worker.assignment_queue.put({"next"})  # type: ignore[arg-type]
            return await asyncio.wait_for(waiting, 10)
        finally:
            if worker.dequeue_task is not None:
                await cancel_until_done(worker.dequeue_task)
            worker.out_socket.close(0)
            pull.close(0)
            context.term()
            await worker.redis.aclose()
            await worker.raw_redis.aclose()

    assert asyncio.run(main()) == {"next"}
    ((header, payload),) = received
    assert (header["event_number"], header["worker"]) == (5, "w-held")
    assert isinstance(payload, WorkerResult) and carried_events(payload) == (4,)
    assert [item.frame_index for item in payload.items] == [4, 5]
    assert held.events == 0


def test_a_loop_cancelled_while_it_waits_cancels_its_wait_and_sends_nothing(redis_url: str) -> None:
    from dranspose.worker import Worker, WorkerSettings

    held = HeldResults()
    held.enable()

    async def main() -> bool:
        worker = Worker(WorkerSettings(worker_name="w-cancel", redis_url=redis_url))
        try:
            assert held.offer(rows(1), 1, age_limit=60) is None
            worker.dequeue_task = asyncio.create_task(worker.assignment_queue.get())
            waiting = asyncio.create_task(held_result_loop.sending_held_meanwhile(worker, held, worker.dequeue_task))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert worker.dequeue_task is not None
            await asyncio.sleep(0)
            return worker.dequeue_task.cancelled()
        finally:
            await worker.redis.aclose()
            await worker.raw_redis.aclose()

    assert asyncio.run(main())
    assert held.events == 1  # still held: the loop's own end, or the worker's finish, drops it (logged)
