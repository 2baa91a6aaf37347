"""An NXtomo file as a scan: frames read one at a time, for ``streamtomo replay --nexus``.

NXtomo keeps the frames in ``/entry/instrument/detector/data``, their kinds in
``.../image_key`` (0 projection, 1 flat, 2 dark) and the angles in
``/entry/sample/rotation_angle``; beamlines often write the same under other names
(Diamond's DIAD: ``/entry/instrument/imaging/{data,image_key}`` and the PandA
capture ``/entry/instrument/gts_theta/value``) and through external links, some of
which dangle when only part of a beamtime was kept. The paths are therefore looked
up (or given), every dangling link is reported once as a warning, and only the three
datasets the scan needs must resolve.

The frames keep their file order and index, so flats after the projections are
interpolated by frame index as in a live scan; the kinds travel in each image header
(``kind_rule=header``) and the measured angles through the PandA stream.

An APS Data Exchange file (tomopy's tooth, APS beamlines) has no entry and no
image_key: its darks, flats and projections are datasets of their own
(``/exchange/data_dark``, ``data_white``, ``data``) and the projections' angles are
``/exchange/theta``. It streams as such a scan is taken: darks, flats, projections.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.scan import Frame, ImageKey, image_key_from_name

logger = logging.getLogger(__name__)

GRID_KEYS = ("angle_start", "angle_range", "n_projections")
# Rotation stages are named after the angle they set (theta, omega, rot_y ...).
_ANGLE_NAME = re.compile(r"theta|omega|rot|angle", re.IGNORECASE)


class NexusError(ValueError):
    """The file has no usable NXtomo scan; the message says what is missing and where."""


class NexusReadError(NexusError, OSError):
    """A frame of the file cannot be read (a chunk its filter cannot decode, a file that
    went away); the message names the file, the dataset and the frame. An ``OSError``
    too, as h5py's own: what the frames' reader (a replay, a check) lets through as one
    ends as a one-line error, not a traceback."""


@dataclass(frozen=True)
class NexusPaths:
    data: str
    image_key: str
    rotation_angle: str


def _resolves(f: Any, path: str) -> bool:
    """True when ``path`` opens (an external link to a missing file does not)."""
    try:
        f[path]
    except (KeyError, OSError, RuntimeError):
        return False
    return True


def _is_dataset(f: Any, path: str) -> bool:
    import h5py

    return _resolves(f, path) and isinstance(f[path], h5py.Dataset)


def dangling_links(f: Any) -> list[tuple[str, str]]:
    """``(path, target)`` of every external or soft link that does not resolve."""
    import h5py

    found: list[tuple[str, str]] = []

    def walk(group: Any, prefix: str) -> None:
        for name in group:
            path = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
                if not _resolves(f, path):
                    target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
                    found.append((path, target))
            elif isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
                walk(group[name], path)

    walk(f, "")
    return found


def _nx_class(obj: Any) -> str:
    value = obj.attrs.get("NX_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(f: Any) -> list[str]:
    return [f"/{name}" for name in f if name.startswith("entry") and _resolves(f, f"/{name}")]


def find_paths(
    f: Any, data: str | None = None, image_key: str | None = None, rotation_angle: str | None = None
) -> NexusPaths:
    """The scan's datasets: the given paths, else the first that resolves of
    NXtomo's standard places and the NXdetector/NXpositioner groups of each entry."""
    import h5py

    for path in (data, image_key, rotation_angle):
        if path is not None and not _is_dataset(f, path):
            raise NexusError(f"{path} is not a dataset that can be read in {f.filename}")
    for entry in _entries(f):
        if data is not None and image_key is not None:
            break
        detectors = [f"{entry}/instrument/detector"]
        instrument = f.get(f"{entry}/instrument")
        if isinstance(instrument, h5py.Group):
            for name in instrument:
                path = f"{entry}/instrument/{name}"
                if (
                    _resolves(f, path)
                    and isinstance(instrument[name], h5py.Group)
                    and _nx_class(instrument[name]) == "NXdetector"
                ):
                    detectors.append(path)
        for det in dict.fromkeys(detectors):
            # A detector whose frames dangle (DIAD's EtherCAT) is skipped, not fatal.
            if _is_dataset(f, f"{det}/data") and _is_dataset(f, f"{det}/image_key"):
                data = data or f"{det}/data"
                image_key = image_key or f"{det}/image_key"
                break
    if data is None or image_key is None:
        raise NexusError(
            f"no readable detector data with image_key in {f.filename}; name them with --nexus-data and --nexus-keys"
        )
    if f[data].ndim != 3:
        raise NexusError(f"{data} has shape {f[data].shape}; expected (frames, rows, columns)")
    n = f[data].shape[0]
    if rotation_angle is None:
        rotation_angle = _find_angles(f, n)
    if rotation_angle is None:
        raise NexusError(f"no readable rotation angles of length {n} in {f.filename}; name them with --nexus-angles")
    return NexusPaths(data, image_key, rotation_angle)


