"""Cancel an asyncio task until it has ended, in our code and in dranspose's.

One cancellation is not always enough. redis-py's asyncio commands can lose one
(asyncio has races where a cancellation that meets a timeout or a finishing
future is dropped): in about one stop in five mid-scan a worker's ``register``
loop lost it inside a blocking ``XREAD`` and went on reading updates, and a
reducer started while a scan ran hung for good in dranspose's ``restart_work``:
its ``cancel_and_wait`` cancels the old work task once (it was sending its
``XADD`` after a result) and then awaits it forever, so the ``register`` loop never
read another update, the scan was never marked failed and ``up`` could not stop
(a full ``make test`` failed that way 2 times in 3). Cancelling again every
``RECANCEL_S`` ends such a task; each repeat is logged with where the task waits.

:func:`install` puts :func:`cancel_and_wait` in place of dranspose's function of
that name in the dranspose modules a service runs, before it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, cast

logger = logging.getLogger(__name__)

# How long a cancelled task may take to leave before it is cancelled again.
RECANCEL_S = 0.5
# dranspose modules that import ``cancel_and_wait`` by name (dranspose 0.2.0), by service kind.
DRANSPOSE_MODULES = {
    "controller": ("dranspose.controller",),
    "reducer": ("dranspose.distributed", "dranspose.reducer"),
    "worker": ("dranspose.distributed", "dranspose.worker"),
    "ingester": ("dranspose.distributed", "dranspose.ingester"),
}


def where(task: asyncio.Task[Any], depth: int = 3) -> str:
    """The innermost ``depth`` frames of ``task``'s await chain, for the log."""
    frames, coro = [], cast(Any, task.get_coro())
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_name}@{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None)
    return " > ".join(frames[-depth:]) or "nowhere"


def pending() -> str:
    """Where each pending task but the current one waits."""
    current = asyncio.current_task()
    return ", ".join(sorted(where(t) for t in asyncio.all_tasks() if t is not current)) or "no task"


async def cancel_until_done(task: asyncio.Task[Any] | asyncio.Future[Any], recancel_s: float = RECANCEL_S) -> None:
    """Cancel ``task``, again every ``recancel_s`` while it runs, until it has ended.

    A cancellation of the caller while it waits reaches the caller (unlike
    dranspose's function, which swallowed it), and the task stays cancelled.
    """
    task.cancel()
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=recancel_s)
        if not done:
            place = where(task) if isinstance(task, asyncio.Task) else "a future"
            logger.info("still running %.1f s after cancel, waiting in %s: cancelling again", recancel_s, place)
            task.cancel()


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """dranspose's ``cancel_and_wait``, cancelling until the task has ended.

    As dranspose's: a task that ended with an exception other than the cancellation
    is logged at ERROR (a crashed work or timer task is a service fault).
    """
    await cancel_until_done(task)
    if task.cancelled():
        return
    error = task.exception()
    # Ended by a CancelledError of something it awaited: a cancellation for dranspose too.
    if error is not None and not isinstance(error, (asyncio.CancelledError, StopIteration)):
        logger.error("cancel and wait task raised %r", error)


def install(kind: str) -> None:
    """Use :func:`cancel_and_wait` in the dranspose modules a service of ``kind`` runs.

    Imports them: for the reducer and the controller, only once the environment
    their settings are read from at import is set.
    """
    import importlib

    for name in DRANSPOSE_MODULES[kind]:
        module = sys.modules.get(name) or importlib.import_module(name)
        if not hasattr(module, "cancel_and_wait"):
            raise RuntimeError(f"{name} has no cancel_and_wait: another dranspose version? (see {__name__})")
        setattr(module, "cancel_and_wait", cancel_and_wait)  # noqa: B010 (mypy: not in every module's stubs)
