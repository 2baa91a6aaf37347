"""The worker's per-frame path against the memory-copy bound, in one process.

Path: decode a STINS image message (parse), correct and -log (with and without
``pixel_repair``, and with two dead columns to repair), extract the sinogram
rows (all rows here: the heaviest case) — what ``FrameProcessor.process`` does for a
projection minus the live backprojection (measured in bench_backprojection), with a
worker's malloc settings. Bound: a plain
numpy copy of the same frame bytes. Prints frames/s and the ratio to the bound.

    python benchmarks/bench_worker.py [--size 2048] [--frames 40]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.formats.stins import decode_stins, encode_image
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.reducer.malloc_tuning import keep_buffer_pages


def best_rate(fn: Callable[[int], object], frames: int, repeats: int = 3) -> float:
    fn(0)  # warm-up (numba compile, page faults)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(frames):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return frames / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    # As a worker process runs (streamtomo.app.services): freed frame-sized buffers are
    # reused, not mapped afresh (else page faults dominate every path here).
    keep_buffer_pages()
    n = args.size
    rng = np.random.default_rng(0)
    dark = rng.normal(100, 3, (n, n)).astype(np.float32)
    flat = rng.normal(20000, 300, (n, n)).astype(np.float32)
    raw = [rng.integers(2000, 20000, (n, n), dtype=np.uint16) for _ in range(4)]
    messages = [encode_image(i, i, f) for i, f in enumerate(raw)]
    corrector = Corrector(dark, flat, version=1)
    repairing = Corrector(dark, flat, version=1, repair=True)  # the pipeline's default (pixel_repair)
    dead = [f.copy() for f in raw]
    for f in dead:
        f[:, [n // 3, n // 3 + 1]] = 0  # two dead columns: every row has pixels to repair

    def copy_bound(i: int) -> object:
        return raw[i % 4].copy()

    def exact(i: int) -> object:
        image = decode_stins(messages[i % 4])
        return corrector.correct(image.array)  # type: ignore[union-attr]

    def fast(i: int) -> object:
        image = decode_stins(messages[i % 4])
        return corrector.correct_fast(image.array)  # type: ignore[union-attr]

    def fast_repair(i: int) -> object:
        image = decode_stins(messages[i % 4])
        return repairing.correct_fast(image.array)  # type: ignore[union-attr]

    def fast_repair_dead(i: int) -> object:
        return repairing.correct_fast(dead[i % 4])

    config = PipelineConfig.from_mapping({"slice_rows": f"{n // 2}", "flush_every": 1_000_000})
    processor = FrameProcessor(config)
    processor.set_references(ReferenceSet(1, dark, flat))
    processor.process(0, ImageKey.PROJECTION, raw[0], 0.0)  # detector set-up
    # The live backprojection is timed by bench_backprojection.py: left out here.
    processor.geometry.accumulate = lambda *a, **k: None  # type: ignore[union-attr,method-assign]

    def worker_path(i: int) -> object:
        image = decode_stins(messages[i % 4])
        return processor.process(i, ImageKey.PROJECTION, image.array, float(i % 180))  # type: ignore[union-attr]

    mb = raw[0].nbytes / 1e6
    bound = best_rate(copy_bound, args.frames)
    rows = [
        ("numpy copy of the frame (bound)", bound),
        ("parse + exact correction (numpy)", best_rate(exact, args.frames)),
        ("parse + table correction (fused)", best_rate(fast, args.frames)),
        ("parse + table correction, pixel repair on", best_rate(fast_repair, args.frames)),
        ("same, 2 dead columns repaired (no parse)", best_rate(fast_repair_dead, args.frames)),
        ("worker path: parse, check, correct, rows", best_rate(worker_path, args.frames)),
    ]
    print(f"{n}x{n} uint16 frames ({mb:.1f} MB), best of 3 x {args.frames} frames")
    print(f"{'path':44} {'frames/s':>9} {'MB/s':>8} {'ratio to bound':>15}")
    for name, rate in rows:
        print(f"{name:44} {rate:9.1f} {rate * mb:8.0f} {rate / bound:15.2f}")


if __name__ == "__main__":
    main()