def _find_angles(f: Any, n: int) -> str | None:
    import h5py

    candidates: list[str] = []
    for entry in _entries(f):
        candidates += [f"{entry}/sample/rotation_angle", f"{entry}/data/rotation_angle"]
        instrument = f.get(f"{entry}/instrument")
        if isinstance(instrument, h5py.Group):
            for name in instrument:
                path = f"{entry}/instrument/{name}"
                # Measured positions ('value'), not the demands ('value_set').
                if (
                    _ANGLE_NAME.search(name)
                    and _resolves(f, path)
                    and isinstance(instrument[name], h5py.Group)
                    and _nx_class(instrument[name]) == "NXpositioner"
                ):
                    candidates.append(f"{path}/value")
    for path in candidates:
        if _is_dataset(f, path) and f[path].shape == (n,):
            return path
    return None


FULL_TURN = 360.0


@dataclass(frozen=True)
class ScanGrid:
    angle_start: float
    angle_range: float
    n_projections: int


def derive_grid(angles: npt.NDArray[np.float64]) -> ScanGrid:
    """The slots of evenly spaced projection angles: from the smallest, one step per
    projection (``step = (max - min) / (n - 1)``), so the last angle has a slot too;
    where projections are missing, one per typical step (:func:`_slot_positions`).

    A whole turn: a grid within half a step of 360 degrees is exactly 360 (it came out
    a hair over, 360.00000000000006, and the scan was refused for an angle_range it
    never set), and a turn whose last projection is the first one's angle again
    (0..360 inclusive) has one slot fewer: the last shares the first's (slots of a
    whole turn are taken modulo the turn)."""
    n = int(angles.size)
    if n == 0:
        raise NexusError("the file has no projections (image_key 0)")
    if not np.all(np.isfinite(angles)):
        raise NexusError("some projection angles are not finite")
    low, high = float(angles.min()), float(angles.max())
    if n == 1:
        return ScanGrid(low, 180.0, n)
    if high == low:
        # A grid made up for them (180 degrees in n steps) put every projection in slot
        # 0, and check said "ok": the angle path named no rotation (image_key, say).
        raise NexusError(
            f"all {n} projections have the same angle ({low:g}): the file's rotation angles are not "
            "these (give their dataset with --nexus-angles)"
        )
    span = high - low
    if n < MIN_PROJECTIONS_FOR_GAPS:
        slots, fitted = n, span / (n - 1)
    else:
        ordered = np.sort(angles)
        slot_of = _slot_positions(ordered)
        slots = int(slot_of[-1]) + 1
        # Whether the turn is closed, by the step fitted to every angle: the ends alone
        # jitter (an encoder read mid-exposure), and 0.03 degrees at each end of a turn
        # of 0.1-degree steps read as a turn whose last projection is the first again.
        fitted = float(np.polyfit(slot_of, ordered, 1)[0])
    step = span / (slots - 1)  # the first and last angles on slots of their own
    closed = abs((slots - 1) * fitted - FULL_TURN)  # the last projection is the first one turn on
    open_turn = abs(slots * fitted - FULL_TURN)
    if slots > 2 and closed <= fitted / 2 and closed < open_turn:
        return ScanGrid(low, FULL_TURN, slots - 1)
    if open_turn <= fitted / 2:
        return ScanGrid(low, FULL_TURN, slots)
    return ScanGrid(low, step * slots, slots)  # more than a turn: the caller says what to set


