"""A reducer that only counts results: the baseline for ``benchmarks/bench_pipeline.py``."""

from __future__ import annotations

import threading
from typing import Any


class NoopReducer:
    """``REDUCER_CLASS=streamtomo.reducer.noop_reducer:NoopReducer``."""

    def __init__(
        self, parameters: dict[Any, Any] | None = None, context: dict[Any, Any] | None = None, **kwargs: Any
    ) -> None:
        # process_result and timer run in different threads in dranspose.
        self.publish_rlock = threading.RLock()
        self.publish: dict[str, Any] = {"results": 0}

    @staticmethod
    def describe_parameters() -> list[Any]:
        return []

    def process_result(self, result: Any, parameters: dict[Any, Any] | None = None) -> None:
        with self.publish_rlock:
            self.publish["results"] += 1

    def timer(self, parameters: dict[Any, Any] | None = None) -> float:
        return 1.0

    def finish(self, parameters: dict[Any, Any] | None = None) -> None:
        return None
