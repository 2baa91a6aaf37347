"""Flat/dark correction and -log, float32, with the divisions precomputed.

``-log((p - dark) / (flat - dark))`` with a guarded denominator: pixels whose flat is
not above the dark (dead or saturated pixels) get the value 0 and are counted, and
the transmission is clipped to ``[t_min, t_max]`` so the log stays finite.

Two paths give the same numbers up to rounding of the dark:
- exact: float arithmetic, any input dtype;
- lut (integer frames): ``log(flat - dark)`` per pixel and a table of ``log(k)`` for
  integer ``k = p - round(dark)`` replace the per-pixel division and log, which
  dominate the cost. The rounded dark shifts ``p - dark`` by at most 0.5 counts.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.correction.kernel import lut_correct
from streamtomo.pipeline.correction.references import ReferenceSet

FloatArray = npt.NDArray[np.float32]

T_MIN = 1e-6  # smallest transmission kept: -log(T_MIN) = 13.8
T_MAX = 10.0  # larger values mean a bad flat, not a sample


class Corrector:
    """Corrects frames (or rows of frames) with one dark and one flat."""

    def __init__(self, dark: FloatArray, flat: FloatArray, version: int = 0) -> None:
        if dark.shape != flat.shape:
            raise ValueError(f"dark shape {dark.shape} != flat shape {flat.shape}")
        self.version = version
        self.dark = np.ascontiguousarray(dark, dtype=np.float32)
        denominator = flat.astype(np.float32) - self.dark
        self.bad_pixels = ~(denominator > 0) | ~np.isfinite(denominator)
        self.reciprocal = np.zeros_like(denominator)
        np.divide(1.0, denominator, out=self.reciprocal, where=~self.bad_pixels)
        self._any_bad = bool(self.bad_pixels.any())
        self._lut_tables: tuple[npt.NDArray[np.int32], FloatArray, FloatArray, int] | None = None

    @classmethod
    def from_references(cls, refs: ReferenceSet, frame_index: int | None = None) -> Corrector:
        flat = refs.flat if frame_index is None else refs.flat_for(frame_index)
        return cls(refs.dark, flat, refs.version)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dark.shape)

    def _check(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None) -> None:
        expected = self.shape if rows is None else (len(rows), *self.shape[1:])
        if frame.shape != expected:
            raise ValueError(f"frame shape {frame.shape} does not match references {expected}")

    def correct(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None = None) -> FloatArray:
        """-log transmission of ``frame``; ``rows`` selects reference rows for a row subset."""
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

    def correct_fast(self, frame: npt.NDArray[np.generic], rows: npt.NDArray[np.intp] | None = None) -> FloatArray:
        """The table path for uint8/uint16 frames, the exact one otherwise."""
        if frame.dtype not in (np.uint8, np.uint16):
            return self.correct(frame, rows)
        self._check(frame, rows)
        dark_int, log_denominator, table, offset = self._lut()
        if rows is not None:
            dark_int, log_denominator = dark_int[rows], log_denominator[rows]
        out = lut_correct(frame, dark_int, log_denominator, table, offset, -math.log(T_MAX), -math.log(T_MIN))  # type: ignore[arg-type]
        bad = self.bad_pixels if rows is None else self.bad_pixels[rows]
        if self._any_bad:
            out[bad] = 0.0
        return out

    def _lut(self) -> tuple[npt.NDArray[np.int32], FloatArray, FloatArray, int]:
        if self._lut_tables is None:
            dark_int = np.rint(self.dark).astype(np.int32)
            offset = int(max(dark_int.max(), 0))
            k = np.arange(-offset, 65536 - min(int(dark_int.min()), 0), dtype=np.float64)
            # log of counts above the dark; counts at or below it are clipped by the
            # transmission floor after the subtraction anyway, so any finite small value.
            table = np.log(np.maximum(k, 1e-3)).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_denominator = np.where(self.bad_pixels, 0.0, -np.log(self.reciprocal)).astype(np.float32)
            self._lut_tables = (dark_int, log_denominator, table, offset)
        return self._lut_tables

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
