"""Entry point of one dranspose service in a cluster (the Helm chart's pods).

    python -m streamtomo.app.cluster_service reducer --host 0.0.0.0 --port 5000 --reducerclass ...

The arguments are dranspose's own CLI's (``dranspose reducer ...``, parsed by its
parser, so a wrong one fails as it would there). Before handing them over, this
installs what :mod:`streamtomo.app.services` gives a local deployment's services
(:func:`streamtomo.app.services.install_mends`, and the ingesters' tolerance):

* tasks cancelled until they end (:mod:`streamtomo.app.task_cancel`): dranspose
  cancels once and waits forever; a killed reducer's successor hung there;
* no skipped end of a scan (:mod:`streamtomo.app.finished_updates`): a ``finished``
  update read together with a later one was never applied;
* in the controller, each completed event booked before it checks for the scan's
  end (:mod:`streamtomo.app.completion_order`): 1 scan in 14 to 20 ended a second late;
* only changed parameters fetched (:mod:`streamtomo.app.parameter_versions`): every
  update made every service fetch every parameter again;
* bounded result queues (:func:`streamtomo.app.zmq_loopback.bound_result_queues`):
  backpressure instead of a reducer holding every result of a scan;
* in workers, the reducer's malloc settings (fewer page faults per result);
* results' large arrays as frames of their own, neither copied by the worker nor by
  the reducer (:mod:`streamtomo.app.result_frames`);
* in workers, the controller's assignments of broadcast events recorded, so that
  ``reference_senders`` workers (2) send the reducer a dark's or flat's rows, not
  every worker (:mod:`streamtomo.app.event_assignments`);
* in the reducer, results that queue taken together: one thread hand-over and one
  Redis round trip for them (:mod:`streamtomo.app.result_batches`);
* in an ingester of one of dranspose's own classes, a dead worker's messages dropped
  with a warning instead of a stalled scan.

Redis's password comes from the file :data:`streamtomo.app.redis_password.PASSWORD_FILE_VARIABLE`
names, into ``REDIS_URL`` in this process only (:mod:`streamtomo.app.redis_password`).

Workers and ingesters then run and stop as a local deployment's do
(:mod:`streamtomo.app.service_lifecycle`: cancelled until they end, a bounded close);
the controller and the reducer run under dranspose's CLI (uvicorn stops them).

Unlike :mod:`streamtomo.app.services` it binds where dranspose binds (every
interface): a pod's own network namespace is the boundary there, and the chart's
NetworkPolicy says who may connect.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from streamtomo.app.redis_password import RedisPasswordError, apply_password_file
from streamtomo.app.service_lifecycle import add_redis_log_handler, run_and_exit, run_until_sigterm
from streamtomo.app.services import LOG_FORMAT, install_mends
from streamtomo.app.zmq_loopback import tolerant_ingester

logger = logging.getLogger(__name__)

KINDS = ("controller", "reducer", "worker", "ingester")


def prepare(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with dranspose's CLI parser and install the mends for its service kind.

    Raises ``SystemExit`` (argparse's, status 2) for arguments dranspose would refuse
    and for a subcommand that is not one of :data:`KINDS`.
    """
    from dranspose import cli

    parser: argparse.ArgumentParser = cli.create_parser()
    args: argparse.Namespace = parser.parse_args(list(argv))
    kind = getattr(args, "subcommand", None)
    if not isinstance(kind, str) or kind not in KINDS:
        parser.error(f"{__name__} runs one of {', '.join(KINDS)}; got {kind!r}")
    install_mends(kind)
    if kind == "ingester":
        _tolerate_dead_workers(cli, args.ingesterclass)
    return args


def _tolerate_dead_workers(cli: object, name: str) -> None:
    """dranspose's CLI looks its own ingester classes up by name in its module (and
    their settings by the same name): the tolerant subclass takes that name there. A
    class given by import path is left as it is (the CLI finds its settings through
    its base class, which a subclass would change)."""
    cls = getattr(cli, name, None)
    if isinstance(cls, type):
        setattr(cli, name, tolerant_ingester(cls))
    else:
        logger.info("ingester class %s is not one of dranspose's: dead workers are not tolerated", name)


def service(args: argparse.Namespace) -> Any:
    """The worker or ingester ``args`` (parsed by :func:`prepare`) describe, built as
    dranspose's CLI builds it: an ingester class by its name in the CLI's module (made
    tolerant by :func:`prepare`) or by import path, with the settings class of that
    name or of its base class's name."""
    from dranspose import cli

    if args.subcommand == "worker":
        from dranspose.worker import Worker, WorkerSettings

        named = {} if args.name is None else {"worker_name": args.name}
        return Worker(WorkerSettings(worker_class=args.workerclass, **named))
    name: str = args.ingesterclass
    cls = getattr(cli, name, None)
    if isinstance(cls, type):
        settings_name = name.replace("Ingester", "Settings")
    else:
        from dranspose.helpers.utils import import_class

        cls = import_class(name)
        settings_name = cls.__bases__[0].__name__.replace("Ingester", "Settings")
    settings = getattr(cli, settings_name)(upstream_url=args.upstream_url, ingester_streams=[args.name])
    return cls(settings=settings)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level_from_env(env: Mapping[str, str]) -> str:
    """``STREAMTOMO_LOG_LEVEL``, else dranspose's ``LOG_LEVEL`` (what the chart's
    ``logLevel`` sets), else INFO. The root logger is configured here, before dranspose's
    CLI configures it from ``LOG_LEVEL``, which then does nothing: ``logLevel: DEBUG``
    gave INFO in every pod."""
    for name in ("STREAMTOMO_LOG_LEVEL", "LOG_LEVEL"):
        value = env.get(name, "").strip()
        if value:
            if value.upper() not in LOG_LEVELS:
                raise ValueError(f"{name}={value!r} is no log level: one of {', '.join(LOG_LEVELS)}")
            return value.upper()
    return "INFO"


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # dranspose's CLI logs only to Redis's log stream: the container's output gets them too.
    try:
        level = log_level_from_env(os.environ)
    except ValueError as error:
        print(f"streamtomo: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=level, format=LOG_FORMAT)
    try:
        apply_password_file()  # before dranspose reads REDIS_URL
    except RedisPasswordError as error:
        logger.error("%s", error)
        raise SystemExit(2) from None
    args = prepare(arguments)
    if args.subcommand in ("worker", "ingester"):
        # Not dranspose's CLI: it cancels these services once on SIGTERM and waits
        # without bound (see streamtomo.app.service_lifecycle). A worker announces itself
        # first, as a local deployment's does, so that a scan starting meanwhile does
        # not crash the controller's assignment task.
        add_redis_log_handler()
        run_and_exit(run_until_sigterm(service(args), announce_first=args.subcommand == "worker"))
    from dranspose import cli

    sys.argv = ["dranspose", *arguments]  # dranspose's run() parses sys.argv itself
    cli.run()


if __name__ == "__main__":
    main()
