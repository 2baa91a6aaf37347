"""Flat/dark correction and -log, float32, with the divisions precomputed.

``-log((p - dark) / (flat - dark))`` with a guarded denominator: pixels whose flat is
not above the dark (dead or saturated pixels) get the value 0 and are counted, and
the transmission is clipped to ``[t_min, t_max]`` so the log stays finite.

Two paths give the same numbers up to rounding of the dark:
- exact: float arithmetic, any input dtype;
- lut (integer frames): ``log(flat - dark)`` per pixel and a table of ``log(k)`` for
  integer ``k = p - round(dark)`` replace the per-pixel division and log, which
  dominate the cost. The rounded dark shifts ``p - dark`` by at most 0.5 counts.

With ``repair`` (the pipeline's ``pixel_repair``), bad pixels are not set to 0 nor
clipped to -log(T_MIN) = 13.8 but replaced, after -log, by the median of their valid
row neighbours (:func:`.kernel.repair_rows`): pixels the references mark bad (flat
not above the dark, below ``DEAD_FLAT_FRACTION`` of the median flat, or saturated in
the flat; known once per reference set) and, per frame, pixels that read 0 or the
saturation level (the dtype's maximum unless configured) or NaN/inf.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.correction.kernel import lut_correct, repair_rows
from streamtomo.pipeline.correction.references import ReferenceSet

FloatArray = npt.NDArray[np.float32]

T_MIN = 1e-6  # smallest transmission kept: -log(T_MIN) = 13.8
T_MAX = 10.0  # larger values mean a bad flat, not a sample
# A flat this far below the detector's median (flat - dark) is a dead or non-responsive
# pixel, not beam profile: its counts carry no usable transmission.
DEAD_FLAT_FRACTION = 0.05

# References whose flat is not above the dark in more than this fraction of the pixels
# give no transmission to compute (darks and flats swapped, zeros, a flat equal to the
# dark): every projection would be repaired whole, and the scan was all zeros, "finished".
MAX_UNUSABLE_REFERENCE_FRACTION = 0.5
# A projection more than this fraction of whose pixels are repaired (they read 0, the
# saturation level or NaN/inf, or have no usable flat) carries no image: the repair
# would make it up from the few pixels left. Rejected, as a frame of NaN is.
MAX_REPAIRED_FRACTION = 0.5

_LutTables = tuple[npt.NDArray[np.int32], FloatArray, FloatArray, int]


class Corrector:
    """Corrects frames (or rows of frames) with one dark and one flat."""

    def __init__(
        self,
        dark: FloatArray,
        flat: FloatArray,
        version: int = 0,
        *,
        repair: bool = False,
        saturation_level: float = 0.0,
    ) -> None:
        if dark.shape != flat.shape:
            raise ValueError(f"dark shape {dark.shape} != flat shape {flat.shape}")
        self.version = version
        self.repair = repair
        self.saturation_level = float(saturation_level)
        self.dark = np.ascontiguousarray(dark, dtype=np.float32)
        self.flat = np.asarray(flat, dtype=np.float32)
        denominator = self.flat - self.dark
        self.bad_pixels = ~(denominator > 0) | ~np.isfinite(denominator)
        self.reciprocal = np.zeros_like(denominator)
        np.divide(1.0, denominator, out=self.reciprocal, where=~self.bad_pixels)
        self._any_bad = bool(self.bad_pixels.any())
        self.unusable_fraction = float(self.bad_pixels.mean()) if self.bad_pixels.size else 0.0
        self._weak = self.bad_pixels.copy()
        if repair and not self.bad_pixels.all():
            typical = float(np.median(denominator[~self.bad_pixels]))
            self._weak |= denominator < DEAD_FLAT_FRACTION * typical
        self._masks: dict[float, npt.NDArray[np.bool_]] = {}
        self._lut_tables: dict[float | None, _LutTables] = {}

    @classmethod
    def from_references(
        cls, refs: ReferenceSet, frame_index: int | None = None, *, repair: bool = False, saturation_level: float = 0.0
    ) -> Corrector:
        flat = refs.flat if frame_index is None else refs.flat_for(frame_index)
        return cls(refs.dark, flat, refs.version, repair=repair, saturation_level=saturation_level)

    def saturation_for(self, dtype: np.dtype[np.generic]) -> float:
        """Counts at or above this are saturated: the configured level, else the dtype's maximum."""
        if self.saturation_level > 0:
            return self.saturation_level
        if np.issubdtype(dtype, np.integer):
            return float(np.iinfo(dtype).max)  # type: ignore[type-var]
        return math.inf

    def repair_mask(self, saturation: float = math.inf) -> npt.NDArray[np.bool_]:
        """Pixels the references make bad (repaired in every frame when ``repair``)."""
        mask = self._masks.get(saturation)
        if mask is None:
            mask = self._weak | (self.flat >= saturation) if math.isfinite(saturation) else self._weak
            self._masks[saturation] = mask
        return mask

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dark.shape)

    def _check(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None) -> None:
        expected = self.shape if rows is None else (len(rows), *self.shape[1:])
        if frame.shape != expected:
            raise ValueError(f"frame shape {frame.shape} does not match references {expected}")

    def correct(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None = None) -> FloatArray:
        """-log transmission of ``frame``; ``rows`` selects reference rows for a row subset."""
        return self.correct_counted(frame, rows, fast=False)[0]

    def correct_fast(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None = None) -> FloatArray:
        """The table path for uint8/uint16 frames, the exact one otherwise."""
        return self.correct_counted(frame, rows)[0]

    def correct_counted(
        self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None = None, *, fast: bool = True
    ) -> tuple[FloatArray, int]:
        """Corrected frame and how many of its pixels were repaired (0 without ``repair``).

        ``fast``: the table path for uint8/uint16 frames (the exact one otherwise).
        """
        if fast and frame.dtype in (np.uint8, np.uint16):
            return self._correct_lut(frame, rows)
        out = self._correct_exact(frame, rows)
        if not self.repair:
            return out, 0
        saturation = self.saturation_for(frame.dtype)
        bad = self.repair_mask(saturation)
        bad = bad if rows is None else bad[rows]
        bad = bad | (frame == 0) | ~np.isfinite(frame)
        if math.isfinite(saturation):
            bad |= frame >= saturation  # type: ignore[operator]
        out[bad] = np.nan
        return out, repair_rows(out, bad.sum(axis=1).astype(np.int64))

    def _correct_exact(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None) -> FloatArray:
        self._check(frame, rows)
        dark = self.dark if rows is None else self.dark[rows]
        recip = self.reciprocal if rows is None else self.reciprocal[rows]
        out: FloatArray = np.subtract(frame, dark, dtype=np.float32)
        out *= recip
        np.clip(out, T_MIN, T_MAX, out=out)
        np.log(out, out=out)
        np.negative(out, out=out)
        bad = self.bad_pixels if rows is None else self.bad_pixels[rows]
        if bad.any():
            out[bad] = 0.0
        return out

    def _correct_lut(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None) -> tuple[FloatArray, int]:
        self._check(frame, rows)
        saturation = math.ceil(self.saturation_for(frame.dtype)) if self.repair else None
        dark_int, log_denominator, table, offset = self._lut(saturation)
        if rows is not None:
            dark_int, log_denominator = dark_int[rows], log_denominator[rows]
        out, row_bad = lut_correct(
            frame,  # type: ignore[arg-type]
            dark_int,
            log_denominator,
            table,
            offset,
            -math.log(T_MAX),
            -math.log(T_MIN),
            saturation,
        )
        if self.repair:
            return out, repair_rows(out, row_bad)
        bad = self.bad_pixels if rows is None else self.bad_pixels[rows]
        if self._any_bad:
            out[bad] = 0.0
        return out, 0

    def _lut(self, saturation: int | None) -> _LutTables:
        tables = self._lut_tables.get(saturation)
        if tables is None:
            dark_int = np.rint(self.dark).astype(np.int32)
            offset = int(max(dark_int.max(), 0))
            k = np.arange(-offset, 65536 - min(int(dark_int.min()), 0), dtype=np.float64)
            # log of counts above the dark; counts at or below it are clipped by the
            # transmission floor after the subtraction anyway, so any finite small value.
            table = np.log(np.maximum(k, 1e-3)).astype(np.float32)
            # Repair: NaN marks the references' bad pixels for the kernel (it counts
            # them and repair_rows replaces them); otherwise they become 0 afterwards.
            bad = self.bad_pixels if saturation is None else self.repair_mask(float(saturation))
            with np.errstate(divide="ignore", invalid="ignore"):
                log_denominator = np.where(bad, 0.0 if saturation is None else np.nan, -np.log(self.reciprocal)).astype(
                    np.float32
                )
            tables = self._lut_tables[saturation] = (dark_int, log_denominator, table, offset)
        return tables

    def uncorrect(self, values: FloatArray, rows: npt.NDArray[np.intp] | None = None) -> FloatArray:
        """Invert :meth:`correct` (for re-correcting with other references).

        Exact except where the transmission was clipped or the pixel is bad.
        """
        dark = self.dark if rows is None else self.dark[rows]
        recip = self.reciprocal if rows is None else self.reciprocal[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            span = np.where(recip > 0, 1.0 / recip, 0.0)
        raw: FloatArray = (dark + span * np.exp(-values)).astype(np.float32)
        return raw


def unusable_projection(corrector: Corrector, index: int, repaired: int, n_pixels: int) -> tuple[str, str] | None:
    """Why projection ``index``, corrected by ``corrector`` with ``repaired`` of its
    ``n_pixels`` pixels repaired, has no image to give (a rejection's reason and
    detail), or None. Without ``pixel_repair`` nothing is repaired, so only the
    references are judged."""
    if corrector.unusable_fraction > MAX_UNUSABLE_REFERENCE_FRACTION:
        return (
            "unusable_references",
            f"projection {index}: its flat is not above its dark in {corrector.unusable_fraction:.0%} of the pixels "
            "(darks and flats swapped, or flats without beam?)",
        )
    if n_pixels and repaired > MAX_REPAIRED_FRACTION * n_pixels:
        return (
            "dead_frame",
            f"projection {index}: {repaired / n_pixels:.0%} of its pixels read 0 or the saturation level, "
            "are NaN/inf or have no usable flat",
        )
    return None
