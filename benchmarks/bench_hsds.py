"""HSDS publishing: our writer versus plain h5pyd, against one local HSDS.

A simulated scan: a sinogram stack (rows x angles x cols float32, the live layout's
chunks) filled one projection at a time, plus ``--slices`` reconstructed slices
(one chunk each) rewritten every ``--slice-every`` projections, plus the angle,
count and generation datasets.

* Throughput: projections as fast as possible until HSDS acknowledged everything
  (readers see it), then until it is durable (``PUT /?flush=1``; ours also asks HSDS
  to rescan the domain and checks it as h5pyd opens it before calling it complete). Ours: one
  ``commit()`` + ``notify()`` per projection (the writer coalesces and sends deltas);
  plain h5pyd: one ``dset[...] = ...`` per projection row (``sino[:, angle, :] =
  projection``), the slices, angle, count and generation, then ``f.flush()`` (h5pyd
  1.0 buffers writes until then). MB/s counts the scan's bytes, not the wire's.
* Latency: projections arrive at ``--rate`` Hz; a reader in another process polls
  ``/entry/status/generation`` with h5pyd every ``--poll`` s. A projection's latency
  is from its scheduled arrival to the reader first seeing a generation that
  includes it (a blocking writer that falls behind delays the frames behind it).

Run: ``.venv/bin/python benchmarks/bench_hsds.py`` (needs ``pip install hsds``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.hsds_bridge.credentials import Credentials
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter
from streamtomo.reducer.domain_layout import new_domain, sinogram_chunks

GEN = "/entry/status/generation"
SINO = "/entry/sinogram/data"
RECON = "/entry/reconstruction/data"


@dataclass
class Scan:
    rows: int
    cols: int
    angles: int
    slices: int
    slice_every: int
    projections: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def make(cls, args: argparse.Namespace) -> Scan:
        scan = cls(args.rows, args.cols, args.angles, args.slices, args.slice_every)
        rng = np.random.default_rng(0)
        # A pool of random frames, varied per angle below: every projection differs.
        scan.projections = [rng.random((args.rows, args.cols), dtype=np.float32) for _ in range(8)]
        scan.images = [rng.random((args.slices, args.cols, args.cols), dtype=np.float32) for _ in range(3)]
        return scan

    def projection(self, angle: int) -> np.ndarray:
        return self.projections[angle % len(self.projections)] + np.float32(angle)

    def slice_stack(self, angle: int) -> np.ndarray | None:
        if (angle + 1) % self.slice_every:
            return None
        return self.images[(angle // self.slice_every) % len(self.images)] * np.float32(angle)

    @property
    def scan_bytes(self) -> int:
        updates = self.angles // self.slice_every
        return self.rows * self.angles * self.cols * 4 + updates * self.slices * self.cols * self.cols * 4


def build_domain(name: str, scan: Scan) -> Domain:
    domain = new_domain(name)
    domain.create_group("/entry/sinogram", {"NX_class": "NXdata", "signal": "data"})
    domain.create_dataset(
        SINO,
        shape=(scan.rows, scan.angles, scan.cols),
        dtype=np.float32,
        chunks=sinogram_chunks(scan.rows, scan.angles, scan.cols),
    )
    domain.create_dataset("/entry/sinogram/rotation_angle", np.zeros(scan.angles))
    domain.create_dataset("/entry/sinogram/frames_per_angle", np.zeros(scan.angles, np.int32))
    domain.create_group("/entry/reconstruction", {"NX_class": "NXdata", "signal": "data"})
    n = scan.cols
    domain.create_dataset(RECON, shape=(scan.slices, n, n), dtype=np.float32, chunks=(1, n, n))
    return domain


def update_domain(domain: Domain, scan: Scan, angle: int) -> None:
    with domain.lock:
        domain.dataset(SINO).write((slice(None), angle, slice(None)), scan.projection(angle))
        domain.dataset("/entry/sinogram/rotation_angle").write((angle,), angle * 180.0 / scan.angles)
        domain.dataset("/entry/sinogram/frames_per_angle").write((angle,), 1)
        stack = scan.slice_stack(angle)
        if stack is not None:
            recon = domain.dataset(RECON)
            for k in range(scan.slices):
                recon.write((k,), stack[k])
        domain.dataset("/entry/status/projections").set_scalar(angle + 1)
        domain.dataset(GEN).set_scalar(np.int64(domain.commit()))


# -- ours -------------------------------------------------------------------------------------
def run_ours(server: LocalHsds, scan: Scan, name: str, rate: float, reader: Reader | None) -> dict[str, Any]:
    domain = build_domain(name, scan)
    writer = HsdsWriter(server.url, name, server.accounts.writer)
    writer.start(domain)
    if reader:
        reader.start(writer.domain_name)
    commits: list[float] = []
    notify_s: list[float] = []
    t0 = time.monotonic()
    for angle in range(scan.angles):
        commits.append(arrival(t0, angle, rate))
        update_domain(domain, scan, angle)
        t = time.perf_counter()
        writer.notify()
        notify_s.append(time.perf_counter() - t)
        pace(t0, angle, rate)
    writer.wait_idle(600)
    acked = time.monotonic() - t0
    writer.close(timeout=600)
    durable = time.monotonic() - t0
    stats = writer.stats()
    return {
        "acked_s": acked,
        "durable_s": durable,
        "requests": stats.extra.get("value_puts", 0),
        "wire_mb": stats.bytes_sent / 1e6,
        "notify_p95_ms": float(np.percentile(notify_s, 95) * 1e3),
        "commits": commits,
        "seen": reader.finish() if reader else [],
        "errors": stats.errors,
    }


# -- plain h5pyd --------------------------------------------------------------------------------
def run_h5pyd(server: LocalHsds, scan: Scan, name: str, rate: float, reader: Reader | None) -> dict[str, Any]:
    import h5pyd

    account = server.accounts.writer
    f = h5pyd.File(name, "w", endpoint=server.url, username=account.username, password=account.password)
    shape = (scan.rows, scan.angles, scan.cols)
    sino = f.create_dataset(SINO, shape=shape, dtype="f4", chunks=sinogram_chunks(*shape), compression="lz4")
    angles = f.create_dataset("/entry/sinogram/rotation_angle", shape=(scan.angles,), dtype="f8")
    counts = f.create_dataset("/entry/sinogram/frames_per_angle", shape=(scan.angles,), dtype="i4")
    n = scan.cols
    recon = f.create_dataset(RECON, shape=(scan.slices, n, n), dtype="f4", chunks=(1, n, n), compression="lz4")
    gen = f.create_dataset(GEN, data=np.int64(0))
    f.flush()
    if reader:
        reader.start(name)
    commits: list[float] = []
    requests = 0
    t0 = time.monotonic()
    for angle in range(scan.angles):
        commits.append(arrival(t0, angle, rate))
        sino[:, angle, :] = scan.projection(angle)
        angles[angle] = angle * 180.0 / scan.angles
        counts[angle] = 1
        requests += 3
        stack = scan.slice_stack(angle)
        if stack is not None:
            for k in range(scan.slices):
                recon[k] = stack[k]
            requests += scan.slices
        gen[()] = angle + 1
        requests += 1
        f.flush()  # h5pyd 1.0 buffers writes until flush(): one PUT per write, in order
        pace(t0, angle, rate)
    acked = time.monotonic() - t0
    status, _ = server.request("PUT", f"/?domain={name}&flush=1", auth=account)  # durable on disk
    assert status in (200, 204), status
    durable = time.monotonic() - t0
    f.close()
    return {
        "acked_s": acked,
        "durable_s": durable,
        "requests": requests,
        "wire_mb": scan.scan_bytes / 1e6,
        "notify_p95_ms": float("nan"),
        "commits": commits,
        "seen": reader.finish() if reader else [],
        "errors": 0,
    }


def arrival(t0: float, index: int, rate: float) -> float:
    """When frame ``index`` enters the reducer: on schedule, or now if unpaced.

    A blocking writer (plain h5pyd) that falls behind makes later frames wait; that
    wait is part of their latency.
    """
    return t0 + index / rate if rate > 0 else time.monotonic()


def pace(t0: float, index: int, rate: float) -> None:
    if rate > 0:
        delay = t0 + (index + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# -- the reader ---------------------------------------------------------------------------------
def _poll_generation(url: str, name: str, user: str, password: str, poll: float, stop: Any, out: Any) -> None:
    import h5pyd

    seen: list[tuple[int, float]] = []
    f = None
    while f is None and not stop.is_set():
        try:
            f = h5pyd.File(name, "r", endpoint=url, username=user, password=password)
        except OSError:
            time.sleep(poll)
    last = -1
    while f is not None and not stop.is_set():
        g = int(f[GEN][()])
        if g > last:
            seen.append((g, time.monotonic()))  # CLOCK_MONOTONIC: same clock as the writer's
            last = g
        time.sleep(poll)
    out.put(seen)


class Reader:
    """An h5pyd poller in another process (no GIL shared with the writer)."""

    def __init__(self, server: LocalHsds, account: Credentials, poll: float) -> None:
        self.server, self.account, self.poll = server, account, poll
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.out: Any = ctx.Queue()
        self.proc: Any = None
        self.ctx = ctx

    def start(self, name: str) -> None:
        args = (self.server.url, name, self.account.username, self.account.password, self.poll, self.stop, self.out)
        self.proc = self.ctx.Process(target=_poll_generation, args=args, daemon=True)
        self.proc.start()
        time.sleep(2.0)  # let it import h5pyd and open the domain before the first commit

    def finish(self) -> list[tuple[int, float]]:
        time.sleep(self.poll * 3)
        self.stop.set()
        seen: list[tuple[int, float]] = self.out.get(timeout=60)
        self.proc.join(10)
        return seen


def latencies(commits: list[float], seen: list[tuple[int, float]]) -> np.ndarray:
    """For generation g (1-based): first time a generation >= g was seen minus its commit."""
    out = []
    j = 0
    for g, t_commit in enumerate(commits, start=1):
        while j < len(seen) and seen[j][0] < g:
            j += 1
        if j == len(seen):
            break
        out.append(seen[j][1] - t_commit)
    return np.array(out)


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--angles", type=int, default=360)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--slice-every", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="projections/s in the latency runs")
    parser.add_argument("--latency-angles", type=int, default=120)
    parser.add_argument("--poll", type=float, default=0.05, help="reader polling interval (s)")
    parser.add_argument("--root", type=Path, help="parent of the HSDS root dirs (default: system temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    scan = Scan.make(args)
    lat_args = argparse.Namespace(**{**vars(args), "angles": args.latency_angles})
    lat_scan = Scan.make(lat_args)
    print(f"scan {args.rows}x{args.angles}x{args.cols} float32, {args.slices} slices {args.cols}x{args.cols} "
          f"every {args.slice_every} projections: {scan.scan_bytes / 1e6:.0f} MB")  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    lat: dict[str, dict[str, Any]] = {}
    # A fresh server per run: HSDS keeps working after a big write (write-back of
    # dirty chunks, a scan of the domain ~10 s later) and would slow the next run.
    with tempfile.TemporaryDirectory(prefix="bench-hsds-", dir=args.root) as tmp:
        for label, run in (("ours", run_ours), ("h5pyd", run_h5pyd)):
            with LocalHsds(Path(tmp) / f"tp_{label}") as server:
                results[label] = run(server, scan, f"/home/streamtomo/bench_{label}.h5", 0, None)
            with LocalHsds(Path(tmp) / f"lat_{label}") as server:
                # the viewer may read our domain; the plain h5pyd domain only its owner
                account = server.accounts.viewer if label == "ours" else server.accounts.writer
                reader = Reader(server, account, args.poll)
                lat[label] = run(server, lat_scan, f"/home/streamtomo/lat_{label}.h5", args.rate, reader)
    report(scan, results, lat, args)
    return 0


def report(scan: Scan, results: dict[str, dict[str, Any]], lat: dict[str, dict[str, Any]], args: Any) -> None:
    def row(label: str, a: float, b: float, fmt: str = "{:10.2f}", ratio: bool = True) -> None:
        r = f"{a / b:8.2f}x" if ratio and b else ""
        print(f"{label:34s}{fmt.format(a)}  {fmt.format(b)}  {r}")

    ours, plain = results["ours"], results["h5pyd"]
    mb = scan.scan_bytes / 1e6
    print(f"\nthroughput ({scan.angles} projections, {mb:.0f} MB of scan data, as fast as possible)")
    print(f"{'':34s}{'ours':>10s}  {'h5pyd':>10s}  {'ours/h5pyd':>9s}")
    row("all acknowledged (s)", ours["acked_s"], plain["acked_s"], ratio=False)
    row("durable after server flush (s)", ours["durable_s"], plain["durable_s"], ratio=False)
    row("MB/s (scan data, acknowledged)", mb / ours["acked_s"], mb / plain["acked_s"])
    row("MB/s (scan data, durable)", mb / ours["durable_s"], mb / plain["durable_s"])
    row("projections/s (acknowledged)", scan.angles / ours["acked_s"], scan.angles / plain["acked_s"])
    rows_ours, rows_plain = scan.angles * scan.rows / ours["acked_s"], scan.angles * scan.rows / plain["acked_s"]
    row("sinogram rows/s (acknowledged)", rows_ours, rows_plain, fmt="{:10.0f}")
    row("requests", ours["requests"], plain["requests"], fmt="{:10.0f}", ratio=False)
    row("MB on the wire", ours["wire_mb"], plain["wire_mb"], fmt="{:10.1f}", ratio=False)
    print(f"notify() p95 in the reducer: {ours['notify_p95_ms']:.2f} ms; writer errors: {ours['errors']}")

    print(f"\nlatency commit -> h5pyd reader sees the generation ({args.latency_angles} projections at "
          f"{args.rate:g} Hz, reader polls every {args.poll * 1e3:.0f} ms)")  # fmt: skip
    print(f"{'':34s}{'ours':>10s}  {'h5pyd':>10s}")
    la = latencies(lat["ours"]["commits"], lat["ours"]["seen"])
    lb = latencies(lat["h5pyd"]["commits"], lat["h5pyd"]["seen"])
    for q in (50, 95, 100):
        name = "max" if q == 100 else f"p{q}"
        a = float(np.percentile(la, q)) if la.size else float("nan")
        b = float(np.percentile(lb, q)) if lb.size else float("nan")
        row(f"{name} (s)", a, b, fmt="{:10.3f}", ratio=False)
    print(f"{'projections measured':34s}{la.size:10d}  {lb.size:10d}")
    print(f"{'paced run wall time (s)':34s}{lat['ours']['acked_s']:10.2f}  {lat['h5pyd']['acked_s']:10.2f}")
    goal_tp = plain["acked_s"] / ours["acked_s"]
    p95 = float(np.percentile(la, 95)) if la.size else float("nan")
    print(f"\ngoal: >= 2x h5pyd throughput -> {goal_tp:.1f}x; p95 < 0.5 s -> {p95:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
