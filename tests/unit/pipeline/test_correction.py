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


# -- dead and saturated pixels ------------------------------------------------------------


def _scene(cols: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dark, flat, a smooth projection (uint16) and its exact -log."""
    dark = np.full((3, cols), 100.0, np.float32)
    flat = np.full((3, cols), 20100.0, np.float32)
    transmission = 0.3 + 0.4 * np.sin(np.linspace(0, np.pi, cols))[None, :] * np.ones((3, 1))
    proj = np.rint(100 + 20000 * transmission).astype(np.uint16)
    return dark, flat, proj, -np.log(transmission).astype(np.float32)


@pytest.mark.parametrize("fast", [True, False])
def test_dead_and_saturated_pixels_take_their_row_neighbours_median(fast: bool) -> None:
    dark, flat, proj, truth = _scene()
    proj[:, 10] = 0  # a dead column
    proj[:, 11] = 0  # and its neighbour
    proj[1, 30] = 65535  # saturated (the uint16 maximum)
    corrector = Corrector(dark, flat, repair=True)
    out, repaired = corrector.correct_counted(proj, fast=fast)
    assert repaired == 3 + 3 + 1
    # Without repair these are -log(T_MIN) = 13.8 and a negative attenuation; the
    # median of neighbours on this slope is within 0.03 of the truth.
    np.testing.assert_allclose(out, truth, atol=0.03)
    # The median of two valid neighbours on each side, skipping the other dead column.
    expected = np.median(out[0, [8, 9, 12, 13]])
    assert out[0, 10] == pytest.approx(expected, abs=1e-6)
    assert out[0, 11] == pytest.approx(expected, abs=1e-6)
    plain = Corrector(dark, flat).correct_counted(proj, fast=fast)
    assert plain[1] == 0 and plain[0][0, 10] == pytest.approx(-np.log(T_MIN), rel=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_pixels_dead_in_the_references_are_repaired_in_every_frame(fast: bool) -> None:
    dark, flat, proj, truth = _scene()
    flat[:, 5] = dark[:, 5]  # does not respond to light
    flat[2, 20] = 150.0  # barely: 50 counts above the dark where the others have 20000
    flat[0, 40] = 65535.0  # saturated in the flats
    rows = np.array([0, 2])
    corrector = Corrector(dark, flat, repair=True)
    assert corrector.repair_mask(65535.0).sum() == 3 + 1 + 1
    out, repaired = corrector.correct_counted(proj[rows], rows, fast=fast)
    assert repaired == 2 + 1 + 1
    np.testing.assert_allclose(out, truth[rows], atol=0.03)


def test_a_configured_saturation_level_and_float_frames() -> None:
    dark, flat, proj, truth = _scene()
    frame = proj.astype(np.float32)
    frame[0, 7] = np.nan
    frame[2, 33] = 0.0
    proj16 = proj.copy()
    proj16[1, 3] = 21000  # above a 20500 level: saturated for this detector (flats are at 20100)
    corrector = Corrector(dark, flat, repair=True, saturation_level=20500)
    out, repaired = corrector.correct_counted(frame)
    assert repaired == 2
    np.testing.assert_allclose(out, truth, atol=0.03)
    fast, fast_repaired = corrector.correct_counted(proj16)
    assert fast_repaired == 1
    exact, exact_repaired = corrector.correct_counted(proj16, fast=False)
    assert exact_repaired == fast_repaired
    np.testing.assert_allclose(fast, exact, atol=1e-3)
    np.testing.assert_allclose(fast, truth, atol=0.03)


def test_a_row_without_valid_neighbours_gets_zero() -> None:
    dark = np.full((1, 4), 100.0, np.float32)
    flat = np.full((1, 4), 1000.0, np.float32)
    out, repaired = Corrector(dark, flat, repair=True).correct_counted(np.zeros((1, 4), np.uint16))
    assert repaired == 4
    assert out.tolist() == [[0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("saturation", [None, 60000])
def test_the_table_path_clips_as_float64_bounds_would(saturation: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamtomo.pipeline.correction.kernel import lut_correct
    from streamtomo.pipeline.numba_runtime import load_numba, numba_available

    if numba_available():  # the parallel variant below, whatever this machine's thread count
        monkeypatch.setattr(load_numba().config, "NUMBA_NUM_THREADS", 2)

    rng = np.random.default_rng(5)
    shape = (16, 700)  # the kernel's parallel variant from PARALLEL_MIN_ELEMENTS on: both tried below
    dark_int = rng.integers(90, 110, shape).astype(np.int32)
    offset = int(dark_int.max())
    table = np.log(np.maximum(np.arange(-offset, 65536, dtype=np.float64), 1e-3)).astype(np.float32)
    log_denominator = rng.uniform(-3.0, 16.0, shape).astype(np.float32)
    frame = rng.integers(0, 65536, shape).astype(np.uint16)  # transmissions far past both bounds
    low, high = -np.log(T_MAX), -np.log(T_MIN)
    values = (log_denominator - table[frame.astype(np.int64) - dark_int + offset]).astype(np.float32)
    wide = values.astype(np.float64)
    expected = np.where(wide < low, np.float32(low), np.where(wide > high, np.float32(high), values))
    if saturation is not None:
        expected[(frame == 0) | (frame >= saturation)] = np.nan
    assert (wide < low).any() and (wide > high).any()
    for big in (False, True):
        picked = np.tile(frame, (1, 40)) if big else frame
        args = [np.tile(a, (1, 40)) if big else a for a in (dark_int, log_denominator)]
        out, row_bad = lut_correct(picked, args[0], args[1], table, offset, low, high, saturation)
        want = np.tile(expected, (1, 40)) if big else expected
        np.testing.assert_array_equal(out, want)
        assert row_bad.tolist() == np.isnan(want).sum(axis=1).tolist()


def test_unusable_references_and_dead_projections_are_named() -> None:
    from streamtomo.pipeline.correction.corrector import unusable_projection

    dark = np.full((4, 16), 100.0, np.float32)
    flat = np.full((4, 16), 1000.0, np.float32)
    good = Corrector(dark, flat, repair=True)
    assert unusable_projection(good, 5, repaired=3, n_pixels=64) is None  # a few repaired: fine
    assert unusable_projection(good, 5, repaired=33, n_pixels=64) == (
        "dead_frame",
        "projection 5: 52% of its pixels read 0 or the saturation level, are NaN/inf or have no usable flat",
    )
    swapped = Corrector(flat, dark, repair=True)
    reason, detail = unusable_projection(swapped, 5, repaired=64, n_pixels=64) or ("", "")
    assert reason == "unusable_references" and "not above its dark in 100% of the pixels" in detail
    # Without repair nothing is counted as repaired, but the references are still judged.
    assert unusable_projection(Corrector(flat, dark), 5, repaired=0, n_pixels=64) is not None
    half = flat.copy()
    half[:2] = 50.0  # half the detector without a usable flat (a narrow beam): still used
    assert unusable_projection(Corrector(dark, half, repair=True), 5, repaired=0, n_pixels=64) is None
