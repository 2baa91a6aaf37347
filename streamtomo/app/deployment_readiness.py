"""When a dranspose deployment is ready, read from the controller's ``/api/v1/config``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamtomo.controller_client import ControllerClient


def missing_services(config: dict[str, Any], streams: Sequence[str], worker_names: Sequence[str]) -> str | None:
    """None when the reducer, one ingester per stream and exactly ``worker_names``
    have registered and every worker reaches every ingester; else what is missing."""
    ingesters = {i["name"]: i for i in config["ingesters"]}
    want_ingesters = {f"{stream}-ingester" for stream in streams}
    if config.get("reducer") is None:
        return "reducer not registered"
    if not want_ingesters <= set(ingesters):
        return f"ingesters registered: {sorted(ingesters)}"
    workers = {w["name"]: w for w in config["workers"]}
    if set(workers) != set(worker_names):
        return f"workers registered: {sorted(workers)} of {list(worker_names)}"
    for name, w in workers.items():
        seen = {i["name"] for i in w["ingesters"]}
        if not want_ingesters <= seen:
            return f"{name} connected to {sorted(seen)}"
    uuids = {w["service_uuid"] for w in workers.values()}
    for name in sorted(want_ingesters):
        connected = {c["service_uuid"] for c in ingesters[name]["connected_workers"].values()}
        if not uuids <= connected:
            return f"{name} reached by {len(connected & uuids)} of {len(uuids)} workers"
    return None


def defaults_set(controller: ControllerClient) -> bool | None:
    """True once the reducer registered and the controller holds a value for every
    parameter the services describe (it sets defaults every 2 s); else None."""
    if controller.config(timeout=5).get("reducer") is None:
        return None
    names = [n for n in controller.parameter_names(timeout=5) if n != "dump_prefix"]
    return True if all(controller.get_parameter(n, timeout=5) is not None for n in names) else None
