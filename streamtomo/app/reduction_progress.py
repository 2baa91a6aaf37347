"""The controller says how many results the reducer still owes, not only which events the workers completed.

dranspose's ``/api/v1/progress`` counts the events every worker has completed
(``completed_events``); a result a worker sent is reduced later, and the controller
keeps the pairs (event, worker) it still waits for in ``to_reduce``, which it does
not show. ``play`` ends a stream that stopped early through the controller once every
event sent is complete: a result still on its way to the reducer then came after the
scan's end, and was not taken. Workers send small results together, up to 0.05 s after
the event (:mod:`streamtomo.workers.held_results`), which made that the common case:
in a scan cut short at 60 frames, the 8 held last were lost.

:func:`install` adds ``GET /api/v1/reduction`` to the controller's app:
``completed_events`` (as in progress), ``to_reduce`` (results the reducer has not
reported yet) and ``total_events``. Read-only, as progress is.
"""

from __future__ import annotations

from typing import Any

PATH = "/api/v1/reduction"

_installed = False


def reduction(controller: Any) -> dict[str, int]:
    """What ``controller`` (dranspose's ``Controller``) has completed and still waits to see reduced."""
    mapping = getattr(controller, "mapping", None)
    return {
        "completed_events": len(getattr(controller, "completed_events", ())),
        "to_reduce": len(getattr(controller, "to_reduce", ())),
        "total_events": int(mapping.len()) if mapping is not None else 0,
    }


def install() -> None:
    """In the controller's process, before its app starts (once per process)."""
    global _installed
    if _installed:
        return
    import dranspose.controller
    from fastapi import Request

    async def get_reduction(request: Request) -> dict[str, int]:
        return reduction(request.app.state.ctrl)

    # FastAPI reads the annotations to inject the request: as objects, not as the
    # strings this module's annotations are (Request is imported here, not globally).
    get_reduction.__annotations__ = {"request": Request, "return": dict[str, int]}
    dranspose.controller.app.add_api_route(PATH, get_reduction, methods=["GET"])
    _installed = True
