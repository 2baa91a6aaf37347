"""Projection rows and partial sums through shared memory where the workers and the reducer share a host.

Every projection's sinogram rows go from a worker to the reducer: 4 MB per 1024^2
frame, 16 MB at 2048^2. Through ZeroMQ over TCP that is a kernel copy out of the
worker, another into the reducer and ZeroMQ's I/O thread in both; the transport
reference of ``benchmarks/bench_scale.py`` (rows forwarded to a reducer that only
drops them) puts it at about 1.3 ms of the reducer's CPU per 1024^2 event on top of
the no-op pair, a quarter of everything our reducer spends, in the one process that
does not scale with workers.

Where a deployment sets :data:`ENV_DIR` for its workers and reducer (a directory on
a tmpfs, ``LocalDeployment`` does so by default), each worker keeps a *ring*: one
file in that directory, mapped, holding a header and ``slots`` slots of one frame's
rows. A projection's rows are copied into a free slot and the result carries a
:class:`SlotRef` in their place (:func:`dumps_with_rings`); the reducer maps the file
once and hands the slot to the pipeline as an array *viewing* it
(:func:`projection_rows_from_ring`), so the one copy in the reducer is the sinogram's
placement that happens anyway. The slot is free again when the last view of it is
gone (a ``weakref.finalize`` on the array writes the slot's sequence number into the
header's ``released`` field): right after placement, as the reducer copies the rows of
any frame it holds for later (:func:`~streamtomo.pipeline.messages.with_own_rows`).

Partial sums (a worker's live slices and centre sweep summed over some dozens of
projections: 48 MB at 1024^2, 201 MB at 2048^2) take a second ring of the worker's
(:data:`SUM_RINGS`: two slots, every array of one sum in one slot) and arrive as a
:class:`~streamtomo.pipeline.messages.PartialSum` whose arrays view the slot
(:func:`partial_sum_from_ring`). Through ZeroMQ, receiving them was the reducer's
ZeroMQ I/O thread's kernel time: 0.44 ms per 1024^2 event, and half of the reducer's
CPU at 2048^2 (``/proc`` per thread, 2 workers). The reducer adds them and lets go;
for slots of :data:`DROP_PAGES_BYTES` and more it then drops its mapping of the slot's
pages (``MADV_DONTNEED``: the content stays in the file), so that its resident memory
does not grow by two sums per worker.

Nothing waits on shared memory: a worker whose ring has no free slot (the reducer
holds them: results queue, or frames wait for their darks and flats) sends the rows
through ZeroMQ as before. A ring with slots in use and none released for
:data:`STALE_SECONDS` (a reducer that died holding them) is replaced by a new file. A
reducer that cannot use a slot (its directory is another, the file is gone or not the
worker's) turns the projection into a :class:`~streamtomo.pipeline.messages.Rejected`
with reason ``rows_unreachable``, counted like every rejection; its worker's partial
sum then cannot be accounted for and the reducer backprojects those frames itself.

Ordering: the worker writes the rows, then the slot's ``written`` sequence, then sends
the reference; the reducer reads the rows, then writes ``released``. x86-64 keeps
stores in order and does not move a load after a later store, so neither side sees
the other's marker before the data it guards. Weaker memory models (ARM) allow that
reordering, so elsewhere the rows go through ZeroMQ (:func:`supported`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import mmap
import os
import pickle
import platform
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.messages import PartialSum, ProjectionRows, Rejected

logger = logging.getLogger(__name__)

ENV_DIR = "STREAMTOMO_SHARED_ROWS_DIR"
DIRECTORY_PREFIX = "streamtomo-rows-"  # then the deployment's process id
RING_PREFIX = "rows-"  # a ring's file name: then its worker's process id
ENV_MIN_BYTES = "STREAMTOMO_SHARED_ROWS_MIN_BYTES"
# Smaller rows go through ZeroMQ: 32x256 rows (bench_pipeline) gained nothing from a slot.
MIN_BYTES = 256 << 10
RING_BYTES = 16 << 20  # one worker's ring: 4 slots of 1024^2 rows, and of 2048^2 (MIN_SLOTS)
MIN_SLOTS, MAX_SLOTS = 4, 32
MAX_SLOT_BYTES = 16 << 20  # larger rows (above 2048^2 float32) go through ZeroMQ
MAX_RINGS = 3  # a worker's rings of one kind at once: the current one and those retired, not yet removed
# Partial sums (live slices and sweep: 48 MB at 1024^2, 201 MB at 2048^2) have a ring of
# their own: two slots of one sum, all its arrays in one slot.
SUM_SLOTS = 2
MAX_SUM_SLOT_BYTES = 256 << 20
# Smaller sums go through ZeroMQ (unless ENV_MIN_BYTES says otherwise): at 32x256
# frames a sum is 3 MB every 8 projections, which ZeroMQ carries at no cost that showed.
SUM_MIN_BYTES = 8 << 20
# The reducer drops its mapping of a slot at least this large once it lets go of it
# (MADV_DONTNEED): the pages stay in the file, and its resident memory does not keep
# two partial sums per worker (the limit of issue 10 is 1.5x what it publishes).
DROP_PAGES_BYTES = 32 << 20
STALE_SECONDS = 30.0
FULL_LOG_SECONDS = 10.0
MAX_MAPPED_RINGS = 64  # the reducer's open rings; older ones are dropped (unmapped once unused)

_MAGIC = 0x5354_4F4D_524F_5753  # "STOMROWS"
_HEADER_BYTES = 4096
_FIXED = 4  # header words before the slots': magic, token, slots, slot bytes
_PAGE = mmap.PAGESIZE


def supported() -> bool:
    """Shared rows rely on x86-64's store ordering (see the module's docstring)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def shared_rows_directory(parent: str = "/dev/shm") -> str:
    """A new private directory for one deployment's rings on ``parent`` (a tmpfs:
    a ring on a disk would be written back); empty where there is none or the CPU
    does not allow shared rows. Its name carries this process's id: directories of
    deployments whose process is gone (killed before it could remove its own) are
    removed here, so their rings do not hold the tmpfs's memory."""
    if not supported() or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return ""
    remove_orphaned_directories(parent)
    return tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-", dir=parent)


