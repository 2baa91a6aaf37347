"""How a dranspose service process runs and stops, in a local deployment and in a pod.

dranspose's own CLI cancels a worker's or an ingester's task once on SIGTERM, then
closes it with nothing bounded and leaves through ``asyncio.run``, which cancels
every task once more and waits for them and for the executor's threads. Each of
those waits can last forever (see :mod:`streamtomo.app.task_cancel` for the lost
cancellations); a worker pod that does not stop holds its node until Kubernetes
kills it, with its registration left in Redis. Here, every step is bounded: the
service task is cancelled until it ends, its close gets :data:`CLOSE_TIMEOUT_S`, and
the process leaves at once after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

from streamtomo.app.task_cancel import cancel_until_done, pending
from streamtomo.controller_client import CONTROLLER_CACHE_S

logger = logging.getLogger(__name__)

# A service that has not closed by then exits anyway (``up`` escalates to SIGKILL at 10 s,
# Kubernetes at the pod's grace period, 30 s by default).
CLOSE_TIMEOUT_S = 5.0


def add_redis_log_handler() -> None:
    """As dranspose's own CLI does: the controller's /api/v1/logs shows service logs."""
    try:
        import redis as redis_sync
        from rlh import RedisStreamLogHandler

        client = redis_sync.from_url(f"{os.environ['REDIS_URL']}?decode_responses=True&protocol=3")
        handler = RedisStreamLogHandler(
            redis_client=client,
            stream_name="dranspose_logs",
            maxlen=1000,
            fields=["msg", "lineno", "name", "created", "levelname"],
        )
        handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(handler)
    except (ImportError, KeyError) as error:
        logger.info("no redis log stream: %r", error)


async def run_until_sigterm(service: Any, announce_first: bool = False) -> None:
    """Run a dranspose service until SIGTERM/SIGINT, then close it.

    ``announce_first``: publish the service's registration and let the
    controller's cached view expire before the service listens for updates. A new
    worker that answers an update (with "ready") before the controller's cached
    view lists it makes the controller's assignment task crash (StopIteration in
    ``assign_worker_in_mapping``, logged at ERROR); this closes that window.
    """
    loop = asyncio.get_running_loop()
    # Before the registration: a SIGTERM as soon as it shows (a quick scale-down) is a
    # stop with a close, not the default action's death with the registration left.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    if announce_first:
        await service.publish_config()
        await asyncio.wait({stopper}, timeout=CONTROLLER_CACHE_S + 0.2)
    task = asyncio.create_task(service.run())
    # Let run() take its first step even when stopped already: close() cancels the
    # tasks it creates there, and fails on a service that never ran.
    await asyncio.sleep(0)
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.error("service failed: %r", task.exception())
    await cancel_until_done(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("stopped with %r", task.exception())
    try:
        await asyncio.wait_for(service.close(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        # Exit anyway: what close had left (deleting our Redis key) expires by itself.
        logger.warning("closing took over %.0f s: exiting without it (%s)", CLOSE_TIMEOUT_S, pending())
    stopper.cancel()


def run_and_exit(main: Coroutine[Any, Any, None]) -> NoReturn:
    """Run a service to its end, then leave the process at once.

    Not ``asyncio.run``: it waits for the event loop's executor, and a worker stopped
    mid-scan may have a frame in ``process_event`` there (numba compiling its kernels
    for seconds): its process lingered 2-5 s after closing. Nothing that frame gives
    is of use once the service has closed, and nothing else is left to clean up.
    """
    loop = asyncio.new_event_loop()
    code = 0
    try:
        loop.run_until_complete(main)
    except Exception as error:  # the exit status says it failed; the log says how
        logger.error("service ended with %r", error)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
