"""A worker service records the workers of each broadcast event as dranspose reads them."""

from __future__ import annotations

import asyncio
import uuid

from streamtomo.app import event_assignments
from streamtomo.app.task_cancel import cancel_until_done
from streamtomo.workers.broadcast_senders import sends_rows


def test_dransposes_worker_records_the_assignments_it_reads_from_a_real_redis(redis_url: str) -> None:
    from dranspose.protocol import RedisKeys, WorkAssignment, WorkAssignmentList
    from dranspose.worker import Worker, WorkerSettings

    event_assignments.install()
    mapping = uuid.uuid4()
    assignments = [
        WorkAssignment(event_number=1, assignments={"detector": ["w-b", "w-a"], "angle": ["w-b", "w-a"]}),
        WorkAssignment(event_number=2, assignments={"detector": ["w-b"], "angle": ["w-b"]}),
    ]

    async def main() -> int:
        worker = Worker(WorkerSettings(worker_name="w-b", redis_url=redis_url))
        worker.state.mapping_uuid = mapping
        ingester_socket: object = object()
        worker._stream_map = {"detector": ingester_socket, "angle": ingester_socket}  # type: ignore[dict-item]
        await worker.redis.xadd(RedisKeys.assigned(mapping), {"data": WorkAssignmentList.dump_json(assignments)})
        task = asyncio.create_task(worker.manage_assignments())
        try:
            taken = [await asyncio.wait_for(worker.assignment_queue.get(), 10) for _ in assignments]
        finally:
            # redis-py can drop a cancellation inside a blocking XREAD (as dranspose's
            # services do, cancel until the task has ended: a single cancel hung here).
            await cancel_until_done(task)
            await worker.redis.aclose()
            await worker.raw_redis.aclose()
        return len(taken)

    assert asyncio.run(main()) == 2  # dranspose's own use of them is unchanged
    assert not sends_rows(str(mapping), 1, "detector", "w-b", 1)  # without install: True
    assert sends_rows(str(mapping), 1, "detector", "w-a", 1)
    assert sends_rows(str(mapping), 2, "detector", "w-b", 1)  # one worker: not a broadcast
