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


# A worker whose registration loop loses the first cancellation, as redis-py can inside
# a blocking XREAD (streamtomo.app.task_cancel): dranspose's CLI cancelled it once and
# the pod never stopped.
LOSES_ONE_CANCEL = textwrap.dedent(
    """
    import asyncio, sys
    from dranspose.worker import Worker

    async def register(self):
        lost = False
        while True:
            await self.publish_config()
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True
                print("lost a cancellation", flush=True)

    Worker.register = register
    from streamtomo.app import cluster_service
    cluster_service.main(sys.argv[1:])
    """
)


def start_worker(redis_url: str, name: str, *program: str) -> subprocess.Popen[str]:
    argv = ["worker", "--workerclass", "streamtomo.workers.noop_worker:NoopWorker", "--name", name]
    return subprocess.Popen(
        [sys.executable, *program, *argv],
        # A stop that hangs dumps every thread's stack (SIGABRT below): the failure says where.
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_when_registered(process: subprocess.Popen[str], redis_url: str, key: str) -> str:
    """SIGTERM once the service's registration ``key`` is in Redis; its whole output once
    it has exited."""
    import redis

    client = redis.from_url(redis_url)
    try:
        wait_for("the service's registration", lambda: True if client.exists(key) else None, 60.0)
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            output, _ = process.communicate(timeout=30)
            pytest.fail(f"still running 30 s after SIGTERM; its output and stacks:\n{output}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        client.close()
    return output


def worker_key(name: str) -> str:
    from dranspose.protocol import RedisKeys

    return RedisKeys.config("worker", name)


def test_a_worker_started_as_the_chart_starts_it_registers_and_stops_on_sigterm(redis_url: str) -> None:
    name = "chart-worker-1"
    process = start_worker(redis_url, name, "-m", "streamtomo.app.cluster_service")
    output = stop_when_registered(process, redis_url, worker_key(name))
    assert process.returncode == 0, output
    assert "ERROR" not in output, output
    # Timestamped log lines on the container's output (dranspose's CLI logs only to Redis).
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO dranspose", output, re.MULTILINE), output
    assert "worker closed" in output, output  # closed (its registration deleted), not killed


def test_a_worker_that_loses_a_cancellation_still_stops_on_sigterm(redis_url: str) -> None:
    name = "chart-worker-2"
    process = start_worker(redis_url, name, "-c", LOSES_ONE_CANCEL)
    output = stop_when_registered(process, redis_url, worker_key(name))
    assert "lost a cancellation" in output, output  # the case this is about did happen
    assert process.returncode == 0, output
    assert "cancelling again" in output, output
    assert "worker closed" in output, output


def test_an_ingester_started_as_the_chart_starts_it_stops_on_sigterm(redis_url: str) -> None:
    from dranspose.protocol import RedisKeys

    from streamtomo.app.processes import free_port

    # The chart's ingester binds every interface (its pod is the boundary); here, loopback.
    program = "from streamtomo.app import cluster_service, zmq_loopback as z; import sys\n"
    program += "z.bind_loopback(); cluster_service.main(sys.argv[1:])"
    argv = ["ingester", "--ingesterclass", "ZmqPullSingleIngester", "--name", "orca"]
    argv += ["--upstream_url", f"tcp://127.0.0.1:{free_port()}"]
    process = subprocess.Popen(
        [sys.executable, "-c", program, *argv],
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONFAULTHANDLER": "1"}
        | {"INGESTER_URL": f"tcp://127.0.0.1:{free_port()}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = stop_when_registered(process, redis_url, RedisKeys.config("ingester", "orca-ingester"))
    assert process.returncode == 0, output
    assert "ERROR" not in output, output
    assert "closed ingester" in output, output


def test_the_charts_log_level_reaches_every_service() -> None:
    """The chart's logLevel sets LOG_LEVEL, which dranspose's CLI reads to configure the
    root logger: ours configured it first, from STREAMTOMO_LOG_LEVEL alone, so every pod
    logged at INFO whatever logLevel said."""
    from streamtomo.app.cluster_service import log_level_from_env

    assert log_level_from_env({"LOG_LEVEL": "debug"}) == "DEBUG"
    assert log_level_from_env({"LOG_LEVEL": "DEBUG", "STREAMTOMO_LOG_LEVEL": "warning"}) == "WARNING"
    assert log_level_from_env({}) == "INFO"
    with pytest.raises(ValueError, match="LOG_LEVEL='loud' is no log level"):
        log_level_from_env({"LOG_LEVEL": "loud"})


def test_a_log_level_no_logger_knows_stops_the_service_with_status_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cluster_service", "controller"],
        env={**os.environ, "LOG_LEVEL": "loud"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "LOG_LEVEL='loud' is no log level" in done.stderr, done.stderr
