"""The worker service's loop sends small results together, and sends them in time.

dranspose carries at most one result per event from a worker to the reducer, and each
costs the worker, the reducer, Redis and the controller the same whatever it holds
(:mod:`streamtomo.workers.held_results` has the figures). A worker class may hold an
event's small result back and send it with a later event's, but only if something
sends it when no later event comes: dranspose's loop (``Worker.work``) wakes only for
the next event, and its controller hands a worker its next event only once it has
reported the last one. So :func:`install` replaces dranspose 0.2.0's loop with one
that does what it did, and for a worker class with a :class:`HeldResults` (its
``held`` attribute):

* turns holding on (:meth:`HeldResults.enable`: off by default, so replay, which runs
  dranspose's own loop, holds nothing);
* reports a held event to the controller as having a result, so that the scan is not
  finished before the reducer has it;
* waits for the next event, and for its data, only until what is held must go
  (:meth:`HeldResults.deadline`), then sends it as the last held event's result and
  waits on.

The reducer reports every event a result carries as reduced
(``WorkerResult.carried_events``: :mod:`streamtomo.app.result_batches`).

Everything else is dranspose 0.2.0's loop, step for step: the worker class made
for the mapping, ready notice, the distributed tick clock, ``process_event`` in the
executor with failures logged, the result's header and pickled body, and the
completions reported when the queue is empty or a second has passed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable
from typing import Any

from streamtomo.workers.held_results import HeldResults

logger = logging.getLogger(__name__)

_installed = False
# Lines of dranspose 0.2.0's Worker.work that this loop reproduces: another version's
# loop is left alone (nothing is held then).
EXPECTED = (
    "ingesterset = await self.dequeue_task",
    "result = await loop.run_in_executor(",
    "has_result.append(result is not None)",
    "if self.assignment_queue.empty() or time.time() - accum_start > 1:",
)


def held_of(worker: Any) -> HeldResults | None:
    """The worker class's held results, if it has any to hold."""
    held = getattr(worker, "held", None)
    return held if isinstance(held, HeldResults) else None


def install() -> bool:
    """Replace ``dranspose.worker.Worker.work`` (once per process); False: another
    dranspose whose loop this does not know, left as it is."""
    global _installed
    if _installed:
        return True
    from dranspose.worker import Worker

    source = inspect.getsource(Worker.work)
    missing = [line for line in EXPECTED if line not in source]
    if missing:
        logger.warning("dranspose's worker loop is not 0.2.0's (%s not found): results go one per event", missing)
        return False
    Worker.work = _work
    _installed = True
    return True


async def _send(self: Any, event_number: int, result: Any) -> None:
    """Send one result to the reducer as dranspose's loop does."""
    import dranspose.worker
    from dranspose.event import ResultData

    if not self.out_socket:
        return
    rd = ResultData(
        event_number=event_number,
        worker=self.state.name,
        payload=result,
        parameters_hash=self.state.parameters_hash,
    )
    try:
        header = rd.model_dump_json(exclude={"payload"}).encode("utf8")
        # the module's pickle: streamtomo.app.result_frames replaces it in a worker service
        body = dranspose.worker.pickle.dumps(rd.payload)
        await self.out_socket.send_multipart([header, body])
    except Exception as e:
        self._logger.error("could not send out result %s", e.__repr__())


async def sending_held_meanwhile(self: Any, held: HeldResults | None, waiting: Awaitable[Any]) -> Any:
    """``await waiting``; meanwhile, what is held goes once it must. The loop waits in
    two places: for its next event's assignment, and for that event's data, which may
    never come (the controller assigns events before their frames exist: a stream
    that stopped leaves a worker waiting for a frame with the previous ones held).
    With nothing held it is awaited as it is (no task of its own per event)."""
    if held is None or held.deadline() is None:
        return await waiting
    task = asyncio.ensure_future(waiting)
    while not task.done():
        deadline = held.deadline()
        if deadline is None:
            break
        try:
            await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0.0))
        except asyncio.CancelledError:
            task.cancel()  # as awaiting it would have (restart_work cancels the loop)
            raise
        if not task.done():
            taken = held.take()
            if taken is not None:
                await _send(self, *taken)
    return await task


