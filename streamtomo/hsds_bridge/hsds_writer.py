"""Mirror a live :class:`~streamtomo.hsds_bridge.domain.Domain` into a real HSDS server.

The reducer thread only copies: :meth:`HsdsWriter.notify` takes the dirty chunks
under ``domain.lock`` and queues copies. A background thread with its own asyncio
loop ships them over HSDS's REST API with aiohttp:

* **Coalescing backlog**: one queued copy per chunk; a newer update of a queued
  chunk replaces its data. The backlog is thus bounded by the domain size; if
  ``max_backlog_bytes`` is smaller, an update that does not fit is handed back to
  the domain (its chunks are marked dirty again) and counted in
  ``dropped_updates``: readers never see that intermediate state, but the data
  is sent with a later update or at ``close()``, so the domain ends complete.
* **Small writes**: the writer remembers what the server holds (a shadow of every
  chunk it wrote; a new dataset is all zeros) and sends only the bounding box of
  what changed, merging adjacent boxes into one request. One projection touching
  16 sinogram chunks becomes a single ``PUT`` of that projection's bytes.
* **Pipelining**: the data of the next batch goes out while the previous batch's
  status and generation are still in flight.
* **Ordering**: data requests go out concurrently; only when all are
  acknowledged are the ``/entry/status`` datasets written, then
  ``/entry/status/generation`` last. Readers poll that counter. (A flush before
  the counter, ``flush_before_generation``, costs ~1 s per update on a default
  HSDS; by default a background flush runs every ``flush_interval`` instead.)
* **Durability**: HSDS data nodes keep a write-back cache; an acknowledged write
  is only durable after ``PUT /?domain=...&flush=1``. Chunks written since the
  last flush are remembered; when the connection drops (or the server's start
  time changes) they are re-sent in full, so a killed and restarted server ends
  with the complete domain. The domain is reopened, never recreated: object ids
  are chosen by the client, so every creation request is idempotent.
* **Retries**: connection errors and 5xx answers are retried with exponential
  backoff; other 4xx answers are errors (counted, logged, never retried).
* Exactly the dataset's dtype, little-endian, goes on the wire: HSDS stores a
  float64 body PUT into a float32 dataset as garbage and answers 200.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote

import aiohttp
import numpy as np
import numpy.typing as npt

from streamtomo.hsds_bridge.credentials import Credentials, load_credentials
from streamtomo.hsds_bridge.domain import AttrValue, ChunkIndex, Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.publisher import PublisherStats

log = logging.getLogger(__name__)

GENERATION_PATH = "/entry/status/generation"
STATUS_PREFIX = "/entry/status/"
OnExists = Literal["version", "overwrite", "fail"]
MAX_VERSIONS = 999
ChunkKey = tuple[str, ChunkIndex]

_OK = (200, 201, 204)
_RETRY = (408, 429, 500, 503)  # server busy (503 is HSDS back-pressure) or transient
_LOST = (502, 504)  # a proxy in front of HSDS reports the server gone

VLEN_STR_TYPE: dict[str, Any] = {
    "class": "H5T_STRING",
    "charSet": "H5T_CSET_UTF8",
    "length": "H5T_VARIABLE",
    "strPad": "H5T_STR_NULLTERM",
}
BOOL_TYPE: dict[str, Any] = {  # what h5py/h5pyd use for numpy bool
    "class": "H5T_ENUM",
    "base": {"class": "H5T_INTEGER", "base": "H5T_STD_I8LE"},
    "members": [{"name": "FALSE", "value": 0}, {"name": "TRUE", "value": 1}],
}
FILTERS: dict[str, dict[str, Any]] = {
    "lz4": {"class": "H5Z_FILTER_LZ4", "id": 32004, "name": "lz4"},
    "gzip": {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": 1},
}


class HsdsWriterError(RuntimeError):
    """A request HSDS refused for good (4xx); carries status, never credentials."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _ConnectionLost(Exception):
    """HSDS unreachable: what it acknowledged since the last flush may be gone."""


class _Abort(Exception):
    """close() deadline reached while waiting for HSDS."""


# -- HDF5 types ---------------------------------------------------------------------
def wire_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype HSDS stores and we put on the wire (little-endian)."""
    if dtype.kind == "O":
        return dtype
    if dtype.kind == "b":
        return np.dtype(np.bool_)
    if dtype.kind in "iuf" and dtype.itemsize in (1, 2, 4, 8):
        return dtype.newbyteorder("<")
    if dtype.kind == "S":  # fixed-length byte strings
        return dtype
    raise TypeError(f"dtype {dtype} is not supported by the HSDS writer")


def type_json(dtype: np.dtype[Any]) -> dict[str, Any] | str:
    """HDF5 REST type description of a numpy dtype."""
    dtype = wire_dtype(dtype)
    if dtype.kind == "O":
        return VLEN_STR_TYPE
    if dtype.kind == "b":
        return BOOL_TYPE
    if dtype.kind == "S":
        return {"class": "H5T_STRING", "charSet": "H5T_CSET_ASCII", "length": dtype.itemsize,
                "strPad": "H5T_STR_NULLPAD"}  # fmt: skip
    bits = dtype.itemsize * 8
    if dtype.kind == "f":
        return f"H5T_IEEE_F{bits}LE"
    return f"H5T_STD_{'I' if dtype.kind == 'i' else 'U'}{bits}LE"


def _string_list(values: Iterable[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def attr_json(value: AttrValue | Any) -> dict[str, Any]:
    """HDF5 REST attribute body for one :data:`AttrValue`."""
    if isinstance(value, (str, bytes)):
        return {"type": VLEN_STR_TYPE, "value": _string_list([value])[0]}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (str, bytes)) for v in value):
            return {"type": VLEN_STR_TYPE, "shape": [len(value)], "value": _string_list(value)}
        value = np.asarray(value, dtype=np.float64 if not value else None)
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        return {"type": VLEN_STR_TYPE, "shape": list(arr.shape), "value": _nested_strings(arr)}
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"attribute of dtype {arr.dtype} is not supported")
    body: dict[str, Any] = {"type": type_json(arr.dtype), "value": arr.tolist()}
    if arr.ndim:
        body["shape"] = list(arr.shape)
    return body


def _nested_strings(arr: npt.NDArray[Any]) -> Any:
    if arr.ndim == 0:
        return _string_list([arr[()]])[0]
    return [_nested_strings(a) for a in arr]


# -- client-chosen object ids (HSDS schema v2) ----------------------------------------
def _fmt_id(prefix: str, hexchars: str) -> str:
    h = hexchars
    return f"{prefix}-{h[0:8]}-{h[8:16]}-{h[16:20]}-{h[20:26]}-{h[26:32]}"


def new_root_id() -> str:
    """A root group id: 16 random hex chars, then the same rotated by 8."""
    head = uuid.uuid4().hex[:16]
    return _fmt_id("g", head + "".join(format((int(c, 16) + 8) % 16, "x") for c in head))


def new_object_id(root_id: str, collection: Literal["groups", "datasets"]) -> str:
    """An object id in the domain of ``root_id`` (shares its first 16 hex chars)."""
    root_hex = "".join(root_id.split("-")[1:])
    return _fmt_id("g" if collection == "groups" else "d", root_hex[:16] + uuid.uuid4().hex[:16])


def versioned_name(name: str, version: int) -> str:
    """``/a/scan.h5`` -> ``/a/scan_v2.h5`` (version >= 2)."""
    folder, _, leaf = name.rpartition("/")
    stem, dot, ext = leaf.rpartition(".")
    if not dot or not stem:
        stem, ext = leaf, ""
    return f"{folder}/{stem}_v{version}" + (f".{ext}" if ext else "")


# -- queued data ----------------------------------------------------------------------
@dataclass(eq=False)
class _Chunk:
    """A copy of one chunk as it was at notify time (wire dtype, C order)."""

    path: str
    index: ChunkIndex
    origin: tuple[int, ...]
    data: npt.NDArray[Any] | str
    nbytes: int
    version: int = 0  # of the dataset node: a replaced dataset gets a new HSDS object

    @property
    def key(self) -> ChunkKey:
        return (self.path, self.index)


@dataclass(frozen=True, eq=False)  # identity: attrs may hold arrays
class _Node:
    """Structure snapshot of a group or dataset (attrs copied at capture)."""

    path: str
    attrs: dict[str, AttrValue]
    dtype: np.dtype[Any] | None = None  # None: group
    shape: tuple[int, ...] = ()
    chunks: tuple[int, ...] = ()
    version: int = 0

    def same_layout(self, other: _Node) -> bool:
        return (self.dtype, self.shape, self.chunks) == (other.dtype, other.shape, other.chunks)

    @property
    def is_group(self) -> bool:
        return self.dtype is None

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0] or "/"

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def depth(self) -> int:
        return self.path.count("/") if self.path != "/" else 0


@dataclass(eq=False)
class _Box:
    """A hyperslab to write: global ``[lo, hi)`` and its data, from ``members``."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    data: npt.NDArray[Any]
    members: list[_Chunk]


