"""Reconstruction backends behind one registry.

>>> from streamtomo.pipeline.reconstruction.backends import get_backend
>>> slices = get_backend("default").reconstruct(sinograms, angles_deg, center)  # doctest: +SKIP

Every backend takes (K, A, C) float32 sinograms (-log transmission, pixel units)
or one (A, C) sinogram, angles in degrees, the rotation axis column (0-based)
and a filter from :data:`streamtomo.pipeline.reconstruction.filters.FILTER_NAMES`, and returns (K, N, N)
(or (N, N)) float32 slices of attenuation per pixel in the geometry and scale
of :func:`streamtomo.pipeline.reconstruction.fbp.fbp`. Optional libraries are imported only inside a
backend's ``reconstruct``; importing this package costs nothing.

Names: ``default`` (``fourier`` when ducc0 is installed, else ``direct``),
``fourier`` (ours, NUFFT), ``direct`` (pixel-driven FBP, the live kernel),
``tomopy-gridrec``, ``tomopy-fbp``, ``astra`` (CPU FBP), ``skimage`` (iradon).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol, runtime_checkable

import numpy.typing as npt

from streamtomo.pipeline.reconstruction.backends.common import (
    AngularCoverageWarning,
    FloatArray,
    angular_coverage,
    coverage_warnings_logged,
)

__all__ = [
    "BACKEND_NAMES",
    "AngularCoverageWarning",
    "BackendNotInstalledError",
    "ReconBackend",
    "angular_coverage",
    "available_backends",
    "coverage_warnings_logged",
    "get_backend",
    "installed_backends",
    "reconstruct",
]


@runtime_checkable
class ReconBackend(Protocol):
    name: str

    def reconstruct(
        self,
        sinograms: npt.ArrayLike,
        angles_deg: npt.ArrayLike,
        center: float,
        filter_name: str = "ramp",
        slice_size: int | None = None,
    ) -> FloatArray: ...


class BackendNotInstalledError(ImportError):
    """A known backend whose library is missing; the message says what to install."""


# name -> (module to import for it, what to install); "" needs nothing optional.
_REQUIREMENTS: dict[str, tuple[str, str]] = {
    "fourier": ("ducc0", "pip install ducc0"),
    "direct": ("", ""),
    "tomopy-gridrec": ("tomopy", "conda install -c conda-forge tomopy (tomopy is not on PyPI)"),
    "tomopy-fbp": ("tomopy", "conda install -c conda-forge tomopy (tomopy is not on PyPI)"),
    "astra": ("astra", "pip install astra-toolbox"),
    "skimage": ("skimage", "pip install scikit-image"),
}
BACKEND_NAMES: tuple[str, ...] = ("default", *_REQUIREMENTS)


def available_backends() -> tuple[str, ...]:
    """Every backend name the registry knows, installed or not."""
    return BACKEND_NAMES


def _installed(name: str) -> bool:
    module = _REQUIREMENTS[name][0]
    return not module or importlib.util.find_spec(module) is not None


def installed_backends() -> tuple[str, ...]:
    """The names whose libraries can be imported here (``default`` always)."""
    return ("default", *(name for name in _REQUIREMENTS if _installed(name)))


def resolve_name(name: str) -> str:
    """Canonical backend name (``default`` resolved); ``ValueError`` listing the names."""
    canonical = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if canonical not in BACKEND_NAMES:
        raise ValueError(f"unknown reconstruction backend {name!r}; available: {', '.join(BACKEND_NAMES)}")
    if canonical == "default":
        return "fourier" if _installed("fourier") else "direct"
    return str(canonical)


def get_backend(name: str = "default") -> ReconBackend:
    """The backend called ``name``.

    ``ValueError`` for an unknown name (listing the known ones);
    :class:`BackendNotInstalledError` for a known one whose library is missing.
    """
    canonical = resolve_name(name)
    if not _installed(canonical):
        raise BackendNotInstalledError(
            f"reconstruction backend {canonical!r} needs {_REQUIREMENTS[canonical][0]!r}, which is not installed: "
            f"{_REQUIREMENTS[canonical][1]}; installed backends: {', '.join(installed_backends())}"
        )
    if canonical == "fourier":
        from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend

        return FourierBackend()
    if canonical == "direct":
        from streamtomo.pipeline.reconstruction.backends.direct import DirectBackend

        return DirectBackend()
    if canonical == "astra":
        from streamtomo.pipeline.reconstruction.backends.astra_backend import AstraBackend

        return AstraBackend()
    if canonical == "skimage":
        from streamtomo.pipeline.reconstruction.backends.skimage_backend import SkimageBackend

        return SkimageBackend()
    from streamtomo.pipeline.reconstruction.backends.tomopy_backend import TomopyBackend

    return TomopyBackend(canonical.removeprefix("tomopy-"))


def reconstruct(
    sinograms: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    center: float,
    filter_name: str = "ramp",
    slice_size: int | None = None,
    *,
    backend: str = "default",
) -> FloatArray:
    """``get_backend(backend).reconstruct(...)``: the end-of-scan volume in one call."""
    return get_backend(backend).reconstruct(sinograms, angles_deg, center, filter_name, slice_size)
