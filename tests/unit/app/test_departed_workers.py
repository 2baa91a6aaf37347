"""A worker gone mid-scan: dranspose's controller (real, on a real Redis) goes on without it."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dranspose.controller import Controller, ControllerSettings
from dranspose.mapping import MappingSequence
from dranspose.protocol import (
    ControllerUpdate,
    DistributedStateEnum,
    RedisKeys,
    ReducerUpdate,
    WorkAssignmentList,
    WorkerState,
    WorkerUpdate,
)

from streamtomo.app import departed_workers

STREAM = "detector"


def two_references_and_a_projection() -> MappingSequence:
    """Events: 0 the start, 1 and 2 references (to every worker), 3 a projection, 4 the end."""
    every = [{"tags": ["generic"], "constraint": None}]
    one = [{"tags": ["generic"], "constraint": 0}]
    return MappingSequence(
        parts={"references": {STREAM: [every, every]}, "projections": {STREAM: [one]}},
        sequence=["references", "projections"],
    )


class ScanUnderTest:
    """A controller's ``assign_work`` over a mapping, and the workers' updates sent to it."""

    def __init__(self, redis_url: str) -> None:
        self.controller = Controller(ControllerSettings(redis_url=redis_url))
        self.controller.mapping = two_references_and_a_projection()
        self.redis = self.controller.redis
        self.processes: dict[str, WorkerState] = {}

    async def register(self, *names: str) -> None:
        """Register (or refresh the registration of) the worker processes ``names``."""
        for name in names:
            state = self.processes.setdefault(name, WorkerState(name=name))
            await self.redis.set(RedisKeys.config("worker", name), state.model_dump_json())

    async def restart(self, name: str) -> None:
        """A new process under the name: a new service_uuid, registered at once."""
        del self.processes[name]
        await self.register(name)

    def departed(self) -> set[str]:
        return set(departed_workers._state(self.controller).departed)

    async def run_out_every_one(self, first: int, last: int) -> None:
        """Each worker an event went to completes it, once it was sent out."""
        for event in range(first, last + 1):
            await until(f"event {event} sent out", lambda e=event: _has(self, e))  # type: ignore[misc]
            for worker in (await self.assigned())[event]:
                await self.update(worker, completed=event)

    async def run_out(self, worker: str, first: int, last: int) -> None:
        """``worker`` completes events ``first`` to ``last``, each once it was sent out."""
        for event in range(first, last + 1):
            await until(f"event {event} sent out", lambda e=event: _has(self, e))  # type: ignore[misc]
            await self.update(worker, completed=event)

    async def unregister(self, name: str) -> None:
        await self.redis.delete(RedisKeys.config("worker", name))

    async def update(self, name: str, completed: int | None = None, result: bool = False) -> None:
        if completed is None:
            update = WorkerUpdate(state=DistributedStateEnum.READY, worker=name)
        else:
            update = WorkerUpdate(
                state=DistributedStateEnum.IDLE, worker=name, completed=[completed], has_result=[result]
            )
        await self.redis.xadd(RedisKeys.ready(self.controller.mapping.uuid), {"data": update.model_dump_json()})

    async def assigned(self) -> dict[int, list[str]]:
        """Every assignment sent out so far: event -> its workers."""
        out: dict[int, list[str]] = {}
        for _, fields in await self.redis.xrange(RedisKeys.assigned(self.controller.mapping.uuid)):
            for assignment in WorkAssignmentList.validate_json(fields["data"]):
                out[int(assignment.event_number)] = sorted(assignment.get_all_workers())
        return out

    async def finished(self) -> bool:
        sent = await self.redis.xrange(RedisKeys.updates())
        return any(ControllerUpdate.model_validate_json(fields["data"]).finished for _, fields in sent)


async def until(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        await asyncio.sleep(0.02)


async def w2_dies_among_the_references(scan: ScanUnderTest) -> None:
    await until("the start sent out", lambda: _has(scan, 0))
    await scan.update("w1", completed=0)  # w1 asks for the first reference; w2 never does
    await asyncio.sleep(0.3)
    assert 1 not in await scan.assigned()  # waits for w2, as dranspose does
    await scan.unregister("w2")  # its registration expired: it died
    await scan.run_out("w1", 1, 4)


async def _has(scan: ScanUnderTest, event: int) -> bool:
    return event in await scan.assigned()


def test_the_references_go_on_without_a_worker_that_died_and_the_scan_finishes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the mend, the first reference waited for w2 for good (a deployment's
    # scan: nothing assigned past event 7 of 112 until it was stopped).
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    departed_workers.install()
    assigned, finished, _ = asyncio.run(run_scan(redis_url, w2_dies_among_the_references))
    # w2 had the start (it held nothing else): booked for it, and the scan finished.
    assert assigned == {0: ["w1", "w2"], 1: ["w1"], 2: ["w1"], 3: ["w1"], 4: ["w1"]}
    assert finished


async def a_scan_whose_only_worker_dies_and_another_comes(
    redis_url: str,
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    scan = ScanUnderTest(redis_url)
    await scan.register("w1")
    loop = asyncio.create_task(scan.controller.assign_work())
    try:
        await scan.update("w1")
        await until("the start sent out", lambda: _has(scan, 0))
        await scan.update("w1", completed=0)  # asks for the first reference, and dies
        await until("the first reference sent out", lambda: _has(scan, 1))
        await scan.unregister("w1")
        await until("w1 forgotten", lambda: _booked(scan, (1, "w1")))
        await asyncio.sleep(0.2)
        before = await scan.assigned()
        await scan.register("w3")
        await asyncio.sleep(0.6)  # the controller reads registrations at most every 0.5 s
        await scan.update("w3")
        await until("the second reference sent out", lambda: _has(scan, 2))
        return before, await scan.assigned()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await scan.redis.aclose()


async def _booked(scan: ScanUnderTest, pair: tuple[int, str]) -> bool:
    return pair in departed_workers._state(scan.controller).booked


def test_with_no_worker_left_the_references_wait_for_the_next(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handed out to no worker, a dark would pass as done (dranspose books an event
    with no workers complete) and every projection after it go uncorrected."""
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    departed_workers.install()
    before, after = asyncio.run(a_scan_whose_only_worker_dies_and_another_comes(redis_url))
    assert before == {0: ["w1"], 1: ["w1"]}  # nothing handed to nobody
    assert after == {0: ["w1"], 1: ["w1"], 2: ["w3"]}


