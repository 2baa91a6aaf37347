"""ASTRA Toolbox CPU FBP (``pip install astra-toolbox``; imported only here).

ASTRA's CPU FBP takes only the plain ``parallel`` geometry: detector centre at
column (W-1)/2 and, for an even slice size, pixel centres half a pixel off our
grid. Both are absorbed by shifting each row (exactly, in Fourier space) so that
ASTRA sees what our geometry would: g(m) = p(m + center - (W-1)/2 - d(theta)),
d = delta (cos - sin), delta = N//2 - (N-1)/2.
"""

from __future__ import annotations

import math

import numpy as np

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, PreparedBackend, ReconInput
from streamtomo.pipeline.reconstruction.backends.shifting import centred_width, recentre
from streamtomo.pipeline.reconstruction.fbp import angular_weights

ASTRA_FILTERS = {"ramp": "ram-lak", "shepp-logan": "shepp-logan", "hann": "hann"}


class AstraBackend(PreparedBackend):
    """ASTRA ``FBP`` (CPU, ``linear`` projector), one slice at a time."""

    name = "astra"
    requires = "astra-toolbox"

    def _run(self, spec: ReconInput) -> FloatArray:
        import astra  # optional: imported only when this backend runs

        n_slices, n_angles, n_cols = spec.shape
        size = spec.slice_size
        theta = np.radians(spec.angles_deg)
        width = centred_width(spec.center, n_cols)
        delta = size // 2 - (size - 1) / 2.0
        shifts = spec.center - (width - 1) / 2.0 - delta * (np.cos(theta) - np.sin(theta))
        rows = recentre(spec.sinograms, shifts, width)
        relative = angular_weights(spec.angles_deg) * (2.0 * n_angles / math.pi)  # ASTRA: uniform weights
        rows *= relative.astype(np.float32)[None, :, None]

        vol_geom = astra.create_vol_geom(size, size)
        proj_geom = astra.create_proj_geom("parallel", 1.0, width, theta)
        projector = astra.create_projector("linear", proj_geom, vol_geom)
        out = np.empty((n_slices, size, size), dtype=np.float32)
        try:
            for index in range(n_slices):
                sino_id = astra.data2d.create("-sino", proj_geom, rows[index])
                rec_id = astra.data2d.create("-vol", vol_geom)
                config = astra.astra_dict("FBP")
                config.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id)
                config["option"] = {"FilterType": ASTRA_FILTERS[spec.filter_name]}
                algorithm = astra.algorithm.create(config)
                try:
                    astra.algorithm.run(algorithm)
                    out[index] = astra.data2d.get(rec_id)
                finally:
                    astra.algorithm.delete(algorithm)
                    astra.data2d.delete([sino_id, rec_id])
        finally:
            astra.projector.delete(projector)
        return out
