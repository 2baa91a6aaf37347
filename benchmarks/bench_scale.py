"""Does the pipeline follow a real camera, and does it scale with workers?

One local deployment (Redis, controller, STINS and PandA ingesters, N workers, the
reducer, all on 127.0.0.1), one synthetic scan of real-size frames (default
1024x1024 uint16, 300 projections plus darks and flats; Poisson noise on a smooth
object, encoded once), played as fast as the pipeline takes it, through:

* streamtomo's worker and reducer with each worker count in ``--workers``,
* the no-op worker and reducer (``streamtomo.workers.noop_worker``,
  ``streamtomo.reducer.noop_reducer``) with the same worker counts: dranspose's own
  ceiling on this machine, the reference in the same run;
* "transport": the no-op reducer with a worker that returns, per frame, a zeroed
  float32 array as large as our corrected rows (``RowsForwardingWorker``): the
  reducer's CPU of that pair is what dranspose takes to bring a projection's rows to a
  reducer, the floor under ours (printed as "reducer above the transport").

* with ``--zmq-rows``, streamtomo once more with its projection rows and partial sums
  sent through ZeroMQ as between hosts ("zmq rows"), not through the workers'
  shared-memory rings (:mod:`streamtomo.app.shared_rows`), the default of a
  deployment on one host.

Best of ``--repeats`` scans each, after a warm-up scan: a full one for streamtomo, so
that the measured scans find the reducer's arrays mapped, as every scan after the
first of a geometry does (the first maps 1.3 GB at 1024^2 in a background thread:
measured, the reducer's CPU 2.2 ms per event higher in that scan, 0.7 s); a few
small frames for the others. Per row: events/s, MB/s, the ratio to the no-op
pair with the same workers, CPU ms per event by service kind (the reducer's includes
the scan's final file, written after the scan has finished: "(final file)" is that
part), the reducer's peak RSS during the scans and its ratio to the arrays it
publishes (sinogram, live slices, centre sweep; ``volume=false`` here). Then the arithmetic of what the cores allow:
cores / (worker CPU per event). The last line is machine readable::

    scale: frame=RxC workers=W events_s=X one_worker_events_s=O noop_events_s=Y reducer_ms_per_event=M reducer_rss_ratio=Q worker_ms_per_event=K

for the largest worker count (O: the same frames with one worker).

``--volume``: one more scan of the same frames with the end-of-scan volume on, with
the largest worker count, sent at 80% of the rate it followed (so that no backlog of
frames is timed), from the last frame sent to the final live slices
(the status leaves ``running``) and to the whole volume (``finished``), read from the
live domain as a viewer reads it.

    python benchmarks/bench_scale.py [--rows 1024 --cols 1024 --angles 300 --workers 1 2 4 8] [--bin 2] [--volume]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5pyd
import numpy as np
from bench_pipeline import (
    NOOP_REDUCER,
    NOOP_WORKER,
    OURS,
    Throughput,
)  # the same row and measurement (run as a script: benchmarks/ is on sys.path)
from bench_pipeline import measure as measure_throughput

from streamtomo.app.beamline_events import BeamlineEvent, frame_events
from streamtomo.app.deployment import TOMO_REDUCER, TOMO_WORKER, LocalDeployment
from streamtomo.app.play import play
from streamtomo.app.shared_rows import ENV_DIR as SHARED_ROWS_ENV
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import DetectorInfo
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry
from streamtomo.pipeline.streaming.memory_budget import published_bytes

TRANSPORT_WORKER = "streamtomo.workers.noop_worker:RowsForwardingWorker"
log = logging.getLogger("bench_scale")


@dataclass
class Row(Throughput):
    """bench_pipeline's throughput row, plus the reducer's peak RSS."""

    reducer_peak_rss: int = 0


def synthetic_frames(rows: int, cols: int, angles: int, n_darks: int, n_flats: int, seed: int = 0) -> list[Frame]:
    """Darks, flats and projections of a smooth absorbing cylinder with Poisson noise.

    Eight noisy realisations are drawn and reused: drawing 300 megapixel Poisson frames
    would take longer than the benchmark; every frame is still encoded and sent whole.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)
    flat = 20000.0 * (1.0 - 0.2 * x**2)[None, :] * np.ones((rows, 1), np.float32)
    dark = np.full((rows, cols), 100.0, np.float32)
    dark_frames = [rng.poisson(dark).astype(np.uint16) for _ in range(2)]
    flat_frames = [rng.poisson(flat + dark).astype(np.uint16) for _ in range(2)]
    projections = []
    for k in range(8):
        shift = 0.3 * np.cos(2 * np.pi * k / 8)
        thickness = 1.5 * np.sqrt(np.clip(1.0 - ((x - shift) / 0.5) ** 2, 0.0, None))
        projections.append(rng.poisson(flat * np.exp(-thickness)[None, :] + dark).astype(np.uint16))
    frames: list[Frame] = []
    for i in range(n_darks):
        frames.append(Frame(len(frames), ImageKey.DARK, dark_frames[i % 2], None))
    for i in range(n_flats):
        frames.append(Frame(len(frames), ImageKey.FLAT, flat_frames[i % 2], None))
    for i in range(angles):
        frames.append(Frame(len(frames), ImageKey.PROJECTION, projections[i % 8], 180.0 * i / angles))
    return frames


