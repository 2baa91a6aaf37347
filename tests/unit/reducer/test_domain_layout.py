"""The live layout's datasets as a REST reader sees them while the reducer works."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest

from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.rest_server import HdfRestServer
from streamtomo.pipeline.streaming.snapshot import ScanSnapshot
from streamtomo.reducer.domain_layout import new_domain, sinogram_chunks, update_domain
from tests.support.publisher_contract import open_file

ROWS, ANGLES, COLS, SIZE = 6, 8, 10, 10
VOLUME = "/entry/reconstruction/volume"


def _snapshot(volume: np.ndarray | None = None, done: int = 0, sinogram: np.ndarray | None = None) -> ScanSnapshot:
    sino = sinogram if sinogram is not None else np.ones((ROWS, ANGLES, COLS), np.float32)
    rows, angles, _ = sino.shape
    return ScanSnapshot(
        state="reconstructing",
        reason="",
        status={"volume_slices_done": done},
        rejected={},
        lost_frames=[],
        parameters=json.dumps({"volume": True}),
        sinogram=sino,
        dirty_slots=list(range(angles)),
        angles=np.linspace(0, 180, angles),
        frames_per_angle=np.ones(angles, np.int32),
        sinogram_rows=np.arange(rows, dtype=np.int64),
        slice_rows=np.arange(2, dtype=np.int64),
        slices_shape=(2, SIZE, SIZE),
        volume=volume,
        volume_done=done,
    )


def _publish(domain: Domain, snap: ScanSnapshot) -> None:
    with domain.lock:
        update_domain(domain, snap)


@pytest.fixture
def served() -> Iterator[tuple[Domain, HdfRestServer]]:
    domain = new_domain("/live/layout.h5")
    with HdfRestServer() as server:
        server.start(domain)
        yield domain, server


def test_volume_slices_not_done_read_as_zeros_until_they_are(served: tuple[Domain, HdfRestServer]) -> None:
    """The volume job writes slices past volume_done outside the lock: a reader of one
    mid-volume must not see it half written (nor an earlier scan's slice there)."""
    domain, server = served
    volume = np.full((ROWS, SIZE, SIZE), -1.0, np.float32)  # memory an earlier scan left
    volume[:2] = 2.0  # done
    volume[2, :4] = 3.0  # being written: half a slice
    _publish(domain, _snapshot(volume, done=2))
    with open_file(server.url, domain.name) as f:
        read = f[VOLUME][:]
    np.testing.assert_array_equal(read[:2], volume[:2])
    np.testing.assert_array_equal(read[2:], np.zeros((ROWS - 2, SIZE, SIZE), np.float32))

    volume[2:5] = 4.0
    _publish(domain, _snapshot(volume, done=5))
    with open_file(server.url, domain.name) as f:
        read = f[VOLUME][:]
    np.testing.assert_array_equal(read[:5], volume[:5])
    np.testing.assert_array_equal(read[5], np.zeros((SIZE, SIZE), np.float32))

    volume[5] = 5.0
    _publish(domain, _snapshot(volume, done=ROWS))
    with open_file(server.url, domain.name) as f:
        np.testing.assert_array_equal(f[VOLUME][:], volume)


def test_a_new_volume_of_another_size_has_chunks_within_it_and_a_new_id(served: tuple[Domain, HdfRestServer]) -> None:
    domain, server = served
    _publish(domain, _snapshot(np.ones((ROWS, SIZE, SIZE), np.float32), done=ROWS))
    with open_file(server.url, domain.name) as f:
        held = f[VOLUME]
        smaller = np.full((ROWS, 4, 4), 7.0, np.float32)  # settings changed: another slice size
        _publish(domain, _snapshot(smaller, done=ROWS))
        assert domain.dataset(VOLUME).chunks == (1, 4, 4)
        with pytest.raises(OSError, match="410"):
            held[0]
    with open_file(server.url, domain.name) as f:
        assert f[VOLUME].shape == (ROWS, 4, 4) and f[VOLUME].chunks == (1, 4, 4)
        np.testing.assert_array_equal(f[VOLUME][:], smaller)


def test_a_new_scans_sinogram_of_another_size_gets_its_own_chunks(served: tuple[Domain, HdfRestServer]) -> None:
    domain, server = served
    _publish(domain, _snapshot())
    wide = np.full((2 * ROWS, ANGLES, 3 * COLS), 2.0, np.float32)  # same angles, another detector
    _publish(domain, _snapshot(sinogram=wide))
    data = domain.dataset("/entry/sinogram/data")
    assert data.chunks == sinogram_chunks(*wide.shape)
    with open_file(server.url, domain.name) as f:
        sino = f["/entry/sinogram/data"]
        assert sino.shape == wide.shape and all(c <= n for c, n in zip(sino.chunks, sino.shape, strict=True))
        np.testing.assert_array_equal(sino[:], wide)


def test_other_slice_rows_as_many_are_labelled_with_their_rows(served: tuple[Domain, HdfRestServer]) -> None:
    """A live change of slice_rows that keeps their number: the slices were the new rows,
    and /entry/reconstruction/slice_rows (their NXdata axis) still named the old ones."""
    domain, server = served
    _publish(domain, _snapshot())
    moved = dataclasses.replace(_snapshot(), slice_rows=np.array([3, 4], dtype=np.int64), dirty_slots=[])
    before = int(domain.dataset("/entry/status/generation").array[()])
    _publish(domain, moved)
    assert int(domain.dataset("/entry/status/generation").array[()]) > before  # readers re-read
    with open_file(server.url, domain.name) as f:
        np.testing.assert_array_equal(f["/entry/reconstruction/slice_rows"][:], [3, 4])


def test_rows_placed_after_a_publish_wait_for_the_next_one(served: tuple[Domain, HdfRestServer]) -> None:
    """The sinogram dataset shares the scan's array, which fills on between publishes: a
    reader saw a slot's rows while frames_per_angle, in the same generation, said it
    was empty, and two reads of one generation differed."""
    domain, server = served
    sinogram = np.zeros((ROWS, ANGLES, COLS), np.float32)
    sinogram[:, :3] = 1.0
    counts = np.zeros(ANGLES, np.int32)
    counts[:3] = 1
    _publish(domain, dataclasses.replace(_snapshot(sinogram=sinogram), frames_per_angle=counts))
    sinogram[:, 3:5] = 2.0  # two projections placed by the scan, not published yet
    with open_file(server.url, domain.name) as f:
        read = f["/entry/sinogram/data"][:]
        published = f["/entry/sinogram/frames_per_angle"][:]
    np.testing.assert_array_equal(published, counts)
    np.testing.assert_array_equal(read[:, :3], 1.0)
    np.testing.assert_array_equal(read[:, 3:], 0.0)  # what frames_per_angle 0 says
    counts[3:5] = 1
    _publish(domain, dataclasses.replace(_snapshot(sinogram=sinogram), frames_per_angle=counts, dirty_slots=[3, 4]))
    with open_file(server.url, domain.name) as f:
        np.testing.assert_array_equal(f["/entry/sinogram/data"][:, 3:5], 2.0)


def test_the_slices_carry_their_pixel_axes_and_follow_a_new_slice_size(served: tuple[Domain, HdfRestServer]) -> None:
    """Read through h5pyd as silx and h5web read them: the slices' NXdata names y and x,
    pixels from the rotation axis, and a live slice_size change gives them its length."""
    domain, server = served
    _publish(domain, _snapshot())
    with open_file(server.url, domain.name) as f:
        group = f["/entry/reconstruction"]
        assert [str(a) for a in group.attrs["axes"]] == ["slice_rows", "y", "x"]
        for name in ("y", "x"):
            np.testing.assert_array_equal(group[name][:], np.arange(SIZE) - SIZE // 2)
            assert group[name].attrs["units"] == "pixel"
    bigger = dataclasses.replace(_snapshot(), slices_shape=(2, 15, 15), dirty_slots=[])
    _publish(domain, bigger)
    with open_file(server.url, domain.name) as f:
        np.testing.assert_array_equal(f["/entry/reconstruction/x"][:], np.arange(15) - 7)
        assert f["/entry/reconstruction/y"].shape == (15,)
