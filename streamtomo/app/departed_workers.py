"""A worker that dies mid-scan costs the scan the frames it held, not the scan.

dranspose 0.2's controller hands an event that goes to every worker (a dark, a flat,
the scan's start and end) out only once every registered worker has asked for it
(``ActiveMap.update_filled``), and it books an event complete only once every worker
it went to has said so. Nothing in it looks again when a worker is gone. So:

* a worker that dies while the references stream stops the scan for good: the others
  asked for the next dark and wait for its assignment, which waits for the dead one,
  and the controller only looks again when a worker asks. Seen in a deployment: a
  worker killed at the 12th frame of 110 (the darks); nothing was assigned past event
  7, for 30 s, until the scan was stopped: 104 frames lost, and the scan failed with
  "no projection was reduced". The projections never reached the live worker;
* a worker that dies with events in hand leaves them never completed: the controller
  never says the scan is finished, and only a stall timeout (``play``'s, the
  reducer's ``stream_timeout``) ends it, as ``stopped``.

:func:`install` watches the registered workers while a scan runs (once a second). A
worker is taken out of the scan under way when its registration is gone (expired, 10 s
after a crash or a longer stall, or deleted), when a new process registered under its
name (a new ``service_uuid``: Kubernetes restarts a crashed container in its pod, and
the pod's name is the worker's), or when it reports while not registered (dranspose's
controller raised ``StopIteration`` there, which ended its assignment loop). Then:

* it is taken out of what was handed to it and not yet sent out (the events to every
  worker wait for the workers left; a projection waits for the next worker to ask),
  and the assignments that are now complete are sent out;
* the events sent out to it that it never completed are booked as completed by it: the
  scan ends by itself once the rest is reduced. The reducer counts what it held as
  lost (``lost_frames``), as for any frame that never came. Results it had reported
  (completed events) are still awaited for :data:`RESULT_GRACE_S`: a lapsed worker's
  are on their way or held to go together, a dead one's may never come;
* the controller's assignments leave it out (only they: its registration shows as it
  is, and the next scan takes every registered worker), and its ``FINISHED`` is not
  asked for.

The same process coming back (a registration that lapsed while it lived) is let back
in, with its last request for work made again for it: it waits for the answer, and
its place in the next dark had been given up (a worker that had asked and was left
out hung the scan; a scan whose only worker lapsed got nothing more). A new process
under the name stays out until the next scan: dranspose refuses it work while its name
holds the dead one's events (``StillHasWork``), and it missed the scan's headers (its
frames would be refused as ``pcap_header_missing``). Completions of events booked for a
worker are dropped, with a warning; the results it sends still reach the reducer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
# dranspose forgets a worker when its registration expires, 10 s after its last refresh.
REGISTRATION_EXPIRY_S = 10.0
# How long the results a worker taken out had reported (the events it completed with a
# result) are still awaited: a worker reports an event after sending its result, or
# while it holds the result to send it with later ones (streamtomo.workers.held_results),
# which a dead worker never does.
RESULT_GRACE_S = 10.0
# How long ``play`` lets a scan's progress stall before it ends the scan: longer than a
# dead worker stalls it (until it is forgotten, and the next look here, which books the
# events it had in hand: progress). A shorter one (10 s) ended such scans first, without
# the frames queued behind the dead worker. Not longer than the reducer's stream
# timeout (30 s by default): a recording that ends early without its end message is
# ended by this stall, as finished with what was reduced, not by the reducer as stopped.
# A dead worker's held results are given up RESULT_GRACE_S after it is taken out: where
# it died with no event in hand and nothing else moved meanwhile, this stall comes first
# and the scan is ended through the controller, its other frames reduced.
STALL_TIMEOUT_S = 2 * REGISTRATION_EXPIRY_S
_INSTALLED = "_streamtomo_watches_departures"
_STATE = "_streamtomo_departures"
_LOCK = "_streamtomo_assignment_lock"
# The line of dranspose 0.2's ``Controller.assign_worker_in_mapping`` that ends its
# sending out of complete assignments (what :func:`_send_out` does too).
SENT_OUT = "self.processed_event_no = self.mapping.complete_events"
# The test of dranspose 0.2's ``Controller.completed_finish`` that :func:`install`
# makes again without the workers taken out.
ALL_FINISHED = "set([w.name for w in cfgs.workers]) == fin_workers"

ConfigReader = Callable[[Any], Awaitable[Any]]


@dataclass
class Departures:
    """One scan's workers taken out, in the controller."""

    departed: dict[str, Any] = field(default_factory=dict)  # name -> its process's service_uuid (None: unknown)
    departed_at: dict[str, float] = field(default_factory=dict)  # name -> when (monotonic)
    booked: set[tuple[int, str]] = field(default_factory=set)  # (event, worker) booked on its behalf
    last_ask: dict[str, Any] = field(default_factory=dict)  # worker -> ``completed`` of its last request
    seen: dict[str, Any] = field(default_factory=dict)  # name -> service_uuid at the last look


