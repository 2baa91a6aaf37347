"""A chunk's bytes written from where they lie in memory: runs in the file's order."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from streamtomo.hsds_bridge import raw_chunks
from streamtomo.hsds_bridge.raw_chunks import BLOCK, ChunkBuffer, DatasetRuns, chunk_runs, pwritev_all


def _bytes_of(runs: np.ndarray) -> bytes:
    return b"".join(ctypes.string_at(int(base), int(length)) for base, length in runs)


def _chunk_as_hdf5_stores_it(
    array: np.ndarray, selection: tuple[slice, ...], chunks: tuple[int, ...], unwritten: np.ndarray | None
) -> bytes:
    """The reference: the chunk copied in C order, zeros where unwritten, padded to its full shape."""
    block = np.zeros(chunks, dtype=array.dtype)
    inside = tuple(slice(0, s.stop - s.start) for s in selection)
    block[inside] = array[selection]
    if unwritten is not None:
        block[inside][np.broadcast_to(unwritten, array.shape)[selection]] = 0
    return block.tobytes()


def _angle_major(angles: int, rows: int, cols: int) -> tuple[mmap.mmap, np.ndarray]:
    """A sinogram as the reducer keeps it (page-aligned, angle-major), seen as (rows, angles, cols)."""
    memory = mmap.mmap(-1, angles * rows * cols * 4)
    by_angle = np.frombuffer(memory, dtype=np.float32).reshape(angles, rows, cols)
    by_angle[:] = np.random.default_rng(1).random((angles, rows, cols), dtype=np.float32) + 1.0
    return memory, by_angle.transpose(1, 0, 2)


@pytest.mark.parametrize("cols", [1024, 24])
def test_the_runs_of_every_chunk_are_its_bytes_as_hdf5_stores_them(cols: int) -> None:
    """Whole chunks, chunks cut at the edges (padded with zeros) and angles that read as
    zeros, through the shortcut for whole chunks and without it."""
    _memory, sinogram = _angle_major(angles=21, rows=19, cols=cols)
    chunks = (8, 8, cols)
    unwritten = np.zeros((1, 21, 1), dtype=bool)
    unwritten[0, [3, 20]] = True
    zero_row = ChunkBuffer((cols,), np.float32)
    for flags in (None, unwritten):
        runs_of = DatasetRuns(chunks, zero_row.address)
        for corner in np.ndindex(3, 3, 1):
            selection = tuple(
                slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(corner, chunks, sinogram.shape, strict=True)
            )
            expected = _chunk_as_hdf5_stores_it(sinogram, selection, chunks, flags)
            part = None if flags is None else flags[:, selection[1]]
            runs = runs_of.of(sinogram[selection], part)
            assert runs is not None
            assert _bytes_of(runs.iovecs) == expected, (corner, flags is not None)
            assert runs.nbytes == len(expected)
            assert runs.aligned == (cols * 4 % BLOCK == 0), corner
            direct = chunk_runs(sinogram[selection], chunks, part, zero_row.address)
            assert direct is not None and _bytes_of(direct) == expected
    assert not zero_row.array.any()  # the zero row is only read


def test_chunks_cut_along_every_axis_are_padded_along_every_axis() -> None:
    """Chunks smaller than the array in each axis, the last one included: an edge
    chunk's rows are the data and then zeros, and rows past the array are zeros."""
    array = np.arange(5 * 7 * 10, dtype=np.float32).reshape(5, 7, 10) + 1
    chunks = (2, 3, 4)
    zero_row = ChunkBuffer((4,), np.float32)
    unwritten = np.zeros((1, 7, 1), dtype=bool)
    unwritten[0, 4] = True
    for flags in (None, unwritten):
        runs_of = DatasetRuns(chunks, zero_row.address)
        for corner in np.ndindex(3, 3, 3):
            selection = tuple(
                slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(corner, chunks, array.shape, strict=True)
            )
            part = None if flags is None else flags[:, selection[1]]
            runs = runs_of.of(array[selection], part)
            assert runs is not None
            assert _bytes_of(runs.iovecs) == _chunk_as_hdf5_stores_it(array, selection, chunks, flags), corner


def test_rows_that_follow_each_other_in_memory_are_one_run() -> None:
    """A C-ordered volume chunked by whole slices: each chunk is one run."""
    memory = mmap.mmap(-1, 6 * 32 * 1024 * 4)
    volume = np.frombuffer(memory, dtype=np.float32).reshape(6, 32, 1024)
    runs = chunk_runs(volume[2:4], (2, 32, 1024), None, 0)
    assert runs is not None and len(runs) == 1
    assert int(runs["base"][0]) == volume[2:4].ctypes.data and int(runs["length"][0]) == 2 * 32 * 1024 * 4


def test_chunks_that_are_not_rows_in_memory_have_no_runs() -> None:
    """The last axis strided, or rows only partly unwritten: the writer gathers those."""
    array = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    assert chunk_runs(array.transpose(0, 2, 1)[:2, :2], (2, 2, 6), None, 0) is None
    partly = np.zeros((1, 1, 8), dtype=bool)
    partly[..., :3] = True
    assert chunk_runs(array[:2, :2], (2, 2, 8), partly, 0) is None
    assert chunk_runs(array[::-1][:2, :2], (2, 2, 8), None, 0) is None


