"""The real DIAD (Diamond k11) NXtomo scan in ``../shared/data``, and its sinogram
corrected independently of the pipeline: the reference for streaming it.

The file: 50 flats, 50 darks, 3001 projections at measured angles 89.995..269.995
degrees, 50 flats, 50 darks; frames and angles behind external links, and 34 other
external links that dangle (their files were never published).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from tests.support.shared_data import shared_path

FRAMES = "/entry/instrument/imaging/data"
KEYS = "/entry/instrument/imaging/image_key"
ANGLES = "/entry/instrument/gts_theta/value"


def diad_file() -> Path:
    """The file, or a skip (a failure where the shared data are required: :func:`shared_path`)."""
    return shared_path("httomo_k11_diad", "k11-18014.nxs")


def expected_sinogram(path: Path, flats_after: bool) -> tuple[np.ndarray, np.ndarray]:
    """The file's projections corrected independently: darks and flats before the scan,
    flats after it interpolated linearly by frame number; (rows, angles, cols)."""
    with h5py.File(path, "r") as f:
        data = f[FRAMES][()].astype(np.float64)
        keys = f[KEYS][()]
        angles = f[ANGLES][()]
    flats, darks, projections = (np.flatnonzero(keys == k) for k in (1, 2, 0))
    before_flats = flats[flats < projections[0]]
    after_flats = flats[flats > projections[-1]]
    dark = data[darks[darks < projections[0]]].mean(axis=0)
    flat = np.broadcast_to(data[before_flats].mean(axis=0), (len(projections), *data.shape[1:]))
    if flats_after:
        last_reference = max(before_flats.max(), darks[darks < projections[0]].max())
        weight = ((projections - last_reference) / (after_flats[0] - last_reference))[:, None, None]
        flat = (1 - weight) * flat + weight * data[after_flats].mean(axis=0)
    corrected = -np.log(np.clip((data[projections] - dark) / (flat - dark), 1e-6, 10.0))
    return corrected.transpose(1, 0, 2), angles[projections]