@dataclass(eq=False)
class _Request:
    path: str
    select: str | None
    payload: bytes | dict[str, Any]
    members: list[_Chunk]

    @property
    def nbytes(self) -> int:
        return len(self.payload) if isinstance(self.payload, bytes) else 0


@dataclass(eq=False)
class _Batch:
    nodes: list[_Node]
    data: list[_Chunk]
    tail: list[_Chunk]
    updates: int
    since: float  # monotonic time of the oldest notify in the batch


class _Zero:
    """Shadow marker: the server holds the fill value (zeros) for this chunk."""


class _Unknown:
    """Shadow marker: the server's content is unknown; send the whole chunk."""


_ZERO = _Zero()
_UNKNOWN = _Unknown()
Shadow = npt.NDArray[Any] | str | _Zero | _Unknown


def _capture_node(node: DomainGroup | DomainDataset, version: int = 0) -> _Node:
    attrs = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in node.attrs.items()}
    if isinstance(node, DomainGroup):
        return _Node(node.path, attrs)
    if node.is_string and node.array.ndim:
        raise TypeError(f"{node.path}: only scalar string datasets are supported")
    assert node.chunks is not None
    return _Node(node.path, attrs, wire_dtype(node.dtype), node.shape, tuple(node.chunks), version)


def _chunk_copy(ds: DomainDataset, node: _Node, index: ChunkIndex) -> _Chunk:
    """Copy one chunk in the dataset's HSDS dtype (never the array's, see module doc)."""
    sel = ds.chunk_selection(index)
    origin = tuple(s.start for s in sel)
    if ds.is_string:
        value = ds.array[()]
        text = value.decode() if isinstance(value, bytes) else str(value)
        return _Chunk(ds.path, index, origin, text, len(text.encode()), node.version)
    assert node.dtype is not None
    view = ds.array[sel] if sel else ds.array[()]
    data = np.array(view, dtype=node.dtype, order="C", copy=True)
    return _Chunk(ds.path, index, origin, data, data.nbytes, node.version)