async def _tick(self: Any, wait_until: float) -> tuple[bool, float]:
    """Whether this event is the worker's tick, and until when not to ask again:
    dranspose's distributed clock (one key in Redis that expires every tick interval;
    the worker that sets it ticks), asked only once the last one seen has expired."""
    from dranspose.protocol import RedisKeys

    if wait_until - time.time() >= 0 or not hasattr(self.worker, "get_tick_interval"):
        return False, wait_until
    wait_ms = int(self.worker.get_tick_interval(self.parameters) * 1000)
    clock = RedisKeys.clock(self.state.mapping_uuid)
    if await self.redis.set(clock, "🕙", px=wait_ms, nx=True) is True:
        return True, wait_until
    expire_ms = await self.redis.pttl(clock)
    return False, time.time() + (expire_ms / 1000)


async def _work(self: Any) -> None:
    import zmq
    from dranspose.protocol import DistributedStateEnum, RedisKeys, WorkerTimes, WorkerUpdate

    self._logger.info("started work task (small results may go together)")
    self.worker = None
    if self.custom:
        try:
            self.worker = self.custom(parameters=self.parameters, context=self.custom_context, state=self.state)
        except Exception as e:
            self._logger.error("Failed to instantiate custom worker: %s", e.__repr__())
    held = held_of(self.worker)
    if held is not None:
        held.enable()

    await self.notify_worker_ready()
    try:
        proced = 0
        completed: list[Any] = []
        has_result: list[bool] = []
        accum_times = WorkerTimes(no_events=0)
        accum_start = time.time()
        tick_wait_until = time.time() - 1
        while True:
            perf_start = time.perf_counter()
            self.dequeue_task = asyncio.create_task(self.assignment_queue.get())
            ingesterset = await sending_held_meanwhile(self, held, self.dequeue_task)
            perf_got_assignments = time.perf_counter()
            done = await sending_held_meanwhile(self, held, self.poll_internals(ingesterset))
            if set(done) != {zmq.POLLIN}:
                self._logger.warning("not all sockets are pollIN %s", done)
                continue
            perf_got_work = time.perf_counter()
            event = await self.build_event(ingesterset)
            perf_assembled_event = time.perf_counter()
            self._logger.debug("received work %s", event)
            result = None
            if self.worker:
                tick, tick_wait_until = await _tick(self, tick_wait_until)
                try:
                    loop = asyncio.get_event_loop()
                    result = await loop.run_in_executor(None, self.worker.process_event, event, self.parameters, tick)
                except Exception as e:
                    self._logger.error("custom worker failed: %s\n%s", e.__repr__(), traceback.format_exc())
            perf_custom_code = time.perf_counter()
            self._logger.debug("got result %s", result)
            if result is not None:
                await _send(self, event.event_number, result)
            perf_sent_result = time.perf_counter()
            proced += 1
            self.state.processed_events += 1
            if proced % 500 == 0:
                self._logger.info("processed %d events", proced)
            completed.append(event.event_number)
            # A held result is a result: the controller waits for the reducer to report it.
            has_result.append(result is not None or (held is not None and held.holds(event.event_number)))
            times = WorkerTimes.from_timestamps(
                perf_start,
                perf_got_assignments,
                perf_got_work,
                perf_assembled_event,
                perf_custom_code,
                perf_sent_result,
            )
            accum_times += times
            # dranspose's batching: an update to the controller when idle or once a second
            if self.assignment_queue.empty() or time.time() - accum_start > 1:
                wu = WorkerUpdate(
                    state=DistributedStateEnum.IDLE,
                    completed=completed,
                    worker=self.state.name,
                    has_result=has_result,
                    processing_times=accum_times,
                )
                self._logger.debug("all work done, notify controller with %s", wu)
                await self.redis.xadd(RedisKeys.ready(self.state.mapping_uuid), {"data": wu.model_dump_json()})
                completed = []
                has_result = []
                accum_times = WorkerTimes(no_events=0)
                accum_start = time.time()
    except asyncio.exceptions.CancelledError:
        # A new mapping (restart_work): the next loop makes a new worker object, and
        # dranspose calls no finish for this one when the scan was replaced.
        if held is not None:
            held.drop("the scan's mapping changed")
    self._logger.info("work thread finished")
