"""Helpers for the distributed-pipeline tests: read a live domain with h5pyd 1.0,
compare domains, scans as frame lists, and which sockets the services listen on."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5pyd
import numpy as np

from streamtomo.app.deployment import LocalDeployment
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Values that differ between any two runs by construction.
VOLATILE = {"/entry/status/last_update", "/entry/status/generation"}
# Expected in the logs of the worker-killed test only.
KILLED_WORKER_NOISE = ("is gone",)


# -- listening sockets, from /proc ------------------------------------------------------------


def _proc_net_listeners() -> dict[int, tuple[str, int]]:
    """socket inode -> (address, port) for every TCP socket in LISTEN state."""
    out: dict[int, tuple[str, int]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = parts[1].split(":")
            out[int(parts[9])] = (_hex_address(addr_hex, v6), int(port_hex, 16))
    return out


def _hex_address(text: str, v6: bool) -> str:
    raw = bytes.fromhex(text)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, words)


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids.extend(_process_tree(int(child)))
    return pids


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pid`` and its children listen on."""
    listeners = _proc_net_listeners()
    found: list[tuple[str, int]] = []
    for p in _process_tree(pid):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in listeners:
                        found.append(listeners[inode])
    return sorted(set(found))


def listening_sockets(deployment: LocalDeployment) -> list[tuple[str, str, int]]:
    """(service, address, port) for every TCP socket a service process listens on."""
    return [
        (name, addr, port)
        for name, svc in deployment.processes.items()
        if svc.alive()
        for addr, port in listening_addresses(svc.pid)
    ]


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


def status(endpoint: str, domain: str) -> dict[str, Any]:
    return {k.rsplit("/", 1)[1]: v for k, v in read_domain(endpoint, domain).items() if k.startswith("/entry/status/")}


def _comparable_parameters(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    doc.pop("controller_url", None)  # the live run's own address; replay has none
    return doc


def assert_same_domain(live: dict[str, Any], reference: dict[str, Any], tol: float = 1e-6) -> None:
    """Equal datasets: floats to ``tol`` (relative, and absolute against the largest value)."""
    assert sorted(live) == sorted(reference)
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