# Projections a file must have for its typical step to be told from its gaps, and the
# most of its gaps that may hold missing projections.
MIN_PROJECTIONS_FOR_GAPS = 8
MAX_GAP_FRACTION = 0.1


def _slot_positions(ordered: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each of the sorted angles' slot: one per projection, or per typical step of an
    even grid with projections missing (frames lost, a file cut) or repeated. The mean step,
    (max - min) / (n - 1), put 10 missing projections' worth of error into every slot:
    pairs 1 degree apart shared slots. One per projection where the gaps are not one
    typical step but for a few (a golden-angle scan) or the angles do not fit the
    grid (jitter beyond 0.3 step)."""
    n = int(ordered.size)
    one_each = np.arange(n, dtype=np.float64)
    gaps = np.diff(ordered)
    typical = float(np.median(gaps))
    if typical <= 0:
        return one_each
    # A gap in typical steps: 1, the next slot; 2, one projection missing; 0, the same
    # angle again (a repeated frame, a return to zero: without it the fitted step was
    # off, and a closed turn with one repeated angle read as more than a turn).
    in_steps = np.round(gaps / typical)
    irregular = np.count_nonzero(in_steps != 1)
    if irregular == 0 or irregular > MAX_GAP_FRACTION * n:
        return one_each
    # Counted in typical steps from the last, then checked against the step fitted to them.
    slot_of = np.concatenate([[0.0], np.cumsum(in_steps)])
    if slot_of[-1] + 1 > 4 * n:
        return one_each
    step, start = np.polyfit(slot_of, ordered, 1)
    residuals = (ordered - start) / step - slot_of
    if step <= 0 or np.abs(residuals).max() > 0.3:
        return one_each
    return slot_of


EXCHANGE_DATA = "/exchange/data"
EXCHANGE_THETA = "/exchange/theta"
# The Data Exchange datasets in the order a scan streams them, and their frames' kind.
EXCHANGE_PARTS = (
    ("/exchange/data_dark", ImageKey.DARK),
    ("/exchange/data_white", ImageKey.FLAT),
    (EXCHANGE_DATA, ImageKey.PROJECTION),
)


class _Stacked:
    """Frames of several (frames, rows, columns) datasets, one after the other, read one
    at a time as a single dataset's (a Data Exchange file's darks, flats, projections)."""

    def __init__(self, stacks: list[Any], name: str) -> None:
        self.stacks, self.name = stacks, name
        for stack in stacks:
            if stack.ndim != 3:
                raise NexusError(f"{stack.name} has shape {stack.shape}; expected (frames, rows, columns)")
        shapes = {tuple(stack.shape[1:]) for stack in stacks}
        if len(shapes) != 1:
            described = ", ".join(f"{stack.name} {stack.shape}" for stack in stacks)
            raise NexusError(f"the frames' datasets differ in their frames' shape: {described}")
        self.ndim = 3
        # One pixel type for the whole stream (averaged float darks beside integer
        # projections, say): the workers refuse a frame whose type changed mid-scan.
        # Numbers only: strings or compounds are refused by name as an NXtomo's are.
        others = [stack.dtype for stack in stacks if stack.dtype.kind not in "biuf"]
        self.dtype = others[0] if others else np.result_type(*(stack.dtype for stack in stacks))
        self.shape = (sum(int(stack.shape[0]) for stack in stacks), *shapes.pop())

    def __getitem__(self, index: int) -> Any:
        for stack in self.stacks:
            if index < stack.shape[0]:
                return np.asarray(stack[index]).astype(self.dtype, copy=False)
            index -= int(stack.shape[0])
        raise IndexError(index)


class NexusScan:
    """An NXtomo file (or an APS Data Exchange one) opened for streaming; :meth:`frames`
    reads one frame at a time."""

    def __init__(
        self,
        path: str | Path,
        data: str | None = None,
        image_key: str | None = None,
        rotation_angle: str | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise NexusError(f"cannot open {self.path}: {error}") from None
        try:
            dangling = dangling_links(self._file)
            if dangling:
                shown = ", ".join(f"{p} -> {t}" for p, t in dangling[:3])
                more = f" and {len(dangling) - 3} more" if len(dangling) > 3 else ""
                logger.warning(
                    "%s: %d links point to files or objects that are missing (ignored): %s%s",
                    self.path.name,
                    len(dangling),
                    shown,
                    more,
                )
            given = (data, image_key, rotation_angle) != (None, None, None)
            exchange = _is_dataset(self._file, EXCHANGE_DATA)
            try:
                self.paths = find_paths(self._file, data, image_key, rotation_angle)
            except NexusError as error:
                if not exchange:
                    raise
                if given:  # an NXtomo's paths named in a file that has none
                    raise NexusError(
                        f"{error}; {self.path} is an APS Data Exchange file ({EXCHANGE_DATA}): its kinds come from "
                        "its datasets, so leave --nexus-data, --nexus-keys and --nexus-angles out"
                    ) from None
                self._open_exchange()
            else:
                self._data = self._file[self.paths.data]
                self.keys = _whole_numbers(self._file[self.paths.image_key][()], self.paths.image_key)
                angles = self._file[self.paths.rotation_angle]
                self.angles = _in_degrees(
                    _numbers(angles[()], self.paths.rotation_angle), angles, self.paths.rotation_angle
                )
            self._check()
        except BaseException:
            self._file.close()
            raise
        logger.info(
            "%s: %d frames of %dx%d from %s, kinds from %s, angles from %s",
            self.path.name,
            self.n_frames,
            *self.frame_shape,
            self.paths.data,
            self.paths.image_key,
            self.paths.rotation_angle,
        )

    def _open_exchange(self) -> None:
        """An APS Data Exchange file (tomopy's and APS beamlines' layout): projections,
        flats and darks in datasets of their own and no image_key, the projections'
        angles in ``theta``. Streamed as such a scan is taken: darks, flats, then the
        projections in file order; the darks and flats at the first projection's angle."""
        parts = [(path, key) for path, key in EXCHANGE_PARTS if _is_dataset(self._file, path)]
        if not _is_dataset(self._file, EXCHANGE_THETA):
            raise NexusError(f"{EXCHANGE_DATA} in {self.path} has no angles: {EXCHANGE_THETA} is missing")
        stacks = [self._file[path] for path, _key in parts]
        self._data = _Stacked(stacks, " + ".join(path for path, _key in parts))
        self.paths = NexusPaths(self._data.name, "(Data Exchange: darks, flats, projections)", EXCHANGE_THETA)
        self.keys = np.concatenate(
            [np.full(stack.shape[0], int(key), np.int64) for stack, (_p, key) in zip(stacks, parts, strict=True)]
        )
        theta = self._file[EXCHANGE_THETA]
        angles = _in_degrees(_numbers(theta[()], EXCHANGE_THETA), theta, EXCHANGE_THETA).ravel()
        is_projection = self.keys == int(ImageKey.PROJECTION)
        projections = int(np.count_nonzero(is_projection))
        if angles.shape != (projections,):
            raise NexusError(
                f"{EXCHANGE_THETA} has {angles.size} angles for {projections} projections in {EXCHANGE_DATA}"
            )
        first = float(angles[0]) if angles.size else 0.0
        self.angles = np.full(self.keys.shape, first)
        self.angles[is_projection] = angles

    def _check(self) -> None:
        if self._data.ndim != 3:
            raise NexusError(f"{self.paths.data} has shape {self._data.shape}; expected (frames, rows, columns)")
        n = self._data.shape[0]
        for name, values in ((self.paths.image_key, self.keys), (self.paths.rotation_angle, self.angles)):
            if values.shape != (n,):
                raise NexusError(f"{name} has shape {values.shape}; expected ({n},) like {self.paths.data}")
        for key in np.unique(self.keys):
            try:
                image_key_from_name(int(key))  # NXtomo keys only
            except ValueError as error:
                raise NexusError(f"{self.paths.image_key} in {self.path}: {error}") from None
        # The workers take integer and floating pixels only (they refuse any other as
        # wrong_dtype), and strings or compounds cannot even be streamed.
        dtype = self._data.dtype
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise NexusError(
                f"{self.paths.data} in {self.path} holds {_dtype_text(dtype)}: the frames must be integer or "
                f"floating-point pixels"
            )

    @property
    def n_frames(self) -> int:
        return int(self._data.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self._data.shape[1]), int(self._data.shape[2])

    def projection_angles(self) -> npt.NDArray[np.float64]:
        angles: npt.NDArray[np.float64] = self.angles[self.keys == 0]
        return angles

    def grid(self) -> ScanGrid:
        return derive_grid(self.projection_angles())

    def frames(self) -> Iterator[Frame]:
        """The frames in file order, read lazily (one frame in memory at a time)."""
        for index in range(self.n_frames):
            try:
                image = np.asarray(self._data[index])
            except (OSError, RuntimeError) as error:  # h5py: a chunk its filter cannot decode, a lost file
                raise NexusReadError(f"{self.path}: cannot read frame {index} of {self.paths.data}: {error}") from None
            yield Frame(index, image_key_from_name(int(self.keys[index])), image, float(self.angles[index]))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> NexusScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dtype_text(dtype: np.dtype[Any]) -> str:
    """A dtype as a person reads it: ``|S3`` and a variable-length string's ``object``
    say little alone, so h5py's string types are named as strings."""
    import h5py

    info = h5py.check_string_dtype(dtype)
    if info is not None:
        length = "variable-length" if info.length is None else f"{info.length}-byte"
        return f"{length} strings (dtype {dtype.str})"
    return f"dtype {dtype}"


