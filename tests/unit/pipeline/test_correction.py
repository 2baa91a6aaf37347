"""References and flat/dark correction against the direct formulas."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.pipeline.correction.corrector import T_MAX, T_MIN, Corrector
from streamtomo.pipeline.correction.references import ReferenceSet, ReferenceTracker, RunningMean
from streamtomo.pipeline.scan import ImageKey


def _direct(p: np.ndarray, d: np.ndarray, f: np.ndarray) -> np.ndarray:
    t = (p.astype(np.float64) - d) / (f - d)
    return -np.log(np.clip(t, T_MIN, T_MAX))


@pytest.fixture
def frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    dark = rng.normal(100, 3, (8, 32)).astype(np.float32)
    flat = rng.normal(20000, 500, (8, 32)).astype(np.float32)
    proj = rng.integers(200, 30000, (8, 32)).astype(np.uint16)
    return dark, flat, proj


def test_exact_matches_direct_formula(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    dark, flat, proj = frames
    out = Corrector(dark, flat).correct(proj)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _direct(proj, dark, flat), rtol=1e-5, atol=1e-6)


def test_row_subset(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    dark, flat, proj = frames
    rows = np.array([1, 5])
    out = Corrector(dark, flat).correct(proj[rows], rows)
    np.testing.assert_allclose(out, _direct(proj, dark, flat)[rows], rtol=1e-5, atol=1e-6)


def test_lut_matches_within_dark_rounding(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    dark, flat, proj = frames
    corrector = Corrector(dark, flat)
    lut = corrector.correct_fast(proj)
    # Rounding the dark moves p - dark by <= 0.5 counts: |d(-log)| <= 0.5 / (p - dark).
    bound = 0.5 / (proj.astype(np.float64) - dark - 0.5) + 1e-5
    assert np.all(np.abs(lut - _direct(proj, dark, flat)) <= bound)


def test_guarded_denominator_and_clipping() -> None:
    dark = np.full((1, 4), 100.0, np.float32)
    flat = np.array([[100.0, 50.0, np.nan, 1000.0]], np.float32)  # dead, inverted, NaN, good
    proj = np.array([[500, 500, 500, 50]], np.uint16)  # last one below the dark
    corrector = Corrector(dark, flat)
    out = corrector.correct(proj)
    assert corrector.bad_pixels.tolist() == [[True, True, True, False]]
    assert out[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert out[0, 3] == pytest.approx(-np.log(T_MIN), rel=1e-5)
    assert np.isfinite(corrector.correct_fast(proj)).all()


def test_wrong_shape_is_a_clear_error(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    dark, flat, _ = frames
    with pytest.raises(ValueError, match="does not match references"):
        Corrector(dark, flat).correct(np.zeros((3, 3), np.uint16))


def test_uncorrect_inverts_correct(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    dark, flat, proj = frames
    corrector = Corrector(dark, flat)
    np.testing.assert_allclose(corrector.uncorrect(corrector.correct(proj)), proj, rtol=1e-4)


def test_running_mean_and_shape_check() -> None:
    mean = RunningMean()
    for value in (1, 2, 6):
        mean.add(np.full((2, 2), value, np.uint16))
    assert mean.mean() is not None and np.all(mean.mean() == 3.0)
    with pytest.raises(ValueError, match="shape"):
        mean.add(np.zeros((3, 3)))


def test_batches_replace_and_flats_after_interpolate() -> None:
    tracker = ReferenceTracker()
    ones = np.ones((2, 3), np.float32)
    tracker.add(ImageKey.DARK, 0, 0 * ones)
    tracker.add(ImageKey.FLAT, 1, 100 * ones)
    first = tracker.close_batch()
    assert first is not None and float(first.flat[0, 0]) == 100
    # The version is a digest of the content: the same frames give the same version
    # (in any order), other frames another one.
    again = ReferenceTracker()
    again.add(ImageKey.FLAT, 1, 100 * ones)
    again.add(ImageKey.DARK, 0, 0 * ones)
    same = again.close_batch()
    assert same is not None and same.version == first.version > 0
    tracker.note_projection(2)
    tracker.add(ImageKey.FLAT, 3, 200 * ones)  # mid-scan batch: replaces for what follows
    second = tracker.close_batch()
    assert second is not None and float(second.flat[0, 0]) == 200 and float(second.dark[0, 0]) == 0
    assert second.version != first.version
    tracker.note_projection(10)
    tracker.add(ImageKey.FLAT, 11, 300 * ones)
    final = tracker.close_batch(scan_ended=True)
    assert final is not None and final.flat_after is not None
    # before_index 3, after_index 11: frame 7 is halfway.
    assert float(final.flat_for(7)[0, 0]) == pytest.approx(250.0)
    roundtrip = ReferenceSet.from_bytes(final.to_bytes())
    assert roundtrip.version == final.version and np.array_equal(roundtrip.flat_for(7), final.flat_for(7))


def test_darks_alone_wait_for_flats() -> None:
    tracker = ReferenceTracker()
    tracker.add(ImageKey.DARK, 0, np.zeros((1, 2)))
    assert tracker.close_batch() is None and tracker.batch_open
    tracker.add(ImageKey.FLAT, 5, np.ones((1, 2)))
    assert tracker.close_batch() is not None