def _state(controller: Any) -> Departures:
    state = getattr(controller, _STATE, None)
    if state is None:
        state = Departures()
        setattr(controller, _STATE, state)
    return state


def install() -> None:
    """In the controller: a worker gone mid-scan is worked around (once per process)."""
    from dranspose.controller import Controller

    if getattr(Controller.assign_work, _INSTALLED, False):
        return
    for method, line in ((Controller.assign_worker_in_mapping, SENT_OUT), (Controller.completed_finish, ALL_FINISHED)):
        if line not in inspect.getsource(method):
            raise RuntimeError(
                f"dranspose's Controller.{method.__name__} no longer has {line!r}: "
                f"another dranspose version? (see {__name__})"
            )
    assign_work = Controller.assign_work
    assign_worker = Controller.assign_worker_in_mapping
    book = Controller._update_processing_times
    completed_finish = Controller.completed_finish
    registrations: ConfigReader = Controller.get_configs

    async def assign_without_departed(self: Any, worker: Any, completed: Any) -> None:
        """dranspose's assignment, with the workers taken out not among the registered."""
        if not _state(self).departed:
            await assign_worker(self, worker, completed)
            return

        async def left() -> Any:
            return _without_departed(self, await registrations(self))

        self.get_configs = left  # this call's view only (the API and the next scan see all)
        try:
            await assign_worker(self, worker, completed)
        finally:
            del self.get_configs

    async def watched_assign_work(self: Any) -> None:
        setattr(self, _STATE, Departures())
        watcher = asyncio.create_task(_watch(self, registrations, assign_without_departed), name="departed-workers")
        try:
            await assign_work(self)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def finished_without_departed(self: Any) -> bool:
        # dranspose's test is that the workers that said FINISHED are exactly the
        # registered ones: a worker taken out that lived on (or its restarted process)
        # may or may not say it, and is not asked to.
        from dranspose.protocol import IngesterUpdate, ReducerUpdate, WorkerUpdate

        departed = set(_state(self).departed)
        if not departed:
            return bool(await completed_finish(self))
        updates = list(self.finished_components)
        workers = {u.worker for u in updates if isinstance(u, WorkerUpdate)} - departed
        ingesters = {u.ingester for u in updates if isinstance(u, IngesterUpdate)}
        reducer = any(isinstance(u, ReducerUpdate) for u in updates)
        config = await registrations(self)
        return (
            {w.name for w in config.workers} - departed == workers
            and {i.name for i in config.ingesters} == ingesters
            and reducer
        )

    async def serialised_assign_worker(self: Any, worker: Any, completed: Any) -> None:
        # Both send out assignments from processed_event_no on, across an await: one at a time.
        async with _lock(self):
            state = _state(self)
            state.last_ask[worker] = completed
            if worker in state.departed:
                return  # asked again when let back in
            if not await _registered(self, worker, registrations):
                logger.warning("%s reported while it is not registered", worker)
                await forget(self, {worker}, registrations)
                return
            await assign_without_departed(self, worker, completed)

    async def book_unless_booked(self: Any, update: Any) -> None:
        booked = _state(self).booked
        if update.completed and booked:
            pairs = list(zip(update.completed, update.has_result, strict=False))
            keep = [(event, result) for event, result in pairs if (event, update.worker) not in booked]
            if len(keep) < len(pairs):
                dropped = sorted(event for event, _ in pairs if (event, update.worker) in booked)
                logger.warning(
                    "%s completed events %s, booked for it when it was gone: not counted again",
                    update.worker,
                    dropped,
                )
                if not keep:
                    return
                update = update.model_copy(
                    update={"completed": [e for e, _ in keep], "has_result": [r for _, r in keep]}
                )
        await book(self, update)

    setattr(watched_assign_work, _INSTALLED, True)
    Controller.assign_work = watched_assign_work
    Controller.completed_finish = finished_without_departed
    Controller.assign_worker_in_mapping = serialised_assign_worker
    Controller._update_processing_times = book_unless_booked


