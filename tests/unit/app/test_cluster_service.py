"""The Helm chart's service entry point: dranspose's CLI with the local deployment's mends.

Each check runs in a process of its own: the mends patch dranspose, ZeroMQ and
redis-py for the whole process, as they do in a pod.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from streamtomo.app.processes import wait_for

PROBE = textwrap.dedent(
    """
    import json, sys
    import zmq
    from redis.asyncio import Redis
    from streamtomo.app import cluster_service, task_cancel
    args = cluster_service.prepare(sys.argv[1:])
    import dranspose.cli as cli
    modules = task_cancel.DRANSPOSE_MODULES[args.subcommand]
    found = {
        "cancel": all(sys.modules[m].cancel_and_wait is task_cancel.cancel_and_wait for m in modules),
        "xread": Redis.xread.__module__,
        "bind": zmq.Socket.bind.__name__,
        "assignments": type(sys.modules["dranspose.worker"].WorkAssignmentList).__module__
        if "dranspose.worker" in sys.modules
        else None,
    }
    if args.subcommand == "ingester":
        found["ingester"] = getattr(cli, args.ingesterclass).__name__
    print(json.dumps(found))
    """
)


def probe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["controller", "--host", "0.0.0.0"],
        [
            "reducer",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--reducerclass",
            "streamtomo.reducer.tomo_reducer:TomoReducer",
        ],
        ["worker", "--workerclass", "streamtomo.workers.tomo_worker:TomoWorker", "--name", "w-1"],
        ["ingester", "--ingesterclass", "ZmqPullSingleIngester", "--name", "orca", "--upstream_url", "tcp://d:9999"],
    ],
)
def test_each_service_kind_gets_the_mends(argv: list[str]) -> None:
    done = probe(*argv)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["cancel"] is True  # dranspose's cancel-once-and-wait-forever replaced
    assert found["bind"] == "bounded_bind"  # result queues bounded before any socket binds
    # The controller writes the updates stream; the others read it and must not skip 'finished'.
    assert (found["xread"] == "streamtomo.app.finished_updates") == (argv[0] != "controller")
    if argv[0] == "ingester":
        assert found["ingester"] == "TolerantZmqPullSingleIngester"
    # A worker records which workers each broadcast event went to (one sends the rows).
    assert (found["assignments"] == "streamtomo.app.event_assignments") == (argv[0] == "worker")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "-w", "a:B", "-r", "c:D", "-f", "x.cbors"], "runs one of controller, reducer, worker, ingester"),
        (["worker", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_what_dranspose_would_refuse_or_is_no_service_fails_with_status_2(argv: list[str], message: str) -> None:
    done = probe(*argv)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_worker_started_as_the_chart_starts_it_registers_and_stops_on_sigterm(redis_url: str) -> None:
    import redis

    name = "chart-worker-1"
    env = {**os.environ, "REDIS_URL": redis_url}
    argv = ["worker", "--workerclass", "streamtomo.workers.noop_worker:NoopWorker", "--name", name]
    process = subprocess.Popen(
        [sys.executable, "-m", "streamtomo.app.cluster_service", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = redis.from_url(redis_url)
    try:
        from dranspose.protocol import RedisKeys

        key = RedisKeys.config("worker", name)
        wait_for("the worker's registration", lambda: True if client.exists(key) else None, 60.0)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        client.close()
    assert process.returncode == 0, output
    assert "ERROR" not in output, output
    # Timestamped log lines on the container's output (dranspose's CLI logs only to Redis).
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO dranspose", output, re.MULTILINE), output
    assert "worker closed" in output, output  # closed (its registration deleted), not killed