def test_a_completion_booked_for_a_gone_worker_is_not_counted_again(caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose registration lapsed while it lived, and that then reports an
    event booked for it: counted twice, the controller's count of completed events
    passes the scan's length, and it never says the scan is finished."""
    departed_workers.install()
    controller: Any = object.__new__(Controller)
    controller.mapping = two_references_and_a_projection()
    controller.completed = defaultdict(list, {0: ["w1", "w2"]})
    controller.completed_events = [0]
    controller.to_reduce = set()
    controller.reduced = defaultdict(list)
    controller.worker_timing = defaultdict(dict)
    departed_workers._state(controller).booked.add((0, "w2"))
    controller.mapping.active_maps[0].complete_events = 1
    controller.mapping.active_maps[0].all_assignments[(0, STREAM, 0)] = ["w1", "w2"]
    late = WorkerUpdate(state=DistributedStateEnum.IDLE, worker="w2", completed=[0], has_result=[False])
    with caplog.at_level(logging.WARNING, logger=departed_workers.__name__):
        asyncio.run(Controller._update_processing_times(controller, late))
    assert (controller.completed[0], controller.completed_events) == (["w1", "w2"], [0])
    assert "w2 completed events [0], booked for it when it was gone" in caplog.text


def test_installing_twice_wraps_once() -> None:
    departed_workers.install()
    wrapped = Controller.assign_work
    departed_workers.install()
    assert Controller.assign_work is wrapped


def test_a_dranspose_that_sends_out_otherwise_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def assign_work(self: Any) -> None:
        return None

    async def other(self: Any, worker: Any, completed: Any) -> None:
        return None

    monkeypatch.setattr(Controller, "assign_work", assign_work)
    monkeypatch.setattr(Controller, "assign_worker_in_mapping", other)
    with pytest.raises(RuntimeError, match="another dranspose version"):
        departed_workers.install()


async def run_scan(
    redis_url: str, story: Callable[[ScanUnderTest], Awaitable[None]]
) -> tuple[dict[int, list[str]], bool, set[str]]:
    """Run ``story`` against a controller's scan of w1 and w2 (both ready); what was
    sent out, whether the scan finished, and who was taken out of it."""
    scan = ScanUnderTest(redis_url)
    await scan.register("w1", "w2")
    loop = asyncio.create_task(scan.controller.assign_work())
    try:
        await scan.update("w1")
        await scan.update("w2")
        await story(scan)
        await until("finished", scan.finished, timeout=10)
        assert not loop.done()
        return await scan.assigned(), await scan.finished(), scan.departed()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await scan.redis.aclose()


async def both_have_the_first_reference(scan: ScanUnderTest) -> None:
    await until("the start sent out", lambda: _has(scan, 0))
    await scan.update("w1", completed=0)
    await scan.update("w2", completed=0)
    await until("the first reference sent out", lambda: _has(scan, 1))


def test_a_worker_whose_registration_lapsed_comes_back_into_the_scan(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live worker that had asked for the next reference, and whose registration
    lapsed (a starved event loop) and came back. Let back in without its request, it
    was required for that reference, but it had asked already: the reference was never
    sent out. Kept out, a scan whose only worker lapsed got nothing more."""
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    departed_workers.install()

    async def story(scan: ScanUnderTest) -> None:
        await both_have_the_first_reference(scan)
        await scan.update("w2", completed=1)  # asks for the second; w1 is still busy
        await asyncio.sleep(0.3)
        await scan.unregister("w2")
        await until("w2 taken out", lambda: _true(bool(scan.departed())))
        await scan.register("w2")  # the same process refreshes its registration
        await until("w2 let back in", lambda: _true(not scan.departed()))
        await scan.update("w1", completed=1)
        await scan.run_out_every_one(2, 4)

    assigned, finished, departed = asyncio.run(run_scan(redis_url, story))
    assert sorted(assigned) == [0, 1, 2, 3, 4] and finished and departed == set()
    assert assigned[2] == assigned[4] == ["w1", "w2"]  # both references and the end went to both


@pytest.mark.parametrize("reduced", [True, False])
def test_results_a_worker_taken_out_had_sent_are_awaited_for_a_while(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, reduced: bool
) -> None:
    """A worker reports an event after sending its result: the controller that stopped
    waiting for it at once said finished while the reducer was still behind, and the
    reducer refuses results after its end (frames counted lost)."""
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(departed_workers, "RESULT_GRACE_S", 60.0 if reduced else 0.5)
    departed_workers.install()

    async def story(scan: ScanUnderTest) -> None:
        await until("the start sent out", lambda: _has(scan, 0))
        await scan.update("w1", completed=0)
        await scan.update("w2", completed=0, result=True)  # its result is on its way to the reducer
        await asyncio.sleep(0.3)
        await scan.unregister("w2")
        await until("w2 taken out", lambda: _true(bool(scan.departed())))
        await scan.run_out("w1", 1, 4)
        await asyncio.sleep(1.5)  # the controller checks for the end at least once a second
        if reduced:
            assert not await scan.finished()  # the result sent is still awaited
            reduced_update = ReducerUpdate(state=DistributedStateEnum.IDLE, completed=0, worker="w2")
            ready = RedisKeys.ready(scan.controller.mapping.uuid)
            await scan.redis.xadd(ready, {"data": reduced_update.model_dump_json()})

    assigned, finished, _ = asyncio.run(run_scan(redis_url, story))
    assert finished and assigned[4] == ["w1"]


def test_a_worker_restarted_under_its_name_is_taken_out_and_the_scan_finishes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes restarts a crashed worker's container in its pod, under the pod's
    name, before its registration expires: the dead process's events never completed,
    and dranspose refused the new one work (its name still held them)."""
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    departed_workers.install()

    async def story(scan: ScanUnderTest) -> None:
        await both_have_the_first_reference(scan)
        await scan.restart("w2")  # died holding the first reference
        await asyncio.sleep(0.6)
        await scan.update("w2")  # the new process is ready
        await scan.run_out("w1", 1, 4)

    assigned, finished, departed = asyncio.run(run_scan(redis_url, story))
    assert assigned == {0: ["w1", "w2"], 1: ["w1", "w2"], 2: ["w1"], 3: ["w1"], 4: ["w1"]}
    assert finished and departed == {"w2"}


@pytest.mark.allow_error_logs
def test_a_look_that_failed_is_made_again(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 0.05)
    departed_workers.install()
    send_out = departed_workers._send_out
    calls: list[int] = []

    async def fails_once(controller: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("Redis went away for a moment")
        await send_out(controller)

    monkeypatch.setattr(departed_workers, "_send_out", fails_once)

    async def story(scan: ScanUnderTest) -> None:
        await until("the start sent out", lambda: _has(scan, 0))
        await scan.update("w1", completed=0)  # w2 never asks for the first reference
        await asyncio.sleep(0.3)
        await scan.unregister("w2")
        await scan.run_out("w1", 1, 4)

    assigned, finished, _ = asyncio.run(run_scan(redis_url, story))
    assert len(calls) >= 2
    assert assigned == {0: ["w1", "w2"], 1: ["w1"], 2: ["w1"], 3: ["w1"], 4: ["w1"]} and finished


def test_a_report_from_a_worker_not_registered_takes_it_out_and_the_controller_goes_on(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dranspose's controller looks the reporting worker up among the registered ones:
    not found, StopIteration ended its assignment loop, and the scan hung."""
    monkeypatch.setattr(departed_workers, "WATCH_INTERVAL_S", 30.0)  # no look of the watcher's in this test
    departed_workers.install()

    async def story(scan: ScanUnderTest) -> None:
        await both_have_the_first_reference(scan)
        await scan.unregister("w2")  # lapsed: it reports before its next refresh
        await asyncio.sleep(0.6)  # past the controller's copy of the registrations
        await scan.update("w2", completed=1)
        await until("w2 taken out", lambda: _true(bool(scan.departed())))
        await scan.register("w2")
        await asyncio.sleep(0.6)
        # Out of the scan's assignments only: its registration shows (the next scan takes it).
        assert {w.name for w in (await scan.controller.get_configs()).workers} == {"w1", "w2"}
        await scan.run_out("w1", 1, 4)

    assigned, finished, departed = asyncio.run(run_scan(redis_url, story))
    assert assigned == {0: ["w1", "w2"], 1: ["w1", "w2"], 2: ["w1"], 3: ["w1"], 4: ["w1"]}
    assert finished and departed == {"w2"}


async def _true(value: bool) -> bool:
    return value


def test_a_worker_taken_out_that_says_finished_does_not_hold_the_scans_end(redis_url: str) -> None:
    """dranspose calls a scan finished when the workers that said so are exactly the
    registered ones: one taken out that lived on says it too, and it never was."""
    departed_workers.install()

    async def finished() -> bool:
        controller = Controller(ControllerSettings(redis_url=redis_url))
        try:
            for name in ("w1", "w2"):  # w2 lived on: registered again
                await controller.redis.set(RedisKeys.config("worker", name), WorkerState(name=name).model_dump_json())
            controller.finished_components = [
                WorkerUpdate(state=DistributedStateEnum.FINISHED, worker="w1"),
                WorkerUpdate(state=DistributedStateEnum.FINISHED, worker="w2"),
                ReducerUpdate(state=DistributedStateEnum.FINISHED),
            ]
            departed_workers._state(controller).departed["w2"] = None
            return bool(await controller.completed_finish())
        finally:
            await controller.redis.aclose()

    assert asyncio.run(finished())
