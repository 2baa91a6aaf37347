"""The reducer takes the results that are waiting together: one thread hop and one
Redis round trip for all of them.

dranspose's reducer loop (``Reducer.work``) handles one result at a time: receive
it, unpickle it, hand ``process_result`` to a thread of the event loop's executor
and wait for it, then ``XADD`` one completion to the controller and wait for Redis's
answer. Each step wakes the event loop: for a 1024^2 projection the loop's own
thread spent 1.5-1.75 ms per result (``/proc`` per thread), most of it in asyncio,
pyzmq's and redis-py's machinery rather than in the work (``py-spy --gil``: the
selector, callbacks, futures, command packing). The event loop holds the interpreter
lock for that time, and the reducer is one process: it is what caps a deployment's
rate, however many workers it has.

:func:`install` replaces the loop with one that, after each result it waited for,
also takes those already queued in ZeroMQ (up to :data:`MAX_BATCH`, or
:data:`MAX_BATCH_BYTES`), runs
``process_result`` for all of them in one executor call, in order, and sends their
completions in one Redis pipeline. A result alone is handled as before; under load
(results queue while the previous ones are processed) the machinery is shared.
What dranspose does per result is kept: a failing ``process_result`` is logged
with its traceback and the others still go, every result's completion is sent
(``ReducerUpdate``, in order), ``processed_events`` counts them. A result that
carries other events' results (a worker's small results sent together,
:mod:`streamtomo.app.held_result_loop`) reports those events reduced too, before its own;
one made for another scan (a worker that stalled in it and went on late) reports none.

Measured on 2 cores, 32x256 frames, 2 workers, scans of 1620 frames, two rounds
interleaved with dranspose's loop: 232 and 214 -> 260 and 251 events/s, the reducer's
CPU 1.35 and 1.59 -> 1.24 and 1.34 ms per event. At 1024^2 on 2 cores the workers
are the bottleneck, results rarely queue, and no difference showed (reducer 4.47 and
4.88 ms per event before, 5.16 and 4.41 after). The price is memory: results taken out
of ZeroMQ's bounded queue make room there for more, and the reducer's peak at 1024^2
with 2 workers went from 1.28-1.31x to 1.35-1.37x the arrays it publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Sequence
from typing import Any

from streamtomo.app.result_frames import ReceivedResult

# A batch ends at this many results or once it holds this many bytes. Results taken
# out of ZeroMQ's queue make room there for more: the bytes bound what batching adds
# to the reducer's memory (one 1024^2 projection's rows are 4 MB: batches of 2).
MAX_BATCH = 16
MAX_BATCH_BYTES = 8 << 20

_installed = False


def message_bytes(parts: Sequence[Any]) -> int:
    """Bytes of one received message: its frames, as bytes, views or a
    :class:`~streamtomo.app.result_frames.ReceivedResult`."""
    total = 0
    for part in parts:
        if isinstance(part, ReceivedResult):
            total += len(part.stream) + sum(view.nbytes for view in part.buffers)
        else:
            total += memoryview(part).nbytes
    return total


async def receive_batch(socket: Any, limit: int = MAX_BATCH, limit_bytes: int = MAX_BATCH_BYTES) -> list[list[Any]]:
    """Wait for one multipart message, then take the ones already queued, up to
    ``limit`` messages and until they hold ``limit_bytes``."""
    import zmq

    batch = [await socket.recv_multipart()]
    held = message_bytes(batch[0])
    while len(batch) < limit and held < limit_bytes:
        try:
            batch.append(await socket.recv_multipart(flags=zmq.NOBLOCK))
        except zmq.Again:
            break
        held += message_bytes(batch[-1])
    return batch


def process_all(reducer: Any, results: Sequence[Any], parameters: Any, logger: logging.Logger) -> None:
    """``process_result`` for each result in order; a failure is logged as dranspose
    logs it, and the next result still goes."""
    for result in results:
        try:
            reducer.process_result(result, parameters)
        except Exception as e:
            logger.error("custom reducer failed: %s\n%s", e.__repr__(), traceback.format_exc())


def install() -> None:
    """Replace ``dranspose.reducer.Reducer.work`` (once per process; dranspose 0.2.0's loop)."""
    global _installed
    if _installed:
        return
    from dranspose.event import ResultData
    from dranspose.protocol import DistributedStateEnum, RedisKeys, ReducerUpdate
    from dranspose.reducer import Reducer

    async def work(self: Reducer) -> None:
        self._logger.info("started work task (results taken in batches)")
        self.reducer = None
        if self.custom:
            self.reducer = self.custom(parameters=self.parameters, context=self.custom_context, state=self.state)
        loop = asyncio.get_running_loop()
        while True:
            # In a comprehension: nothing of a batch outlives it in this frame while the
            # loop waits for the next one (a result viewing a worker's shared-memory slot
            # keeps the slot from its worker: streamtomo.app.shared_rows).
            results = [_result_data(parts, ResultData) for parts in await receive_batch(self.in_socket)]
            if self.reducer:
                await loop.run_in_executor(None, process_all, self.reducer, results, self.parameters, self._logger)
            ready = RedisKeys.ready(self.state.mapping_uuid)
            # A result may carry other events' (held back by its worker:
            # streamtomo.app.held_result_loop); they are reduced with it, in order.
            completions = [
                ReducerUpdate(state=DistributedStateEnum.IDLE, completed=event, worker=result.worker)
                for result in results
                for event in reduced_events(result, str(self.state.mapping_uuid or ""))
            ]
            async with self.redis.pipeline(transaction=False) as pipe:
                for update in completions:
                    pipe.xadd(ready, {"data": update.model_dump_json()})
                await pipe.execute()
            self.state.processed_events += len(results)
            del results

    Reducer.work = work
    _installed = True


def reduced_events(result: Any, scan: str = "") -> tuple[int, ...]:
    """The events a received ``ResultData`` completes in ``scan`` (the reducer's
    mapping uuid): those its payload carries, then its own. None for a result made for
    another scan (``WorkerResult.scan``; the reducer does not take it): its event
    numbers are that scan's, and reported here they completed this scan's events of the
    same numbers before their own results came."""
    is_for = getattr(result.payload, "is_for", None)
    if is_for is not None and not is_for(scan):
        return ()
    return (*carried_events(result.payload), int(result.event_number))


def carried_events(payload: Any) -> tuple[int, ...]:
    """The other events whose results ``payload`` carries (a ``WorkerResult``'s
    ``carried_events``; none for any other payload)."""
    events = getattr(payload, "carried_events", ())
    return tuple(int(event) for event in events) if isinstance(events, tuple) else ()


def _result_data(parts: Sequence[Any], result_data: Any) -> Any:
    """One received message as dranspose's ``ResultData``: its JSON header, its payload unpickled."""
    import dranspose.reducer

    prelim = json.loads(parts[0])
    # the module's ``pickle``: streamtomo.app.result_frames may have replaced it
    prelim["payload"] = dranspose.reducer.pickle.loads(parts[1])
    return result_data.model_validate(prelim)
