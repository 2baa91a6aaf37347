"""The adapter class paths the application layer hands to dranspose resolve to our classes."""

from __future__ import annotations

import importlib

from streamtomo.app.adapters import TOMO_REDUCER, TOMO_WORKER
from streamtomo.reducer.tomo_reducer import TomoReducer
from streamtomo.workers.tomo_worker import TomoWorker


def _resolve(path: str) -> object:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def test_class_paths_resolve() -> None:
    assert _resolve(TOMO_WORKER) is TomoWorker
    assert _resolve(TOMO_REDUCER) is TomoReducer
