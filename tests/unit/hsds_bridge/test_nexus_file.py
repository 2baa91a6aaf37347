"""The final NeXus file: equal to the domain, written a chunk at a time, never seen half written."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.nexus_file import write_nexus
from streamtomo.reducer.domain_layout import new_domain, sinogram_chunks

h5py = pytest.importorskip("h5py")


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def assert_file_equals_domain(path: Path, domain: Domain) -> None:
    """Every group, dataset (values, dtype, chunks) and attribute of ``domain`` is in the file as it is there."""
    with h5py.File(path, "r") as f:
        for node in domain.walk():
            target = f[node.path]
            assert set(target.attrs) == set(node.attrs), node.path
            for key, value in node.attrs.items():
                got = target.attrs[key]
                if isinstance(value, list) and value and isinstance(value[0], str):
                    assert [_text(v) for v in got] == value, (node.path, key)
                else:
                    assert np.array_equal(got, value), (node.path, key)
            if isinstance(node, DomainGroup):
                assert isinstance(target, h5py.Group), node.path
                assert set(target) == set(node.children), node.path
                continue
            assert isinstance(node, DomainDataset) and isinstance(target, h5py.Dataset), node.path
            if node.is_string:
                assert _text(target[()]) == str(node.array[()]), node.path
                continue
            assert target.dtype == node.dtype and target.shape == node.shape, node.path
            assert np.array_equal(target[()], node.array), node.path
            if node.array.ndim and node.array.size:
                assert target.chunks == node.chunks, node.path


def domain_with_sinogram(rows: int, angles: int, cols: int) -> tuple[Domain, np.ndarray]:
    """A status-only domain plus a sinogram stored as the reducer stores it: angle-major, seen as (rows, angles, cols)."""
    domain = new_domain("/tmp/test-final.h5")
    by_angle = np.random.default_rng(0).random((angles, rows, cols), dtype=np.float32)
    domain.create_group("/entry/sinogram", {"NX_class": "NXdata", "signal": "data", "axes": ["detector_row", "."]})
    domain.create_dataset(
        "/entry/sinogram/data",
        by_angle.transpose(1, 0, 2),
        share=True,
        chunks=sinogram_chunks(rows, angles, cols),
        attrs={"long_name": "-log transmission"},
    )
    domain.create_dataset("/entry/sinogram/rotation_angle", np.linspace(0, 180, angles), attrs={"units": "degree"})
    # Chunks that do not divide the shape: the last block of each axis is partial.
    domain.create_dataset("/entry/volume", np.arange(7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3), chunks=(2, 5, 3))
    return domain, by_angle


# One chunk of the sinogram (16 x 16 x 24) is 24 KiB: every dataset above 256 bytes written a chunk at a
# time, and the small volume copied whole.
@pytest.mark.parametrize("block_bytes", [256, 2 * 16 * 16 * 24 * 4])
def test_the_file_equals_the_domain_at_every_block_boundary(tmp_path: Path, block_bytes: int) -> None:
    domain, _ = domain_with_sinogram(rows=37, angles=45, cols=24)
    # Blocks far smaller than the arrays: many blocks, and partial ones at each edge.
    path = write_nexus(domain, tmp_path / "out" / "scan.nxs", block_bytes=block_bytes)
    assert path == tmp_path / "out" / "scan.nxs"
    assert_file_equals_domain(path, domain)
    assert sorted(p.name for p in path.parent.iterdir()) == ["scan.nxs"]  # no temporary file left


def test_writing_a_large_sinogram_needs_one_block_of_memory_not_a_copy_of_it(tmp_path: Path) -> None:
    """The sinogram is a transposed view: written whole, h5py would first make a C-ordered copy (32 MiB here)."""
    domain, by_angle = domain_with_sinogram(rows=64, angles=256, cols=512)
    block = 1 << 20
    assert by_angle.nbytes == 32 * block
    tracemalloc.start()
    try:
        write_nexus(domain, tmp_path / "scan.nxs", block_bytes=block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * block, f"{peak / block:.1f} blocks of extra memory"
    assert_file_equals_domain(tmp_path / "scan.nxs", domain)


def test_a_failed_write_leaves_neither_the_file_nor_a_partial_one(tmp_path: Path) -> None:
    domain, _ = domain_with_sinogram(rows=8, angles=8, cols=8)
    domain.create_dataset("/entry/bad", np.array(["2020-01-01"], dtype="datetime64[D]"))  # h5py cannot store it
    with pytest.raises(TypeError):
        write_nexus(domain, tmp_path / "scan.nxs")
    assert list(tmp_path.iterdir()) == []


def test_settling_written_chunks_to_disk_keeps_the_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fdatasync + dropping the pages every few chunks (every 64 MiB in a real scan)."""
    from streamtomo.hsds_bridge import nexus_file

    calls: list[int] = []
    real = nexus_file.os.fdatasync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(nexus_file, "SETTLE_BYTES", 3 * 16 * 16 * 24 * 4)
    monkeypatch.setattr(nexus_file.os, "fdatasync", counted)
    domain, _ = domain_with_sinogram(rows=37, angles=45, cols=24)
    write_nexus(domain, tmp_path / "scan.nxs", block_bytes=256)
    assert len(calls) >= 3
    assert_file_equals_domain(tmp_path / "scan.nxs", domain)
