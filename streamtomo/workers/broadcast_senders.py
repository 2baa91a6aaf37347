"""Which workers send the rows of a broadcast event.

dranspose sends a dark or flat to every worker (each builds the same references from
it), and each worker's result goes to the reducer, which needs the rows once: with
every worker sending them, 20 references of 2048^2 from 8 workers were 1.3 GB through
the reducer's socket, 7/8 of it dropped there. ``reference_senders`` workers send
them (default 2, so that one worker lost at the scan's start costs no reference:
the other workers' projections are corrected with the whole set, which the reducer
must have too), the others a :class:`~streamtomo.pipeline.messages.ReferenceCopy`.

Which workers an event went to only the controller's assignments say; dranspose's
worker reads them and does not pass them on, so the service records them here
(:mod:`streamtomo.app.event_assignments`) and the worker asks :func:`sends_rows`.

Without a record (replay, a unit test, an event that went to one worker) a worker
sends its rows, as before: the reducer counts any extra copies and keeps the first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

# A scan broadcasts a few dozen events (its header, darks, flats and end); the records
# go with the next mapping. Not dropped once processed: every worker of a process asks
# (replay-like tests run several), and a scan of many reference batches stays bounded.
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


def sends_rows(mapping: str | None, event_number: int, stream: str, worker: str, senders: int = 2) -> bool:
    """Whether ``worker`` sends the rows of ``stream``'s frame in ``event_number`` of
    ``mapping``: of the workers the event went to, the first ``senders`` in name
    order do (two: a worker lost before its result left loses the reducer no dark)."""
    with _lock:
        workers = _recorded.get(event_number, {}).get(stream) if mapping == _mapping else None
    return workers is None or worker not in workers or worker in sorted(workers)[:senders]
