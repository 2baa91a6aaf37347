"""Sending the backlog to HSDS: batches, only what changed, status and generation last.

This is the first half of the writer's background loop (the second,
:mod:`hsds_mirror`, adds durability, recovery and the final verification).

* **Ordering**: data requests go out concurrently; only when all are acknowledged
  are the status datasets written, then the generation counter last. Readers poll
  that counter, so it never announces data HSDS does not have yet.
* **Pipelining**: the data of the next batch goes out while the previous batch's
  status and generation are still in flight.
* **Retries**: a busy answer (503 back-pressure, timeouts) is retried until the
  request is superseded by a newer copy of all its chunks; a refusal (4xx) is
  counted and logged, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streamtomo.hsds_bridge.chunk_backlog import Batch, ChunkBacklog
from streamtomo.hsds_bridge.chunk_plan import (
    UNKNOWN,
    ZEROS,
    ChangedBox,
    ChunkCopy,
    ChunkKey,
    NodeSnapshot,
    Shadow,
    changed_box,
    merge_boxes,
    select_param,
)
from streamtomo.hsds_bridge.hsds_client import (
    OK,
    RETRY,
    ConnectionLost,
    DeadlineReached,
    HsdsClient,
)
from streamtomo.hsds_bridge.hsds_domain_setup import DomainSetup, gather_limited
from streamtomo.hsds_bridge.hsds_settings import HsdsWriterSettings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PutRequest:
    """One ``PUT .../value``: a hyperslab (``select``) of one dataset, or a JSON value."""

    path: str
    select: str | None
    payload: bytes | dict[str, str]
    members: list[ChunkCopy]

    @property
    def nbytes(self) -> int:
        return len(self.payload) if isinstance(self.payload, bytes) else 0


class ChunkSender:
    """What HSDS holds and the coroutines that send to it (loop thread only)."""

    def __init__(
        self, client: HsdsClient, setup: DomainSetup, backlog: ChunkBacklog, settings: HsdsWriterSettings
    ) -> None:
        self.client = client
        self.setup = setup
        self.backlog = backlog
        self.settings = settings
        self.shadow: dict[ChunkKey, Shadow] = {}  # what the server holds, per chunk
        self.unflushed: dict[ChunkKey, ChunkCopy] = {}  # acknowledged, maybe not durable
        self.acknowledged: dict[ChunkKey, ChunkCopy] = {}  # last copy HSDS acknowledged, per chunk
        self.unflushed_nodes: list[NodeSnapshot] = []
        self.inflight: dict[ChunkKey, ChunkCopy] = {}
        # Copies HSDS refused (a status retrying cannot change) that no later copy of the
        # same chunk has replaced: HSDS holds something else there, so while one is left
        # the domain is not complete (the final check sends them again).
        self.refused: dict[ChunkKey, ChunkCopy] = {}
        self.server_start: object = None
        self.last_write = 0.0
        self.last_flush = 0.0
        self.flushing = False
        self.flush_refused = False  # the last flush was answered with an error: nothing is known durable
        self.setup_durable = False  # domain, ACLs and objects survived a flush
        self.need_setup = False
        self.closing = False
        self.complete = False  # set once the final domain is verified
        self.wake = asyncio.Event()
        self.io_lock = asyncio.Lock()

    def forget_chunks(self, path: str) -> None:
        """A (re)created dataset: nothing the mirror knew about its chunks holds."""
        for key in [k for k in self.shadow if k[0] == path]:
            del self.shadow[key]
        for key in [k for k in self.unflushed if k[0] == path]:
            del self.unflushed[key]
        for key in [k for k in self.acknowledged if k[0] == path]:
            del self.acknowledged[key]

    # -- setup -------------------------------------------------------------------------
    async def setup_with_retries(self, nodes: list[NodeSnapshot]) -> None:
        attempt = 0
        while True:
            try:
                t0 = time.monotonic()
                self.server_start = await self.client.probe()
                await self.setup.run(nodes)
                self.unflushed_nodes.extend(nodes)
                self.setup_durable = False  # the watchdog's next flush makes it durable
                log.info(
                    "HSDS domain %s ready: %d objects in %.0f ms",
                    self.setup.name, len(nodes), (time.monotonic() - t0) * 1e3,
                )  # fmt: skip
                return
            except (TimeoutError, ConnectionLost) as exc:
                attempt += 1
                self.backlog.count_retry()
                if attempt == 1:
                    log.warning("HSDS unreachable during setup (%s); retrying", exc)
                await self.client.backoff(attempt)

    # -- recovery: implemented by HsdsMirror, declared here for the sending code ----------
    async def flush(self) -> None:
        raise NotImplementedError

    def connection_lost(self, why: str) -> None:
        raise NotImplementedError

    async def wait_reachable(self) -> None:
        raise NotImplementedError

    # -- sending -----------------------------------------------------------------------
    async def busy_period(self) -> None:
        """Publish batches until the queue is empty, pipelined.

        The data of batch N+1 goes out while batch N's status and generation are
        still in flight; generations stay in order and each follows its own data.
        """
        tail: asyncio.Task[None] | None = None
        try:
            while (batch := self.backlog.take_batch(self.inflight)) is not None:
                if self.need_setup:
                    await settle(tail)
                    tail = None
                    await self.resetup()
                complete = await self.publish_data(batch)
                if not complete:
                    # Before any await, so before the next batch is taken: the newer
                    # update that superseded this one is still queued, and its status
                    # and generation keep their place (put back later, the old tail
                    # found them gone into the next batch and followed them as newer).
                    self.return_tail(batch)
                await settle(tail, reraise=True)
                tail = asyncio.ensure_future(self.publish_tail(batch)) if complete else None
            await settle(tail, reraise=True)
            self.inflight.clear()  # all acknowledged, skipped or refused by now
        except ConnectionLost as exc:
            await settle(tail)
            self.connection_lost(str(exc))
            await self.wait_reachable()
        except (DeadlineReached, asyncio.CancelledError):
            await settle(tail)
            raise
        except Exception as exc:  # never let one bad batch stop the mirror
            await settle(tail)
            self.inflight.clear()
            log.debug("batch failure", exc_info=True)
            self.backlog.error(f"publishing a batch failed: {exc!r}")
        finally:
            with self.backlog.lock:
                self.backlog.busy = False

    async def resetup(self) -> None:
        """The server lost the unflushed domain skeleton: rebuild it, same ids."""
        with self.backlog.lock:
            nodes = list(self.backlog.nodes.values())
        log.warning("re-creating the structure of %s on HSDS", self.setup.name)
        await self.setup_with_retries(nodes)
        self.need_setup = False

    async def publish_data(self, batch: Batch) -> bool:
        """Structure, then data chunks concurrently; False if some were superseded."""
        if batch.nodes:
            try:
                await self.setup.ensure_nodes(batch.nodes)
            except ConnectionLost:
                self.backlog.requeue_nodes(batch.nodes)
                raise
            self.unflushed_nodes.extend(batch.nodes)
        return await self.send_chunks(batch.data)

    def return_tail(self, batch: Batch) -> None:
        """A batch whose data was superseded: its status and generation go back to the
        queue where no newer copy is queued (a newer update follows with its own)."""
        self.backlog.requeue(batch.tail)
        self.forget_inflight(batch.tail)

    async def publish_tail(self, batch: Batch) -> None:
        """Status, then the generation: only once all of the batch's data is acknowledged."""
        if self.settings.flush_before_generation and batch.data:
            # Durable data before the counter moves. Costs ~1 s on a default HSDS
            # (a DN writes objects back once they are 1 s old), hence off by default;
            # the watchdog flushes in the background instead.
            await self.flush()
        generation_path = self.settings.generation_path
        await self.send_chunks([c for c in batch.tail if c.path != generation_path])
        await self.send_chunks([c for c in batch.tail if c.path == generation_path])
        with self.backlog.lock:
            self.backlog.stats.updates_published += 1
            self.backlog.counters["publish_latency_s"] = time.monotonic() - batch.since
        log.debug("published %d update(s), %d chunks", batch.updates, len(batch.data))

    def forget_inflight(self, chunks: Iterable[ChunkCopy]) -> None:
        for c in chunks:
            if self.inflight.get(c.key) is c:
                del self.inflight[c.key]

    def plan(self, chunks: Sequence[ChunkCopy]) -> list[PutRequest]:
        """Turn chunk copies into the fewest requests carrying only what changed."""
        requests: list[PutRequest] = []
        boxes: dict[str, list[ChangedBox]] = defaultdict(list)
        skipped: list[ChunkCopy] = []
        for chunk in chunks:
            if chunk.path not in self.setup.ids:
                self.backlog.error(f"{chunk.path}: not created on HSDS; update skipped")
                skipped.append(chunk)
                continue
            if chunk.version != self.setup.versions.get(chunk.path):
                skipped.append(chunk)  # copy of a dataset since replaced: stale
                continue
            shadow = self.shadow_of(chunk)
            if isinstance(chunk.data, str):
                if shadow != chunk.data:
                    requests.append(PutRequest(chunk.path, None, {"value": chunk.data}, [chunk]))
                else:
                    skipped.append(chunk)
                continue
            box = changed_box(chunk, shadow)
            if box is None:
                skipped.append(chunk)
            else:
                boxes[chunk.path].append(box)
        self.forget_inflight(skipped)
        for path, group in boxes.items():
            for box in merge_boxes(group, self.settings.merge_bytes):
                select = select_param(box.lo, box.hi) if box.lo else None
                requests.append(PutRequest(path, select, box.data.tobytes(), box.members))
        if skipped:
            self.backlog.count("chunks_unchanged", len(skipped))
        return requests

    def shadow_of(self, chunk: ChunkCopy) -> Shadow:
        shadow = self.shadow.get(chunk.key)
        if shadow is not None:
            return shadow
        return ZEROS if chunk.path in self.setup.fresh and not isinstance(chunk.data, str) else UNKNOWN

    async def send_chunks(self, chunks: Sequence[ChunkCopy]) -> bool:
        """Send concurrently; False if some request was dropped as superseded."""
        requests = self.plan(chunks)
        if not requests:
            return True
        results = await gather_limited((self.send(r) for r in requests), self.settings.max_concurrency)
        return all(results)

    async def send(self, req: PutRequest) -> bool:
        dset_id = self.setup.ids[req.path]
        params = {"select": req.select} if req.select else {}
        attempt = 0
        while True:
            if attempt and self.backlog.superseded(req.members):
                self.forget_inflight(req.members)
                return False
            try:
                if isinstance(req.payload, bytes):
                    status, reason = await self.client.request(
                        "PUT", f"/datasets/{dset_id}/value", params=params, data=req.payload
                    )
                else:
                    status, reason = await self.client.request(
                        "PUT", f"/datasets/{dset_id}/value", params=params, json_body=req.payload
                    )
            except TimeoutError:
                status, reason = 408, "timeout"
            if status in OK:
                self.acked(req)
                return True
            if status not in RETRY:
                self.backlog.error(f"HSDS refused PUT {req.path}{req.select or ''}: {status} {reason}")
                for m in req.members:
                    self.refused[m.key] = m
                self.forget_inflight(req.members)
                return True  # permanent: retrying cannot help; do not block the generation
            attempt += 1
            self.backlog.count_retry()
            await self.client.backoff(attempt)

    def acked(self, req: PutRequest) -> None:
        self.last_write = time.monotonic()
        for m in req.members:
            self.shadow[m.key] = m.data
            self.unflushed[m.key] = m
            self.acknowledged[m.key] = m
            self.refused.pop(m.key, None)
        self.forget_inflight(req.members)
        with self.backlog.lock:
            self.backlog.stats.bytes_sent += req.nbytes
            self.backlog.counters["value_puts"] += 1
            self.backlog.counters["chunks_sent"] += len(req.members)


async def settle(task: asyncio.Task[None] | None, reraise: bool = False) -> None:
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