def remove_orphaned_directories(parent: str) -> list[str]:
    """Remove this user's deployment directories in ``parent`` whose process is gone."""
    removed = []
    for entry in os.scandir(parent):
        pid = entry.name[len(DIRECTORY_PREFIX) :].split("-", 1)[0]
        if not entry.name.startswith(DIRECTORY_PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid():
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            logger.info("removed %s: its deployment (process %s) is gone", entry.path, pid)
    return removed


def remove_rings_of(directory: str, pid: int) -> None:
    """Remove the rings of worker process ``pid`` (gone): the reducer keeps the pages
    of those it has mapped until it lets go of their rows."""
    for entry in os.scandir(directory):
        if entry.name.startswith(f"{RING_PREFIX}{pid}-"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class SlotRef:
    """Where a projection's rows lie: slot ``slot`` of the ring file ``name``,
    written as its ``seq``-th use."""

    name: str
    token: int
    slot: int
    seq: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class SlotParts:
    """Several arrays in one slot (a partial sum's): ``ref`` names the slot as bytes,
    ``parts`` each array's (offset, shape, dtype) in it."""

    ref: SlotRef
    parts: tuple[tuple[int, tuple[int, ...], str], ...]


@dataclass(frozen=True)
class RingSizing:
    """How one kind of ring is cut into slots."""

    what: str  # for the logs
    ring_bytes: int  # divided into slots of one message each, MIN_SLOTS to MAX_SLOTS of them
    min_slots: int
    max_slots: int
    max_slot_bytes: int  # larger messages go through ZeroMQ


ROW_RINGS = RingSizing("projection rows", RING_BYTES, MIN_SLOTS, MAX_SLOTS, MAX_SLOT_BYTES)
SUM_RINGS = RingSizing("partial sums", 0, SUM_SLOTS, SUM_SLOTS, MAX_SUM_SLOT_BYTES)


class RowsUnreachable(Exception):
    """The reducer cannot read the slot a result names."""


# -- the worker's side ------------------------------------------------------------------
def _part_offsets(arrays: list[npt.NDArray[Any]]) -> list[int]:
    """Where each array starts in a slot (at a 64-byte boundary), then where the last one ends."""
    offsets, end = [], 0
    for array in arrays:
        offsets.append(-(-end // 64) * 64)
        end = offsets[-1] + array.nbytes
    return [*offsets, end]


class RowRing:
    """One worker's ring: a file of ``slots`` slots of ``slot_bytes`` in ``directory``."""

    def __init__(self, directory: str, slot_bytes: int, slots: int) -> None:
        self.slot_bytes = -(-slot_bytes // _PAGE) * _PAGE
        self.slots = slots
        self.token = secrets.randbits(63)
        self.name = f"{RING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        self.path = os.path.join(directory, self.name)
        size = _HEADER_BYTES + slots * self.slot_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the pages now: a full tmpfs fails here with ENOSPC, not later
            # with SIGBUS on a write into the mapping.
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._header = np.frombuffer(self._map, np.uint64, count=_FIXED + 2 * slots)
        self._header[:_FIXED] = (_MAGIC, self.token, slots, self.slot_bytes)
        self._next = 0
        self._seq = 0
        self._released_seen = 0  # sum of the released words when last looked at
        self._release_seen_at = time.monotonic()

    def _written(self, slot: int) -> int:
        return int(self._header[_FIXED + 2 * slot])

    def _released(self, slot: int) -> int:
        return int(self._header[_FIXED + 2 * slot + 1])

    def free_slot(self) -> int | None:
        for step in range(self.slots):
            slot = (self._next + step) % self.slots
            if self._written(slot) == self._released(slot):
                return slot
        return None

    def in_use(self) -> int:
        """Slots written and not released yet."""
        return sum(self._written(slot) != self._released(slot) for slot in range(self.slots))

    def stale(self, now: float) -> bool:
        """Slots in use and none released for :data:`STALE_SECONDS` (its reducer died
        holding them, or their results were never delivered)."""
        released = int(self._header[_FIXED + 1 :: 2].sum())
        if released != self._released_seen:
            self._released_seen, self._release_seen_at = released, now
        return self.in_use() > 0 and now - self._release_seen_at > STALE_SECONDS

    def put_parts(self, arrays: list[npt.NDArray[Any]]) -> SlotParts | None:
        """Copy ``arrays`` one after another into a free slot (each at a 64-byte
        boundary); None when they do not fit or no slot is free."""
        offsets = _part_offsets(arrays)
        if offsets[-1] > self.slot_bytes:
            return None
        slot = self.free_slot()
        if slot is None:
            return None
        self._seq += 1
        start = _HEADER_BYTES + slot * self.slot_bytes
        for array, offset in zip(arrays, offsets, strict=False):
            target = np.frombuffer(self._map, array.dtype, count=array.size, offset=start + offset)
            np.copyto(target.reshape(array.shape), array)
        self._header[_FIXED + 2 * slot] = self._seq  # after the data: see the module's docstring
        self._next = (slot + 1) % self.slots
        ref = SlotRef(self.name, self.token, slot, self._seq, (offsets[-1],), "|u1")
        parts = tuple((o, tuple(a.shape), a.dtype.str) for a, o in zip(arrays, offsets, strict=False))
        return SlotParts(ref, parts)

    def close(self) -> None:
        """Remove the file; a reducer that still maps it keeps its pages until it lets go."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        del self._header
        with contextlib.suppress(BufferError):  # a view is still out (a test's): unmapped with it
            self._map.close()


class RingSender:
    """A worker process's rings of one kind: puts messages into the current one and
    says what it did.

    A new ring replaces the current one when a message no longer fits its slots (a
    larger frame) or when it is stale; the one it replaces is *retired*, not removed:
    results naming its slots may still be on their way, and the reducer opens a ring
    by name when it first sees one. A retired ring's file goes once none of its slots
    is in use, or once it is stale too. At most :data:`MAX_RINGS` exist at once; past
    that, messages go through ZeroMQ.
    """

    def __init__(self, directory: str, min_bytes: int = MIN_BYTES, sizing: RingSizing = ROW_RINGS) -> None:
        self.directory = directory
        self.min_bytes = min_bytes
        self.sizing = sizing
        self.ring: RowRing | None = None
        self.retired: list[RowRing] = []
        self.disabled = ""  # why messages go through ZeroMQ for good
        self.counts = {"shared": 0, "ring_full": 0, "too_large": 0, "rings": 0}
        self._said_full_at = -FULL_LOG_SECONDS
        self._lock = threading.Lock()

    def fits(self, array: Any) -> bool:
        """Whether :meth:`put` would try ``array`` (projection rows)."""
        return self.fits_parts([array])

    def fits_parts(self, arrays: list[Any]) -> bool:
        """Whether :meth:`put_parts` would try ``arrays`` (a partial sum's)."""
        if self.disabled or not arrays:
            return False
        if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
            return False
        return bool(sum(a.nbytes for a in arrays) >= self.min_bytes)

    def put(self, array: npt.NDArray[Any]) -> SlotRef | None:
        """Projection rows: ``array`` into a slot of its own."""
        if not self.fits(array):
            return None
        # Slots for float32 rows of this shape at least: a worker sends raw integer rows
        # until it has its darks and flats, corrected float32 rows after.
        placed = self._put([array], max(array.nbytes, array.size * 4))
        if placed is None:
            return None
        return dataclasses.replace(placed.ref, shape=tuple(array.shape), dtype=array.dtype.str)

    def put_parts(self, arrays: list[npt.NDArray[Any]]) -> SlotParts | None:
        """A partial sum: all ``arrays`` in one slot."""
        if not self.fits_parts(arrays):
            return None
        return self._put(arrays, _part_offsets(arrays)[-1])

    def _put(self, arrays: list[npt.NDArray[Any]], slot_bytes: int) -> SlotParts | None:
        """``arrays`` into one slot of the current ring, one of at least ``slot_bytes``
        made where they do not fit it."""
        needed = _part_offsets(arrays)[-1]
        if needed > self.sizing.max_slot_bytes:
            self.counts["too_large"] += 1
            return None
        with self._lock:
            now = time.monotonic()
            self._reap(now)
            ring = self.ring
            if ring is None or needed > ring.slot_bytes:
                ring = self._new_ring(slot_bytes)
            placed = None if ring is None else ring.put_parts(arrays)
            if ring is not None and placed is None and ring.stale(now):
                logger.warning(
                    "no slot of shared-memory ring %s released for %.0f s (the reducer restarted?): a new ring",
                    ring.name,
                    STALE_SECONDS,
                )
                ring = self._new_ring(slot_bytes)
                placed = None if ring is None else ring.put_parts(arrays)
            if placed is None:
                self.counts["ring_full"] += 1
                if now - self._said_full_at > FULL_LOG_SECONDS:  # how often, without a line per frame
                    self._said_full_at = now
                    logger.info(
                        "shared-memory ring for %s full (the reducer holds its slots; results queue): "
                        "through ZeroMQ %d times so far, through the ring %d times",
                        self.sizing.what,
                        self.counts["ring_full"],
                        self.counts["shared"],
                    )
                return None
            self.counts["shared"] += 1
            return placed

    def _new_ring(self, slot_bytes: int) -> RowRing | None:
        if self.ring is not None and len(self.retired) + 1 >= MAX_RINGS:
            return None  # the oldest must go first (_reap)
        sizing = self.sizing
        slot_bytes = min(sizing.max_slot_bytes, slot_bytes)
        slots = max(sizing.min_slots, min(sizing.max_slots, sizing.ring_bytes // slot_bytes))
        try:
            new = RowRing(self.directory, slot_bytes, slots)
        except OSError as error:
            self.disabled = f"cannot make a ring of {slots} x {slot_bytes} bytes in {self.directory}: {error}"
            logger.warning("%s through ZeroMQ from now on: %s", sizing.what, self.disabled)
            return None
        if self.ring is not None:
            self.retired.append(self.ring)
        self.ring = new
        self.counts["rings"] += 1
        logger.info(
            "%s through shared memory: ring %s, %d slots of %.1f MB", sizing.what, new.path, slots, new.slot_bytes / 1e6
        )
        return new

    def _reap(self, now: float) -> None:
        """Remove retired rings whose slots are all back, or that are stale."""
        for ring in list(self.retired):
            if ring.in_use() == 0 or ring.stale(now):
                ring.close()
                self.retired.remove(ring)


class WorkerRings:
    """A worker's rings: one for projection rows, one for partial sums."""

    def __init__(self, rows: RingSender, sums: RingSender | None = None) -> None:
        self.rows = rows
        self.sums = sums

    def takes_some(self, payload: Any) -> bool:
        """Whether ``payload`` (a worker's result) holds anything for a ring: else it is
        pickled without :class:`_RingPickler`, whose Python hook runs for every object
        (py-spy: 4% of a worker's time at 32x256 frames, where nothing qualifies)."""
        for item in getattr(payload, "items", ()):
            if type(item) is ProjectionRows and self.rows.fits(item.rows):
                return True
            if type(item) is PartialSum and self.sums is not None and self.sums.fits_parts(_sum_arrays(item)):
                return True
        return False


def _sum_arrays(partial: PartialSum) -> list[npt.NDArray[Any]]:
    """A partial sum's arrays in the order they take in a slot: its blocks', then the sweep."""
    return [*partial.blocks.values(), *([] if partial.sweep is None else [partial.sweep])]


class _RingPickler(pickle.Pickler):
    """Pickles a :class:`ProjectionRows` with large rows as its fields and a slot, and
    a :class:`PartialSum` as its fields and a slot holding all its arrays."""

    rings: WorkerRings

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is ProjectionRows and isinstance(obj.rows, np.ndarray):
            ref = self.rings.rows.put(obj.rows)
            if ref is not None:
                fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "rows"}
                return projection_rows_from_ring, (fields, ref)
        elif type(obj) is PartialSum and self.rings.sums is not None:
            placed = self.rings.sums.put_parts(_sum_arrays(obj))
            if placed is not None:
                fields = {"worker": obj.worker, "recon_id": obj.recon_id, "frame_indices": obj.frame_indices}
                fields["events"] = obj.events
                return partial_sum_from_ring, (fields, tuple(obj.blocks), obj.sweep is not None, placed)
        return NotImplemented


def dumps_with_rings(payload: Any, rings: WorkerRings, buffer_callback: Any = None) -> bytes:
    """``pickle.dumps(payload, protocol=5)`` with projection rows and partial sums put into the rings."""
    stream = io.BytesIO()
    pickler = _RingPickler(stream, protocol=5, buffer_callback=buffer_callback)
    pickler.rings = rings
    pickler.dump(payload)
    return stream.getvalue()


_rings: WorkerRings | None = None


def sender_from_env() -> WorkerRings | None:
    """This process's rings, when :data:`ENV_DIR` is set and the CPU allows
    (:data:`ENV_MIN_BYTES`: the smallest message they take, default :data:`MIN_BYTES`)."""
    global _rings
    directory = os.environ.get(ENV_DIR, "")
    if not directory:
        return None
    if _rings is None or _rings.rows.directory != directory:
        if not supported():
            logger.info("rows through ZeroMQ: shared rows need x86-64 (this is %s)", platform.machine())
            os.environ.pop(ENV_DIR)
            return None
        rows_minimum = _min_bytes(MIN_BYTES)
        sums = RingSender(directory, _min_bytes(SUM_MIN_BYTES), SUM_RINGS)
        _rings = WorkerRings(RingSender(directory, rows_minimum), sums)
    return _rings


def _min_bytes(default: int) -> int:
    """:data:`ENV_MIN_BYTES` where set (for rows and sums alike), else ``default``."""
    value = os.environ.get(ENV_MIN_BYTES, "")
    try:
        return int(value) if value else default
    except ValueError:
        logger.warning("%s=%r is not a number of bytes: %d taken", ENV_MIN_BYTES, value, default)
        return default


# -- the reducer's side -----------------------------------------------------------------
class RingReader:
    """The rings the reducer maps, by name, in its own :data:`ENV_DIR` only."""

    def __init__(self, directory: str) -> None:
        self.configured = directory  # as the environment says it (compared per result)
        self.directory = os.path.realpath(directory)
        self._rings: OrderedDict[str, tuple[mmap.mmap, npt.NDArray[np.uint64]]] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, ref: SlotRef) -> npt.NDArray[Any]:
        """The slot's rows as an array viewing it; the slot is released when the last
        view of it is gone."""
        with self._lock:
            ring, header = self._ring(ref)
        slots, slot_bytes = int(header[2]), int(header[3])
        if int(header[1]) != ref.token:
            raise RowsUnreachable(f"ring {ref.name} is not the one its worker wrote (another token)")
        dtype = np.dtype(ref.dtype)
        count = math.prod(ref.shape)
        if not 0 <= ref.slot < slots or count * dtype.itemsize > slot_bytes:
            raise RowsUnreachable(f"ring {ref.name} has no slot {ref.slot} of {count * dtype.itemsize} bytes")
        written = _FIXED + 2 * ref.slot
        if int(header[written]) != ref.seq or int(header[written + 1]) == ref.seq:
            # Rewritten since, or released already (the same result read twice: a second
            # view would let the worker write over rows still in use).
            raise RowsUnreachable(f"slot {ref.slot} of ring {ref.name} holds other rows now")
        offset = _HEADER_BYTES + ref.slot * slot_bytes
        base = np.frombuffer(ring, dtype, count=count, offset=offset)
        drop = (ring, offset, slot_bytes) if slot_bytes >= DROP_PAGES_BYTES else None
        weakref.finalize(base, _release, header, written + 1, ref.seq, drop).atexit = False
        return base.reshape(ref.shape)

    def _ring(self, ref: SlotRef) -> tuple[mmap.mmap, npt.NDArray[np.uint64]]:
        known = self._rings.get(ref.name)
        if known is not None and int(known[1][1]) == ref.token:
            self._rings.move_to_end(ref.name)
            return known
        if os.sep in ref.name or not ref.name.startswith(RING_PREFIX):
            raise RowsUnreachable(f"{ref.name!r} is not the name of a ring")
        path = os.path.join(self.directory, ref.name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as error:
            raise RowsUnreachable(
                f"ring {path} cannot be opened ({error.strerror}): are the workers on this host, "
                f"with {ENV_DIR} the reducer's?"
            ) from error
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_BYTES:
                raise RowsUnreachable(f"ring {path} is {size} bytes: no header")
            ring = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        header = np.frombuffer(ring, np.uint64, count=_FIXED)
        slots, slot_bytes = int(header[2]), int(header[3])
        fits = 0 < slots <= (_HEADER_BYTES // 8 - _FIXED) // 2 and slot_bytes > 0
        if int(header[0]) != _MAGIC or not fits or _HEADER_BYTES + slots * slot_bytes > size:
            raise RowsUnreachable(f"{path} is not a shared-memory ring")
        header = np.frombuffer(ring, np.uint64, count=_FIXED + 2 * slots)
        # Rings their workers removed are dropped (unmapped when their last view goes).
        for name in [name for name in self._rings if not os.path.exists(os.path.join(self.directory, name))]:
            del self._rings[name]
        self._rings[ref.name] = (ring, header)
        while len(self._rings) > MAX_MAPPED_RINGS:
            self._rings.popitem(last=False)
        return ring, header


def _release(
    header: npt.NDArray[np.uint64], index: int, seq: int, drop: tuple[mmap.mmap, int, int] | None = None
) -> None:
    """The slot is free for its worker again; ``drop``: unmap its pages from this
    process first (their content stays in the file)."""
    try:
        if drop is not None:
            ring, offset, length = drop
            with contextlib.suppress(OSError, ValueError, AttributeError):  # closed; no madvise here
                ring.madvise(mmap.MADV_DONTNEED, offset, length)
    finally:
        header[index] = seq


_reader: RingReader | None = None
_reader_lock = threading.Lock()


def _reader_from_env() -> RingReader:
    global _reader
    directory = os.environ.get(ENV_DIR, "")
    if not directory:
        raise RowsUnreachable(f"this reducer takes no rows through shared memory ({ENV_DIR} is not set)")
    with _reader_lock:
        if _reader is None or _reader.configured != directory:
            _reader = RingReader(directory)
        return _reader


def projection_rows_from_ring(fields: dict[str, Any], ref: SlotRef) -> ProjectionRows | Rejected:
    """Unpickled in the reducer: the projection with its rows viewing the slot, or its
    rejection when the slot cannot be read."""
    try:
        rows = _reader_from_env().rows(ref)
    except (RowsUnreachable, OSError, ValueError, TypeError) as error:  # never an exception out of unpickling
        detail = f"frame {fields.get('frame_index')}: its rows were sent through shared memory: {error}"
        return Rejected(fields.get("frame_index"), "rows_unreachable", detail, fields.get("event", -1))
    return ProjectionRows(rows=rows, **fields)


def partial_sum_from_ring(
    fields: dict[str, Any], blocks: tuple[int, ...], has_sweep: bool, placed: SlotParts
) -> PartialSum:
    """Unpickled in the reducer: the partial sum with its arrays viewing the slot.

    A slot that cannot be read gives the same partial sum without arrays and with a
    ``recon_id`` that names why: the ledger discards it as it discards any partial sum
    it cannot use (counted), and backprojects its frames itself, so the live slices
    stay exact (:meth:`~streamtomo.pipeline.streaming.contributions.ContributionLedger.add_partial`).
    """
    try:
        return _partial_sum_viewing(fields, blocks, has_sweep, placed)
    except (RowsUnreachable, OSError, ValueError, TypeError, IndexError) as error:  # never out of unpickling
        # Its text only: a log record that kept the exception would keep its frames,
        # and with them the slot.
        reason = str(error)
    logger.warning(
        "partial sum of %d frames from %s not readable (its frames are backprojected here): %s",
        len(fields.get("frame_indices", ())),
        fields.get("worker"),
        reason,
    )
    return PartialSum(**{**fields, "recon_id": f"unreachable: {reason}"}, blocks={}, sweep=None)


def _partial_sum_viewing(
    fields: dict[str, Any], blocks: tuple[int, ...], has_sweep: bool, placed: SlotParts
) -> PartialSum:
    memory = _reader_from_env().rows(placed.ref)
    arrays = []
    for offset, shape, dtype in placed.parts:
        array = memory[offset : offset + np.dtype(dtype).itemsize * math.prod(shape)].view(dtype).reshape(shape)
        array.flags.writeable = False  # the worker's memory: the reducer only adds it
        arrays.append(array)
    sweep = arrays.pop() if has_sweep else None
    return PartialSum(**fields, blocks=dict(zip(blocks, arrays, strict=True)), sweep=sweep)