def _written(path: Path, runs: np.ndarray, offset: int) -> bytes:
    """The file ``path`` once ``runs`` are written into it at ``offset``."""
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        pwritev_all(fd, runs, offset)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_more_runs_than_one_call_takes_are_written_in_order(tmp_path: Path) -> None:
    """Three calls' worth of runs (IOV_MAX each), every byte where it belongs."""
    rows = np.arange(3 * raw_chunks.IOV_MAX, dtype=np.uint32).reshape(-1, 1)  # every run's bytes its own
    runs = np.zeros(len(rows), dtype=raw_chunks.IOVEC)
    runs["base"] = rows.ctypes.data + np.arange(len(rows)) * 4
    runs["length"] = 4
    data = _written(tmp_path / "runs", runs, 100)
    assert data[:100] == bytes(100) and data[100:] == rows.tobytes()


def test_a_short_write_goes_on_from_the_byte_it_stopped_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwritev may write less than asked (a signal, a device's limit): the rest follows
    from inside the run it stopped in."""
    calls: list[int] = []

    def short(fd: int, iov: int, count: int, offset: int) -> int:
        """Writes at most 5 bytes of the first run per call."""
        calls.append(offset)
        first = np.frombuffer(ctypes.string_at(iov, raw_chunks.IOVEC.itemsize), dtype=raw_chunks.IOVEC)
        n = min(5, int(first["length"][0]))
        return os.pwrite(fd, ctypes.string_at(int(first["base"][0]), n), offset)

    monkeypatch.setattr(raw_chunks, "_libc_pwritev", lambda: short)
    data = np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8)
    runs = np.zeros(3, dtype=raw_chunks.IOVEC)
    runs["base"] = [data.ctypes.data, data.ctypes.data + 20, data.ctypes.data + 33]
    runs["length"] = [12, 13, 31]
    expected = bytes(7) + data[:12].tobytes() + data[20:33].tobytes() + data[33:64].tobytes()
    assert _written(tmp_path / "short", runs, 7) == expected
    assert len(calls) == 3 + 3 + 7  # 12, 13 and 31 bytes at 5 a call


def test_runs_that_continue_the_file_share_a_call_and_land_where_they_belong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks one after another in the file go in one pwritev of at most IOV_MAX runs;
    a chunk elsewhere, a gathered write and closing write what waits first."""
    calls: list[tuple[int, int]] = []
    pwritev = raw_chunks._libc_pwritev()
    assert pwritev is not None

    def counted(fd: int, iov: int, count: int, offset: int) -> int:
        calls.append((count, offset))
        return pwritev(fd, iov, count, offset)

    monkeypatch.setattr(raw_chunks, "_libc_pwritev", lambda: counted)
    data = np.random.default_rng(4).integers(0, 256, 64 * 1024, dtype=np.uint8)

    def runs(first: int, count: int, size: int = 8) -> raw_chunks.Runs:
        """``count`` runs of ``size`` bytes of ``data``, from run ``first`` on, every other one."""
        iovecs = np.zeros(count, dtype=raw_chunks.IOVEC)
        iovecs["base"] = data.ctypes.data + (first + 2 * np.arange(count)) * size
        iovecs["length"] = size
        return raw_chunks.Runs(iovecs, aligned=False)

    def expected(first: int, count: int, size: int = 8) -> bytes:
        return b"".join(data[(first + 2 * i) * size : (first + 2 * i + 1) * size].tobytes() for i in range(count))

    path = tmp_path / "file"
    path.write_bytes(bytes(4096))
    writer = raw_chunks.RawChunkWriter(path, direct=False)
    writer.write_runs(runs(0, 3), 0)
    writer.write_runs(runs(100, 2), 24)  # continues the file: waits with the first
    assert calls == []
    writer.write_runs(runs(200, 4), 1000)  # elsewhere: the first two go, in one call
    assert calls == [(5, 0)]
    buffer = ChunkBuffer((16,), np.uint8)
    buffer.array[:] = 7
    writer.write(buffer.view(), 2000)  # a gathered chunk: what waits goes first
    assert calls == [(5, 0), (4, 1000)]
    writer.write_runs(runs(300, raw_chunks.IOV_MAX - 1, size=1), 3000)
    writer.write_runs(runs(301, 2, size=1), 3000 + raw_chunks.IOV_MAX - 1)  # past IOV_MAX: a call of its own
    writer.close()
    assert calls[2:] == [(raw_chunks.IOV_MAX - 1, 3000), (2, 3000 + raw_chunks.IOV_MAX - 1)]
    content = path.read_bytes()
    assert content[:40] == expected(0, 3) + expected(100, 2)
    assert content[1000:1032] == expected(200, 4)
    assert content[2000:2016] == bytes([7] * 16)
    assert content[3000 : 3000 + raw_chunks.IOV_MAX + 1] == expected(300, raw_chunks.IOV_MAX - 1, 1) + expected(
        301, 2, 1
    )
    assert writer.calls == 4
