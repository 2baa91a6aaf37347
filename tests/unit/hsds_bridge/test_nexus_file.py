"""The final NeXus file: equal to the domain, written a chunk at a time, never seen half written."""

from __future__ import annotations

import mmap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.nexus_file import write_nexus
from streamtomo.reducer.domain_layout import FINAL_FILE_OUTCOME, new_domain, sinogram_chunks

h5py = pytest.importorskip("h5py")


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# What a reducer's final file adds to its domain (streamtomo.reducer.final_metadata):
# checked by check_final_metadata, so the comparison with the domain leaves them out.
FINAL_ONLY_MEMBERS = {"/entry": {"end_time", "entry_identifier", "volume"}}
FINAL_ONLY_ATTRS = {"/entry": {"default"}, "/entry/reconstruction/volume": {"slices_done", "note"}}


def assert_file_equals_domain(path: Path, domain: Domain, final: bool = False) -> None:
    """Every group, dataset (values, dtype, chunks) and attribute of ``domain`` is in the
    file as it is there; ``final``: a reducer's final file, with what it adds."""
    with h5py.File(path, "r") as f:
        if final:
            check_final_metadata(f)
        # Made once the file is written (the domain is read after): not in the file.
        live_only = {f"/entry/status/{name}" for name in FINAL_FILE_OUTCOME} if final else set()
        republished = {"/entry/status/last_update", "/entry/status/generation"} if final else set()
        for node in domain.walk():
            if node.path in live_only:  # the writing of the file itself: not in it
                assert node.path not in f, node.path
                continue
            target = f[node.path]
            expected = dict(node.attrs)
            if isinstance(node, DomainGroup) and "default" in expected and expected["default"] not in node.children:
                del expected["default"]  # a default that leads nowhere is left out (tested below)
            got_attrs = set(target.attrs)
            if final:
                for key in FINAL_ONLY_ATTRS.get(node.path, set()):
                    expected.pop(key, None)
                    got_attrs.discard(key)
            assert got_attrs == set(expected), node.path
            for key, value in expected.items():
                got = target.attrs[key]
                if isinstance(value, list) and value and isinstance(value[0], str):
                    assert [_text(v) for v in got] == value, (node.path, key)
                else:
                    assert np.array_equal(got, value), (node.path, key)
            if isinstance(node, DomainGroup):
                assert isinstance(target, h5py.Group), node.path
                extra = FINAL_ONLY_MEMBERS.get(node.path, set()) if final else set()
                members = {name for name in node.children if f"{node.path}/{name}" not in live_only}
                assert set(target) - extra == members, node.path
                continue
            assert isinstance(node, DomainDataset) and isinstance(target, h5py.Dataset), node.path
            if node.is_string:
                assert _text(target[()]) == str(node.array[()]), node.path
                continue
            assert target.dtype == node.dtype and target.shape == node.shape, node.path
            if node.path in republished:
                # The reducer publishes the file's outcome (live only) once it is written.
                assert target[()] <= node.array[()], node.path
                continue
            # As readers see it: what the writer has not written yet reads as zeros.
            assert np.array_equal(target[()], node.copy_selection(())), node.path
            if node.array.ndim and node.array.size:
                assert target.chunks == node.chunks, node.path


def check_final_metadata(f: Any) -> None:
    """What a final file says about itself: its scan, when it ended, and the volume as its
    default plot once every slice of it is done (else how many are)."""
    import datetime

    entry = f["entry"]
    assert _text(entry["entry_identifier"][()])
    ended = datetime.datetime.fromisoformat(_text(entry["end_time"][()]))
    started = datetime.datetime.fromisoformat(_text(entry["start_time"][()]))
    assert ended.tzinfo is not None and started <= ended
    assert _text(entry["program_name"][()]) == "streamtomo" and "version" in entry["program_name"].attrs
    volume = entry.get("reconstruction/volume")
    if volume is None:
        assert "volume" not in entry
        return
    done = int(entry["status/volume_slices_done"][()])
    if done == volume.shape[0]:
        assert _text(entry.attrs["default"]) == "volume"
        group = entry["volume"]
        assert _text(group.attrs["signal"]) == "data" and group["data"].id == volume.id  # a link, not a copy
        assert list(group["detector_row"][()]) == list(volume.attrs["detector_rows"])
    else:
        assert "volume" not in entry and int(volume.attrs["slices_done"]) == done


