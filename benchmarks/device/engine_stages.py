"""Per-stage wall time of the Fourier volume engine (prepare, NUFFT, unpack) at one thread count.

    python benchmarks/device/engine_stages.py N ANGLES SLICES THREADS [EPS]

Random sinograms (timing only); the plan is made and warmed first, then one timed call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamtomo.pipeline.reconstruction.backends.fourier_plan import Geometry, plan_for


def main() -> None:
    n, n_angles, slices, threads = (int(v) for v in sys.argv[1:5])
    eps = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    plan = plan_for(Geometry.of(angles, n, n / 2, n, eps=eps), slices, threads=threads)
    by_angle = np.random.default_rng(0).random((n_angles, slices, n), dtype=np.float32)
    out = np.zeros((slices, n, n), np.float32)
    plan.reconstruct_into(by_angle, range(slices), out)  # warm: buffers, NUFFT plans
    plan.seconds = dict.fromkeys(plan.seconds, 0.0)
    cpu, wall = time.process_time(), time.perf_counter()
    plan.reconstruct_into(by_angle, range(slices), out)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stages = ", ".join(f"{k} {1e3 * v / slices:.1f}" for k, v in plan.seconds.items())
    print(
        f"N={n} A={n_angles} K={slices} threads={threads} eps={eps:g}: wall {1e3 * wall / slices:.0f} ms/slice, "
        f"cpu {1e3 * cpu / slices:.0f} ms/slice; per stage (wall ms/slice): {stages}"
    )


if __name__ == "__main__":
    main()
