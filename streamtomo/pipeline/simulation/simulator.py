"""A simulated parallel-beam scan of the 3D Shepp-Logan phantom, as detector counts.

Darks and flats first (and flats after, if asked), then projections with Poisson
noise: ``counts = Poisson(flat * exp(-mu * L)) + dark``. The attenuation scale puts
the darkest ray at about 10 % transmission, like a well-chosen real scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.simulation.phantom import shepp_logan_3d
from streamtomo.pipeline.simulation.projector import memory_limit_bytes, project_shepp_logan_3d, projection_peak_bytes

GOLDEN_ANGLE_FRACTION = (np.sqrt(5.0) - 1.0) / 2.0


class SimulationTooLarge(ConfigError):
    """A simulated scan too large for this machine's memory; the message names the sizes
    and their options (``--angles``, ``--rows``, ``--cols``). A :class:`ConfigError`: the
    CLI reports it in one line with exit status 2, as any size the pipeline refuses."""


@dataclass(frozen=True)
class SimulationSpec:
    rows: int = 16
    cols: int = 128
    angles: int = 180
    n_darks: int = 10
    n_flats: int = 10
    n_flats_after: int = 0
    angle_range: float = 180.0
    order: str = "sequential"  # or "golden": golden-ratio interlaced angles
    flat_counts: float = 20000.0
    dark_counts: float = 100.0
    min_transmission: float = 0.1
    center_offset: float = 0.0  # rotation axis offset from the detector middle, px
    phantom_size: int = 0  # phantom width in pixels; 0: the detector width
    oversample: int = 1  # rays per detector pixel side (area integration, less aliasing)
    noise: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 8 or self.angles < 2:
            raise ValueError(f"need rows >= 1, cols >= 8, angles >= 2; got {self.rows}, {self.cols}, {self.angles}")
        if self.order not in ("sequential", "golden"):
            raise ValueError(f"order {self.order!r} is not 'sequential' or 'golden'")
        # Here, when the spec is made: the CLI makes it before the output folder (it was
        # numpy's MemoryError from the projector, after the folder had been made).
        needed, limit = self.memory_bytes(), memory_limit_bytes()
        if needed > limit:
            from streamtomo.pipeline.streaming.memory_budget import size_text

            raise SimulationTooLarge(
                f"simulating {self.angles} angles (--angles) of {self.rows} rows (--rows) x {self.cols} columns "
                f"(--cols) needs about {size_text(needed)} of memory, more than this machine's "
                f"{size_text(limit)}: give fewer angles, rows or columns"
            )

    def memory_bytes(self) -> int:
        """The memory the simulation needs at its peak: the projections of every angle."""
        return projection_peak_bytes(self.angles, self.rows, self.cols)

    def config(self, **overrides: object) -> PipelineConfig:
        """The pipeline configuration that matches this scan."""
        values: dict[str, object] = {
            "n_darks_before": self.n_darks,
            "n_flats_before": self.n_flats,
            "n_projections": self.angles,
            "n_flats_after": self.n_flats_after,
            "angle_range": self.angle_range,
            "center": f"{(self.cols - 1) / 2 + self.center_offset}",
            "slice_size": self.phantom_size or self.cols,
        }
        values.update(overrides)
        return PipelineConfig.from_mapping(values)

    def slot_angles(self) -> npt.NDArray[np.float64]:
        return self.angle_range * np.arange(self.angles) / self.angles

    def acquisition_angles(self) -> npt.NDArray[np.float64]:
        """Angles in acquisition order."""
        slots = self.slot_angles()
        if self.order == "sequential":
            return slots
        order = np.argsort((np.arange(self.angles) * GOLDEN_ANGLE_FRACTION) % 1.0, kind="stable")
        # Golden-ratio sampling visits slots in an interlaced order; each slot once.
        return slots[np.argsort(order, kind="stable")]


class ScanSimulator:
    def __init__(self, spec: SimulationSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        self._rng = rng
        # A smooth beam profile, so flat-field correction has something to correct.
        y, x = np.mgrid[0 : spec.rows, 0 : spec.cols]
        profile = 1.0 + 0.1 * np.cos(2 * np.pi * x / spec.cols) * np.cos(np.pi * y / max(spec.rows, 2))
        self.flat_field = (spec.flat_counts * profile).astype(np.float64)
        # Line integrals in pixel units, all slots; scaled to the target contrast.
        integrals = project_shepp_logan_3d(
            spec.rows,
            spec.cols,
            spec.slot_angles(),
            self.axis,
            phantom_size=self.phantom_size,
            oversample=spec.oversample,
        )
        self.line_integrals = np.maximum(integrals, 0.0)
        peak = float(self.line_integrals.max()) or 1.0
        self.mu_scale = -np.log(spec.min_transmission) / peak

    @property
    def axis(self) -> float:
        return (self.spec.cols - 1) / 2.0 + self.spec.center_offset

    @property
    def phantom_size(self) -> int:
        return self.spec.phantom_size or self.spec.cols

    def ground_truth(self) -> npt.NDArray[np.float32]:
        """The phantom's attenuation per pixel at each detector row: (rows, n, n) for a
        phantom of n pixels (reconstruct with ``slice_size`` n to compare)."""
        n = self.phantom_size
        # Detector row k images the phantom plane n//2 + (k - rows//2) (square pixels).
        planes = n // 2 - self.spec.rows // 2 + np.arange(self.spec.rows)
        volume = shepp_logan_3d(n, oversample=max(self.spec.oversample, 1), planes=np.clip(planes, 0, n - 1))
        truth: npt.NDArray[np.float32] = (volume * self.mu_scale).astype(np.float32)
        return truth

    def _counts(self, mean: npt.NDArray[np.float64]) -> npt.NDArray[np.uint16]:
        if self.spec.noise:
            values = self._rng.poisson(mean).astype(np.float64)
            values += self._rng.normal(0.0, 2.0, mean.shape)  # read noise
        else:
            values = mean
        return np.clip(np.rint(values), 0, 65535).astype(np.uint16)

    def _dark(self) -> npt.NDArray[np.uint16]:
        return self._counts(np.full(self.flat_field.shape, self.spec.dark_counts))

    def frames(self) -> Iterator[Frame]:
        spec = self.spec
        index = 0
        for _ in range(spec.n_darks):
            yield Frame(index, ImageKey.DARK, self._dark(), 0.0)
            index += 1
        for _ in range(spec.n_flats):
            yield Frame(index, ImageKey.FLAT, self._counts(self.flat_field + spec.dark_counts), 0.0)
            index += 1
        slot_angles = spec.slot_angles()
        for angle in spec.acquisition_angles():
            slot = int(np.argmin(np.abs(slot_angles - angle)))
            transmission = np.exp(-self.mu_scale * self.line_integrals[slot])
            yield Frame(
                index,
                ImageKey.PROJECTION,
                self._counts(self.flat_field * transmission + spec.dark_counts),
                float(angle),
            )
            index += 1
        for _ in range(spec.n_flats_after):
            yield Frame(index, ImageKey.FLAT, self._counts(self.flat_field + spec.dark_counts), 0.0)
            index += 1
