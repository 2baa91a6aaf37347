"""The workers' backprojection: pixel-major slice stacks against the planar kernel.

Per projection, a worker backprojects its live slices' rows and the centre sweep's
candidates into its partial sums. This times both ways of keeping those sums, in one
process, on the same rows and angles: the planar (K, N, N) kernel
(``backproject_into``, still what the reducer's rare paths use) and
:class:`~streamtomo.pipeline.reconstruction.interleaved.InterleavedSlices` (what
workers use), best of ``--repeats`` passes over 16 angles each, plus the cost of
handing a pixel-major sum out as (K, N, N) slices (once per partial sum). Prints ms per
projection, the ratio, and the arithmetic: the pixel updates per second each reaches.
Set ``NUMBA_NUM_THREADS`` to time one core (a worker of a full deployment has one).

    NUMBA_NUM_THREADS=1 python benchmarks/bench_backprojection.py [--size 1024] [--slices 1 3 5 7 8 12]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from streamtomo.pipeline.reconstruction.backprojection import backproject_into
from streamtomo.pipeline.reconstruction.interleaved import InterleavedSlices


def best_ms(run: Callable[[], object], repeats: int, per: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1e3 / per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="slice size N (and detector columns)")
    parser.add_argument("--slices", type=int, nargs="+", default=[1, 3, 5, 7, 8, 12])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.size
    angles = np.linspace(0.0, 360.0, 16, endpoint=False) + 0.37
    print(f"N={n}, {len(angles)} angles per pass, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'all cores')}")
    print(
        f"{'slices':>6}{'planar ms':>11}{'pixel-major ms':>16}{'ratio':>7}{'planar Gupd/s':>15}{'p-major Gupd/s':>16}{'take ms':>9}"
    )
    for k in args.slices:
        rows = np.random.default_rng(k).standard_normal((k, n)).astype(np.float32)
        planar = np.zeros((k, n, n), dtype=np.float32)
        stack = InterleavedSlices(k, n)
        backproject_into(planar, rows, 1.0, n / 2)  # compile or load the kernels
        stack.add(rows, 1.0, n / 2)
        stack.take()

        def run_planar(rows: np.ndarray = rows, planar: np.ndarray = planar) -> None:
            for angle in angles:
                backproject_into(planar, rows, float(angle), n / 2)

        def run_stack(rows: np.ndarray = rows, stack: InterleavedSlices = stack) -> None:
            for angle in angles:
                stack.add(rows, float(angle), n / 2)

        planar_ms = best_ms(run_planar, args.repeats, len(angles))
        stack_ms = best_ms(run_stack, args.repeats, len(angles))
        take_ms = best_ms(stack.take, args.repeats, 1)
        updates = k * n * n
        print(
            f"{k:>6}{planar_ms:>11.2f}{stack_ms:>16.2f}{planar_ms / stack_ms:>7.2f}"
            f"{updates / planar_ms / 1e6:>15.2f}{updates / stack_ms / 1e6:>16.2f}{take_ms:>9.2f}"
        )


if __name__ == "__main__":
    main()
