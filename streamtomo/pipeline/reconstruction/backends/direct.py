"""The existing streaming-compatible FBP (:func:`streamtomo.pipeline.reconstruction.fbp.fbp`) as a backend.

It is the reference the other backends are checked against, and the kernel
the live pipeline uses for one projection at a time.
"""

from __future__ import annotations

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, PreparedBackend, ReconInput
from streamtomo.pipeline.reconstruction.fbp import fbp


class DirectBackend(PreparedBackend):
    """Direct (pixel-driven) filtered backprojection, numba kernel or numpy fallback."""

    name = "direct"
    requires = ""

    def _run(self, spec: ReconInput) -> FloatArray:
        return fbp(spec.sinograms, spec.angles_deg, spec.center, spec.filter_name, spec.slice_size)
