"""The distributed pipeline against dranspose's own ceiling, in one run.

Two local deployments side by side (each: Redis, controller, STINS and PandA
ingesters on 127.0.0.1), one simulated stream, played as fast as the pipeline takes
it through:

* streamtomo's worker and reducer with 1 and 2 workers,
* the no-op worker and reducer (``streamtomo.workers.noop_worker``, ``streamtomo.reducer.noop_reducer``)
  with 1 and 2 workers.

The scans alternate, one of ours then one of the no-op pair's, the order swapped
every round: on a shared machine the neighbours' load changes over a minute, and
the block of one pipeline's scans after the other's measured that change (the same
code gave 0.57 to 0.77 of the no-op pair with 2 workers from run to run). An idle
deployment costs its neighbour about 1% of a core (the services wait on sockets).
Per configuration the best scan counts, and each round's two scans give a paired
ratio, whose median is printed beside it.

Then, with 2 streamtomo workers, the stream paced at a fraction of the measured
rate, and the latency from a frame leaving ``play`` to its sinogram row being
visible in the live domain (``frames_per_angle`` of its slot read through h5pyd).
That latency includes the reducer's publish interval (``--publish-interval``).
The scans end without the end-of-scan volume (``bench_scale.py --volume`` times it).

With ``--baseline CHECKOUT``, our pipeline from another checkout runs as a third,
in the same rounds: on a machine whose neighbours' load changes from minute to
minute, two versions measured in separate runs differ by the runs (the no-op pair's
own rate changed 2x between two runs here), and in one run by the code.

    python benchmarks/bench_pipeline.py [--rows 32 --cols 256 --angles 400] [--baseline ../old-checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5pyd
import numpy as np

from streamtomo.app.beamline_events import BeamlineEvent, frame_events
from streamtomo.app.deployment import TOMO_REDUCER, TOMO_WORKER, LocalDeployment
from streamtomo.app.play import PlayResult, play
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

NOOP_WORKER = "streamtomo.workers.noop_worker:NoopWorker"
NOOP_REDUCER = "streamtomo.reducer.noop_reducer:NoopReducer"
# Our pipeline's names in the benchmarks (bench_scale's "zmq rows": its rows and partial
# sums through ZeroMQ, not shared memory): scans that end with a final file.
OURS = ("streamtomo", "zmq rows", "baseline")
log = logging.getLogger("bench_pipeline")


@dataclass
class Throughput:
    pipeline: str
    workers: int
    frames: int
    megabytes: float
    seconds: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per event, by service kind
    # Of cpu_ms["reducer"]: the thread that wrote the scan's final file (after the scan ended).
    final_file_ms: float = 0.0
    # Of cpu_ms: the services' main threads, their event loops (dranspose's receiving,
    # assembling, sending and Redis), by service kind; the rest is their executor threads
    # (``process_event``, ``process_result``, the reducer's publishing) and ZeroMQ's I/O.
    loop_ms: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def run_scan(
    deployment: LocalDeployment, events: list[BeamlineEvent], config: PipelineConfig, **options: Any
) -> PlayResult:
    # No recordings while measuring: the ingesters would write every frame to disk.
    return play(deployment.state, events, config, dump_prefix="", stall_timeout=30.0, **options)


def measure(
    deployment: LocalDeployment,
    name: str,
    events: list[BeamlineEvent],
    warmup: list[BeamlineEvent],
    config: PipelineConfig,
    warmup_config: PipelineConfig,
    repeats: int,
    run: Callable[[LocalDeployment, list[BeamlineEvent], PipelineConfig], PlayResult] | None = None,
) -> Throughput:
    """Best of ``repeats`` scans: on a shared machine the slow runs measure the neighbours.

    ``run`` plays one scan (default :func:`run_scan`; bench_scale gives big frames more time).
    """
    run = run or run_scan
    run(deployment, warmup, warmup_config)  # worker start-up (numba cache load, first sockets)
    best: Throughput | None = None
    for _ in range(repeats):
        before, loop_before = deployment.cpu_seconds(), deployment.cpu_seconds(main_thread_only=True)
        result = run(deployment, events, config)
        if result.ended_by_stop:
            raise RuntimeError(f"{name}: the scan stalled and was stopped")
        # The reducer writes the scan's file after the scan has finished: its CPU is
        # part of every scan's cost (else it lands in the next scan's, or nowhere).
        file_cpu = wait_for_final_file(deployment, result.mapping_uuid) if name in OURS else 0.0
        after, loop_after = deployment.cpu_seconds(), deployment.cpu_seconds(main_thread_only=True)
        cpu = _ms_per_event_by_kind(before, after, result.frames_sent)
        loop = _ms_per_event_by_kind(loop_before, loop_after, result.frames_sent)
        # From the first frame sent to the controller reporting the scan finished (all reduced).
        out = Throughput(
            name,
            deployment.n_workers,
            result.frames_sent,
            result.bytes_sent / 1e6,
            result.finished - result.started,
            cpu,
            file_cpu * 1e3 / result.frames_sent,
            loop,
        )
        log.info(
            "%s, %d workers: %.1f events/s, CPU ms per event %s",
            name,
            out.workers,
            out.events_per_s,
            {k: round(v, 2) for k, v in cpu.items()},
        )
        if best is None or out.seconds < best.seconds:
            best = out
    assert best is not None
    return best


def _ms_per_event_by_kind(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """CPU ms per event between two readings, summed by service kind (worker-3 -> worker)."""
    out: dict[str, float] = {}
    for service, seconds in after.items():
        kind = service.split("-")[-1] if "-" in service else service
        kind = "worker" if service.startswith("worker") else kind
        out[kind] = out.get(kind, 0.0) + (seconds - before.get(service, 0.0)) * 1e3 / events
    return out


def interleaved(
    deployments: dict[str, LocalDeployment],
    events: list[BeamlineEvent],
    warmup: list[BeamlineEvent],
    config: PipelineConfig,
    warmup_config: PipelineConfig,
    rounds: int,
) -> dict[str, list[Throughput]]:
    """``rounds`` scans on each deployment (by pipeline name), one after the other's
    in turn, the order reversed every round: each pipeline's scans meet the same
    neighbours' load, and round r's scans are a pair. :func:`measure` plays the
    warm-up scan before each one."""
    names = list(deployments)
    out: dict[str, list[Throughput]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(measure(deployments[name], name, events, warmup, config, warmup_config, 1))
    return out


def wait_for_final_file(deployment: LocalDeployment, mapping_uuid: str, timeout: float = 300.0) -> float:
    """Until the scan's final file is written; the CPU seconds its writer thread took,
    as the reducer logged them (the file is renamed into place when complete, then logged)."""
    deadline = time.monotonic() + timeout
    needle = f"scan-{mapping_uuid}.nxs written in"
    log = deployment.log_dir / "reducer.log"
    while time.monotonic() < deadline:
        for line in reversed(log.read_text().splitlines()):
            if needle in line:
                return float(line.rsplit(",", 1)[1].split()[0])
        time.sleep(0.05)
    raise RuntimeError(f"the reducer did not log its final file of scan {mapping_uuid} within {timeout:.0f} s")


class VisibilityProbe(threading.Thread):
    """Polls the live domain; records when each sinogram slot first holds a frame."""

    def __init__(self, endpoint: str, domain: str) -> None:
        super().__init__(name="visibility-probe", daemon=True)
        self.endpoint, self.domain = endpoint, domain
        self.first_seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with h5pyd.File(self.domain, "r", endpoint=self.endpoint) as f:
                    # A new scan: state running and its sinogram exists (the domain is new per scan).
                    if f["entry/status/state"][()] not in (b"running", "running") or "sinogram" not in f["entry"]:
                        time.sleep(0.01)
                        continue
                    counts = f["entry/sinogram/frames_per_angle"]
                    while not self.stop.is_set():
                        now = time.time()
                        filled = np.flatnonzero(counts[...])
                        for slot in filled:
                            self.first_seen.setdefault(int(slot), now)
                        time.sleep(0.02)  # polling costs CPU the pipeline shares
            except (OSError, KeyError) as error:
                log.debug("probe: %r", error)
                time.sleep(0.01)


def measure_latency(
    deployment: LocalDeployment, frames: list[Any], config: PipelineConfig, rate_hz: float
) -> list[float]:
    probe = VisibilityProbe(deployment.state.live_endpoint, config.domain)
    probe.start()
    try:
        result = run_scan(deployment, frame_events(frames, config), config, rate_hz=rate_hz)
    finally:
        probe.stop.set()
        probe.join(5)
    first_projection = config.n_darks_before + config.n_flats_before
    latencies = []
    for index, sent in result.send_times.items():
        slot = index - first_projection  # sequential angles: projection k fills slot k
        if slot >= 0 and slot in probe.first_seen:
            latencies.append(probe.first_seen[slot] - sent)
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--angles", type=int, default=400)
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds: scans per configuration, alternating with the no-op pair (the best counts)",
    )
    parser.add_argument("--pace", type=float, default=0.5, help="latency run: fraction of the measured 2-worker rate")
    parser.add_argument("--publish-interval", type=float, default=0.25, help="reducer publish interval (s)")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run our pipeline from another checkout of streamtomo (its services on PYTHONPATH=CHECKOUT), "
        "interleaved with the two others: an A/B of two versions in the same minutes of a shared machine",
    )
    parser.add_argument("--run-dir", help="keep the services' logs here (default: a temporary directory)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    spec = SimulationSpec(rows=args.rows, cols=args.cols, angles=args.angles, seed=1)
    # No end-of-scan volume: it runs after the scan, so it never changed events/s, but
    # its CPU landed in the reducer's "per event" column (the live path is measured
    # here; bench_scale.py --volume and bench_recon.py time the volume).
    config = spec.config(publish_interval=args.publish_interval, volume=False)
    frames = list(ScanSimulator(spec).frames())
    events = frame_events(frames, config)  # encoded once: every run sends the same bytes
    warm_spec = SimulationSpec(rows=args.rows, cols=args.cols, angles=20, n_darks=2, n_flats=2, seed=2)
    warm_config = warm_spec.config(publish_interval=args.publish_interval, volume=False)
    warmup = frame_events(ScanSimulator(warm_spec).frames(), warm_config)
    n_refs = sum(1 for e in events if e.key in (ImageKey.DARK, ImageKey.FLAT))

    results: list[Throughput] = []
    paired: dict[tuple[str, int], list[float]] = {}  # (pipeline, workers) -> it / no-op events/s, round by round
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, contextlib.ExitStack() as stack:
        started = time.time()
        run_dir = Path(args.run_dir or tmp)
        ours = stack.enter_context(LocalDeployment(workers=1, run_dir=run_dir / "streamtomo", dump_prefix=""))
        noop = stack.enter_context(
            LocalDeployment(
                workers=1,
                run_dir=run_dir / "no-op",
                dump_prefix="",
                worker_class=NOOP_WORKER,
                reducer_class=NOOP_REDUCER,
            )
        )
        pipelines = {"streamtomo": ours, "no-op": noop}
        if args.baseline:
            pipelines["baseline"] = stack.enter_context(
                LocalDeployment(
                    workers=1,
                    run_dir=run_dir / "baseline",
                    dump_prefix="",
                    env={"PYTHONPATH": str(Path(args.baseline).resolve())},
                )
            )
        log.info("deployments up in %.1f s", time.time() - started)
        for workers in (1, 2):
            for name, deployment in pipelines.items():
                kind = (NOOP_WORKER, NOOP_REDUCER) if name == "no-op" else (TOMO_WORKER, TOMO_REDUCER)
                deployment.scale(workers, *kind)
            rounds = interleaved(pipelines, events, warmup, config, warm_config, args.repeats)
            results.extend(max(scans, key=lambda t: t.events_per_s) for scans in rounds.values())
            for name in pipelines:
                if name != "no-op":
                    paired[(name, workers)] = [
                        a.events_per_s / b.events_per_s for a, b in zip(rounds[name], rounds["no-op"], strict=True)
                    ]
        order = ["streamtomo", "baseline", "no-op"]
        results.sort(key=lambda t: (order.index(t.pipeline), t.workers))
        two = next(r for r in results if r.pipeline == "streamtomo" and r.workers == 2)
        rate = max(two.events_per_s * args.pace, 1.0)
        run_scan(ours, warmup, warm_config)
        latencies = measure_latency(ours, frames, config, rate)
        errors = ours.error_lines() + noop.error_lines()

    frame_mb = events[1].nbytes / 1e6
    print(
        f"stream: {len(frames)} frames ({n_refs} darks/flats broadcast to every worker) of {args.rows}x{args.cols} "
        f"uint16 ({frame_mb * 1e3:.0f} kB), STINS over ZeroMQ + PandA over TCP, as fast as the pipeline takes it"
    )
    print(f"{'pipeline':<12}{'workers':>8}{'events/s':>11}{'MB/s':>9}{'vs no-op':>10}")
    for r in results:
        base = next(b for b in results if b.pipeline == "no-op" and b.workers == r.workers)
        print(
            f"{r.pipeline:<12}{r.workers:>8}{r.events_per_s:>11.1f}{r.mb_per_s:>9.2f}{r.events_per_s / base.events_per_s:>10.2f}"
        )
    for (name, workers), ratios in sorted(paired.items()):
        print(
            f"paired rounds, {workers} worker{'s' if workers > 1 else ''}: {name} / no-op "
            + " ".join(f"{ratio:.2f}" for ratio in ratios)
            + f" (median {statistics.median(ratios):.2f})"
        )
    kinds = ["worker", "reducer", "ingester", "controller", "redis"]
    print("CPU per event (ms, all processes of a kind; the robust figure on a shared machine):")
    print(f"{'pipeline':<12}{'workers':>8}" + "".join(f"{k:>11}" for k in kinds) + f"{'total':>9}")
    for r in results:
        print(
            f"{r.pipeline:<12}{r.workers:>8}"
            + "".join(f"{r.cpu_ms.get(k, 0.0):>11.2f}" for k in kinds)
            + f"{sum(r.cpu_ms.values()):>9.2f}"
        )
    print("of which the event loops (main threads: dranspose's receiving, assembling, sending, Redis) / the rest:")
    print(f"{'pipeline':<12}{'workers':>8}" + "".join(f"{k:>17}" for k in ("worker", "reducer")))
    for r in results:
        print(
            f"{r.pipeline:<12}{r.workers:>8}"
            + "".join(
                f"{r.loop_ms.get(k, 0.0):>8.2f} / {r.cpu_ms.get(k, 0.0) - r.loop_ms.get(k, 0.0):<6.2f}"
                for k in ("worker", "reducer")
            )
        )
    print(
        f"latency, frame sent by play -> its row visible in the live domain (2 workers, paced at {rate:.0f} Hz, "
        f"publish interval {args.publish_interval} s): p50 {percentile(latencies, 50) * 1e3:.0f} ms, "
        f"p95 {percentile(latencies, 95) * 1e3:.0f} ms over {len(latencies)} frames "
        f"(mean {statistics.fmean(latencies) * 1e3 if latencies else float('nan'):.0f} ms)"
    )
    if errors:
        print(f"service logs hold {len(errors)} ERROR lines, e.g. {errors[0]}")


if __name__ == "__main__":
    main()
