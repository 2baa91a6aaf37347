"""The Fourier engine against another commit's, same data, same process, alternating rounds.

git show da87d2e:streamtomo/pipeline/reconstruction/backends/fourier.py > /tmp/old_fourier.py
python benchmarks/device/engine_against_old.py /tmp/old_fourier.py N ANGLES SLICES
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamtomo.pipeline.reconstruction.backends import fourier as new


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_fourier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    old = load(sys.argv[1])
    n, n_angles, slices = (int(v) for v in sys.argv[2:5])
    sino = np.random.default_rng(0).random((slices, n_angles, n), dtype=np.float32)
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    reference = None
    for name, module in (("old", old), ("new", new), ("old", old), ("new", new)):
        module.fourier_fbp(sino[:2], angles, n / 2)  # plans, compiles
        start = time.perf_counter()
        result = module.fourier_fbp(sino, angles, n / 2)
        ms = 1e3 * (time.perf_counter() - start) / slices
        print(f"{name}: N={n} A={n_angles} {slices} slices per call: {ms:.1f} ms/slice", flush=True)
        if name == "old":
            reference = result
        elif reference is not None:
            print(
                f"max |new - old| / max |old| = {float(np.abs(result - reference).max() / np.abs(reference).max()):.2e}"
            )


if __name__ == "__main__":
    main()
