"""The reducer's CPU per event, in process: what dranspose's reducer does with each result.

Worker results are made once by real :class:`FrameProcessor` s (``--workers`` of them,
projections dealt round robin, darks and flats to every one, as dranspose broadcasts
them), pickled as dranspose pickles them (``pickle.dumps`` of the payload) and kept.
Then, per result, what the reducer process does: the ZeroMQ receive copy
(``recv_multipart`` without ``copy=False`` hands dranspose a ``bytes``), ``pickle.loads``,
``TomoReducer.process_result``; and ``TomoReducer.timer`` (reconcile, publish) every
``publish_interval`` of results at ``--rate`` events/s. Process CPU seconds, best of
``--repeats``; ``--profile`` prints cProfile's top functions of the last repeat.

``--rings``: as a deployment on one host has it (:mod:`streamtomo.app.shared_rows`),
each result is put into a worker's shared-memory rings just before the reducer takes it
(rows and partial sums in slots, the rest pickled with the large arrays apart:
:func:`streamtomo.app.result_frames.dumps`), and the reducer unpickles it from there.
The worker's side (unpickling the kept result, copying it into the rings) is not
counted: the figure is the CPU of the thread that unpickles and reduces.

    python benchmarks/bench_reducer.py [--rows 1024 --cols 1024 --angles 300 --workers 2] [--rings] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pickle
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import scan_values, synthetic_frames

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import WorkerResult
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor


def worker_results(config: PipelineConfig, rows: int, cols: int, angles: int, workers: int) -> list[bytes]:
    """Pickled WorkerResults in arrival order (one per worker and event)."""
    frames = synthetic_frames(rows, cols, angles, config.n_darks_before, config.n_flats_before)
    processors = [FrameProcessor(config, f"worker{w}") for w in range(workers)]
    out: list[bytes] = []
    projection = 0
    for event, frame in enumerate(frames, start=1):
        if frame.key in (ImageKey.DARK, ImageKey.FLAT):
            chosen = processors
        else:
            chosen = [processors[projection % workers]]
            projection += 1
        for processor in chosen:
            items = processor.process(frame.index, frame.key, frame.data, frame.angle_deg, event=event)
            out.append(pickle.dumps(WorkerResult(list(items))))
    for processor in processors:  # what a worker's tick sends at the end
        flushed = processor.flush()
        if flushed is not None:
            out.append(pickle.dumps(WorkerResult([flushed])))
    return out


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def current_rss() -> int:
    return _status("VmRSS:")


def peak_rss() -> int:
    return _status("VmHWM:")


def parameters(config: PipelineConfig) -> dict[Any, Any]:
    from dranspose.protocol import ParameterName, WorkParameter

    return {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v)
        for k, v in config.to_dict().items()
    }


class RingTransport:
    """Results through a worker's shared-memory rings, as on one host (``--rings``)."""

    def __init__(self, directory: str) -> None:
        from streamtomo.app import shared_rows

        os.environ[shared_rows.ENV_DIR] = directory
        rings = shared_rows.sender_from_env()
        assert rings is not None, "shared rows are not supported here"
        self.rings = rings
        self.worker_seconds = 0.0

    def received(self, body: bytes) -> Any:
        """What the reducer's unpickling gets: the worker's part timed apart."""
        from streamtomo.app.result_frames import ReceivedResult, dumps

        started = time.thread_time()
        sent = dumps(pickle.loads(body), rings=self.rings)
        self.worker_seconds += time.thread_time() - started
        return ReceivedResult(sent.stream, sent.buffers)


