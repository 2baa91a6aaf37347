"""Ring removal on the real APS tooth with detector stripes: ring strength and cost.

The tooth (``../shared/data/tomopy_tooth/tooth.h5``) gets what real detectors add to
raw counts before the flat-field correction: per-column gain errors of 2 % rms, one
unresponsive column and one responding at 30 % (as the unit test
``test_ring_removal_removes_most_stripes_of_the_real_tooth``). For each method:
ring strength (:func:`ring_strength`) as a fraction of the striped data's, the
correlation of the slices with those of the data as measured, and ms per sinogram
(181 x 640).

    python benchmarks/bench_rings.py [--path ../shared/data/tomopy_tooth/tooth.h5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamtomo.pipeline.reconstruction.fbp import fbp
from streamtomo.pipeline.reconstruction.preprocess import (
    remove_all_stripes,
    remove_stripes_sorting,
    ring_strength,
)
from tests.support.striped_tooth import TOOTH, Sinograms, tooth_sinograms

AXIS = 295.6
DEFAULT = TOOTH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clean, striped, theta = tooth_sinograms(args.path)
    reference = fbp(clean, theta, AXIS)
    methods: dict[str, Callable[[Sinograms], Sinograms]] = {
        "none": lambda s: s,
        "sorting, offset (former ring_removal)": remove_stripes_sorting,
        "sorting, replace (Vo algorithm 3)": lambda s: remove_stripes_sorting(s, method="replace"),
        "Vo combination (ring_removal now)": remove_all_stripes,
    }
    print(f"tooth {striped.shape[0]} sinograms of {striped.shape[1]} x {striped.shape[2]}, axis {AXIS}")
    print(f"{'data':8} {'method':40} {'ring':>8} {'fraction':>8} {'r slices':>9} {'ms/sino':>8}")
    for name, data in (("measured", clean), ("striped", striped)):
        before = ring_strength(data)
        for method, fn in methods.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = fn(data)
                best = min(best, time.perf_counter() - start)
            slices = fbp(out, theta, AXIS)
            r = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(slices, reference, strict=True)])
            strength = ring_strength(out)
            ms = best / data.shape[0] * 1e3
            print(f"{name:8} {method:40} {strength:8.5f} {strength / before:8.2f} {r:9.4f} {ms:8.1f}")


if __name__ == "__main__":
    main()
