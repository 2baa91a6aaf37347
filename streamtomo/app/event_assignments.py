"""A worker service records which workers each broadcast event went to.

dranspose's worker reads the controller's assignments (event -> stream -> workers)
in ``Worker.manage_assignments`` and keeps only which ingesters to read from. The
worker class needs more for a broadcast dark or flat: whether it is one of the
``reference_senders`` workers that send the reducer its rows
(:mod:`streamtomo.workers.broadcast_senders`).

:func:`install` wraps that coroutine so that each assignment list it decodes is
also recorded under the mapping it belongs to; what dranspose does with it is
unchanged.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine
from typing import Any

from streamtomo.workers import broadcast_senders

# Set by each manage_assignments task for itself (a task runs in its own context).
_mapping: contextvars.ContextVar[str | None] = contextvars.ContextVar("streamtomo_mapping", default=None)
_installed = False


class _RecordingAdapter:
    """dranspose's ``WorkAssignmentList`` type adapter, recording what it decodes."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter

    def validate_json(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        assignments = self._adapter.validate_json(data, *args, **kwargs)
        mapping = _mapping.get()
        if mapping is not None:
            for assignment in assignments:
                broadcast_senders.record(mapping, int(assignment.event_number), assignment.assignments)
        return assignments

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


def install() -> None:
    """Record the assignments every worker of this process reads (once per process)."""
    global _installed
    if _installed:
        return
    import dranspose.worker as worker_module

    original = worker_module.Worker.manage_assignments

    def manage_assignments(self: Any) -> Coroutine[Any, Any, None]:
        # The mapping is fixed for the task's life: restart_work starts a new task.
        mapping = str(self.state.mapping_uuid)

        async def run() -> None:
            _mapping.set(mapping)
            await original(self)

        return run()

    worker_module.Worker.manage_assignments = manage_assignments
    worker_module.WorkAssignmentList = _RecordingAdapter(worker_module.WorkAssignmentList)
    _installed = True