def _lock(controller: Any) -> asyncio.Lock:
    lock = getattr(controller, _LOCK, None)
    if lock is None:
        lock = asyncio.Lock()
        setattr(controller, _LOCK, lock)
    return lock


def _without_departed(controller: Any, config: Any) -> Any:
    departed = _state(controller).departed
    return config.model_copy(update={"workers": [w for w in config.workers if w.name not in departed]})


async def _registered(controller: Any, worker: str, registrations: ConfigReader) -> bool:
    """Whether ``worker`` is registered (read again if the controller's copy of the
    registrations, up to 0.5 s old, lacks it: a worker that just registered)."""
    for fresh in (False, True):
        if fresh:
            controller.config_cache = None
        if any(w.name == worker for w in (await registrations(controller)).workers):
            return True
    return False


async def _watch(
    controller: Any, registrations: ConfigReader, assign: Callable[[Any, Any, Any], Awaitable[None]]
) -> None:
    """Compare the registered workers once per :data:`WATCH_INTERVAL_S` while the scan
    runs: take out those gone or restarted, let back in those that came back."""
    # From the scan's start: one that dies before the first comparison is still
    # registered then (its registration outlives it by up to 10 s).
    known: dict[str, Any] | None = None
    while True:
        try:
            state = _state(controller)
            now = {w.name: w.service_uuid for w in (await registrations(controller)).workers}
            # Gone, or restarted: a new process under the same name.
            gone = {name for name, uuid in (known or {}).items() if now.get(name) != uuid}
            back = {name for name, uuid in state.departed.items() if name in now and uuid in (None, now[name])}
            if gone or back:
                async with _lock(controller):
                    if gone:
                        await forget(controller, gone, registrations)
                    for name in sorted(back):
                        await let_back_in(controller, name, assign)
            drop_unreduced(controller)
            # Only once done: a look that failed is made again at the next. (What a
            # worker taken out is known by is its process's at the look before.)
            state.seen.update(now)
            known = {name: uuid for name, uuid in now.items() if name not in state.departed}
        except Exception:
            # The scan goes on as dranspose would run it; the next look tries again.
            logger.exception("could not work around the workers that left")
        await asyncio.sleep(WATCH_INTERVAL_S)
        if _scan_done(controller):
            return  # workers stopped or replaced between scans are no scan's loss


def _scan_done(controller: Any) -> bool:
    """Whether the controller was told to stop, or has every event completed and every
    result reduced (a worker that died after its last event, before the reducer had
    its results, still holds the scan until :func:`drop_unreduced`)."""
    if controller.external_stop:
        return True
    return len(set(controller.completed_events)) >= controller.mapping.len() and not controller.to_reduce


async def forget(controller: Any, gone: set[str], registrations: ConfigReader) -> None:
    """Take the workers ``gone`` out of the controller's scan (the caller holds the
    assignment lock). Repeatable: a call that failed half-way is made again."""
    state = _state(controller)
    for name in gone:
        state.departed.setdefault(name, state.seen.get(name))
        state.departed_at.setdefault(name, time.monotonic())
    workers = _without_departed(controller, await registrations(controller)).workers  # those left
    mapping = controller.mapping
    logger.warning(
        "worker %s left scan %s: its events go to %s, what it held is lost",
        ", ".join(sorted(gone)),
        mapping.uuid,
        ", ".join(sorted(w.name for w in workers)) or "no worker (until one registers or comes back)",
    )
    unassign(controller, gone)
    if not workers:
        # Nobody to hand the darks and flats to: they wait for the next worker to ask
        # (handed out to none, they would pass as done, and its projections uncorrected).
        book_for(controller, gone)
        return
    for active in mapping.active_maps:
        if active.complete_events < active.no_events():
            active.update_filled(workers)
            mapping.complete_events = max(mapping.complete_events, active.start_event + active.complete_events)
            if active.complete_events < active.no_events():
                break
    await _send_out(controller)
    book_for(controller, gone)