def _bits(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Items as unsigned ints (bitwise compare: NaN == NaN, -0.0 != 0.0), or as bytes."""
    if a.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.itemsize}")
    return np.ascontiguousarray(a).view(np.uint8).reshape((*a.shape, a.itemsize))


def _changed_box(chunk: _Chunk, shadow: Shadow) -> _Box | None:
    """Bounding box of what differs from ``shadow`` (bitwise), None if nothing."""
    data = chunk.data
    assert isinstance(data, np.ndarray)
    hi_full = tuple(o + n for o, n in zip(chunk.origin, data.shape, strict=True))
    if isinstance(shadow, _Unknown) or data.ndim == 0:
        if isinstance(shadow, np.ndarray) and shadow.tobytes() == data.tobytes():
            return None
        return _Box(chunk.origin, hi_full, data, [chunk])
    bits = _bits(data)
    if isinstance(shadow, _Zero):
        ne = bits != 0
    elif isinstance(shadow, np.ndarray):
        ne = bits != _bits(shadow)
    else:
        return _Box(chunk.origin, hi_full, data, [chunk])
    if ne.ndim > data.ndim:  # bytes of wider items: an item differs if any byte does
        ne = ne.any(axis=-1)
    bounds = _bounding_box(ne)
    if bounds is None:
        return None
    lo, hi = bounds
    sub = data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    glo = tuple(o + a for o, a in zip(chunk.origin, lo, strict=True))
    ghi = tuple(o + b for o, b in zip(chunk.origin, hi, strict=True))
    return _Box(glo, ghi, sub, [chunk])


def _bounding_box(ne: npt.NDArray[np.bool_]) -> tuple[list[int], list[int]] | None:
    """``[lo, hi)`` per axis around the True items; None if there are none.

    One pass over the whole mask (rows of the last axis), then only small arrays:
    the diff runs for every dirty chunk of every update.
    """
    rows: npt.NDArray[np.bool_] = np.any(ne.reshape(-1, ne.shape[-1]), axis=1)
    hit = np.flatnonzero(rows)
    if hit.size == 0:
        return None
    lead = rows.reshape(ne.shape[:-1])
    lo, hi = [], []
    for axis in range(lead.ndim):
        others = tuple(a for a in range(lead.ndim) if a != axis)
        idx = np.flatnonzero(np.any(lead, axis=others) if others else lead)
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    last = np.flatnonzero(ne.reshape(-1, ne.shape[-1])[hit].any(axis=0))
    lo.append(int(last[0]))
    hi.append(int(last[-1]) + 1)
    return lo, hi


def _merge_boxes(boxes: list[_Box], limit: int) -> list[_Box]:
    """Merge boxes that touch along one axis and match on the others (<= limit bytes)."""
    if len(boxes) < 2:
        return boxes
    ndim = len(boxes[0].lo)
    changed = True
    while changed:
        changed = False
        for axis in range(ndim):
            groups: dict[tuple[Any, ...], list[_Box]] = defaultdict(list)
            for b in boxes:
                groups[b.lo[:axis] + b.lo[axis + 1 :] + b.hi[:axis] + b.hi[axis + 1 :]].append(b)
            merged: list[_Box] = []
            for group in groups.values():
                merged.extend(_merge_runs(sorted(group, key=lambda b: b.lo[axis]), axis, limit))
            changed = changed or len(merged) < len(boxes)
            boxes = merged
    return boxes


def _merge_runs(group: list[_Box], axis: int, limit: int) -> list[_Box]:
    out: list[_Box] = []
    run = [group[0]]
    size = group[0].data.nbytes
    for b in group[1:]:
        if b.lo[axis] == run[-1].hi[axis] and size + b.data.nbytes <= limit:
            run.append(b)
            size += b.data.nbytes
            continue
        out.append(_concat(run, axis))
        run, size = [b], b.data.nbytes
    out.append(_concat(run, axis))
    return out


def _concat(run: list[_Box], axis: int) -> _Box:
    if len(run) == 1:
        return run[0]
    hi = (*run[0].hi[:axis], run[-1].hi[axis], *run[0].hi[axis + 1 :])
    data = np.concatenate([b.data for b in run], axis=axis)
    return _Box(run[0].lo, hi, data, [m for b in run for m in b.members])


def _select_param(lo: Sequence[int], hi: Sequence[int]) -> str:
    return "[" + ",".join(f"{a}:{b}" for a, b in zip(lo, hi, strict=True)) + "]"


# -- the writer -------------------------------------------------------------------------
class HsdsWriter:
    """Publisher that mirrors a domain into HSDS (see module docstring).

    ``domain_name`` is the HSDS path (``/home/streamtomo/scan_0001.h5``); None uses
    the domain's own name. With ``on_exists="version"`` an existing domain is never
    touched: ``_v2``, ``_v3``... is appended and :attr:`domain_name` reports the
    final name.
    """

    def __init__(
        self,
        endpoint: str,
        domain_name: str | None = None,
        credentials: Credentials | None = None,
        *,
        max_backlog_bytes: int = 1 << 30,
        reader_accounts: Sequence[str] = ("viewer",),
        public_read: bool = False,
        on_exists: OnExists = "version",
        compression: str | None = "lz4",
        max_concurrency: int = 16,
        merge_bytes: int = 4 << 20,
        flush_before_generation: bool = False,
        flush_interval: float = 1.0,
        probe_interval: float = 1.0,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        request_timeout: float = 60.0,
        start_timeout: float = 60.0,
        generation_path: str = GENERATION_PATH,
        status_prefix: str = STATUS_PREFIX,
        drop_log_every: int = 100,
    ) -> None:
        if on_exists not in ("version", "overwrite", "fail"):
            raise ValueError(f"on_exists must be version, overwrite or fail, not {on_exists!r}")
        if compression is not None and compression not in FILTERS:
            raise ValueError(f"compression must be one of {sorted(FILTERS)} or None")
        self._endpoint = endpoint.rstrip("/")
        self._requested_name = domain_name
        self._credentials = credentials if credentials is not None else load_credentials()
        self.max_backlog_bytes = max_backlog_bytes
        self.reader_accounts = tuple(reader_accounts)
        self.public_read = public_read
        self.on_exists: OnExists = on_exists
        self.compression = compression
        self.max_concurrency = max_concurrency
        self.merge_bytes = merge_bytes
        self.flush_before_generation = flush_before_generation
        self.flush_interval = flush_interval
        self.probe_interval = probe_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.generation_path = generation_path
        self.status_prefix = status_prefix
        self.drop_log_every = max(1, drop_log_every)

        self._domain: Domain | None = None
        self._name: str | None = None
        self._root_id: str | None = None
        # reducer side (under _qlock)
        self._qlock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._pending: dict[ChunkKey, _Chunk] = {}
        self._pending_tail: dict[ChunkKey, _Chunk] = {}
        self._pending_nodes: list[_Node] = []
        self._pending_bytes = 0
        self._pending_updates = 0
        self._pending_since = 0.0
        self._busy = False  # a batch is being published
        self._stats = PublisherStats()
        self._counters: dict[str, float] = defaultdict(float)
        # loop side
        self._ids: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        self._fresh: set[str] = set()  # datasets we created: server holds zeros
        self._shadow: dict[ChunkKey, Shadow] = {}
        self._unflushed: dict[ChunkKey, _Chunk] = {}
        self._unflushed_nodes: list[_Node] = []
        self._inflight: dict[ChunkKey, _Chunk] = {}
        self._server_start: Any = None
        self._last_write = 0.0
        self._last_flush = 0.0
        self._flushing = False
        self._setup_durable = False  # domain, ACLs and objects survived a flush
        self._need_setup = False
        self._deadline: float | None = None
        self._closing = False
        self._endpoint_base = self._endpoint
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake: asyncio.Event | None = None
        self._io_lock: asyncio.Lock | None = None
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._main_future: concurrent.futures.Future[None] | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._main_done = threading.Event()

    # -- Publisher protocol ----------------------------------------------------------
    @property
    def url(self) -> str:
        return self._endpoint

    @property
    def domain_name(self) -> str:
        """Final HSDS domain name (after versioning), or the requested one."""
        return self._name or self._requested_name or (self._domain.name if self._domain else "")

    def start(self, domain: Domain) -> None:
        """Create the domain on HSDS (folders, objects, ACLs) and begin mirroring.

        Waits up to ``start_timeout`` for the setup; a refusal (401/403/409 with
        ``on_exists="fail"``...) raises. If HSDS is merely unreachable, setup goes on
        in the background and updates queue up meanwhile.
        """
        if self._domain is not None:
            raise RuntimeError("HsdsWriter.start() called twice")
        self._domain = domain
        self._requested_name = self._requested_name or domain.name
        if not self._requested_name.startswith("/") or self._requested_name.endswith("/"):
            raise ValueError(f"invalid HSDS domain name {self._requested_name!r}")
        with domain.lock:
            nodes = [_capture_node(n) for n in domain.walk()]
            with self._qlock:
                self._nodes = {n.path: n for n in nodes}
            self._enqueue(domain, domain.take_dirty(), force=True)
        self._start_loop(nodes)
        try:
            name = self._ready.result(self.start_timeout)
        except concurrent.futures.TimeoutError:
            log.warning(
                "HSDS setup of %s not finished after %.0fs (server unreachable?); continuing in the background",
                self._requested_name,
                self.start_timeout,
            )
            return
        except BaseException:
            self._stop_loop()
            self._domain = None
            raise
        log.info("publishing to %s%s", self._endpoint, f"/?domain={name}")

    def notify(self) -> None:
        """Queue copies of the chunks changed since the last call (no network I/O)."""
        domain = self._domain
        if domain is None or self._closing:
            return
        with domain.lock:
            self._enqueue(domain, domain.take_dirty(), force=False)
        self._kick()

    def stats(self) -> PublisherStats:
        with self._qlock:
            s = replace(self._stats, extra=dict(self._counters))
            s.backlog = self._pending_updates
            s.extra["backlog_bytes"] = float(self._pending_bytes)
            return s

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything notified so far is acknowledged by HSDS (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._qlock:
                queued = self._pending or self._pending_tail or self._pending_nodes
                if self._ready.done() and not queued and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Send everything still dirty or queued, flush, stop the background loop."""
        if self._domain is None or self._loop is None or self._closing:
            return
        deadline = time.monotonic() + timeout
        with self._domain.lock:
            # force: at the end of a scan the backlog limit gives way to completeness
            self._enqueue(self._domain, self._domain.take_dirty(), force=True)
        self._deadline = deadline
        self._closing = True
        self._kick()
        assert self._main_future is not None
        try:
            self._main_future.result(max(0.0, deadline - time.monotonic()) + 1.0)
        except concurrent.futures.TimeoutError:
            log.error("HSDS writer close timed out")
        except Exception as exc:  # already logged in the loop
            log.debug("writer loop ended with %r", exc)
        with self._qlock:
            left = len(self._pending) + len(self._pending_tail)
            if left:
                self._stats.dropped_updates += self._pending_updates
                self._counters["unsent_chunks"] = left
        if left:
            log.error("closing with %d chunk(s) not delivered to %s", left, self.domain_name)
        self._stop_loop()
        s = self.stats()
        log.info(
            "HSDS writer closed: %s, %d updates, %.1f MB, %d retries, %d dropped, %d errors",
            self.domain_name, s.updates_published, s.bytes_sent / 1e6, s.retries,
            s.dropped_updates, s.errors,
        )  # fmt: skip

    def __enter__(self) -> HsdsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HsdsWriter({self._endpoint!r}, {self.domain_name!r}, user={self._credentials.username!r})"

    # -- reducer side: queue ------------------------------------------------------------
    def _is_tail(self, path: str) -> bool:
        return path.startswith(self.status_prefix) or path == self.generation_path

    def _enqueue(self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]], force: bool) -> None:
        """Copy ``dirty`` chunks into the backlog (caller holds ``domain.lock``)."""
        if not dirty:
            return
        with self._qlock:
            self._pending_nodes.extend(self._capture_new_nodes(domain, dirty))
            items = self._dirty_items(domain, dirty)
            growth = sum(
                self._chunk_nbytes(ds, idx)
                - self._queued_nbytes((ds.path, idx))
                for ds, idx in items
            )  # fmt: skip
            has_backlog = bool(self._pending or self._pending_tail)
            if not force and has_backlog and self._pending_bytes + growth > self.max_backlog_bytes:
                self._defer(items)
                return
            for ds, idx in items:
                self._queue_chunk(_chunk_copy(ds, self._nodes[ds.path], idx))
            if not self._pending_updates:
                self._pending_since = time.monotonic()
            self._pending_updates += 1

    def _capture_new_nodes(self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]]) -> list[_Node]:
        """Structure the mirror lacks: new nodes, and datasets replaced by new shapes."""
        new: list[_Node] = []
        if not all(p in self._nodes for p in dirty):
            for node in domain.walk():
                if node.path not in self._nodes:
                    spec = self._try_capture(node)
                    if spec is not None:
                        self._nodes[node.path] = spec
                        new.append(spec)
        for path in dirty:
            known = self._nodes.get(path)
            if known is None or any(known is n for n in new):
                continue
            spec = self._try_capture(domain.dataset(path), known.version + 1)
            if spec is not None and not spec.same_layout(known):
                # Replaced with another shape/dtype (e.g. a new set of slices): a new
                # HSDS dataset takes the link; queued copies of the old one are stale.
                log.info("%s changed to %s %s; replacing it on HSDS", path, spec.dtype, spec.shape)
                self._nodes[path] = spec
                new.append(spec)
                self._drop_queued(path)
        return new

    def _try_capture(self, node: DomainGroup | DomainDataset, version: int = 0) -> _Node | None:
        try:
            return _capture_node(node, version)
        except TypeError as exc:
            self._error(str(exc))
            return None

    def _drop_queued(self, path: str) -> None:
        for queue in (self._pending, self._pending_tail):
            for key in [k for k in queue if k[0] == path]:
                self._pending_bytes -= queue.pop(key).nbytes

    def _dirty_items(
        self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]]
    ) -> list[tuple[DomainDataset, ChunkIndex]]:
        items: list[tuple[DomainDataset, ChunkIndex]] = []
        for path, indices in dirty.items():
            if path in self._nodes:
                ds = domain.dataset(path)
                items.extend((ds, idx) for idx in sorted(indices))
        return items

    def _chunk_nbytes(self, ds: DomainDataset, index: ChunkIndex) -> int:
        if ds.is_string:
            return len(str(ds.array[()]).encode())
        return int(ds.dtype.itemsize * math.prod(s.stop - s.start for s in ds.chunk_selection(index)))

    def _queued_nbytes(self, key: ChunkKey) -> int:
        old = self._pending.get(key) or self._pending_tail.get(key)
        return old.nbytes if old is not None else 0

    def _queue_chunk(self, chunk: _Chunk) -> None:
        queue = self._pending_tail if self._is_tail(chunk.path) else self._pending
        old = queue.pop(chunk.key, None)  # re-insert: keeps dict order = age order
        if old is not None:
            self._pending_bytes -= old.nbytes
            self._counters["coalesced_chunks"] += 1
        queue[chunk.key] = chunk
        self._pending_bytes += chunk.nbytes

    def _defer(self, items: list[tuple[DomainDataset, ChunkIndex]]) -> None:
        """Backlog full: hand the chunks back to the domain (still dirty there)."""
        for ds, idx in items:
            ds.mark_dirty(ds.chunk_selection(idx))
        self._stats.dropped_updates += 1
        self._counters["deferred_chunks"] += len(items)
        n = self._stats.dropped_updates
        if n == 1 or n % self.drop_log_every == 0:
            log.warning(
                "HSDS backlog full (%.1f MB >= %.1f MB): %d update(s) not published so far; "
                "their data stays dirty and is sent later",
                self._pending_bytes / 1e6, self.max_backlog_bytes / 1e6, n,
            )  # fmt: skip

    def _error(self, message: str) -> None:
        with self._qlock:
            self._stats.errors += 1
            self._stats.last_error = message
            n = self._stats.errors
        # counted always; logged for the first ten, then every hundredth (no flood)
        log.log(logging.ERROR if n <= 10 or n % 100 == 0 else logging.DEBUG, "%s (error %d)", message, n)

    # -- loop thread lifecycle ---------------------------------------------------------------
    def _start_loop(self, nodes: list[_Node]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="hsds-writer", daemon=True)
        self._thread.start()
        self._main_future = asyncio.run_coroutine_threadsafe(self._main(nodes), loop)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        task = self._main_task
        if task is not None and not self._main_done.is_set():
            # Cancel the task itself (not the thread-safe future, which would report
            # done at once) so that the session closes inside the loop.
            loop.call_soon_threadsafe(task.cancel)
            if not self._main_done.wait(10):
                log.warning("HSDS writer loop did not stop within 10 s")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _main(self, nodes: list[_Node]) -> None:
        self._main_task = asyncio.current_task()
        try:
            await self._main_inner(nodes)
        finally:
            self._main_done.set()

    async def _main_inner(self, nodes: list[_Node]) -> None:
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        connector, base = self._connector()
        self._endpoint_base = base
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=10)
        headers = {"Authorization": self._credentials.authorization_header()}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            self._session = session
            try:
                await self._setup_with_retries(nodes)
            except BaseException as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc)
                raise
            self._ready.set_result(self.domain_name)
            watchdog = asyncio.create_task(self._watchdog())
            try:
                await self._sender()
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)

    def _connector(self) -> tuple[aiohttp.BaseConnector, str]:
        limit = self.max_concurrency + 4
        if self._endpoint.startswith("http+unix://"):
            # hsds' own notation: the socket path, url-quoted, as the host part
            path = unquote(self._endpoint[len("http+unix://") :])
            return aiohttp.UnixConnector(path=path, limit=limit), "http://localhost"
        return aiohttp.TCPConnector(limit=limit), self._endpoint

    # -- HTTP ------------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        """One request; raises _ConnectionLost on connection errors and 502/504."""
        assert self._session is not None
        query = {"domain": self.domain_name, **(params or {})}
        kwargs: dict[str, Any] = {"params": query}
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {"Content-Type": "application/octet-stream"}
        elif json_body is not None:
            kwargs["json"] = json_body
        try:
            async with self._session.request(method, self._endpoint_base + path, **kwargs) as resp:
                body = await resp.read()
                status = resp.status
                reason = resp.reason or ""
        except aiohttp.ClientConnectionError as exc:
            raise _ConnectionLost(f"{method} {path}: {type(exc).__name__}") from None
        if status in _LOST:
            raise _ConnectionLost(f"{method} {path}: HTTP {status}")
        if status in _OK and body and resp.content_type == "application/json":
            return status, json.loads(body)
        return status, reason

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """``_request`` retried with backoff on 408/429/500/503 and timeouts."""
        attempt = 0
        while True:
            try:
                status, body = await self._request(method, path, **kwargs)
            except TimeoutError:
                status, body = 408, "timeout"
            if status not in _RETRY:
                return status, body
            attempt += 1
            self._count_retry()
            await self._backoff(attempt)

    def _count_retry(self) -> None:
        with self._qlock:
            self._stats.retries += 1

    async def _backoff(self, attempt: int) -> None:
        delay = min(self.retry_max, self.retry_initial * 2 ** min(attempt, 30))
        delay *= random.uniform(0.8, 1.2)
        if self._deadline is not None and time.monotonic() + delay > self._deadline:
            raise _Abort()
        await asyncio.sleep(delay)

    def _refused(self, what: str, status: int, reason: Any) -> HsdsWriterError:
        hint = ""
        if status == 401:
            hint = " (wrong username or password)"
        elif status == 403:
            hint = f" (user {self._credentials.username!r} lacks the permission)"
        return HsdsWriterError(f"HSDS refused {what}: {status} {reason}{hint}", status)

    # -- setup ------------------------------------------------------------------------------
    async def _setup_with_retries(self, nodes: list[_Node]) -> None:
        attempt = 0
        while True:
            try:
                await self._setup(nodes)
                return
            except (TimeoutError, _ConnectionLost) as exc:
                attempt += 1
                self._count_retry()
                if attempt == 1:
                    log.warning("HSDS unreachable during setup (%s); retrying", exc)
                await self._backoff(attempt)

    async def _setup(self, nodes: list[_Node]) -> None:
        t0 = time.monotonic()
        self._server_start = await self._probe()
        await self._ensure_folders()
        await self._create_domain()
        await self._set_acls()
        await self._ensure_nodes(nodes)
        self._setup_durable = False  # the watchdog's next flush makes it durable
        log.info(
            "HSDS domain %s ready: %d objects in %.0f ms",
            self.domain_name, len(nodes), (time.monotonic() - t0) * 1e3,
        )  # fmt: skip

    async def _probe(self) -> Any:
        """``GET /about``: the server's start time (changes when it restarts)."""
        status, body = await self._request("GET", "/about")
        if status in (401, 403):
            raise self._refused("GET /about", status, body)
        if status != 200 or not isinstance(body, dict) or body.get("state") != "READY":
            raise _ConnectionLost(f"HSDS not ready ({status})")
        return body.get("start_time")

    async def _ensure_folders(self) -> None:
        assert self._requested_name is not None
        parts = self._requested_name.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/" + "/".join(parts[:depth])
            status, reason = await self._call("GET", "/", params={"domain": folder})
            if status in (200, 403):  # 403: exists, just not listable for us
                continue
            if status != 404:
                raise self._refused(f"GET folder {folder}", status, reason)
            status, reason = await self._call("PUT", "/", params={"domain": folder}, json_body={"folder": True})
            if status == 403:
                raise HsdsWriterError(
                    f"folder {folder}/ does not exist and {self._credentials.username!r} may not "
                    f"create it: ask the HSDS admin to create it with owner "
                    f"{self._credentials.username!r} (LocalHsds does this for /home/<writer>/)",
                    403,
                )
            if status not in (201, 409):
                raise self._refused(f"create folder {folder}", status, reason)
            log.info("created HSDS folder %s/", folder)

    async def _create_domain(self) -> None:
        """PUT the domain with a client-chosen root id; never reuse another's domain."""
        assert self._requested_name is not None
        if self._root_id is not None and self._name is not None:
            # Retried setup: the name is ours; (re)create it if a crash lost it.
            status, reason = await self._call("PUT", "/", json_body={"root_id": self._root_id})
            if status == 201:
                log.warning("domain %s was lost by HSDS; re-created it", self._name)
                return
            if status == 409:
                status, body = await self._call("GET", "/")
                if status == 200 and isinstance(body, dict) and body.get("root") == self._root_id:
                    return
            raise self._refused(f"reopen domain {self._name}", status, reason)
        for version in range(1, MAX_VERSIONS + 1):
            name = self._requested_name if version == 1 else versioned_name(self._requested_name, version)
            self._name = name
            if await self._claim_domain(version):
                if version > 1:
                    log.warning("domain %s exists; publishing to %s", self._requested_name, name)
                return
        self._name = None
        raise HsdsWriterError(f"no free version of {self._requested_name} up to _v{MAX_VERSIONS}", 409)

    async def _claim_domain(self, version: int) -> bool:
        """Create ``self._name`` unless it exists; False: try the next version."""
        status, body = await self._call("GET", "/")
        if status in (404, 410):
            # A fresh root id per attempt: HSDS creates the root group before it
            # finds a name taken, so a refused id is used up.
            root_id = new_root_id()
            status, body = await self._call("PUT", "/", json_body={"root_id": root_id})
            if status == 201:
                self._root_id = root_id
                return True
            if status != 409:
                raise self._refused(f"create domain {self._name}", status, body)
            status, body = await self._call("GET", "/")
            if status == 200 and isinstance(body, dict) and body.get("root") == root_id:
                self._root_id = root_id  # our own create, its reply was lost
                return True
        elif status not in (200, 403):
            raise self._refused(f"look up domain {self._name}", status, body)
        # The name is taken (403: by a domain we may not even read).
        if self.on_exists == "fail":
            raise HsdsWriterError(f"domain {self._name} already exists (on_exists='fail')", 409)
        if self.on_exists == "overwrite" and version == 1:
            status, reason = await self._call("DELETE", "/")
            if status not in _OK:
                raise self._refused(f"delete existing domain {self._name}", status, reason)
            log.warning("deleted existing domain %s (on_exists='overwrite')", self._name)
            return await self._create_fresh()
        return False

    async def _create_fresh(self) -> bool:
        root_id = new_root_id()
        status, body = await self._call("PUT", "/", json_body={"root_id": root_id})
        if status != 201:
            raise self._refused(f"re-create domain {self._name}", status, body)
        self._root_id = root_id
        return True

    async def _set_acls(self) -> None:
        none = dict.fromkeys(("create", "read", "update", "delete", "readACL", "updateACL"), False)
        acls = {user: {**none, "read": True} for user in self.reader_accounts}
        # Explicit default entry: other authenticated users get read only if asked.
        acls["default"] = {**none, "read": self.public_read}
        for user, acl in acls.items():
            status, reason = await self._call("PUT", f"/acls/{user}", json_body=acl)
            if status not in _OK:
                raise self._refused(f"set ACL for {user}", status, reason)

    async def _ensure_nodes(self, nodes: Sequence[_Node]) -> None:
        """Create groups/datasets parents first; siblings concurrently; idempotent."""
        assert self._root_id is not None
        self._ids["/"] = self._root_id
        by_depth: dict[int, list[_Node]] = defaultdict(list)
        for node in nodes:
            by_depth[node.depth].append(node)
        for depth in sorted(by_depth):
            level = by_depth[depth]
            for node in level:
                if node.path != "/" and self._versions.get(node.path) != node.version:
                    kind: Literal["groups", "datasets"] = "groups" if node.is_group else "datasets"
                    self._ids[node.path] = new_object_id(self._root_id, kind)
                    self._versions[node.path] = node.version
                    self._forget_chunks(node.path)
            await _gather_limited((self._create_node(n) for n in level), self.max_concurrency)
            self._unflushed_nodes.extend(level)

    def _forget_chunks(self, path: str) -> None:
        """A (re)created dataset: nothing the mirror knew about its chunks holds."""
        for table in (self._shadow, self._unflushed):
            for key in [k for k in table if k[0] == path]:
                del table[key]

    async def _create_node(self, node: _Node) -> None:
        attrs = {k: attr_json(v) for k, v in node.attrs.items()}
        if node.path == "/":
            if attrs:
                status, reason = await self._call(
                    "PUT", f"/groups/{self._root_id}/attributes", json_body={"attributes": attrs}
                )
                if status not in _OK:
                    raise self._refused("root attributes", status, reason)
            return
        obj_id = self._ids[node.path]
        parent_id = self._ids[node.parent]
        body: dict[str, Any] = {"id": obj_id, "link": {"id": parent_id, "name": node.name}}
        if attrs:
            body["attributes"] = attrs
        collection = "groups" if node.is_group else "datasets"
        if not node.is_group:
            body.update(self._dataset_body(node))
        if node.version:
            # the previous object under this name (other shape) loses its link
            status, reason = await self._call("DELETE", f"/groups/{parent_id}/links/{node.name}")
            if status not in (*_OK, 404, 410):
                raise self._refused(f"unlink old {node.path}", status, reason)
        status, reason = await self._call("POST", f"/{collection}", json_body=body)
        if status == 201:
            if not node.is_group:
                self._fresh.add(node.path)
            return
        # 400/409 after a retried POST: the object may already be ours
        status_get, _ = await self._call("GET", f"/{collection}/{obj_id}")
        if status_get != 200:
            raise self._refused(f"create {node.path}", status, reason)
        status, reason = await self._call("PUT", f"/groups/{parent_id}/links/{node.name}", json_body={"id": obj_id})
        if status not in _OK:
            raise self._refused(f"link {node.path}", status, reason)

    def _dataset_body(self, node: _Node) -> dict[str, Any]:
        assert node.dtype is not None
        body: dict[str, Any] = {"type": type_json(node.dtype)}
        if node.shape:
            body["shape"] = list(node.shape)
            props: dict[str, Any] = {"layout": {"class": "H5D_CHUNKED", "dims": list(node.chunks)}}
            if self.compression:
                props["filters"] = [FILTERS[self.compression]]
            body["creationProperties"] = props
        return body

    # -- sender -------------------------------------------------------------------------------
    async def _sender(self) -> None:
        assert self._wake is not None
        assert self._io_lock is not None
        while True:
            if not self._has_work():
                if self._closing:
                    if await self._final_flush():
                        return
                    continue
                await self._wake.wait()
                self._wake.clear()
                continue
            async with self._io_lock:
                await self._busy_period()

    def _has_work(self) -> bool:
        with self._qlock:
            return bool(self._pending or self._pending_tail or self._pending_nodes)

    async def _busy_period(self) -> None:
        """Publish batches until the queue is empty, pipelined.

        The data of batch N+1 goes out while batch N's status and generation are
        still in flight; generations stay in order and each follows its own data.
        """
        tail: asyncio.Task[None] | None = None
        try:
            while (batch := self._take_batch()) is not None:
                if self._need_setup:
                    await _settle(tail)
                    tail = None
                    await self._resetup()
                complete = await self._publish_data(batch)
                await _settle(tail, reraise=True)
                tail = asyncio.ensure_future(self._publish_tail(batch, complete))
            await _settle(tail, reraise=True)
            self._inflight.clear()  # all acknowledged, skipped or refused by now
        except _ConnectionLost as exc:
            await _settle(tail)
            self._connection_lost(str(exc))
            await self._wait_reachable()
        except (_Abort, asyncio.CancelledError):
            await _settle(tail)
            raise
        except Exception as exc:  # never let one bad batch stop the mirror
            await _settle(tail)
            self._inflight.clear()
            log.debug("batch failure", exc_info=True)
            self._error(f"publishing a batch failed: {exc!r}")
        finally:
            with self._qlock:
                self._busy = False

    async def _resetup(self) -> None:
        """The server lost the unflushed domain skeleton: rebuild it, same ids."""
        with self._qlock:
            nodes = list(self._nodes.values())
        log.warning("re-creating the structure of %s on HSDS", self.domain_name)
        await self._setup_with_retries(nodes)
        self._need_setup = False

    def _take_batch(self) -> _Batch | None:
        with self._qlock:
            if not (self._pending or self._pending_tail or self._pending_nodes):
                return None
            batch = _Batch(
                nodes=self._pending_nodes,
                data=list(self._pending.values()),
                tail=list(self._pending_tail.values()),
                updates=self._pending_updates,
                since=self._pending_since,
            )
            self._pending, self._pending_tail, self._pending_nodes = {}, {}, []
            self._pending_bytes = 0
            self._pending_updates = 0
            for c in itertools.chain(batch.data, batch.tail):
                self._inflight[c.key] = c
            self._busy = True
            return batch

    async def _publish_data(self, batch: _Batch) -> bool:
        """Structure, then data chunks concurrently; False if some were superseded."""
        if batch.nodes:
            try:
                await self._ensure_nodes(batch.nodes)
            except _ConnectionLost:
                with self._qlock:
                    self._pending_nodes[:0] = batch.nodes
                raise
        return await self._send_chunks(batch.data)

    async def _publish_tail(self, batch: _Batch, complete: bool) -> None:
        """Status, then the generation: only once all of the batch's data is acknowledged."""
        if not complete:
            self._requeue(batch.tail)  # a newer update follows with its own tail
            self._forget_inflight(batch.tail)
            return
        if self.flush_before_generation and batch.data:
            # Durable data before the counter moves. Costs ~1 s on a default HSDS
            # (a DN writes objects back once they are 1 s old), hence off by default;
            # the watchdog flushes in the background instead.
            await self._flush()
        status = [c for c in batch.tail if c.path != self.generation_path]
        generation = [c for c in batch.tail if c.path == self.generation_path]
        await self._send_chunks(status)
        await self._send_chunks(generation)
        with self._qlock:
            self._stats.updates_published += 1
            self._counters["publish_latency_s"] = time.monotonic() - batch.since
        log.debug("published %d update(s), %d chunks", batch.updates, len(batch.data))

    def _forget_inflight(self, chunks: Iterable[_Chunk]) -> None:
        for c in chunks:
            if self._inflight.get(c.key) is c:
                del self._inflight[c.key]

    def _plan(self, chunks: Sequence[_Chunk]) -> list[_Request]:
        """Turn chunk copies into the fewest requests carrying only what changed."""
        requests: list[_Request] = []
        boxes: dict[str, list[_Box]] = defaultdict(list)
        skipped: list[_Chunk] = []
        for chunk in chunks:
            if chunk.path not in self._ids:
                self._error(f"{chunk.path}: not created on HSDS; update skipped")
                skipped.append(chunk)
                continue
            if chunk.version != self._versions.get(chunk.path):
                skipped.append(chunk)  # copy of a dataset since replaced: stale
                continue
            shadow = self._shadow_of(chunk)
            if isinstance(chunk.data, str):
                if shadow != chunk.data:
                    requests.append(_Request(chunk.path, None, {"value": chunk.data}, [chunk]))
                else:
                    skipped.append(chunk)
                continue
            box = _changed_box(chunk, shadow)
            if box is None:
                skipped.append(chunk)
            else:
                boxes[chunk.path].append(box)
        self._forget_inflight(skipped)
        unchanged = len(skipped)
        for path, group in boxes.items():
            for box in _merge_boxes(group, self.merge_bytes):
                select = _select_param(box.lo, box.hi) if box.lo else None
                requests.append(_Request(path, select, box.data.tobytes(), box.members))
        if unchanged:
            with self._qlock:
                self._counters["chunks_unchanged"] += unchanged
        return requests

    def _shadow_of(self, chunk: _Chunk) -> Shadow:
        shadow = self._shadow.get(chunk.key)
        if shadow is not None:
            return shadow
        return _ZERO if chunk.path in self._fresh and not isinstance(chunk.data, str) else _UNKNOWN

    async def _send_chunks(self, chunks: Sequence[_Chunk]) -> bool:
        """Send concurrently; False if some request was dropped as superseded."""
        requests = self._plan(chunks)
        if not requests:
            return True
        results = await _gather_limited((self._send(r) for r in requests), self.max_concurrency)
        return all(results)

    async def _send(self, req: _Request) -> bool:
        dset_id = self._ids[req.path]
        params = {"select": req.select} if req.select else {}
        attempt = 0
        while True:
            if attempt and self._superseded(req):
                self._forget_inflight(req.members)
                return False
            try:
                if isinstance(req.payload, bytes):
                    status, reason = await self._request(
                        "PUT", f"/datasets/{dset_id}/value", params=params, data=req.payload
                    )
                else:
                    status, reason = await self._request(
                        "PUT", f"/datasets/{dset_id}/value", params=params, json_body=req.payload
                    )
            except TimeoutError:
                status, reason = 408, "timeout"
            if status in _OK:
                self._acked(req)
                return True
            if status not in _RETRY:
                self._error(f"HSDS refused PUT {req.path}{req.select or ''}: {status} {reason}")
                self._forget_inflight(req.members)
                return True  # permanent: retrying cannot help; do not block the generation
            attempt += 1
            self._count_retry()
            await self._backoff(attempt)

    def _superseded(self, req: _Request) -> bool:
        with self._qlock:
            return all(m.key in self._pending or m.key in self._pending_tail for m in req.members)

    def _acked(self, req: _Request) -> None:
        self._last_write = time.monotonic()
        for m in req.members:
            self._shadow[m.key] = m.data
            self._unflushed[m.key] = m
        self._forget_inflight(req.members)
        with self._qlock:
            self._stats.bytes_sent += req.nbytes
            self._counters["value_puts"] += 1
            self._counters["chunks_sent"] += len(req.members)

    def _requeue(self, chunks: Iterable[_Chunk]) -> int:
        """Put chunks back into the backlog unless a newer copy is queued."""
        n = 0
        with self._qlock:
            for c in chunks:
                queue = self._pending_tail if self._is_tail(c.path) else self._pending
                if c.key not in queue:
                    queue[c.key] = c
                    self._pending_bytes += c.nbytes
                    n += 1
            if n and not self._pending_updates:
                self._pending_since = time.monotonic()
                self._pending_updates = 1
        return n

    # -- durability -------------------------------------------------------------------------
    async def _flush(self) -> None:
        """``PUT /?flush=1``; then what was written before it started is durable.

        HSDS answers once every object dirty at the start is on disk, or has been
        updated since: an updated chunk's newer copy thus stays "unflushed" here.
        """
        snapshot = dict(self._unflushed)
        nodes = list(self._unflushed_nodes)
        setup_done = not self._need_setup
        self._last_flush = time.monotonic()
        self._flushing = True
        try:
            status, reason = await self._call("PUT", "/", params={"flush": "1"})
        finally:
            self._flushing = False
        if status not in _OK:
            self._error(f"HSDS flush of {self.domain_name} failed: {status} {reason}")
            return
        for key, chunk in snapshot.items():
            if self._unflushed.get(key) is chunk:
                del self._unflushed[key]
        flushed = {id(n) for n in nodes}
        self._unflushed_nodes = [n for n in self._unflushed_nodes if id(n) not in flushed]
        self._setup_durable = self._setup_durable or setup_done
        with self._qlock:
            self._counters["flushes"] += 1

    async def _final_flush(self) -> bool:
        """Flush at close; False if the connection dropped and chunks were requeued."""
        assert self._io_lock is not None
        async with self._io_lock:
            try:
                await self._flush()
                return True
            except _ConnectionLost as exc:
                self._connection_lost(str(exc))
                await self._wait_reachable()
                return False

    def _connection_lost(self, why: str) -> None:
        """Re-queue what the server may have lost: in flight and unflushed chunks."""
        lost = list(self._inflight.values()) + list(self._unflushed.values())
        for c in lost:
            self._shadow[c.key] = _UNKNOWN  # resend whole chunks, not deltas
        requeued = self._requeue(lost)
        with self._qlock:
            self._pending_nodes[:0] = self._unflushed_nodes
            self._counters["reconnects"] += 1
            self._counters["requeued_chunks"] += requeued
        self._unflushed.clear()
        self._unflushed_nodes = []
        self._inflight.clear()
        if not self._setup_durable:
            self._need_setup = True  # the domain itself may be gone
        log.warning("HSDS connection lost (%s); %d chunk(s) queued for resend", why, requeued)

    async def _wait_reachable(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await self._backoff(attempt)
            try:
                start = await self._probe()
            except (TimeoutError, _ConnectionLost):
                self._count_retry()
                continue
            except HsdsWriterError as exc:  # it answers, but refuses us: requests will say so
                self._error(str(exc))
                return
            if start != self._server_start:
                log.warning("HSDS restarted; resuming %s", self.domain_name)
                self._server_start = start
            else:
                log.info("HSDS reachable again; resuming %s", self.domain_name)
            return

    async def _watchdog(self) -> None:
        """Flush in the background (concurrently with data), probe while idle."""
        assert self._io_lock is not None
        last_probe = time.monotonic()
        tick = min(self.flush_interval, self.probe_interval, 0.1)
        while True:
            await asyncio.sleep(tick)
            try:
                if self._flush_due():
                    await self._flush()
                if time.monotonic() - last_probe >= self.probe_interval and not self._io_lock.locked():
                    last_probe = time.monotonic()
                    async with self._io_lock:
                        await self._check_restart()
            except (TimeoutError, _ConnectionLost) as exc:
                await self._recover_idle(str(exc) or "timeout")
            except _Abort:
                return
            except Exception:  # keep watching; a bug here must not stop publishing
                log.exception("HSDS writer watchdog error")

    def _flush_due(self) -> bool:
        if self._flushing or not (self._unflushed or self._unflushed_nodes):
            return False
        now = time.monotonic()
        idle = now - self._last_write >= min(0.25, self.flush_interval)
        return idle or now - self._last_flush >= self.flush_interval

    async def _check_restart(self) -> None:
        try:
            start = await self._probe()
        except HsdsWriterError as exc:
            self._error(str(exc))
            return
        if start != self._server_start:
            # Restarted between our requests: what it had not flushed is gone.
            self._connection_lost("server restarted")
            self._server_start = start
            self._kick()

    async def _recover_idle(self, why: str) -> None:
        """A background request failed: recover here unless the sender is busy.

        A busy sender meets the same failure on its next request and recovers itself.
        """
        assert self._io_lock is not None
        if self._io_lock.locked():
            return
        async with self._io_lock:
            self._connection_lost(why)
            await self._wait_reachable()
        self._kick()


async def _settle(task: asyncio.Task[None] | None, reraise: bool = False) -> None:
    """Wait for ``task``; with ``reraise`` its failure propagates, else it is cancelled."""
    if task is None:
        return
    if not reraise:
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # we were cancelled, not the task
    except Exception:
        if reraise:
            raise


async def _gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    """Run coroutines with at most ``limit`` at once; cancel the rest on failure."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    tasks = [asyncio.ensure_future(run(c)) for c in coros]
    if not tasks:
        return []
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
