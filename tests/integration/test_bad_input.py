"""Bad input through the real dranspose replay: counted, logged once, scan completes,
and no good frame is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dranspose.event import InternalWorkerMessage, StreamData

from streamtomo.pipeline.formats import stins
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from tests.support.replay_helpers import record, run_to_end

pytestmark = pytest.mark.slow

SPEC = SimulationSpec(rows=4, cols=48, angles=60, seed=2)


def _with_parts(msg: InternalWorkerMessage, parts: list[bytes]) -> InternalWorkerMessage:
    stream = next(iter(msg.streams))
    return InternalWorkerMessage(
        event_number=msg.event_number, streams={stream: StreamData(typ=msg.streams[stream].typ, frames=parts)}
    )


def _parts(msg: InternalWorkerMessage) -> list[bytes]:
    stream = next(iter(msg.streams))
    return [bytes(getattr(p, "bytes", p)) for p in msg.streams[stream].frames]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("good")
    return run_to_end(record(ScanSimulator(SPEC).frames(), out, SPEC.config()), SPEC.config(), workers=2)


def test_bad_frames_are_counted_and_good_ones_kept(tmp_path: Path, reference: dict[str, np.ndarray]) -> None:
    frames = list(ScanSimulator(SPEC).frames())
    first_projection = SPEC.n_darks + SPEC.n_flats
    # Extra frames with their own bad content, appended after the scan (frame indices
    # past the layout are 'invalid' by the counts rule, so give them a header image_key).
    extra = [
        Frame(len(frames), ImageKey.PROJECTION, frames[first_projection].data.astype(np.float32) * np.nan, 12.0),
    ]
    corrupt_events = {
        first_projection + 3: "truncated",
        first_projection + 5: "badjson",
        first_projection + 7: "shape",
        first_projection + 9: "dtype",
        first_projection + 11: "nokind",
    }
    missing_angle_event = first_projection + 13

    def mutate(
        det: InternalWorkerMessage, ang: InternalWorkerMessage
    ) -> tuple[InternalWorkerMessage | None, InternalWorkerMessage | None]:
        event = det.event_number
        kind = corrupt_events.get(event - 1)  # event e holds frame e-1
        if kind == "truncated":
            head, data = _parts(det)
            return _with_parts(det, [head, data[:-10]]), ang
        if kind == "badjson":
            return _with_parts(det, [b"{not json", _parts(det)[1]]), ang
        if kind == "shape":
            return _with_parts(det, stins.encode_image(event, event - 1, np.zeros((3, 3), np.uint16), image_key=0)), ang
        if kind == "dtype":
            head, data = _parts(det)
            doc = json.loads(head)
            doc["type"] = "complex64"
            doc["shape"] = [SPEC.rows, SPEC.cols // 4]
            return _with_parts(det, [json.dumps(doc).encode(), data]), ang
        if kind == "nokind":
            head, data = _parts(det)
            doc = json.loads(head)
            doc["image_key"] = 7
            return _with_parts(det, [json.dumps(doc).encode(), data]), ang
        if event - 1 == missing_angle_event:
            return det, _with_parts(ang, [b"not a number\n"])
        return det, ang

    config = SPEC.config(kind_rule="header")
    recordings = record([*frames, *extra], tmp_path, config, mutate)
    arrays = run_to_end(recordings, config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    assert rejected.get("corrupt_frame", 0) == 2, rejected  # truncated + bad JSON
    assert rejected.get("wrong_shape", 0) == 1, rejected
    # complex64 decodes, and is refused; so is the all-NaN extra frame, float32 in a
    # uint16 scan (a float detector's NaN frames: the next test)
    assert rejected.get("wrong_dtype", 0) == 2, rejected
    assert rejected.get("unknown_kind", 0) == 1, rejected
    # With header kinds there is no nominal angle to fall back on: counted, slot left empty.
    assert rejected.get("missing_angle", 0) == 1, rejected
    assert int(arrays["/entry/status/frames_rejected"]) == sum(rejected.values())
    assert arrays["/entry/status/state"][()] == "finished"
    # Every good projection is in the sinogram: the bad ones left exactly their slots empty.
    counts = arrays["/entry/sinogram/frames_per_angle"]
    bad_slots = [e - first_projection for e in [*corrupt_events, missing_angle_event]]
    assert set(np.flatnonzero(counts == 0)) == set(bad_slots)
    good = [s for s in range(SPEC.angles) if s not in bad_slots]
    np.testing.assert_array_equal(arrays["/entry/sinogram/data"][:, good], reference["/entry/sinogram/data"][:, good])


def test_a_float_detectors_frames_of_nan_are_rejected_as_non_finite(tmp_path: Path) -> None:
    frames = [Frame(f.index, f.key, f.data.astype(np.float32), f.angle_deg) for f in ScanSimulator(SPEC).frames()]
    first_projection = SPEC.n_darks + SPEC.n_flats
    for index in (SPEC.n_darks, first_projection + 9):  # a flat, a projection
        f = frames[index]
        frames[index] = Frame(f.index, f.key, f.data * np.nan, f.angle_deg)
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(frames, tmp_path, config), config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    assert rejected == {"non_finite": 2}
    assert set(np.flatnonzero(arrays["/entry/sinogram/frames_per_angle"] == 0)) == {9}


def test_projections_before_any_flat_wait_for_the_flats(tmp_path: Path, reference: dict[str, np.ndarray]) -> None:
    frames = list(ScanSimulator(SPEC).frames())
    refs, projections = frames[: SPEC.n_darks + SPEC.n_flats], frames[SPEC.n_darks + SPEC.n_flats :]
    reordered = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(projections + refs)]
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(reordered, tmp_path, config), config, workers=2)
    assert int(arrays["/entry/status/projections"]) == SPEC.angles
    np.testing.assert_allclose(arrays["/entry/sinogram/data"], reference["/entry/sinogram/data"], atol=1e-6)


def test_scan_without_flats_reports_it(tmp_path: Path) -> None:
    frames = [f for f in ScanSimulator(SPEC).frames() if f.key != ImageKey.FLAT]
    frames = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(frames)]
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(frames, tmp_path, config), config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    assert rejected == {"no_references": SPEC.angles}
    # Nothing was reduced: the scan says it failed, and why.
    assert arrays["/entry/status/state"][()] == "failed"
    assert "no projection was reduced" in str(arrays["/entry/status/reason"][()])
    assert "no_references" in str(arrays["/entry/status/reason"][()])


def _swapped_references(frames: list[Frame]) -> list[Frame]:
    darks = [f for f in frames if f.key == ImageKey.DARK]
    flats = [f for f in frames if f.key == ImageKey.FLAT]
    swapped = {d.index: f.data for d, f in zip(darks, flats, strict=True)}
    swapped.update({f.index: d.data for d, f in zip(darks, flats, strict=True)})
    return [Frame(f.index, f.key, swapped.get(f.index, f.data), f.angle_deg) for f in frames]


def _projections_first(frames: list[Frame]) -> list[Frame]:
    """Projections before the darks and flats: the workers have no references, and the
    reducer corrects them (its own path) once the references come."""
    refs = [f for f in frames if f.key != ImageKey.PROJECTION]
    projections = [f for f in frames if f.key == ImageKey.PROJECTION]
    return [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(projections + refs)]


@pytest.mark.parametrize("corrected_by", ["workers", "reducer"])
def test_darks_and_flats_swapped_reject_every_projection_and_fail_the_scan(tmp_path: Path, corrected_by: str) -> None:
    """Every pixel was 'repaired' whole: an all-zero sinogram and volume, 'finished',
    nothing rejected, exit 0."""
    frames = _swapped_references(list(ScanSimulator(SPEC).frames()))
    if corrected_by == "reducer":
        frames = _projections_first(frames)
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(frames, tmp_path, config), config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    assert rejected == {"unusable_references": SPEC.angles}
    assert arrays["/entry/status/state"][()] == "failed"
    assert "unusable_references" in str(arrays["/entry/status/reason"][()])


@pytest.mark.parametrize("corrected_by", ["workers", "reducer"])
def test_a_projection_of_zeros_or_saturated_is_rejected_and_the_rest_kept(
    tmp_path: Path, reference: dict[str, np.ndarray], corrected_by: str
) -> None:
    """It was accepted, its pixels all 'repaired' from nothing: a row of zeros in the
    sinogram, counted only in pixels_repaired."""
    frames = list(ScanSimulator(SPEC).frames())
    first_projection = SPEC.n_darks + SPEC.n_flats
    dead, saturated = 7, 31  # angle slots
    for slot, value in ((dead, 0), (saturated, np.iinfo(np.uint16).max)):
        f = frames[first_projection + slot]
        frames[first_projection + slot] = Frame(f.index, f.key, np.full_like(f.data, value), f.angle_deg)
    if corrected_by == "reducer":
        frames = _projections_first(frames)
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(frames, tmp_path, config), config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    assert rejected == {"dead_frame": 2}
    assert arrays["/entry/status/state"][()] == "finished"
    counts = arrays["/entry/sinogram/frames_per_angle"]
    assert set(np.flatnonzero(counts == 0)) == {dead, saturated}
    good = [s for s in range(SPEC.angles) if s not in (dead, saturated)]
    np.testing.assert_allclose(
        arrays["/entry/sinogram/data"][:, good], reference["/entry/sinogram/data"][:, good], atol=1e-6
    )


def test_frames_of_another_pixel_type_are_rejected_as_wrong_dtype(
    tmp_path: Path, reference: dict[str, np.ndarray]
) -> None:
    """A projection sent as float32 scaled 0..1 was corrected with the uint16 references
    (its slot 11x off), and a tail of uint8 frames became zeros: neither was counted."""
    frames = list(ScanSimulator(SPEC).frames())
    first_projection = SPEC.n_darks + SPEC.n_flats
    scaled, tail = 20, 50  # angle slots: one float frame, and uint8 from slot 50 on
    f = frames[first_projection + scaled]
    frames[first_projection + scaled] = Frame(f.index, f.key, (f.data / 65535.0).astype(np.float32), f.angle_deg)
    for slot in range(tail, SPEC.angles):
        f = frames[first_projection + slot]
        frames[first_projection + slot] = Frame(f.index, f.key, (f.data >> 8).astype(np.uint8), f.angle_deg)
    config = SPEC.config(kind_rule="header")
    arrays = run_to_end(record(frames, tmp_path, config), config, workers=2)
    rejected = json.loads(str(arrays["/entry/status/rejected"][()]))
    # The uint8 tail's slots leave a 30-degree wedge: the scan says so too.
    assert rejected == {"wrong_dtype": 1 + SPEC.angles - tail, "limited_angle_coverage": 1}
    counts = arrays["/entry/sinogram/frames_per_angle"]
    bad = {scaled, *range(tail, SPEC.angles)}
    assert set(np.flatnonzero(counts == 0)) == bad
    good = [s for s in range(SPEC.angles) if s not in bad]
    np.testing.assert_allclose(
        arrays["/entry/sinogram/data"][:, good], reference["/entry/sinogram/data"][:, good], atol=1e-6
    )
