"""Which worker sends the rows of a broadcast event.

dranspose sends a dark or flat to every worker (each builds the same references from
it), and each worker's result goes to the reducer, which needs the rows once. Which
workers an event went to only the controller's assignments say; dranspose's worker
reads them and does not pass them on, so the service records them here
(:mod:`streamtomo.app.event_assignments`) and the worker asks :func:`sends_rows`.

Without a record (replay, a unit test, an event that went to one worker) a worker
sends its rows, as before: the reducer counts any extra copies and keeps the first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

# Broadcast events assigned but not yet processed; a scan broadcasts a few dozen, and
# a worker that never sees some (an ingester lost them) must not grow this forever.
MAX_RECORDED = 4096

_lock = threading.Lock()
_mapping: str | None = None  # the mapping the records belong to (one at a time per worker)
# event number -> stream -> the workers it went to (broadcast events only)
_recorded: dict[int, dict[str, tuple[str, ...]]] = {}


def record(mapping: str, event_number: int, assignments: Mapping[str, Sequence[str]]) -> None:
    """Remember an event's workers per stream, where a stream went to more than one.
    A new mapping numbers its events from 1 again: the previous mapping's records go."""
    global _mapping
    broadcast = {stream: tuple(workers) for stream, workers in assignments.items() if len(workers) > 1}
    with _lock:
        if mapping != _mapping:
            _recorded.clear()
            _mapping = mapping
        if not broadcast:
            return
        _recorded[event_number] = broadcast
        while len(_recorded) > MAX_RECORDED:
            del _recorded[next(iter(_recorded))]  # the oldest assignment


def sends_rows(mapping: str | None, event_number: int, stream: str, worker: str) -> bool:
    """Whether ``worker`` sends the rows of ``stream``'s frame in ``event_number`` of
    ``mapping``: of the workers the event went to, the first in name order does."""
    with _lock:
        workers = _recorded.get(event_number, {}).get(stream) if mapping == _mapping else None
    return workers is None or worker not in workers or worker == min(workers)


def forget(mapping: str | None, event_number: int) -> None:
    """The event is processed here: its record is not asked for again."""
    with _lock:
        if mapping == _mapping:
            _recorded.pop(event_number, None)