def _numbers(values: Any, name: str, kinds: str = "biuf") -> npt.NDArray[np.float64]:
    """``values`` as float64, or :class:`NexusError` (a compound, string or object dataset)."""
    array = np.asarray(values)
    if array.dtype.kind not in kinds:
        raise NexusError(f"{name} holds {array.dtype}, not numbers")
    return array.astype(np.float64)


def _whole_numbers(values: Any, name: str) -> npt.NDArray[np.int64]:
    """``values`` as int64, or :class:`NexusError`: astype would make a key of 0.4 a
    projection (0) and 1.7 a flat (1)."""
    numbers = _numbers(values, name, kinds="iuf")  # booleans are no image keys
    whole = np.isfinite(numbers) & (numbers == np.round(numbers))
    if not np.all(whole):
        bad = numbers[~whole][:3].tolist()
        raise NexusError(f"{name} holds values that are not whole numbers: {bad}")
    return numbers.astype(np.int64)


# NeXus units of an angle (NX_ANGLE) and their degrees; no attribute: degrees, as NXtomo says.
ANGLE_UNITS = {
    "deg": 1.0,
    "degree": 1.0,
    "degrees": 1.0,
    "°": 1.0,
    "rad": 180.0 / np.pi,
    "radian": 180.0 / np.pi,
    "radians": 180.0 / np.pi,
}


def _in_degrees(values: np.ndarray, dataset: Any, path: str) -> np.ndarray:
    """The angles in degrees, as their ``units`` attribute says (radians were read as
    degrees: a 180-degree scan became one of 3.1 degrees, with one warning at its end)."""
    units = dataset.attrs.get("units")
    if isinstance(units, np.ndarray) and units.size == 1:  # written as a one-element array
        units = units.reshape(-1)[0]
    if units is None:
        return values
    name = (units.decode() if isinstance(units, bytes) else str(units)).strip().lower()
    if name not in ANGLE_UNITS:
        raise NexusError(f"{path} has units {name!r}; expected one of {sorted(ANGLE_UNITS)}")
    if ANGLE_UNITS[name] != 1.0:
        logger.info("%s: angles in %s, converted to degrees", path, name)
    return values * ANGLE_UNITS[name]
