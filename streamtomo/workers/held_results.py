"""A worker sends its small results together, in fewer messages.

dranspose carries at most one result per event from a worker to the reducer, and
every result costs the same whatever it holds: the worker's header, pickling and
send, the reducer's receive, unpickling, hand-over to its executor and one ``XADD``
to the controller, and the controller's booking of that ``XADD``. For small frames
that is much of the pipeline's CPU: on the 2-core development machine (32x256
frames, 420-frame scans of the code before and after, interleaved with the no-op
pair's in the same rounds) the reducer's CPU per event went from 1.48 to 0.54 ms
with 2 workers and 1.45 to 0.42 with 1, the whole pipeline's from 8.06 to 6.98 and
6.98 to 5.05 ms, and events/s from 0.72 to 0.81 (2 workers) and 0.65 to 0.83 (1) of
the no-op pair's, paired medians of 10 and 8 rounds. With the age limit at 0.05 s
(it was 0.1 s in those rounds): 0.67 -> 0.93 with 2 workers (8 rounds), and a row
visible in the live domain 166 ms after it was sent against 144 (p50; p95 292
against 262), 120 frames/s, 4 rounds of each.

So a worker holds a result made only of :data:`HOLDABLE` messages (a projection's
rows, a PandA row, a note that the streams are out of step) and sends it with a
later event's result. What it holds goes:

* once it holds :data:`MAX_EVENTS` events or :data:`MAX_BYTES` of rows (frames of
  1024 x 256 float32 rows and more are never held: big results gain little, and
  their rows travel through shared memory, :mod:`streamtomo.app.shared_rows`);
* once the first is :func:`max_age` old (0.05 s, at most half the publish interval),
  with the next event or, when none comes, on its own: the worker service's loop
  waits for the next event only until then (:mod:`streamtomo.app.held_result_loop`);
* ahead of anything else (references, partial sums, rejections, the streams' ends),
  in the same result: the reducer sees each worker's messages in the order it made
  them, rows before the partial sum that holds their backprojection.

A result that carries held ones names their events (``WorkerResult.carried_events``);
the loop reports every held event to the controller as having a result, and the
reducer reports each carried event reduced, so a scan is finished only once the
reducer has everything. Nothing is held unless that loop runs (:meth:`HeldResults.enable`):
dranspose's own loop and replay send every result at once. A worker that dies, or a
scan stopped, while results are held loses them with what was in flight: the reducer
counts them in ``lost_frames`` as any frame that never came, and :meth:`HeldResults.drop`
logs how many.
"""

from __future__ import annotations

import logging
import threading
import time

from streamtomo.pipeline.messages import AngleRow, ProjectionRows, StreamStep, WorkerResult

logger = logging.getLogger(__name__)

HOLDABLE = (ProjectionRows, AngleRow, StreamStep)
MAX_EVENTS = 16
# Rows of 1 MiB: 256 rows of 1024 float32 columns. A result as large goes at once.
MAX_BYTES = 1 << 20
MAX_AGE_S = 0.05  # and at most half the publish interval (max_age)


def max_age(publish_interval: float) -> float:
    """How long a worker holds a result at most: :data:`MAX_AGE_S`, and half the publish interval."""
    return min(MAX_AGE_S, max(publish_interval, 0.0) / 2)


def result_bytes(result: WorkerResult) -> int:
    """The bytes of the rows in ``result`` (what holding it keeps in memory)."""
    return sum(int(item.rows.nbytes) for item in result.items if isinstance(item, ProjectionRows))


class HeldResults:
    """The results one worker holds back (one scan's: :meth:`drop` between scans).

    Off until :meth:`enable`: only a loop that sends what waits too long
    (:mod:`streamtomo.app.held_result_loop`) turns it on; dranspose's own loop and
    replay never would. :meth:`offer` runs in the thread of ``process_event``,
    :meth:`deadline` and :meth:`take` in the loop's, between events: a lock keeps
    them apart all the same.
    """

    def __init__(self, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES, scan: str = "") -> None:
        self.max_events, self.max_bytes = max_events, max_bytes
        self.scan = scan  # what the results it sends say they are for (WorkerResult.scan)
        self.enabled = False
        self._lock = threading.Lock()
        self._items: list[object] = []
        self._events: list[int] = []
        self._bytes = 0
        self._since = 0.0
        self._age_limit = 0.0

    def enable(self) -> None:
        self.enabled = True

    @property
    def events(self) -> int:
        """Events whose results are held."""
        with self._lock:
            return len(self._events)

    def holds(self, event_number: int) -> bool:
        """Whether the result of ``event_number`` is held (dranspose must be told it has one)."""
        with self._lock:
            return event_number in self._events

    def deadline(self) -> float | None:
        """When what is held must go (``time.monotonic``), None: nothing is held."""
        with self._lock:
            return self._since + self._age_limit if self._events else None

    def offer(self, result: WorkerResult | None, event_number: int, age_limit: float) -> WorkerResult | None:
        """What to return to dranspose for ``event_number``: ``result`` held (None),
        or everything held so far followed by it (its ``carried_events`` say which
        events' results it carries). ``age_limit``: seconds the first held may wait."""
        now = time.monotonic()
        items = [] if result is None else list(result.items)
        with self._lock:
            fresh = not self._events or now - self._since < self._age_limit
            if self.enabled and items and all(isinstance(item, HOLDABLE) for item in items):
                size = result_bytes(result)  # type: ignore[arg-type]
                if len(self._events) + 1 < self.max_events and self._bytes + size < self.max_bytes and fresh:
                    if not self._events:
                        self._since, self._age_limit = now, age_limit
                    self._items.extend(items)
                    self._events.append(event_number)
                    self._bytes += size
                    return None
            if not self._events:
                return result
            if not items and fresh:
                return None  # nothing of its own: what is held waits on (the loop sends it in time)
            held = WorkerResult(self._items + items, carried_events=tuple(self._events), scan=self.scan)  # type: ignore[arg-type]
            self._reset()
            return held

    def take(self) -> tuple[int, WorkerResult] | None:
        """Everything held, as the result of the last event held (the others in its
        ``carried_events``); None: nothing is held."""
        with self._lock:
            if not self._events:
                return None
            carrier = self._events[-1]
            held = WorkerResult(list(self._items), carried_events=tuple(self._events[:-1]), scan=self.scan)  # type: ignore[arg-type]
            self._reset()
            return carrier, held

    def drop(self, why: str) -> None:
        """Forget what is held (the scan ended while results were held: they are lost)."""
        with self._lock:
            if self._events:
                logger.warning(
                    "the results of %d events held back to go together were not sent: %s "
                    "(their frames count as lost if no other copy reached the reducer)",
                    len(self._events),
                    why,
                )
            self._reset()

    def _reset(self) -> None:
        self._items, self._events, self._bytes = [], [], 0
