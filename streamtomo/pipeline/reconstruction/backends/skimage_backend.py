"""scikit-image ``iradon``: the slow, well-known reference (imported only here)."""

from __future__ import annotations

import math

import numpy as np

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, PreparedBackend, ReconInput
from streamtomo.pipeline.reconstruction.backends.shifting import centred_width, recentre
from streamtomo.pipeline.reconstruction.fbp import angular_weights


class SkimageBackend(PreparedBackend):
    """``skimage.transform.iradon`` per slice, axis moved to iradon's column W//2."""

    name = "skimage"
    requires = "scikit-image"

    def _run(self, spec: ReconInput) -> FloatArray:
        from skimage.transform import iradon  # optional: imported only when this backend runs

        _, n_angles, n_cols = spec.shape
        width = centred_width(spec.center, n_cols)
        # iradon puts the axis at column W//2 = (W-1)/2 for odd W: g(m) = p(m + center - W//2).
        shifts = np.full(n_angles, spec.center - width // 2)
        rows = recentre(spec.sinograms, shifts, width)
        # iradon weights every projection pi/(2A); scale rows to our angular weights instead.
        relative = angular_weights(spec.angles_deg) * (2.0 * n_angles / math.pi)
        rows *= relative.astype(np.float32)[None, :, None]
        out = np.empty((spec.shape[0], spec.slice_size, spec.slice_size), dtype=np.float32)
        for index, sino in enumerate(rows):
            out[index] = iradon(  # type: ignore[no-untyped-call]
                sino.T.astype(np.float64),
                spec.angles_deg,
                output_size=spec.slice_size,
                filter_name=spec.filter_name,
                circle=False,
            )
        return out