def scan_values(references: int, angles: int, bin_factor: int = 1) -> dict[str, object]:
    """The benchmarks' scan: ``references`` darks and flats, then ``angles`` projections
    over 180 degrees, no end-of-scan volume (the live path is what is measured)."""
    return {
        "n_darks_before": references,
        "n_flats_before": references,
        "n_projections": angles,
        "angle_range": 180.0,
        "volume": False,
        "bin": bin_factor,
    }


def reset_peak_rss(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as error:
        log.debug("cannot reset the peak RSS of %d: %s", pid, error)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_scan(
    deployment: LocalDeployment, events: list[BeamlineEvent], config: PipelineConfig, rate_hz: float | None = None
) -> Any:
    # No recordings while measuring: the ingesters would write every frame to disk.
    return play(
        deployment.state, events, config, rate_hz=rate_hz, dump_prefix="", stall_timeout=60.0, finish_timeout=300.0
    )


def measure(
    deployment: LocalDeployment,
    name: str,
    events: list[BeamlineEvent],
    warmup: list[BeamlineEvent],
    config: PipelineConfig,
    warm_config: PipelineConfig,
    repeats: int,
) -> Row:
    """bench_pipeline's best of ``repeats`` scans, plus the reducer's peak RSS over them
    (the warm-up's included: the same scan for streamtomo, a few small frames for the others)."""
    reducer_pid = deployment.processes["reducer"].pid
    reset_peak_rss(reducer_pid)
    if name in OURS:  # the measured scans reuse the arrays the warm-up mapped
        warmup, warm_config = events, config
    best = measure_throughput(deployment, name, events, warmup, config, warm_config, repeats, run=run_scan)
    return Row(**vars(best), reducer_peak_rss=peak_rss(reducer_pid))


class EndOfScanProbe(threading.Thread):
    """Polls the live domain's status while a scan runs: when it left ``running`` (the
    final live slices are published) and when it said ``finished`` (the volume is done)."""

    def __init__(self, endpoint: str, domain: str) -> None:
        super().__init__(name="end-of-scan-probe", daemon=True)
        self.endpoint, self.domain = endpoint, domain
        self.final_slices = 0.0  # time.time() of the first status after 'running'
        self.finished = 0.0
        self.volume_slices = 0
        self.stop = threading.Event()

    def run(self) -> None:
        running = False
        while not self.stop.is_set() and not self.finished:
            try:
                # The domain is new per scan: only a handle that saw this scan running follows it.
                with h5pyd.File(self.domain, "r", endpoint=self.endpoint) as f:
                    while not self.stop.is_set():
                        state = _text(f["entry/status/state"][()])
                        now = time.time()
                        if state == "running":
                            running = True
                        elif not running:
                            break  # the previous scan's domain, or this one's before its first frame
                        else:
                            self.final_slices = self.final_slices or now
                            if state in ("finished", "stopped", "failed"):
                                self.finished = now
                                self.volume_slices = int(f["entry/status/volume_slices_done"][()])
                                return
                        time.sleep(0.05)
            except (OSError, KeyError) as error:
                log.debug("probe: %r", error)
            time.sleep(0.02)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measure_end_of_scan(
    deployment: LocalDeployment, events: list[BeamlineEvent], config: PipelineConfig, rate_hz: float
) -> str:
    """One scan with the volume, sent at ``rate_hz`` (one the pipeline follows: sent as
    fast as it goes, the frames queued in front of the workers would be timed too):
    seconds from the last frame sent to the final slices and to the volume."""
    probe = EndOfScanProbe(deployment.state.live_endpoint, config.domain)
    probe.start()
    try:
        result = run_scan(deployment, events, config, rate_hz)
        probe.join(600)
    finally:
        probe.stop.set()
    if not probe.finished:
        return "end of scan: the volume was not finished within 600 s"
    return (
        f"end of scan with the volume ({len(deployment.state.workers)} workers, frames at {rate_hz:.1f}/s): "
        "last frame -> final live slices "
        f"{probe.final_slices - result.last_sent:.2f} s, -> whole volume ({probe.volume_slices} slices) "
        f"{probe.finished - result.last_sent:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--angles", type=int, default=300)
    parser.add_argument("--references", type=int, default=10, help="darks and flats, each")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--bin", type=int, default=1, help="the pipeline's bin parameter (1, 2, 4)")
    parser.add_argument("--repeats", type=int, default=2, help="scans per configuration (the best counts)")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op and transport references")
    parser.add_argument(
        "--zmq-rows",
        action="store_true",
        help="also streamtomo with its rows and partial sums through ZeroMQ, not shared memory",
    )
    parser.add_argument("--volume", action="store_true", help="also time a scan with the end-of-scan volume")
    parser.add_argument("--run-dir", help="keep the services' logs here (default: a temporary directory)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    workers = sorted(set(args.workers))
    cores = os.cpu_count() or 1

    values = scan_values(args.references, args.angles, args.bin)
    config = PipelineConfig.from_mapping(values)
    started = time.time()
    frames = synthetic_frames(args.rows, args.cols, args.angles, args.references, args.references)
    events = frame_events(frames, config)  # encoded once: every run sends the same bytes
    del frames
    warm_values = {**values, "n_darks_before": 2, "n_flats_before": 2, "n_projections": 8}
    warm_config = PipelineConfig.from_mapping(warm_values)
    warmup = frame_events(synthetic_frames(args.rows, args.cols, 8, 2, 2, seed=1), warm_config)
    log.info("frames encoded in %.1f s", time.time() - started)
    binned = DetectorInfo(args.rows // args.bin, args.cols // args.bin, "uint16")
    published = sum(published_bytes(config, binned, LiveSliceGeometry(config, binned)).values())

    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp,
        LocalDeployment(workers=workers[0], run_dir=Path(args.run_dir or tmp), dump_prefix="") as deployment,
    ):
        for n in workers:
            deployment.scale(n, TOMO_WORKER, TOMO_REDUCER)
            rows.append(measure(deployment, "streamtomo", events, warmup, config, warm_config, args.repeats))
        end_of_scan = ""
        if args.volume:
            # Paced at 80% of what this worker count followed, as a camera that it keeps up with.
            end_of_scan = measure_end_of_scan(
                deployment, events, PipelineConfig.from_mapping({**values, "volume": True}), 0.8 * rows[-1].events_per_s
            )
        if not args.no_noop:
            for n in workers:
                deployment.scale(n, NOOP_WORKER, NOOP_REDUCER)
                rows.append(measure(deployment, "no-op", events, warmup, config, warm_config, args.repeats))
            for n in workers:
                deployment.scale(n, TRANSPORT_WORKER, NOOP_REDUCER)
                rows.append(measure(deployment, "transport", events, warmup, config, warm_config, args.repeats))
        if args.zmq_rows:
            deployment.extra_env[SHARED_ROWS_ENV] = ""  # the services started from here on
            deployment.scale(1, NOOP_WORKER, NOOP_REDUCER)  # restarts the reducer
            for n in workers:
                deployment.scale(n, TOMO_WORKER, TOMO_REDUCER)
                rows.append(measure(deployment, "zmq rows", events, warmup, config, warm_config, args.repeats))
        errors = deployment.error_lines()

    frame_mb = events[1].nbytes / 1e6
    print(
        f"machine: {cores} cores; stream: {len(events) - 2} frames of {args.rows}x{args.cols} uint16 ({frame_mb:.2f} MB), "
        f"{args.references} darks and {args.references} flats broadcast to every worker, bin {args.bin}; "
        f"published arrays {published / 1e9:.3f} GB"
    )
    kinds = ["worker", "reducer", "ingester", "controller", "redis"]
    print(
        f"{'pipeline':<11}{'workers':>8}{'events/s':>10}{'MB/s':>8}{'vs no-op':>9}"
        + "".join(f"{k + ' ms':>14}" for k in kinds)
        + f"{'(final file)':>13}{'reducer RSS':>13}{'/published':>11}"
    )
    for r in rows:
        base = next((b for b in rows if b.pipeline == "no-op" and b.workers == r.workers), None)
        ratio = f"{r.events_per_s / base.events_per_s:>9.2f}" if base else f"{'-':>9}"
        rss_ratio = r.reducer_peak_rss / published if r.pipeline in OURS else float("nan")
        print(
            f"{r.pipeline:<11}{r.workers:>8}{r.events_per_s:>10.1f}{r.mb_per_s:>8.1f}{ratio}"
            + "".join(f"{r.cpu_ms.get(k, 0.0):>14.2f}" for k in kinds)
            + f"{r.final_file_ms:>13.2f}"
            + f"{r.reducer_peak_rss / 1e9:>11.2f}GB{rss_ratio:>11.2f}"
        )
    ours = [r for r in rows if r.pipeline == "streamtomo"]
    last, one = ours[-1], ours[0]
    noop = next((b for b in rows if b.pipeline == "no-op" and b.workers == last.workers), None)
    worker_ms = last.cpu_ms.get("worker", 0.0)
    reducer_ms = last.cpu_ms.get("reducer", 0.0)
    print(
        f"ceiling from the worker's CPU: {cores} cores / {worker_ms:.2f} ms per event = "
        f"{cores / worker_ms * 1e3 if worker_ms else float('inf'):.0f} events/s; from the reducer's: 1 core / "
        f"{reducer_ms:.2f} ms = {1e3 / reducer_ms if reducer_ms else float('inf'):.0f} events/s"
    )
    transport = next((b for b in rows if b.pipeline == "transport" and b.workers == last.workers), None)
    if transport is not None:
        floor = transport.cpu_ms.get("reducer", 0.0)
        print(
            f"reducer above the transport of the same rows ({last.workers} workers): {reducer_ms:.2f} - "
            f"{floor:.2f} = {reducer_ms - floor:.2f} ms per event (of it the final file {last.final_file_ms:.2f})"
        )
    if end_of_scan:
        print(end_of_scan)
    if errors:
        print(f"service logs hold {len(errors)} ERROR lines, e.g. {errors[0]}")
    print(
        f"scale: frame={args.rows}x{args.cols} workers={last.workers} events_s={last.events_per_s:.1f} "
        f"one_worker_events_s={one.events_per_s:.1f} noop_events_s={noop.events_per_s if noop else float('nan'):.1f} "
        f"reducer_ms_per_event={reducer_ms:.2f} reducer_rss_ratio={last.reducer_peak_rss / published:.2f} "
        f"worker_ms_per_event={worker_ms:.2f}"
    )


if __name__ == "__main__":
    main()
