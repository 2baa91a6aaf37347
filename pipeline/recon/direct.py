"""The existing streaming-compatible FBP (:func:`pipeline.fbp.fbp`) as a backend.

It is the reference the other backends are checked against, and the kernel
the live pipeline uses for one projection at a time.
"""

from __future__ import annotations

import numpy.typing as npt

from pipeline.fbp import fbp
from pipeline.recon.common import FloatArray, finish, prepare


class DirectBackend:
    """Direct (pixel-driven) filtered backprojection, numba kernel or numpy fallback."""

    name = "direct"
    requires = ""

    def reconstruct(
        self,
        sinograms: npt.ArrayLike,
        angles_deg: npt.ArrayLike,
        center: float,
        filter_name: str = "ramp",
        slice_size: int | None = None,
    ) -> FloatArray:
        spec = prepare(sinograms, angles_deg, center, filter_name, slice_size)
        out = fbp(spec.sinograms, spec.angles_deg, spec.center, spec.filter_name, spec.slice_size)
        return finish(out, spec)
