"""A service fetches only the parameters whose version changed.

dranspose's services follow the controller's updates in their ``register`` loop; an
update carries every parameter's version (a UUID, new at each set), and the loop
means to fetch a parameter only when its version differs from the one it holds::

    if name not in self.parameters or self.parameters[name] != paramuuids[name]:

but it compares the held :class:`~dranspose.protocol.WorkParameter` (a pydantic
model) with the announced UUID, which is never equal: every update made every
service fetch every parameter again, two Redis round trips and two INFO lines (each
one more round trip, to the controller's log stream) for each of our 47 parameters.
A scan brings at least two updates (its parameters, then the darks and flats the
reducer shares); in ``bench_pipeline.py``'s scans of 420 frames a worker logged 202
lines per scan, 12 with this mend.

:func:`install` makes a held parameter equal to its own version, which is what the
loop asks; comparisons with anything else are pydantic's as before.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

_installed = False


def install() -> None:
    """Let ``WorkParameter == UUID`` compare the parameter's version (once per process)."""
    global _installed
    if _installed:
        return
    from dranspose.protocol import WorkParameter

    original = WorkParameter.__eq__

    def __eq__(self: WorkParameter, other: Any) -> Any:
        if isinstance(other, UUID):
            return self.uuid == other
        return original(self, other)  # NotImplemented for other types: Python then decides

    WorkParameter.__eq__ = __eq__
    _installed = True
