"""The controller books an event's completion before it asks whether the scan is done.

dranspose's controller (``Controller.assign_work``) reads the workers' and the
reducer's updates from Redis (``XREAD``, blocking up to 1 s), handles each, and
after each read checks whether every event is completed and reduced. For a worker's
``IDLE`` update it assigns the worker more work, then books the completed events
(``completed_events``, ``to_reduce``) in a task of its own
(``asyncio.create_task(self._update_processing_times(update))``), which runs at the
loop's next wait: after the check. When the update that completes the scan is such a
worker update, and the reducer's updates for its events came in the same read or
before it, the check finds the scan unfinished and the next read waits its whole
second for an update that never comes. The scan's end (every service's
``finish_work``, the reducer's final file, ``play`` returning) then came a second
late.

Measured on 2 cores, 32x256 frames, 420-event scans, 2 workers, the controller's
progress polled every 20 ms: in 1 of 14 and 1 of 20 scans every event was complete
and then nothing happened for 1.07 s until the controller said ``finished``; every
service logged "finished messages" 1.03 s after the last event was complete. The
no-op worker and reducer showed it too (scans at half their rate), so it is the
controller's, not the pipeline's.

:func:`install` books an ``IDLE`` update's events before the handler returns, right
after the assignment (which stays first: it is what the worker waits for). The
booking awaits nothing: it delays no other update.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)

_BOOKED_INLINE = "_streamtomo_books_inline"
# The line of dranspose 0.2's ``Controller._process_worker_update`` this replaces.
DEFERRED_BOOKING = "asyncio.create_task(self._update_processing_times(update))"


def install() -> None:
    """In the controller: an ``IDLE`` worker update's events are booked before the
    controller checks whether the scan is done (once per process)."""
    from dranspose.controller import Controller
    from dranspose.protocol import DistributedStateEnum

    original = Controller._process_worker_update
    if getattr(original, _BOOKED_INLINE, False):
        return
    if DEFERRED_BOOKING not in inspect.getsource(original):
        raise RuntimeError(
            f"dranspose's Controller._process_worker_update no longer books with {DEFERRED_BOOKING!r}: "
            f"another dranspose version? (see {__name__})"
        )

    async def process_worker_update(self: Any, update: Any) -> None:
        if update.state != DistributedStateEnum.IDLE:
            await original(self, update)
            return
        await self.assign_worker_in_mapping(update.worker, update.completed[-1])
        try:
            await self._update_processing_times(update)
        except Exception:
            # dranspose's task would have died alone, logged; here it must not end the
            # controller's update loop (which only ends on a lost Redis connection).
            logger.exception("booking the completed events %s of %s failed", update.completed, update.worker)

    setattr(process_worker_update, _BOOKED_INLINE, True)
    Controller._process_worker_update = process_worker_update
