"""Chunk planning without a server: copies of any strided view, bitwise diffs, merged boxes."""

from __future__ import annotations

import numpy as np

from streamtomo.hsds_bridge.chunk_plan import (
    UNKNOWN,
    ZEROS,
    ChunkCopy,
    bounding_box,
    capture_node,
    changed_box,
    copy_chunk,
    merge_boxes,
    select_param,
)
from streamtomo.hsds_bridge.domain import Domain, DomainDataset


def test_bounding_box_matches_argwhere() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5,), (4, 6), (3, 4, 5), (2, 3, 4, 5)]:
        for _ in range(100):
            ne = np.zeros(shape, bool)
            for _ in range(int(rng.integers(0, 4))):
                ne[tuple(int(rng.integers(0, n)) for n in shape)] = True
            box = bounding_box(ne)
            if not ne.any():
                assert box is None
                continue
            idx = np.argwhere(ne)
            assert box == (idx.min(0).tolist(), (idx.max(0) + 1).tolist())


def test_one_projection_becomes_one_request() -> None:
    """16 dirty sinogram chunks, one new angle each: one PUT of that angle's rows."""
    rows, angles, cols, block = 64, 32, 8, 16
    new = np.zeros((rows, angles, cols), np.float32)
    new[:, 5, :] = 1.0
    chunks = []
    for r in range(0, rows, block):
        index = (r // block, 0, 0)
        chunks.append(ChunkCopy("/s", index, (r, 0, 0), new[r : r + block, 0:block, :].copy(), 0))
    boxes = [b for c in chunks if (b := changed_box(c, ZEROS)) is not None]
    assert len(boxes) == rows // block
    merged = merge_boxes(boxes, 1 << 20)
    assert len(merged) == 1
    assert (merged[0].lo, merged[0].hi) == ((0, 5, 0), (rows, 6, cols))
    np.testing.assert_array_equal(merged[0].data, new[:, 5:6, :])
    # unchanged against its own copy: nothing to send; NaN compares equal bitwise
    same = new[0:block, 0:block, :].copy()
    same[0, 0, 0] = np.nan
    assert changed_box(ChunkCopy("/s", (0, 0, 0), (0, 0, 0), same, 0), same.copy()) is None


def test_chunk_copies_of_strided_views_are_c_ordered_values() -> None:
    """A transposed angle-major sinogram and a reversed, stepped view: the copy holds the
    view's values in C order and the wire dtype, whatever the memory layout."""
    angles, rows, cols = 6, 8, 5
    storage = np.arange(angles * rows * cols, dtype=">f8").reshape(angles, rows, cols)
    domain = Domain("/strided.h5")
    sino = domain.create_dataset("/sino", storage.transpose(1, 0, 2), chunks=(4, 4, cols), share=True)
    backing = np.arange(40, dtype=np.int32).reshape(4, 10)
    stepped = domain.create_dataset("/stepped", backing[::-1, ::3], chunks=(3, 2), share=True)
    for ds in (sino, stepped):
        node = capture_node(ds)
        assert node.dtype is not None and node.dtype.byteorder in ("<", "=", "|")
        for index in np.ndindex(*ds.chunk_grid()):
            copy = copy_chunk(ds, node, index)
            assert isinstance(copy.data, np.ndarray) and copy.data.flags.c_contiguous
            np.testing.assert_array_equal(copy.data, ds.array[ds.chunk_selection(index)])
            box = changed_box(copy, UNKNOWN)
            assert box is not None and box.data.tobytes() == copy.data.tobytes()
    # one angle changed through the storage: the box is exactly that angle's rows of the chunk
    node = capture_node(sino)
    before = copy_chunk(sino, node, (0, 1, 0))
    storage[5, :, :] += 1
    after = copy_chunk(sino, node, (0, 1, 0))
    assert isinstance(before.data, np.ndarray)
    box = changed_box(after, before.data)
    assert box is not None
    assert select_param(box.lo, box.hi) == f"[0:4,5:6,0:{cols}]"


def test_a_chunk_copy_has_zeros_where_the_writer_says_nothing_is_written_yet() -> None:
    by_angle = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5) + 1.0
    ds = DomainDataset("/s", by_angle.transpose(1, 0, 2), chunks=(2, 2, 5))
    unfilled = np.array([False, True, False, True])
    ds.unwritten = unfilled[np.newaxis, :, np.newaxis]
    node = capture_node(ds)
    expected = by_angle.transpose(1, 0, 2).copy()
    expected[:, unfilled] = 0.0
    for index in np.ndindex(*ds.chunk_grid()):
        copied = copy_chunk(ds, node, index)
        np.testing.assert_array_equal(copied.data, expected[ds.chunk_selection(index)])
    assert np.all(by_angle > 0)  # the memory itself is left as it is
