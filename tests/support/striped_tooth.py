"""The real APS tooth with the stripes real detectors add, for ring-removal tests and
``benchmarks/bench_rings.py`` (one recipe, so the benchmark measures what the test checks)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.correction.corrector import Corrector

TOOTH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tomopy_tooth" / "tooth.h5"
TOOTH_AXIS = 295.6
Sinograms = npt.NDArray[np.float32]


def tooth_sinograms(path: Path = TOOTH) -> tuple[Sinograms, Sinograms, npt.NDArray[np.float64]]:
    """The tooth's -log sinograms (2, 181, 640): as measured, and with detector stripes.

    The stripes are what real detectors add to the raw counts before the flat-field
    correction (the flats do not have them): per-column gain errors of 2 % (rms),
    one unresponsive column (constant counts whatever the sample) and one that
    responds only 30 % to the sample.
    """
    with h5py.File(path, "r") as f:
        proj = f["exchange/data"][...]
        flat = f["exchange/data_white"][...].mean(axis=0)
        dark = f["exchange/data_dark"][...].mean(axis=0)
        theta = f["exchange/theta"][...]
    gain = 1.0 + np.random.default_rng(7).normal(0.0, 0.02, proj.shape[2])
    striped = dark + (proj - dark) * gain
    striped[:, :, 150] = 0.6 * flat[:, 150]
    striped[:, :, 420] = dark[:, 420] + 0.3 * (proj[:, :, 420] - dark[:, 420]) + 0.35 * (flat[:, 420] - dark[:, 420])
    corrector = Corrector(dark.astype(np.float32), flat.astype(np.float32))

    def sinograms(counts: npt.NDArray[np.floating]) -> Sinograms:
        return np.stack([corrector.correct(p.astype(np.float32)) for p in counts]).transpose(1, 0, 2)

    return sinograms(proj), sinograms(striped), theta
