"""The controller shows the results the reducer still owes (play waits for them)."""

from __future__ import annotations

from types import SimpleNamespace

from streamtomo.app import reduction_progress


def test_the_route_is_added_to_dransposes_controller_app_once() -> None:
    import dranspose.controller

    reduction_progress.install()
    reduction_progress.install()
    routes = [r for r in dranspose.controller.app.routes if getattr(r, "path", "") == reduction_progress.PATH]
    assert len(routes) == 1 and routes[0].methods == {"GET"}  # type: ignore[attr-defined]
    # FastAPI injects the request (a parameter it could not resolve became a required query: 422).
    assert [p.name for p in routes[0].dependant.query_params] == []  # type: ignore[attr-defined]


def test_it_counts_what_the_controller_completed_and_still_waits_for() -> None:
    controller = SimpleNamespace(
        completed_events=[0, 1, 2], to_reduce={(3, "worker-1"), (4, "worker-2")}, mapping=SimpleNamespace(len=lambda: 9)
    )
    assert reduction_progress.reduction(controller) == {"completed_events": 3, "to_reduce": 2, "total_events": 9}
    assert reduction_progress.reduction(SimpleNamespace()) == {"completed_events": 0, "to_reduce": 0, "total_events": 0}
