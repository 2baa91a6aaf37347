"""A task that loses a cancellation still ends: ours cancels again; dranspose's waited forever."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from streamtomo.app import task_cancel


async def _loses_first_cancel(started: asyncio.Event) -> None:
    """What redis-py's commands sometimes do: one cancellation is dropped, the wait goes on."""
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
    await asyncio.sleep(3600)


async def _start() -> asyncio.Task[None]:
    started = asyncio.Event()
    task = asyncio.create_task(_loses_first_cancel(started))
    await started.wait()
    return task


def test_a_task_that_drops_a_cancellation_is_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> asyncio.Task[None]:
        task = await _start()
        await asyncio.wait_for(task_cancel.cancel_and_wait(task), 5.0)
        return task

    caplog.set_level(logging.INFO, logger=task_cancel.__name__)
    assert asyncio.run(main()).cancelled()
    assert any("cancelling again" in r.getMessage() and "_loses_first_cancel" in r.getMessage() for r in caplog.records)


def test_dransposes_own_wait_never_ends_for_such_a_task() -> None:
    """The defect this module exists for (dranspose 0.2.0's helper)."""
    from dranspose.helpers.utils import cancel_and_wait

    async def main() -> None:
        task = await _start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(cancel_and_wait(task)), 1.0)
        task.cancel()

    asyncio.run(main())


@pytest.mark.allow_error_logs
def test_a_task_that_crashed_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise ValueError("broken")

    async def main() -> None:
        task = asyncio.create_task(crash())
        await asyncio.sleep(0)
        await task_cancel.cancel_and_wait(task)

    asyncio.run(main())
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "broken" in caplog.records[0].getMessage()


def test_install_replaces_dransposes_function_where_a_worker_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import dranspose.distributed
    import dranspose.worker

    for module in (dranspose.distributed, dranspose.worker):  # undone after the test
        monkeypatch.setattr(module, "cancel_and_wait", module.cancel_and_wait)
    task_cancel.install("worker")
    assert dranspose.worker.cancel_and_wait is task_cancel.cancel_and_wait
    assert dranspose.distributed.cancel_and_wait is task_cancel.cancel_and_wait
    assert sys.modules["dranspose.worker"] is dranspose.worker
