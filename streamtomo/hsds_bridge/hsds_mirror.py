"""Durability, recovery and the final check of the writer's background loop.

* **Durability**: HSDS data nodes keep a write-back cache; an acknowledged write is
  only durable after ``PUT /?domain=...&flush=1``. Chunks written since the last
  flush are remembered; when the connection drops (or the server's start time
  changes) they are re-sent in full, so a killed and restarted server ends with the
  complete domain. A watchdog flushes in the background and probes while idle.
  A flush is only believed when the server that answers it is the one that
  acknowledged the chunks: a server restarted between the acknowledgements and the
  flush (its successor answers the flush, the retries having waited through the
  restart) lost them, and they are sent again.
* **Complete means complete**: at close, after the final flush, the domain is read
  back the way h5pyd opens it (:mod:`hsds_verify`). Whatever a reader would miss (an
  object or link that a stalled server lost, a generation that did not land, a chunk
  or a flush HSDS refused) is repaired and checked again; only then is the domain
  called complete. The loop
  keeps at it for as long as the server stays away (up to ``give_up_after``), so a
  stall of any length ends complete once HSDS answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from streamtomo.hsds_bridge.chunk_plan import UNKNOWN, ChunkCopy
from streamtomo.hsds_bridge.hsds_client import ConnectionLost, DeadlineReached, HsdsWriterError
from streamtomo.hsds_bridge.hsds_sender import ChunkSender
from streamtomo.hsds_bridge.hsds_verify import find_unreadable

log = logging.getLogger(__name__)


class HsdsMirror(ChunkSender):
    """The whole background side: :class:`ChunkSender` plus durability and verification."""

    async def run(self) -> None:
        """Publish until closed; returns once the final domain is flushed and verified."""
        watchdog = asyncio.create_task(self.watchdog())
        try:
            while True:
                if not self.backlog.has_work():
                    if self.closing:
                        if await self.finish():
                            return
                        continue
                    await self.wake.wait()
                    self.wake.clear()
                    continue
                async with self.io_lock:
                    await self.busy_period()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    # -- durability -------------------------------------------------------------------------
    async def flush(self, rescan: bool = False) -> None:
        """``PUT /?flush=1``; then what was written before it started is durable.

        HSDS answers once every object dirty at the start is on disk, or has been
        updated since: an updated chunk's newer copy thus stays "unflushed" here.
        ``rescan``: also rewrite the domain summary h5pyd opens with (see hsds_verify).
        """
        snapshot = dict(self.unflushed)
        nodes = list(self.unflushed_nodes)
        setup_done = not self.need_setup
        self.last_flush = time.monotonic()
        self.flushing = True
        try:
            params = {"flush": "1", "rescan": "1"} if rescan else {"flush": "1"}
            status, reason = await self.client.call("PUT", "/", params=params)
        finally:
            self.flushing = False
        if status not in (200, 201, 204):
            self.flush_refused = True
            self.backlog.error(f"HSDS flush of {self.setup.name} failed: {status} {reason}")
            return
        # Which server answered: one restarted since it acknowledged these chunks lost
        # them, whatever its flush says. Either way (or no answer) it is a lost connection,
        # recovered where one met while sending is: by the sender itself when it is busy
        # (requeue, wait, the new start time), never from here under its feet.
        try:
            start = await self.client.probe()
        except TimeoutError as exc:
            raise ConnectionLost(f"no start time after a flush: {exc or 'timeout'}") from exc
        except HsdsWriterError as exc:  # it answers but refuses the probe: durability unknown
            self.flush_refused = True
            self.backlog.error(f"HSDS flush of {self.setup.name}: the server's start time was refused: {exc}")
            return
        self.flush_refused = False
        if start != self.server_start:
            raise ConnectionLost("server restarted before its flush")  # nothing counted flushed
        for key, chunk in snapshot.items():
            if self.unflushed.get(key) is chunk:
                del self.unflushed[key]
        flushed = {id(n) for n in nodes}
        self.unflushed_nodes = [n for n in self.unflushed_nodes if id(n) not in flushed]
        self.setup_durable = self.setup_durable or setup_done
        self.backlog.count("flushes")

    async def finish(self) -> bool:
        """Final flush and verification; False: something was re-queued, go round again."""
        async with self.io_lock:
            try:
                await self.flush(rescan=True)
                return await self.verify_and_repair()
            except ConnectionLost as exc:
                self.connection_lost(str(exc))
                await self.wait_reachable()
                return False

    async def verify_and_repair(self) -> bool:
        """Read the domain back as h5pyd would; repair what a reader would miss.

        True: done (complete, or given up with an error); False: go round again.
        """
        with self.backlog.lock:
            nodes = list(self.backlog.nodes.values())
        problems = await find_unreadable(self.client, self.setup, nodes, self.shadow)
        if not problems and not self.refused and not self.flush_refused:
            self.complete = not self.backlog.has_work()
            return self.complete
        self.backlog.count("verify_repairs")
        attempt = int(self.backlog.counters["verify_repairs"])
        why = [p.why for p in problems[:5]]
        why += [f"{len(self.refused)} chunk(s) HSDS refused"] if self.refused else []
        why += ["its flush was refused"] if self.flush_refused else []
        log.warning(
            "HSDS domain %s is not complete for readers (%s); repairing (round %d)",
            self.setup.name, "; ".join(why), attempt,
        )  # fmt: skip
        if attempt > self.settings.verify_rounds:
            self.backlog.error(f"HSDS domain {self.setup.name} still incomplete after {attempt - 1} repairs")
            return True  # counted and logged as an error: never claims complete
        for problem in problems:
            if problem.node is not None:
                try:  # idempotent: re-links an object that exists, re-creates a lost one
                    await self.setup.create_node(problem.node)
                except HsdsWriterError as exc:
                    self.backlog.error(f"repairing {problem.path}: {exc}")
            if problem.resend:
                self.resend_dataset(problem.path)
        if self.refused:  # once more: a refusal may not be for good (a busy node, a race)
            copies = list(self.refused.values())
            self.refused.clear()
            self.resend_whole(copies)
        await self.client.backoff(attempt)
        return False

    def resend_dataset(self, path: str) -> None:
        """Queue the last acknowledged copy of every chunk of ``path`` again, whole."""
        self.resend_whole([c for c in self.acknowledged.values() if c.path == path])

    def resend_whole(self, chunks: list[ChunkCopy]) -> int:
        """Queue ``chunks`` again as whole chunks, not deltas against what HSDS may no
        longer hold; how many went back (a newer copy queued already stays)."""
        for c in chunks:
            self.shadow[c.key] = UNKNOWN
        return self.backlog.requeue(chunks)

    # -- recovery ---------------------------------------------------------------------------
    def connection_lost(self, why: str) -> None:
        """Re-queue what the server may have lost: in flight and unflushed chunks."""
        requeued = self.resend_whole(list(self.inflight.values()) + list(self.unflushed.values()))
        self.backlog.requeue_nodes(self.unflushed_nodes)
        self.backlog.count("reconnects")
        self.backlog.count("requeued_chunks", requeued)
        self.unflushed.clear()
        self.unflushed_nodes = []
        self.inflight.clear()
        if not self.setup_durable:
            self.need_setup = True  # the domain itself may be gone
        log.warning("HSDS connection lost (%s); %d chunk(s) queued for resend", why, requeued)

    async def wait_reachable(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await self.client.backoff(attempt)
            try:
                start = await self.client.probe()
            except (TimeoutError, ConnectionLost):
                self.backlog.count_retry()
                continue
            except HsdsWriterError as exc:  # it answers, but refuses us: requests will say so
                self.backlog.error(str(exc))
                return
            if start != self.server_start:
                log.warning("HSDS restarted; resuming %s", self.setup.name)
                self.server_start = start
            else:
                log.info("HSDS reachable again; resuming %s", self.setup.name)
            return

    async def watchdog(self) -> None:
        """Flush in the background (concurrently with data), probe while idle."""
        last_probe = time.monotonic()
        tick = min(self.settings.flush_interval, self.settings.probe_interval, 0.1)
        while True:
            await asyncio.sleep(tick)
            try:
                if self.flush_due():
                    await self.flush()
                if time.monotonic() - last_probe >= self.settings.probe_interval and not self.io_lock.locked():
                    last_probe = time.monotonic()
                    async with self.io_lock:
                        await self.check_restart()
            except (TimeoutError, ConnectionLost) as exc:
                await self.recover_idle(str(exc) or "timeout")
            except DeadlineReached:
                return
            except Exception:  # keep watching; a bug here must not stop publishing
                log.exception("HSDS writer watchdog error")

    def flush_due(self) -> bool:
        if self.flushing or not (self.unflushed or self.unflushed_nodes):
            return False
        now = time.monotonic()
        idle = now - self.last_write >= min(0.25, self.settings.flush_interval)
        return idle or now - self.last_flush >= self.settings.flush_interval

    async def check_restart(self) -> None:
        try:
            start = await self.client.probe()
        except HsdsWriterError as exc:
            self.backlog.error(str(exc))
            return
        if start != self.server_start:
            # Restarted between our requests: what it had not flushed is gone.
            self.connection_lost("server restarted")
            self.server_start = start
            self.wake.set()

    async def recover_idle(self, why: str) -> None:
        """A background request failed: recover here unless the sender is busy.

        A busy sender meets the same failure on its next request and recovers itself.
        """
        if self.io_lock.locked():
            return
        async with self.io_lock:
            self.connection_lost(why)
            await self.wait_reachable()
        self.wake.set()
