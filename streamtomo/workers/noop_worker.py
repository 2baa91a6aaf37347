"""A worker that does nothing but answer each event: the framework's own ceiling.

``benchmarks/bench_pipeline.py`` runs it (with :mod:`streamtomo.reducer.noop_reducer`) on the
same deployment and stream as :class:`streamtomo.workers.tomo_worker.TomoWorker`. It returns
a tiny result per event, so the result path to the reducer is part of the baseline; ours
returns a projection's rows, as :class:`RowsForwardingWorker` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtomo.dranspose_parameters import ConfigCache, describe_parameters


class NoopWorker:
    """``WORKER_CLASS=streamtomo.workers.noop_worker:NoopWorker``."""

    def __init__(self, parameters: dict[Any, Any] | None = None, state: Any = None, **kwargs: Any) -> None:
        self.events = 0

    @staticmethod
    def describe_parameters() -> list[Any]:
        return []

    def process_event(
        self, event: Any, parameters: dict[Any, Any] | None = None, tick: bool = False, **kwargs: Any
    ) -> int:
        self.events += 1
        return int(event.event_number)

    def finish(self, parameters: dict[Any, Any] | None = None) -> None:
        return None


class RowsForwardingWorker(NoopWorker):
    """The no-op worker, but each event's result is as large as ours: a float32 array
    of every pixel of the event's image, binned by the scan's ``bin`` (a projection's
    corrected rows).

    ``benchmarks/bench_scale.py`` runs it with the no-op reducer: the reducer's CPU per
    event of that pair is what dranspose takes to move one projection's rows to a
    reducer and hand them over (receive, unpickle, acknowledge), the floor under ours,
    which also places, adds and publishes them. Frames are not decoded: the array is
    sized from the largest frame received (uint16 pixels -> float32, / bin^2) and its
    content is zero. It describes our parameters, so that the scan's ``bin`` reaches it.
    """

    def __init__(self, parameters: dict[Any, Any] | None = None, state: Any = None, **kwargs: Any) -> None:
        super().__init__(parameters, state, **kwargs)
        self._params = ConfigCache()
        self._rows: dict[int, np.ndarray] = {}

    @staticmethod
    def describe_parameters() -> list[Any]:
        return describe_parameters()

    def process_event(  # type: ignore[override]
        self, event: Any, parameters: dict[Any, Any] | None = None, tick: bool = False, **kwargs: Any
    ) -> np.ndarray | int:
        super().process_event(event, parameters, tick, **kwargs)
        # The largest frame is the image (a STINS header and the PandA's rows are small).
        largest = max(
            (len(f) for s in getattr(event, "streams", {}).values() for f in getattr(s, "frames", ())), default=0
        )
        pixels = largest // 2 // self._params.config(parameters or {}).bin ** 2
        if pixels < 1024:  # a control message or a small stream: a tiny result, as the no-op worker's
            return int(event.event_number)
        if pixels not in self._rows:
            self._rows[pixels] = np.zeros(pixels, np.float32)
        return self._rows[pixels]
