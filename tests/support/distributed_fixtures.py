"""Helpers for the distributed-pipeline tests: read a live domain with h5pyd 1.0,
compare domains, scans as frame lists, and which sockets the services listen on."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import h5pyd
import numpy as np

from streamtomo.app.deployment import LocalDeployment
from streamtomo.app.processes import listening_tcp_sockets, pids_in_group
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Values that differ between any two runs by construction.
# Clocks: when each run made its domain and last published.
VOLATILE = {
    "/entry/status/last_update",
    "/entry/status/generation",
    "/entry/start_time",
    # Where this deployment writes the scan's file, and how that went: not the scan's result.
    "/entry/status/final_file",
    "/entry/status/final_file_written",
    "/entry/status/final_file_error",
}
# Expected in the logs of the worker-killed test only.
KILLED_WORKER_NOISE = ("is gone",)


def listening_sockets(deployment: LocalDeployment) -> list[tuple[str, str, int]]:
    """(service, address, port) for every TCP socket a service's process group listens on."""
    return sorted(
        {
            (name, addr, port)
            for name, svc in deployment.processes.items()
            if svc.alive()
            for _, addr, port in listening_tcp_sockets(pids_in_group(svc.pgid))
        }
    )


# -- scans and domains ------------------------------------------------------------------------


def simulated_scan(seed: int = 3, angles: int = 90) -> tuple[SimulationSpec, list[Frame]]:
    spec = SimulationSpec(rows=6, cols=64, angles=angles, seed=seed)
    return spec, list(ScanSimulator(spec).frames())


def projections_only(frames: Sequence[Frame]) -> list[Frame]:
    """The same projections, renumbered from 0: a scan that takes no darks or flats."""
    projections = [f for f in frames if f.key == ImageKey.PROJECTION]
    return [replace(f, index=i) for i, f in enumerate(projections)]


def _plain(value: Any) -> Any:
    """Scalar strings as ``str`` (h5pyd gives bytes, the in-memory domain 0-d arrays)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU" and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value


def read_domain(endpoint: str, domain: str) -> dict[str, Any]:
    """Every dataset of a live domain, read through h5pyd 1.0 (strings decoded)."""
    out: dict[str, Any] = {}
    with h5pyd.File(domain, "r", endpoint=endpoint) as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5pyd.Dataset):
                out["/" + name] = _plain(obj[()])

        f.visititems(visit)
    return out


ENDED = ("finished", "stopped", "failed")


def ended_status(endpoint: str, domain: str, timeout: float = 120.0) -> dict[str, Any]:
    """``/entry/status`` once the scan has ended: ``play`` returns when the stream is
    reduced (the final live slices are out), and the end-of-scan volume follows."""
    deadline = time.monotonic() + timeout
    while (now := status(endpoint, domain))["state"] not in ENDED:
        assert time.monotonic() < deadline, f"the scan did not end within {timeout:.0f} s (state {now['state']!r})"
        time.sleep(0.05)
    return now


def ended_domain(endpoint: str, domain: str, timeout: float = 120.0) -> dict[str, Any]:
    """Every dataset of the live domain once its scan has ended (:func:`ended_status`)."""
    ended_status(endpoint, domain, timeout)
    return read_domain(endpoint, domain)


def status(endpoint: str, domain: str, attempts: int = 50) -> dict[str, Any]:
    """``/entry/status`` of a live domain as one publish left it.

    The reducer writes the status fields and bumps ``generation`` under one lock, but
    a reader's requests are separate: one field read before a publish and the next
    after it gave ``state`` 'stopped' with the empty ``reason`` of the publish before.
    So the fields are read again until ``generation`` is the same before and after.
    """
    with h5pyd.File(domain, "r", endpoint=endpoint) as f:
        group = f["entry/status"]
        for _ in range(attempts):
            before = _plain(group["generation"][()])
            out = {name: _plain(group[name][()]) for name in group}
            if out["generation"] == before == _plain(group["generation"][()]):
                return out
    raise AssertionError(f"/entry/status changed during each of {attempts} reads")


def _comparable_parameters(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    doc.pop("controller_url", None)  # the live run's own address; replay has none
    return doc


def assert_same_domain(live: dict[str, Any], reference: dict[str, Any], tol: float = 1e-6) -> None:
    """Equal datasets: floats to ``tol`` (relative, and absolute against the largest value)."""
    # The final file's outcome exists only where a final file was written (a deployment).
    assert sorted(set(live) - VOLATILE) == sorted(set(reference) - VOLATILE)
    for path, want in reference.items():
        if path in VOLATILE:
            continue
        got, want = _plain(live[path]), _plain(want)
        if path == "/entry/reconstruction/parameters":
            assert _comparable_parameters(got) == _comparable_parameters(want)
        elif isinstance(want, str):
            assert got == want, path
        else:
            got, want = np.asarray(got), np.asarray(want)
            assert got.shape == want.shape, path
            if want.dtype.kind == "f":
                scale = float(np.abs(want).max()) if want.size else 1.0
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (scale or 1.0), err_msg=path)
            else:
                assert np.array_equal(got, want), path