def domain_with_sinogram(rows: int, angles: int, cols: int, *, mapped: bool = False) -> tuple[Domain, np.ndarray]:
    """A status-only domain plus a sinogram stored as the reducer stores it: angle-major,
    seen as (rows, angles, cols); ``mapped``: in page-aligned memory of its own, as the
    reducer's array pool has it."""
    domain = new_domain("/tmp/test-final.h5")
    by_angle = np.random.default_rng(0).random((angles, rows, cols), dtype=np.float32)
    if mapped:
        memory = mmap.mmap(-1, by_angle.nbytes)
        np.frombuffer(memory, dtype=np.float32)[:] = by_angle.reshape(-1)
        by_angle = np.frombuffer(memory, dtype=np.float32).reshape(by_angle.shape)
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


@pytest.mark.parametrize("block_bytes", [256, 1 << 30])
def test_angles_the_scan_has_not_written_are_zeros_in_the_file(tmp_path: Path, block_bytes: int) -> None:
    """A sinogram in memory reused from an earlier scan: its unfilled angles hold that
    scan's rows, and the file (chunk by chunk, or whole) has zeros there."""
    domain, by_angle = domain_with_sinogram(rows=37, angles=45, cols=24)
    unfilled = np.zeros(45, dtype=bool)
    unfilled[[0, 7, 16, 44]] = True
    domain.dataset("/entry/sinogram/data").unwritten = unfilled[np.newaxis, :, np.newaxis]
    path = write_nexus(domain, tmp_path / "scan.nxs", block_bytes=block_bytes)
    expected = by_angle.transpose(1, 0, 2).copy()
    expected[:, unfilled] = 0.0
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/entry/sinogram/data"][()], expected)
    assert np.all(by_angle[unfilled] > 0)  # the memory is left as it is: only reads see zeros


@pytest.mark.parametrize("block_bytes", [256, 1 << 30], ids=["chunk by chunk", "whole"])
@pytest.mark.parametrize("done", [0, 1, 3, 7])
def test_a_dataset_stopped_part_way_is_written_as_far_as_it_holds_values(
    tmp_path: Path, block_bytes: int, done: int
) -> None:
    """``leading``: only the first entries along the first axis are written, chunks cut
    to fit (chunks of 2 rows, 1 and 3 rows kept); none: the dataset is left out."""
    domain, by_angle = domain_with_sinogram(rows=37, angles=45, cols=24)
    volume = domain.dataset("/entry/volume").array.copy()
    unfilled = np.zeros((37, 1, 1), dtype=bool)
    unfilled[[1, 30]] = True  # an unwritten mask along the cut axis is cut with it
    domain.dataset("/entry/sinogram/data").unwritten = unfilled
    leading = {"/entry/volume": done, "/entry/sinogram/data": 31}
    path = write_nexus(domain, tmp_path / "scan.nxs", block_bytes=block_bytes, leading=leading)
    expected = by_angle.transpose(1, 0, 2)[:31].copy()
    expected[[1, 30]] = 0.0
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/entry/sinogram/data"][()], expected)
        if done == 0:
            assert "volume" not in f["/entry"]
        else:
            np.testing.assert_array_equal(f["/entry/volume"][()], volume[:done])
        np.testing.assert_array_equal(f["/entry/sinogram/rotation_angle"][()], np.linspace(0, 180, 45))
    assert domain.dataset("/entry/volume").shape == (7, 5, 3)  # the domain is left as it is


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
    """Through the page cache: fdatasync + dropping the pages every few chunks (every 64 MiB in a real scan)."""
    from streamtomo.hsds_bridge import raw_chunks

    calls: list[int] = []
    real = raw_chunks.os.fdatasync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    # One chunk's bytes: chunks that follow each other in the file go up to 4 in one write
    # (1024 runs of 16 x 16 x 24 float32), and the settler looks after each write.
    monkeypatch.setattr(raw_chunks, "SETTLE_BYTES", 16 * 16 * 24 * 4)
    monkeypatch.setattr(raw_chunks.os, "fdatasync", counted)
    domain, _ = domain_with_sinogram(rows=37, angles=45, cols=24)
    write_nexus(domain, tmp_path / "scan.nxs", block_bytes=256, direct=False)
    assert len(calls) >= 4  # at least three settles and the close
    assert_file_equals_domain(tmp_path / "scan.nxs", domain)