def run_once(
    bodies: list[bytes],
    config: PipelineConfig,
    rate: float,
    context: dict[Any, Any],
    rings: RingTransport | None = None,
) -> tuple[float, Any]:
    from streamtomo.app.result_frames import loads
    from streamtomo.reducer.tomo_reducer import TomoReducer

    params = parameters(config)
    reducer = TomoReducer(parameters=params, context=context)
    every = max(1, round(rate * config.publish_interval))
    events = 0
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.process_time()
    worker_before = rings.worker_seconds if rings is not None else 0.0
    for i, body in enumerate(bodies):
        if rings is not None:
            payload = loads(rings.received(body))
        else:
            received = bytes(memoryview(body))  # the receive copy (pyzmq copy=True)
            payload = pickle.loads(received)
            del received
        reducer.process_result(SimpleNamespace(payload=payload), params)
        del payload
        events += 1
        if i % every == every - 1:
            reducer.timer(params)
    reducer.timer(params)
    spent = time.process_time() - started
    if rings is not None:
        spent -= rings.worker_seconds - worker_before
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"  (worker's part included) user {(after.ru_utime - before.ru_utime) / events * 1e3:.2f} ms, sys {(after.ru_stime - before.ru_stime) / events * 1e3:.2f} ms, "
        f"{(after.ru_minflt - before.ru_minflt) / events:.0f} minor faults per event"
    )
    started = time.process_time()
    reducer.finish(params)
    finished = time.process_time()
    reducer.wait_final_file(120)
    written = time.process_time()
    print(f"  finish {(finished - started) * 1e3:.0f} ms CPU, final file {(written - finished) * 1e3:.0f} ms CPU")
    reducer.close()
    return spent, reducer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--angles", type=int, default=300)
    parser.add_argument("--references", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=80.0, help="events/s assumed between timer calls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--final-dir", help="write each scan's final file here (as a deployment does)")
    parser.add_argument("--cache", help="keep the pickled results in this file (made once)")
    parser.add_argument("--rings", action="store_true", help="results through shared-memory rings, as on one host")
    args = parser.parse_args()
    os.environ.setdefault("STREAMTOMO_HTTP_PORT", "0")
    os.environ.setdefault("STREAMTOMO_CONTROL_PORT", "0")
    if args.final_dir:
        os.environ["STREAMTOMO_FINAL_DIR"] = args.final_dir
    config = PipelineConfig.from_mapping(scan_values(args.references, args.angles))
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        bodies: list[bytes] = pickle.loads(cache.read_bytes())
    else:
        started = time.time()
        bodies = worker_results(config, args.rows, args.cols, args.angles, args.workers)
        print(f"worker results made in {time.time() - started:.1f} s", file=sys.stderr)
        if cache is not None:
            cache.write_bytes(pickle.dumps(bodies, protocol=5))
    events = args.references * 2 + args.angles
    total = sum(len(b) for b in bodies)
    print(f"{len(bodies)} results, {total / 1e9:.2f} GB pickled, {events} events")
    context: dict[Any, Any] = {}
    base = current_rss()
    reset_peak_rss()
    best = float("inf")
    ring_directory = tempfile.TemporaryDirectory(prefix="bench-reducer-rings-", dir="/dev/shm") if args.rings else None
    rings = RingTransport(ring_directory.name) if ring_directory is not None else None
    for repeat in range(args.repeats):
        profiler = cProfile.Profile() if args.profile and repeat == args.repeats - 1 else None
        if profiler is not None:
            profiler.enable()
        # A new reducer each scan, as dranspose makes one; the array pool survives (its context).
        context = {"array_pool": context["array_pool"]} if "array_pool" in context else {}
        spent, reducer = run_once(bodies, config, args.rate, context, rings)
        if profiler is not None:
            profiler.disable()
        best = min(best, spent)
        print(
            f"repeat {repeat}: {spent / events * 1e3:.2f} ms CPU per event ({spent:.2f} s), state {reducer.scan.state}"
        )
        if profiler is not None:
            stats = pstats.Stats(profiler).sort_stats("tottime")
            stats.print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
    if ring_directory is not None:
        ring_directory.cleanup()
    peak = peak_rss() - base
    print(
        f"reducer: {best / events * 1e3:.2f} ms CPU per event (best of {args.repeats}); "
        f"peak RSS {peak / 1e9:.2f} GB above the results kept for replay"
    )


if __name__ == "__main__":
    main()
