"""Entry point of one dranspose service process: ``python -m streamtomo.app.services KIND``.

:class:`streamtomo.app.deployment.LocalDeployment` starts the controller, the
reducer, each worker and each ingester through this module, so that every one of
them binds to loopback only and tolerates dead workers
(:mod:`streamtomo.app.zmq_loopback`) before dranspose opens a socket, logs to the
controller's log stream, and closes cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from streamtomo.app import (
    blocking_reads,
    completion_order,
    controller_guard,
    departed_workers,
    event_assignments,
    finished_updates,
    held_result_loop,
    parameter_versions,
    reduction_progress,
    result_batches,
    result_frames,
    result_receive,
    stalled_writes,
    superseded_parameters,
    task_cancel,
)
from streamtomo.app.processes import HOST
from streamtomo.app.service_lifecycle import add_redis_log_handler, run_and_exit, run_until_sigterm
from streamtomo.app.zmq_loopback import bind_loopback, bound_result_queues, tolerant_ingester

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _import(path: str) -> Any:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _serve_app(app_path: str, port: int) -> None:
    import uvicorn

    app = _import(app_path)
    # uvicorn turns SIGTERM into a graceful shutdown: the app's lifespan closes the service.
    uvicorn.run(app, host=HOST, port=port, log_level="info", access_log=False, log_config=None)


def install_mends(kind: str) -> None:
    """What a dranspose service process of ``kind`` runs with, here and in a cluster
    (:mod:`streamtomo.app.cluster_service`), installed before the service starts:
    bounded result queues, tasks cancelled until they end, in the controller each
    completed event booked before it checks for the scan's end
    (:mod:`streamtomo.app.completion_order`), a worker gone mid-scan worked around
    (:mod:`streamtomo.app.departed_workers`), requests browsers send from other
    sites refused (:mod:`streamtomo.app.controller_guard`) and the results the reducer
    still owes shown (:mod:`streamtomo.app.reduction_progress`), no skipped ``finished``
    update and only changed parameters fetched (for the services that follow the
    controller's updates: :mod:`streamtomo.app.parameter_versions`) and, in workers,
    the reducer's malloc settings; results pickled with their large arrays as frames
    of their own, sent and unpickled without copies (:mod:`streamtomo.app.result_frames`),
    in the reducer from ZeroMQ's buffers (:mod:`streamtomo.app.result_receive`) and taken
    in batches when they queue (:mod:`streamtomo.app.result_batches`); workers record
    which workers each broadcast event went to, so that only ``reference_senders`` of
    them send the reducer a dark's or flat's rows
    (:mod:`streamtomo.app.event_assignments`), and send small results several together
    (:mod:`streamtomo.app.held_result_loop`). In every service a blocking Redis read
    that a stopped or starved process did not see answered in time reads as empty
    instead of ending its loop (:mod:`streamtomo.app.blocking_reads`), and an ``XADD``
    whose answer came too late is looked up in the stream instead of taken for lost
    (:mod:`streamtomo.app.stalled_writes`); the controller
    lets a parameter's superseded values expire from Redis
    (:mod:`streamtomo.app.superseded_parameters`). For the reducer and the controller, the
    environment their dranspose settings are read from must be set first
    (:func:`streamtomo.app.task_cancel.install` imports their modules)."""
    bound_result_queues()
    task_cancel.install(kind)
    blocking_reads.install()
    stalled_writes.install()
    if kind == "controller":
        completion_order.install()
        departed_workers.install()
        controller_guard.install()
        reduction_progress.install()
        superseded_parameters.install()
    else:
        finished_updates.install()
        parameter_versions.install()
    if kind in ("worker", "ingester"):
        from streamtomo.reducer.malloc_tuning import keep_buffer_pages

        # A worker's frames and results are fresh megabyte buffers too (the decoded
        # frame, the corrected rows, a partial sum), and so is every frame an ingester
        # forwards: the reducer's malloc settings save their page faults (measured at
        # 2048^2, 8 MB frames: the detector's ingester took 960 page faults and 6.2 ms
        # of system CPU per frame without them).
        keep_buffer_pages()
    if kind == "worker":
        result_frames.install_sender()
        event_assignments.install()
        held_result_loop.install()
    if kind == "reducer":
        result_receive.install()
        result_frames.install_receiver()
        result_batches.install()


def service_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one service process."""
    parser = argparse.ArgumentParser(prog="python -m streamtomo.app.services")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("controller")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("reducer")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--zmq-port", type=int, required=True)
    p.add_argument("--class", dest="cls", required=True)
    p = sub.add_parser("worker")
    p.add_argument("--name", required=True)
    p.add_argument("--class", dest="cls", required=True)
    p = sub.add_parser("ingester")
    p.add_argument("--class", dest="cls", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    bind_loopback()
    add_redis_log_handler()
    if args.kind == "reducer":
        # dranspose's reducer app builds its settings from these when it is imported.
        os.environ["REDUCER_CLASS"] = args.cls
        os.environ["REDUCER_URL"] = f"tcp://{HOST}:{args.zmq_port}"
    install_mends(args.kind)
    if args.kind == "controller":
        _serve_app("dranspose.controller:app", args.port)
    elif args.kind == "reducer":
        _serve_app("dranspose.reducer:app", args.port)
    elif args.kind == "worker":
        from dranspose.worker import Worker, WorkerSettings

        worker = Worker(WorkerSettings(worker_name=args.name, worker_class=args.cls))
        run_and_exit(run_until_sigterm(worker, announce_first=True))
    else:
        cls = _import(args.cls)
        settings_cls = _import(args.cls.replace("Ingester", "Settings"))
        settings = settings_cls(
            upstream_url=args.upstream, ingester_streams=[args.stream], ingester_url=f"tcp://{HOST}:{args.port}"
        )
        run_and_exit(run_until_sigterm(tolerant_ingester(cls)(settings=settings)))
    return 0


if __name__ == "__main__":
    sys.exit(service_main())
