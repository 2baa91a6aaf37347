"""Scan model: what a frame is, which kind it is, and the geometry it belongs to.

Frame kinds use the NXtomo ``image_key`` convention (0 projection, 1 flat, 2 dark,
3 invalid, -1 alignment). Other tools (RECAST3D, RECASTX) order them differently:
map explicitly with :func:`image_key_from_name`, never by position.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


class ImageKey(enum.IntEnum):
    """NXtomo ``image_key`` values."""

    PROJECTION = 0
    FLAT = 1
    DARK = 2
    INVALID = 3
    ALIGNMENT = -1


_NAMES = {
    "projection": ImageKey.PROJECTION,
    "proj": ImageKey.PROJECTION,
    "flat": ImageKey.FLAT,
    "white": ImageKey.FLAT,
    "dark": ImageKey.DARK,
    "invalid": ImageKey.INVALID,
    "alignment": ImageKey.ALIGNMENT,
}


def image_key_from_name(value: str | int) -> ImageKey:
    """Map an ``image_key`` number or a kind name to :class:`ImageKey`.

    Raises ``ValueError`` naming the allowed values for anything else.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMES:
            return _NAMES[text]
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"unknown frame kind {value!r}; allowed: {sorted(_NAMES)} or "
                f"image_key numbers {[int(k) for k in ImageKey]}"
            ) from None
    # A whole number only: int() would make True a flat and 1.7 a flat, 0.9 a projection.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"image_key {value!r} is not a whole number; allowed: {[int(k) for k in ImageKey]}")
    try:
        return ImageKey(int(value))
    except ValueError:
        raise ValueError(f"unknown image_key {value!r}; allowed: {[int(k) for k in ImageKey]}") from None


@dataclass(frozen=True)
class Frame:
    """One detector frame as the pipeline sees it, whatever stream it came from.

    ``index`` is the frame's position in the scan (dranspose event number for a
    streamed scan); ``angle_deg`` is the measured rotation angle, ``None`` where no
    angle was captured (darks and flats usually have one, but it is not used).
    """

    index: int
    key: ImageKey
    data: npt.NDArray[np.generic]
    angle_deg: float | None = None


@dataclass(frozen=True)
class ScanGeometry:
    """Detector shape and rotation axis of a parallel-beam scan."""

    rows: int
    cols: int
    center: float | None = None  # rotation axis column (0-based); None: (cols-1)/2
    angles_deg: tuple[float, ...] = field(default_factory=tuple)  # expected, if known

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"detector shape must be positive, got {self.rows}x{self.cols}")
        if self.center is not None and not (0.0 <= self.center <= self.cols - 1):
            raise ValueError(f"rotation centre {self.center} lies outside the detector (allowed 0..{self.cols - 1})")

    @property
    def rotation_center(self) -> float:
        return (self.cols - 1) / 2.0 if self.center is None else float(self.center)
