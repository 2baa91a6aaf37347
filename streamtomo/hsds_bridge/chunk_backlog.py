"""The writer's backlog: chunk copies waiting to be sent, shared by two threads.

The reducer thread adds (:meth:`ChunkBacklog.enqueue`, under ``domain.lock``), the
writer's loop takes batches; everything here is guarded by :attr:`ChunkBacklog.lock`.

* **Coalescing**: one queued copy per chunk; a newer update of a queued chunk
  replaces its data, so the backlog is bounded by the domain's size.
* **Bounded**: if ``max_backlog_bytes`` is smaller than that, an update that does not
  fit is handed back to the domain (its chunks are marked dirty again) and counted
  in ``dropped_updates``. Readers never see that intermediate state, but its data
  goes out with a later update or at close, so the domain still ends complete.
* **Tail**: status datasets and the generation counter queue apart from the data,
  because they may only be written once the data of their update is acknowledged.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from streamtomo.hsds_bridge.chunk_plan import ChunkCopy, ChunkKey, NodeSnapshot, capture_node, chunk_nbytes, copy_chunk
from streamtomo.hsds_bridge.domain import ChunkIndex, Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.hsds_settings import HsdsWriterSettings
from streamtomo.hsds_bridge.publisher import PublisherStats

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Batch:
    """What the loop took from the backlog in one go."""

    nodes: list[NodeSnapshot]
    data: list[ChunkCopy]
    tail: list[ChunkCopy]
    updates: int
    since: float  # monotonic time of the oldest notify in the batch


class ChunkBacklog:
    """Queued chunk copies and new structure, plus the counters both threads update."""

    def __init__(self, settings: HsdsWriterSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.nodes: dict[str, NodeSnapshot] = {}  # the structure as last captured
        self.pending: dict[ChunkKey, ChunkCopy] = {}  # dict order = age order
        self.pending_tail: dict[ChunkKey, ChunkCopy] = {}
        self.pending_nodes: list[NodeSnapshot] = []
        self.pending_bytes = 0
        self.pending_updates = 0
        self.pending_since = 0.0
        self.busy = False  # the loop is publishing a batch
        self.stats = PublisherStats()
        self.counters: dict[str, float] = defaultdict(float)

    # -- counters ----------------------------------------------------------------------
    def snapshot(self) -> PublisherStats:
        with self.lock:
            s = replace(self.stats, extra=dict(self.counters))
            s.backlog = self.pending_updates
            s.extra["backlog_bytes"] = float(self.pending_bytes)
            return s

    def count(self, name: str, n: float = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def count_retry(self) -> None:
        with self.lock:
            self.stats.retries += 1

    def error(self, message: str) -> None:
        with self.lock:
            self.stats.errors += 1
            self.stats.last_error = message
            n = self.stats.errors
        # counted always; logged for the first ten, then every hundredth (no flood)
        log.log(logging.ERROR if n <= 10 or n % 100 == 0 else logging.DEBUG, "%s (error %d)", message, n)

    # -- reducer side --------------------------------------------------------------------
    def capture(self, domain: Domain) -> list[NodeSnapshot]:
        """The whole structure, at start (caller holds ``domain.lock``)."""
        nodes = [capture_node(n) for n in domain.walk()]
        with self.lock:
            self.nodes = {n.path: n for n in nodes}
        return nodes

    def enqueue(self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]], force: bool) -> None:
        """Copy ``dirty`` chunks into the backlog (caller holds ``domain.lock``).

        ``force``: at start and at close completeness beats the backlog limit.
        """
        if not dirty:
            return
        with self.lock:
            self.pending_nodes.extend(self._capture_new_nodes(domain, dirty))
            items = self._dirty_items(domain, dirty)
            growth = sum(chunk_nbytes(ds, idx) - self._queued_nbytes((ds.path, idx)) for ds, idx in items)
            has_backlog = bool(self.pending or self.pending_tail)
            if not force and has_backlog and self.pending_bytes + growth > self.settings.max_backlog_bytes:
                self._defer(items)
                return
            for ds, idx in items:
                self._queue(copy_chunk(ds, self.nodes[ds.path], idx))
            if not self.pending_updates:
                self.pending_since = time.monotonic()
            self.pending_updates += 1

    def _capture_new_nodes(self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]]) -> list[NodeSnapshot]:
        """Structure the mirror lacks: new nodes, and datasets replaced by new shapes."""
        new: list[NodeSnapshot] = []
        if not all(p in self.nodes for p in dirty):
            for node in domain.walk():
                if node.path not in self.nodes:
                    spec = self._try_capture(node)
                    if spec is not None:
                        self.nodes[node.path] = spec
                        new.append(spec)
        for path in dirty:
            known = self.nodes.get(path)
            if known is None or any(known is n for n in new):
                continue
            spec = self._try_capture(domain.dataset(path), known.version + 1)
            if spec is not None and not spec.same_layout(known):
                # Replaced with another shape/dtype (e.g. a new set of slices): a new
                # HSDS dataset takes the link; queued copies of the old one are stale.
                log.info("%s changed to %s %s; replacing it on HSDS", path, spec.dtype, spec.shape)
                self.nodes[path] = spec
                new.append(spec)
                self._drop_queued(path)
        return new

    def _try_capture(self, node: DomainGroup | DomainDataset, version: int = 0) -> NodeSnapshot | None:
        try:
            return capture_node(node, version)
        except TypeError as exc:
            self.error(str(exc))
            return None

    def _drop_queued(self, path: str) -> None:
        for queue in (self.pending, self.pending_tail):
            for key in [k for k in queue if k[0] == path]:
                self.pending_bytes -= queue.pop(key).nbytes

    def _dirty_items(
        self, domain: Domain, dirty: Mapping[str, set[ChunkIndex]]
    ) -> list[tuple[DomainDataset, ChunkIndex]]:
        items: list[tuple[DomainDataset, ChunkIndex]] = []
        for path, indices in dirty.items():
            if path in self.nodes:
                ds = domain.dataset(path)
                items.extend((ds, idx) for idx in sorted(indices))
        return items

    def _queued_nbytes(self, key: ChunkKey) -> int:
        old = self.pending.get(key) or self.pending_tail.get(key)
        return old.nbytes if old is not None else 0

    def _queue(self, chunk: ChunkCopy) -> None:
        queue = self.pending_tail if self.settings.is_tail(chunk.path) else self.pending
        old = queue.pop(chunk.key, None)  # re-insert: keeps dict order = age order
        if old is not None:
            self.pending_bytes -= old.nbytes
            self.counters["coalesced_chunks"] += 1
        queue[chunk.key] = chunk
        self.pending_bytes += chunk.nbytes

    def _defer(self, items: list[tuple[DomainDataset, ChunkIndex]]) -> None:
        """Backlog full: hand the chunks back to the domain (still dirty there)."""
        for ds, idx in items:
            ds.mark_dirty(ds.chunk_selection(idx))
        self.stats.dropped_updates += 1
        self.counters["deferred_chunks"] += len(items)
        n = self.stats.dropped_updates
        if n == 1 or n % self.settings.drop_log_every == 0:
            log.warning(
                "HSDS backlog full (%.1f MB >= %.1f MB): %d update(s) not published so far; "
                "their data stays dirty and is sent later",
                self.pending_bytes / 1e6, self.settings.max_backlog_bytes / 1e6, n,
            )  # fmt: skip

    # -- loop side ---------------------------------------------------------------------
    def has_work(self) -> bool:
        with self.lock:
            return bool(self.pending or self.pending_tail or self.pending_nodes)

    def take_batch(self, inflight: dict[ChunkKey, ChunkCopy]) -> Batch | None:
        """Everything queued, as one batch; its chunks are recorded as in flight."""
        with self.lock:
            if not (self.pending or self.pending_tail or self.pending_nodes):
                return None
            batch = Batch(
                nodes=self.pending_nodes,
                data=list(self.pending.values()),
                tail=list(self.pending_tail.values()),
                updates=self.pending_updates,
                since=self.pending_since,
            )
            self.pending, self.pending_tail, self.pending_nodes = {}, {}, []
            self.pending_bytes = 0
            self.pending_updates = 0
            for c in itertools.chain(batch.data, batch.tail):
                inflight[c.key] = c
            self.busy = True
            return batch

    def requeue(self, chunks: Iterable[ChunkCopy]) -> int:
        """Put chunks back unless a newer copy is queued; how many went back."""
        n = 0
        with self.lock:
            for c in chunks:
                queue = self.pending_tail if self.settings.is_tail(c.path) else self.pending
                if c.key not in queue:
                    queue[c.key] = c
                    self.pending_bytes += c.nbytes
                    n += 1
            if n and not self.pending_updates:
                self.pending_since = time.monotonic()
                self.pending_updates = 1
        return n

    def requeue_nodes(self, nodes: list[NodeSnapshot]) -> None:
        with self.lock:
            self.pending_nodes[:0] = nodes

    def superseded(self, members: Iterable[ChunkCopy]) -> bool:
        """A newer copy of every one of these chunks is queued: sending them is moot."""
        with self.lock:
            return all(m.key in self.pending or m.key in self.pending_tail for m in members)

    def undelivered_at_close(self, in_flight: int) -> int:
        """close() ends before HSDS acknowledged everything: count the updates still
        queued or in flight (at least one) as dropped; returns the chunks left."""
        with self.lock:
            left = len(self.pending) + len(self.pending_tail) + in_flight
            self.stats.dropped_updates += max(1, self.pending_updates + (1 if self.busy or in_flight else 0))
            self.counters["unsent_chunks"] = left
            return left
