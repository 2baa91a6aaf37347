"""Refuse a scan that cannot fit, at its first frame, instead of dying mid-scan.

The reducer holds what it publishes: the sinogram (rows x angles x cols float32),
the live slices, the centre sweep, the window blocks and, at the end, the volume;
and, for a volume with zinger removal or Paganin phase retrieval, which work on whole
projections, a prepared copy of the sinogram while the volume is made
(:func:`held_bytes`). When their sum exceeds the budget (``memory_budget_gb``; default half of this
machine's memory) the scan is refused with the figures and what to change: fewer
``rows`` or a coarser ``bin``.
"""

from __future__ import annotations

import os

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import DetectorInfo
from streamtomo.pipeline.streaming.live_geometry import AUTO_WINDOW_BLOCKS, LiveSliceGeometry

FLOAT32 = 4


class MemoryBudgetError(ValueError):
    """The scan's published arrays do not fit the reducer's memory budget."""


def machine_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def budget_bytes(config: PipelineConfig) -> int:
    if config.memory_budget_gb > 0:
        return int(config.memory_budget_gb * 1e9)
    return machine_memory_bytes() // 2


def published_bytes(config: PipelineConfig, detector: DetectorInfo, geometry: LiveSliceGeometry) -> dict[str, int]:
    """Bytes of each array the reducer publishes for this scan."""
    rows, cols, size = len(geometry.sinogram_rows), detector.cols, geometry.size
    slice_bytes = size * size * FLOAT32
    out = {
        "sinogram": rows * config.angle_slots() * cols * FLOAT32,
        "live slices": len(geometry.slice_rows) * slice_bytes,
        "centre sweep": len(geometry.sweep_centers) * slice_bytes,
    }
    if geometry.window:
        blocks = -(-geometry.window_frames // geometry.window_block) + 1
        out["window blocks"] = min(blocks, AUTO_WINDOW_BLOCKS * 4) * len(geometry.slice_rows) * slice_bytes
    if config.volume:
        out["volume"] = rows * slice_bytes
    return out


def size_text(nbytes: int | float) -> str:
    """Bytes in the unit that shows them: a small budget read "0.00 GB" against "0.00 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} bytes"


def held_bytes(config: PipelineConfig, detector: DetectorInfo, geometry: LiveSliceGeometry) -> dict[str, int]:
    """What the reducer holds at most: the published arrays, plus the volume job's
    prepared copy of the sinogram where it makes one (streamtomo.reducer.volume_job):
    a scan admitted without it ran out of memory at its very end (2048^2 x 1800 angles:
    30 GB more)."""
    out = published_bytes(config, detector, geometry)
    if config.volume and (config.zinger_removal or config.paganin_delta_beta > 0):
        out["volume preparation"] = out["sinogram"]
    return out


def check_memory_budget(config: PipelineConfig, detector: DetectorInfo, geometry: LiveSliceGeometry) -> int:
    """Total bytes held (:func:`held_bytes`); raises :class:`MemoryBudgetError` when over budget."""
    parts = held_bytes(config, detector, geometry)
    total, budget = sum(parts.values()), budget_bytes(config)
    if total > budget:
        detail = ", ".join(f"{name} {size_text(size)}" for name, size in parts.items())
        raise MemoryBudgetError(
            f"this scan needs {size_text(total)} ({detail}) for {len(geometry.sinogram_rows)} sinogram rows x "
            f"{config.angle_slots()} angles x {detector.cols} columns (bin {config.bin}), more than the reducer's "
            f"budget of {size_text(budget)} (memory_budget_gb); choose fewer rows (e.g. rows=a:b), "
            f"bin=2 or bin=4, volume=false"
            + (", no zinger_removal or paganin_delta_beta" if "volume preparation" in parts else "")
            + ", or a larger budget"
        )
    return total