async def let_back_in(controller: Any, name: str, assign: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
    """The process taken out came back (the caller holds the assignment lock): it is
    among the scan's workers again, and its last request for work is made again (it
    waits for the answer; its place in an event not yet sent out was given up)."""
    state = _state(controller)
    del state.departed[name]
    state.departed_at.pop(name, None)
    logger.warning("worker %s came back to scan %s: it takes part again", name, controller.mapping.uuid)
    if name in state.last_ask:
        await assign(controller, name, state.last_ask[name])


def drop_unreduced(controller: Any) -> None:
    """No longer await the results of workers taken out :data:`RESULT_GRACE_S` ago."""
    state = _state(controller)
    late = {name for name, at in state.departed_at.items() if time.monotonic() - at >= RESULT_GRACE_S}
    dropped = sorted((number, name) for number, name in controller.to_reduce if name in late)
    if dropped:
        controller.to_reduce = {pair for pair in controller.to_reduce if pair[1] not in late}
        logger.warning("results %s never reached the reducer: no longer awaited", dropped)


def unassign(controller: Any, gone: set[str]) -> None:
    """Take ``gone`` out of what was handed to it and not yet sent out: an event to
    every worker then waits for the workers left, a projection for the next to ask."""
    for active in controller.mapping.active_maps:
        # Events below this were sent out: the ingesters sent their data.
        sent = max(0, controller.processed_event_no - active.start_event)
        for (event, _stream, _index), names in active.all_assignments.items():
            if event >= sent:
                names[:] = [name for name in names if name not in gone]
        pending: set[Any] = set()
        for stream_events in active.mapping.values():
            for event, virtual in enumerate(stream_events):
                if event >= sent and virtual:
                    pending.update(vw.constraint for vw in virtual if vw.constraint is not None)
        for constraint in pending:
            if active.assignments.get(constraint) in gone:
                del active.assignments[constraint]


async def _send_out(controller: Any) -> None:
    """Send out the assignments completed since the last sent (as dranspose's
    ``assign_worker_in_mapping`` ends)."""
    from dranspose.protocol import EventNumber, RedisKeys, WorkAssignmentList

    mapping = controller.mapping
    assignments = []
    for number in range(controller.processed_event_no, mapping.complete_events):
        workers = mapping.get_event_workers(EventNumber(number))
        assignments.append(workers)
        if workers.get_all_workers() == set():
            controller.completed[workers.event_number] = []
            controller.completed_events.append(workers.event_number)
    if assignments:
        await controller.redis.xadd(
            RedisKeys.assigned(mapping.uuid), {"data": WorkAssignmentList.dump_json(assignments)}
        )
        logger.info(
            "sent out the assignments of events %d to %d", assignments[0].event_number, assignments[-1].event_number
        )
    controller.processed_event_no = mapping.complete_events


def book_for(controller: Any, gone: set[str]) -> None:
    """Book the events sent out to ``gone`` that it never completed as completed by it:
    the scan can end when the rest is done."""
    booked = _state(controller).booked
    done = set(controller.completed_events)
    lost: list[int] = []
    for number in range(controller.processed_event_no):
        workers = controller.mapping.get_event_workers(number).get_all_workers()
        for name in sorted(gone & workers):
            if name in controller.completed[number]:
                continue
            controller.completed[number].append(name)
            booked.add((number, name))
            lost.append(number)
        if number not in done and workers and workers == set(controller.completed[number]):
            controller.completed_events.append(number)
            done.add(number)
    if lost:
        logger.warning("events %s went to %s and will not be completed: booked as done", lost, ", ".join(sorted(gone)))