@pytest.mark.parametrize("direct", [True, False], ids=["past the page cache", "through it"])
@pytest.mark.parametrize("cols", [24, 25], ids=["whole blocks", "chunks with a tail"])
def test_chunks_land_where_hdf5_put_them(tmp_path: Path, direct: bool, cols: int) -> None:
    """Chunks of 16 x 16 x 25 float32 (25600 bytes) end 1024 bytes past a 4 KiB block:
    the block part goes directly, the tail through the page cache, and HDF5 reads it whole."""
    domain, by_angle = domain_with_sinogram(rows=37, angles=45, cols=cols)
    write_nexus(domain, tmp_path / "scan.nxs", block_bytes=256, direct=direct)
    assert_file_equals_domain(tmp_path / "scan.nxs", domain)
    with h5py.File(tmp_path / "scan.nxs", "r") as f:
        assert np.array_equal(f["/entry/sinogram/data"][:, 44], by_angle[44])  # an edge chunk


@pytest.mark.parametrize("direct", [True, False], ids=["past the page cache", "through it"])
def test_sinogram_rows_of_whole_blocks_go_to_the_file_from_where_they_lie(
    tmp_path: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1024 columns: each row of each angle is one 4 KiB block of the reducer's array,
    and every sinogram chunk, edge chunks and unfilled angles included, is written from
    there (no gathered copy) and reads back as the domain has it."""
    from streamtomo.hsds_bridge.raw_chunks import RawChunkWriter

    domain, by_angle = domain_with_sinogram(rows=37, angles=45, cols=1024, mapped=True)
    unfilled = np.zeros(45, dtype=bool)
    unfilled[[0, 17, 44]] = True
    domain.dataset("/entry/sinogram/data").unwritten = unfilled[np.newaxis, :, np.newaxis]
    offsets: list[int] = []
    write_runs = RawChunkWriter.write_runs

    def recorded(writer: RawChunkWriter, runs: Any, offset: int, keep: object = None) -> None:
        offsets.append(offset)
        write_runs(writer, runs, offset, keep)

    monkeypatch.setattr(RawChunkWriter, "write_runs", recorded)
    write_nexus(domain, tmp_path / "scan.nxs", block_bytes=256, direct=direct)
    assert_file_equals_domain(tmp_path / "scan.nxs", domain)
    with h5py.File(tmp_path / "scan.nxs", "r") as f:
        sinogram = f["/entry/sinogram/data"]
        chunks = {sinogram.id.get_chunk_info(i).byte_offset for i in range(sinogram.id.get_num_chunks())}
        assert len(chunks) == 3 * 3  # (37 rows, 45 angles) in chunks of 16 x 16
        assert chunks <= set(offsets)
        assert not sinogram[:, 17].any() and np.array_equal(sinogram[:, 43], by_angle[43])


def test_the_writer_goes_past_the_page_cache_where_the_file_system_allows(tmp_path: Path) -> None:
    from streamtomo.hsds_bridge import raw_chunks

    path = tmp_path / "probe"
    path.write_bytes(bytes(3 * raw_chunks.BLOCK))
    buffer = raw_chunks.ChunkBuffer((raw_chunks.BLOCK + 100,), np.uint8)
    buffer.array[:] = np.arange(buffer.array.size) % 251
    writer = raw_chunks.RawChunkWriter(path)
    try:
        writer.write(buffer.view(), raw_chunks.BLOCK)
    finally:
        writer.close()
    data = np.frombuffer(path.read_bytes(), np.uint8)
    assert np.array_equal(data[raw_chunks.BLOCK : 2 * raw_chunks.BLOCK + 100], buffer.array)
    assert not data[: raw_chunks.BLOCK].any() and not data[2 * raw_chunks.BLOCK + 100 :].any()
    assert writer.direct_bytes + writer.buffered_bytes == raw_chunks.BLOCK + 100
    if writer.direct_bytes == 0:
        pytest.skip(f"{tmp_path} takes no O_DIRECT writes: the page-cache path was used")
    assert writer.direct_bytes == raw_chunks.BLOCK


@pytest.mark.parametrize("one_pass", [True, False])
def test_chunk_offsets_are_hdf5s_own_and_unallocated_chunks_are_refused(tmp_path: Path, one_pass: bool) -> None:
    """One pass over HDF5's chunk index where it has one, a lookup per chunk where not:
    the same offsets as HDF5 gives per chunk."""
    import h5py

    from streamtomo.hsds_bridge import raw_chunks

    shape, chunks = (5, 7, 24), (2, 3, 24)
    with h5py.File(tmp_path / "offsets.h5", "w") as f:
        early = f.create_dataset("early", shape=shape, dtype="f4", chunks=chunks, dcpl=raw_chunks.early_chunks(chunks))
        late = f.create_dataset("late", shape=shape, dtype="f4", chunks=chunks)
        starts = [tuple(i * c for i, c in zip(index, chunks, strict=True)) for index in np.ndindex(3, 3, 1)]
        expected = [int(early.id.get_chunk_info_by_coord(start).byte_offset) for start in starts]
        if one_pass:
            assert hasattr(early.id, "chunk_iter")  # this h5py/HDF5 has the one pass
        else:  # the datasets as an h5py or HDF5 without H5Dchunk_iter has them
            early, late = (_without_chunk_iter(dataset) for dataset in (early, late))
        assert raw_chunks.chunk_offsets(early, starts) == expected and len(set(expected)) == len(starts)
        with pytest.raises(OSError, match="not allocated"):
            raw_chunks.chunk_offsets(late, starts)


def _without_chunk_iter(dataset: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        name=dataset.name, id=SimpleNamespace(get_chunk_info_by_coord=dataset.id.get_chunk_info_by_coord)
    )


def test_a_default_that_leads_nowhere_is_left_out_and_one_that_leads_somewhere_kept(tmp_path: Path) -> None:
    """A scan that failed before its first projection pointed /entry's default at a
    reconstruction it never had: silx's default plot was None."""
    domain = new_domain("/tmp/test-defaults.h5")
    assert domain.get("/entry").attrs["default"] == "reconstruction"  # not there yet
    path = write_nexus(domain, tmp_path / "failed.nxs")
    with h5py.File(path, "r") as f:
        assert _text(f.attrs["default"]) == "entry"  # the root's leads to /entry: kept
        assert "default" not in f["entry"].attrs


def test_partials_a_dead_writer_left_are_removed_and_no_others(tmp_path: Path) -> None:
    """A reducer killed while writing left `.scan-X.nxs.PID-TID.part` (up to a whole
    scan's size), and nothing ever removed it."""
    import os
    import subprocess
    import sys
    import time

    from streamtomo.hsds_bridge.nexus_file import ORPHAN_AGE_S, WRITER_TOKEN, remove_orphaned_partials

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that ran and ended
    old = time.time() - 2 * ORPHAN_AGE_S
    other_token = "0" * 8 if WRITER_TOKEN != "0" * 8 else "1" * 8
    files = {
        "orphan": tmp_path / f".scan-a.nxs.{dead_pid}-{WRITER_TOKEN}-1.part",
        "fresh": tmp_path / f".scan-b.nxs.{dead_pid}-{WRITER_TOKEN}-1.part",  # just written: another machine's?
        "running": tmp_path / f".scan-c.nxs.{os.getpid()}-{WRITER_TOKEN}-1.part",  # this process writes it
        # Under this process's number, another process's token: a container's process is
        # number 1 after every restart, and its earlier life left this.
        "earlier life": tmp_path / f".scan-e.nxs.{os.getpid()}-{other_token}-1.part",
        "earlier version": tmp_path / f".scan-f.nxs.{dead_pid}-1.part",  # named without a token
        "final": tmp_path / "scan-d.nxs",
        "other": tmp_path / ".notes.part",
    }
    for name, path in files.items():
        path.write_bytes(b"x")
        if name != "fresh":
            os.utime(path, (old, old))
    gone_ones = ("orphan", "earlier life", "earlier version")
    assert sorted(remove_orphaned_partials(tmp_path)) == sorted(files[k] for k in gone_ones)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for k, p in files.items() if k not in gone_ones)
    assert remove_orphaned_partials(tmp_path / "none") == []  # no folder: nothing to do
