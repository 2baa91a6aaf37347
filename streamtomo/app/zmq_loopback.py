"""Keeping dranspose's service processes on loopback, and their ingesters going.

Which sockets dranspose opens, and how they are kept on loopback:

=====================  ===============================  =====================================
service                socket                           how it binds
=====================  ===============================  =====================================
controller             HTTP API (uvicorn)               ``--host/--port``: we pass 127.0.0.1
reducer                HTTP API (uvicorn)               same
reducer                ZeroMQ PULL for worker results   ``tcp://*:PORT`` (hard-coded)
ingester (each)        ZeroMQ ROUTER towards workers    ``tcp://*:PORT`` (hard-coded)
our reducer class      live domain HTTP (aiohttp)       ``STREAMTOMO_HTTP_HOST`` (127.0.0.1)
Redis                  RESP                             ``--bind 127.0.0.1``
workers                (connect only: DEALER, PUSH)     -
=====================  ===============================  =====================================

The two hard-coded wildcard binds are rewritten in the service processes: this
module is also their entry point (``python -m streamtomo.app.services ...``), and it
patches ``zmq.Socket.bind`` so that ``tcp://*:`` becomes ``tcp://127.0.0.1:``
before dranspose opens anything. A deployment across machines must open instead:
the controller's HTTP port to the beamline, Redis and the ingester and reducer
ZeroMQ ports to the services, and the live domain's HTTP port to readers.

The ingesters also tolerate a worker that died: dranspose's ingester raises
``EHOSTUNREACH`` (its ROUTER socket is ``ROUTER_MANDATORY``) when an event's
worker is gone, which ends its forwarding task and stalls the scan. Ours drop that
worker's message with a warning instead, so the scan goes on with the others and
the lost frames show in ``/entry/status/lost_frames``. And they wait for their
workers' pings a second at a time (dranspose's loop woke every millisecond).
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from streamtomo.app.processes import HOST


def bind_loopback(host: str = HOST) -> None:
    """dranspose binds its ZeroMQ ROUTER/PULL sockets to ``tcp://*:PORT``: rewrite
    wildcard binds to ``host`` before any socket exists."""
    import zmq

    original = zmq.Socket.bind

    def bind(self: zmq.Socket[Any], addr: str) -> Any:
        for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
            if addr.startswith(wildcard):
                addr = f"tcp://{host}:{addr[len(wildcard) :]}"
        return original(self, addr)

    zmq.Socket.bind = bind  # type: ignore[method-assign]


# Results queued behind each worker, and in front of the reducer: fewer there, since
# a result may be a partial sum of tens of megabytes and the reducer's memory is what
# it publishes plus this queue.
WORKER_QUEUE_MESSAGES = 16
REDUCER_QUEUE_MESSAGES = 4
# How long a closing worker may still try to deliver its queued results.
PUSH_LINGER_MS = 2000


def bound_result_queues(worker_queue: int = WORKER_QUEUE_MESSAGES, reducer_queue: int = REDUCER_QUEUE_MESSAGES) -> None:
    """Backpressure instead of memory: ZeroMQ queues up to 1000 messages per socket by
    default, and a worker result holds a projection's rows (4 MB at 1024^2) or partial
    sums (tens of MB). A reducer slower than its workers then held every result of a
    scan (3 to 10 times the arrays it publishes). With short queues on the results'
    PUSH (workers) and PULL (reducer) sockets a worker waits to send, stops taking
    events, and the wait travels back to the ingesters and the detector's buffers.
    The high-water marks must be set before a socket binds or connects.
    """
    import zmq

    bind, connect = zmq.Socket.bind, zmq.Socket.connect

    # The reducer binds its results' PULL socket; workers connect PUSH sockets to it.
    # (An ingester's PULL towards the detector connects: its queue is left as it is.)
    def bounded_bind(self: zmq.Socket[Any], addr: str) -> Any:
        if self.type == zmq.PULL:
            self.setsockopt(zmq.RCVHWM, reducer_queue)
        return bind(self, addr)

    def bounded_connect(self: zmq.Socket[Any], addr: str) -> Any:
        if self.type == zmq.PUSH:
            self.setsockopt(zmq.SNDHWM, worker_queue)
            # dranspose's worker closes with ``ctx.destroy()``, which waits forever
            # (ZeroMQ's default linger) for results to a reducer that is gone.
            self.setsockopt(zmq.LINGER, PUSH_LINGER_MS)
        elif self.type == zmq.DEALER:
            # A worker's socket to an ingester sends only pings, which a dead ingester
            # never takes: ``ctx.destroy()`` waited for them forever, and every worker
            # of a deployment whose ingester died needed SIGKILL after 10 s.
            self.setsockopt(zmq.LINGER, 0)
        return connect(self, addr)

    zmq.Socket.bind = bounded_bind  # type: ignore[method-assign]
    zmq.Socket.connect = bounded_connect  # type: ignore[method-assign]


# How long an ingester's wait for worker pings may block (ms). dranspose passes
# ``timeout=1`` to ``Poller.poll``, which ZeroMQ reads as 1 ms.
ACCEPT_POLL_MS = 1000
# A worker not heard from for this long is dropped from the ingester's list (dranspose's value).
WORKER_SILENT_S = 4


def tolerant_ingester(cls: type[Any]) -> type[Any]:
    """The ingester class, dropping (with a warning) messages for workers that died,
    handing a worker's name over to its newest connection, and waiting for worker pings
    without waking a thousand times a second."""
    import zmq
    import zmq.asyncio
    from dranspose.protocol import ConnectedWorker

    class Tolerant(cls):  # type: ignore[misc]
        def open_socket(self) -> None:
            """dranspose's ROUTER socket, and a worker's new connection under a name
            already in use takes the name over (ZMQ_ROUTER_HANDOVER). Without it the
            ROUTER kept routing the name to the old connection: a worker stopped for
            12 s (SIGSTOP, a paused VM) reconnected on resuming, while its old TCP
            connection was not yet closed here, and its pings and the next scan's
            events went nowhere for 10 s more (the scan's first event, broadcast, then
            never completed and the scan ended with nothing reduced)."""
            super().open_socket()
            self.out_socket.setsockopt(zmq.ROUTER_HANDOVER, 1)

        async def _send_workermessages(self, workermessages: dict[Any, Any]) -> None:
            for worker, message in workermessages.items():
                try:
                    await super()._send_workermessages({worker: message})
                except zmq.ZMQError as error:
                    if error.errno != zmq.EHOSTUNREACH:
                        raise
                    self._logger.warning(
                        "worker %s is gone: event %d not delivered to it", worker, message.event_number
                    )

        async def accept_workers(self) -> None:
            """dranspose's loop, polling up to a second instead of a millisecond: measured,
            every ingester of an idle deployment took 13% of a core (0.65 s of CPU in 5 s),
            on a 2-core machine a quarter of a core beside the workers during a scan. A
            ping is still taken as it comes; silent workers are pruned at least every second."""
            poller = zmq.asyncio.Poller()
            poller.register(self.out_socket, zmq.POLLIN)
            while True:
                socks = dict(await poller.poll(timeout=ACCEPT_POLL_MS))
                now = time.time()
                self.state.connected_workers = {
                    uuid: cw
                    for uuid, cw in self.state.connected_workers.items()
                    if now - cw.last_seen < WORKER_SILENT_S
                }
                for sock in socks:
                    data = await sock.recv_multipart()
                    connected = ConnectedWorker(name=data[0], service_uuid=UUID(bytes=data[1]))
                    new = connected.service_uuid not in self.state.connected_workers
                    self.state.connected_workers[connected.service_uuid] = connected
                    if new:  # the controller learns of a new worker at once
                        await self.publish_config()

    Tolerant.__name__ = Tolerant.__qualname__ = f"Tolerant{cls.__name__}"
    return Tolerant
