"""A worker that does nothing but answer each event: the framework's own ceiling.

``benchmarks/bench_pipeline.py`` runs it (with :mod:`streamtomo.reducer.noop_reducer`) on the
same deployment and stream as :class:`streamtomo.workers.tomo_worker.TomoWorker`. It returns
a tiny result per event, as ours does, so the result path to the reducer is part
of the baseline.
"""

from __future__ import annotations

from typing import Any


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
