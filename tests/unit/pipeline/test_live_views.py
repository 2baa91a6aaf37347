"""Live views: golden-ratio vs in-order accumulation, and the sliding 180-degree window."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from streamtomo.pipeline.reconstruction.fbp import StreamingFBP, fbp
from streamtomo.pipeline.reconstruction.live_views import SlidingWindowFBP
from streamtomo.pipeline.simulation.phantom import Ellipsoid
from streamtomo.pipeline.simulation.projector import project_ellipsoids, project_shepp_logan_3d
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec


def inside(n: int) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[:n, :n]
    return np.asarray((yy - n // 2) ** 2 + (xx - n // 2) ** 2 < (n // 2 - 2) ** 2)


def relative_rmse_during_scan(order: str, fractions: tuple[float, ...]) -> list[float]:
    """RMSE / phantom maximum of the accumulated slice after each fraction of the angles."""
    spec = SimulationSpec(rows=1, cols=128, angles=200, order=order, noise=False, oversample=2)
    sim = ScanSimulator(spec)
    truth = sim.ground_truth()[0]
    slots = spec.slot_angles()
    sino = sim.line_integrals * sim.mu_scale  # (slots, rows, C)
    live = StreamingFBP(spec.cols, sim.axis, expected_angles_deg=slots)
    mask = inside(spec.cols)
    checkpoints = {round(f * spec.angles) for f in fractions}
    out = []
    for count, angle in enumerate(spec.acquisition_angles(), start=1):
        live.add(sino[int(np.argmin(np.abs(slots - angle)))], float(angle))
        if count in checkpoints:
            error = live.result()[0][mask] - truth[mask]
            out.append(float(np.sqrt(np.mean(error**2)) / truth.max()))
    return out


def test_golden_ratio_preview_is_usable_early_in_order_is_not() -> None:
    sequential = relative_rmse_during_scan("sequential", (0.1, 0.5))
    golden = relative_rmse_during_scan("golden", (0.1, 0.5))
    # In order, half the angles still leave a poor slice (about 0.19 of the phantom's range)...
    assert sequential[1] > 0.15
    # ...while golden-ratio angles after 10 % already beat it, and after 50 % are close to final.
    assert golden[0] < sequential[1]
    assert golden[0] < 0.3 * sequential[0]
    assert golden[1] < 0.3 * sequential[1]


# -- sliding window ---------------------------------------------------------------------------

STEP = 3.0
N = 64


def rotating_sinogram(angles: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return project_shepp_logan_3d(N, N, angles, phantom_size=56, oversample=2, rows=[24, 28])


def test_window_equals_fbp_of_the_last_half_turn() -> None:
    angles = np.arange(0.0, 450.0, STEP)  # a turn and a quarter, continuous
    projections = rotating_sinogram(angles)
    view = SlidingWindowFBP(N, N // 2, n_slices=2)
    removed = [view.add(projections[i], float(a) % 360.0) for i, a in enumerate(angles)]  # encoder wraps at 360
    assert sum(removed) == angles.size - 60 and view.n_projections == 60
    assert view.angle_range == (450.0 - 180.0, 450.0 - STEP)
    last = slice(angles.size - 60, None)
    expected = fbp(projections[last].transpose(1, 0, 2), angles[last], N // 2)
    result = view.result()
    assert result.shape == (2, N, N) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=2e-4 * float(np.abs(expected).max()))
    before = view.result()
    view.rebuild()
    np.testing.assert_allclose(view.result(), before, atol=1e-5 * float(np.abs(before).max()))


def test_window_forgets_a_sample_that_changed() -> None:
    """In situ: a feature appears at 360 degrees; half a turn later the view shows it fully."""
    base = (Ellipsoid(0.8, 0.8, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5),)
    grown = (*base, Ellipsoid(0.2, 0.3, 1.0, 0.3, -0.2, 0.0, 20.0, 1.0))
    angles = np.arange(0.0, 540.0, STEP)
    before = project_ellipsoids(base, 1, N, angles, phantom_size=56)
    after = project_ellipsoids(grown, 1, N, angles, phantom_size=56)
    view = SlidingWindowFBP(N, N // 2)
    accumulate = StreamingFBP(N, N // 2)
    for i, angle in enumerate(angles):
        rows = after[i] if angle >= 360.0 else before[i]
        view.add(rows, float(angle))
        accumulate.add(rows, float(angle))
    half = slice(angles.size - 60, None)
    new_only = fbp(after[half, 0], angles[half], N // 2)
    mask = inside(N)
    window_error = float(np.abs(view.result()[0] - new_only)[mask].max())
    accumulate_error = float(np.abs(accumulate.result()[0] - new_only)[mask].max())
    assert window_error < 1e-3 * float(new_only.max())
    assert accumulate_error > 0.2 * float(new_only.max())  # accumulation still averages the old sample in


def test_window_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"center 70\.0 is outside the detector; allowed: 0 \.\. 63"):
        SlidingWindowFBP(N, 70.0)
    with pytest.raises(ValueError, match="unknown filter"):
        SlidingWindowFBP(N, 32.0, filter_name="cosine")
    with pytest.raises(ValueError, match="window_deg"):
        SlidingWindowFBP(N, 32.0, window_deg=0.0)
    view = SlidingWindowFBP(N, 32.0, n_slices=2)
    with pytest.raises(ValueError, match=r"rows must have shape \(2, 64\)"):
        view.add(np.zeros(N), 0.0)
    assert view.n_projections == 0 and not view.result().any()
    view.add(np.ones((2, N)), 0.0)
    view.reset()
    assert view.n_projections == 0 and not view.result().any()
