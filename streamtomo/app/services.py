"""A real dranspose deployment on this machine, on 127.0.0.1 only.

:class:`LocalDeployment` starts Redis (Debian ``redis-server``, unless a URL is
given), the dranspose controller, one ingester per stream (the detector over
ZeroMQ PULL, the PandA position capture over TCP), N workers and the reducer, each
as its own process in its own process group, logging to ``RUN_DIR/logs/NAME.log``.
It waits until every service reports ready, and stops them in an order that lets
each one close cleanly (workers, ingesters, reducer, controller, Redis).

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
the lost frames show in ``/entry/status/lost_frames``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
TOMO_WORKER = "streamtomo.workers.tomo_worker:TomoWorker"
TOMO_REDUCER = "streamtomo.reducer.tomo_reducer:TomoReducer"
DETECTOR_INGESTERS = {
    "stins": "dranspose.ingesters.zmqpull_single:ZmqPullSingleIngester",
    "eiger_legacy": "dranspose.ingesters.zmqpull_eiger_legacy:ZmqPullEigerLegacyIngester",
}
ANGLE_INGESTER = "dranspose.ingesters.tcp_positioncap:TcpPcapIngester"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# dranspose's controller answers /api/v1/config from a view of the services it
# refreshes at most every 0.5 s.
CONTROLLER_CACHE_S = 0.5
_T = TypeVar("_T")


class DeploymentError(RuntimeError):
    """A service did not start or did not become ready; the message says which."""


# -- small helpers ------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (the OS's choice; it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_json(url: str, data: bytes | None = None, timeout: float = 10.0, method: str | None = None) -> Any:
    """GET (or POST ``data``) and decode the JSON answer."""
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_for(what: str, probe: Callable[[], _T | None], timeout: float, interval: float = 0.1) -> _T:
    """Poll ``probe`` until it returns something other than None (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (OSError, ValueError) as error:  # not up yet: connection refused, bad JSON, ...
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise DeploymentError(f"{what} not ready within {timeout:.0f} s{detail}")
        time.sleep(interval)


def default_state_path() -> Path:
    """Where ``up`` writes and ``play`` reads the deployment's addresses."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(tempfile.gettempdir()) / f"streamtomo-{os.getuid()}"
    return base / "streamtomo" / "deployment.json"


# -- what a running deployment is --------------------------------------------------------


@dataclass
class DeploymentState:
    """Addresses of a running deployment: written by ``up``, read by ``play``."""

    controller_url: str
    redis_url: str
    live_endpoint: str
    domain: str
    detector_upstream: str  # tcp://HOST:PORT the detector (play) binds, PUSH
    angle_upstream: str  # tcp://HOST:PORT the PandA (play) listens on
    detector_format: str = "stins"
    detector_stream: str = "detector"
    angle_stream: str = "angle"
    workers: list[str] = field(default_factory=list)
    run_dir: str = ""
    dump_prefix: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DeploymentState:
        return cls(**json.loads(text))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # readers never see half a file
        return path

    @classmethod
    def read(cls, path: Path) -> DeploymentState:
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise DeploymentError(f"no deployment state at {path}: run `streamtomo up` first or pass --state") from None


@dataclass
class ServiceProcess:
    """One service process, leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the group, then SIGKILL if it does not exit within ``timeout``.

        A process that already exited is left alone: its group id may belong to
        someone else by now.
        """
        if not self.alive():
            return self.popen.returncode
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s: killing it", self.name, timeout)
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout)
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the deployment ----------------------------------------------------------------------


class LocalDeployment:
    """Start a full dranspose deployment on 127.0.0.1; a context manager.

    ``redis_url`` None starts a private ``redis-server``. ``dump_prefix`` (default:
    ``RUN_DIR/recordings/``, empty to disable) makes the ingesters record every scan.
    Ports are free ports picked at start; :attr:`state` has every address.
    """

    def __init__(
        self,
        workers: int = 2,
        redis_url: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        worker_class: str = TOMO_WORKER,
        reducer_class: str = TOMO_REDUCER,
        detector_format: str = "stins",
        dump_prefix: str | None = None,
        log_level: str = "INFO",
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"need at least 1 worker, got {workers}")
        if detector_format not in DETECTOR_INGESTERS:
            raise ValueError(f"detector_format {detector_format!r}: choose one of {sorted(DETECTOR_INGESTERS)}")
        self.n_workers = workers
        self.redis_url_given = redis_url
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=f"streamtomo-run-{stamp}-"))
        self.worker_class = worker_class
        self.reducer_class = reducer_class
        self.detector_format = detector_format
        self.dump_prefix = str(self.run_dir / "recordings") + "/" if dump_prefix is None else dump_prefix
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.extra_env = dict(env or {})
        self.processes: dict[str, ServiceProcess] = {}
        self._worker_names: list[str] = []
        self._crashed: list[str] = []
        self._worker_serial = 0
        self._state: DeploymentState | None = None
        self._ports: dict[str, int] = {}
        self._parameters_hash: str | None = None

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def state(self) -> DeploymentState:
        if self._state is None:
            raise DeploymentError("the deployment is not started")
        return self._state

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    # -- start ------------------------------------------------------------------------
    def start(self) -> DeploymentState:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.dump_prefix:
            Path(os.path.dirname(self.dump_prefix) or ".").mkdir(parents=True, exist_ok=True)
        for name in ("redis", "controller", "reducer_api", "reducer_zmq", "live", "detector_ingester",
                     "angle_ingester", "detector_upstream", "angle_upstream"):
            self._ports[name] = free_port()
        redis_url = self.redis_url_given or self._start_redis()
        if self.redis_url_given:
            wait_for(f"redis at {redis_url}", lambda: _redis_url_ping(redis_url), self.ready_timeout)
        controller_url = f"http://{HOST}:{self._ports['controller']}"
        self._state = DeploymentState(
            controller_url=controller_url,
            redis_url=redis_url,
            live_endpoint=f"http://{HOST}:{self._ports['live']}",
            domain="/streamtomo/live.h5",
            detector_upstream=f"tcp://{HOST}:{self._ports['detector_upstream']}",
            angle_upstream=f"tcp://{HOST}:{self._ports['angle_upstream']}",
            detector_format=self.detector_format,
            run_dir=str(self.run_dir),
            dump_prefix=self.dump_prefix,
        )
        self._spawn("controller", ["controller", "--port", str(self._ports["controller"])])
        wait_for("the controller", lambda: http_json(f"{controller_url}/api/v1/config", timeout=2), self.ready_timeout)
        logger.info("controller ready at %s", controller_url)
        self._start_reducer()
        # Workers start once the controller has set every parameter's default: the
        # defaults arrive as a burst of updates, which new workers would answer while
        # the controller's cached view does not list them yet (see _run_until_sigterm).
        self.wait_defaults()
        self._spawn_ingesters()
        for _ in range(self.n_workers):
            self._spawn_worker()
        self.wait_ready()
        # The reducer shares darks and flats with every worker through the controller.
        self.set_parameter("controller_url", controller_url.encode())
        if self.dump_prefix:
            self.set_parameter("dump_prefix", self.dump_prefix.encode())
        self.wait_parameters_consistent()
        self.state.workers = list(self._worker_names)
        self.state.pids = {name: p.pid for name, p in self.processes.items()}
        logger.info("deployment ready: %d workers, controller %s, live domain %s%s", self.n_workers,
                    controller_url, self.state.live_endpoint, self.state.domain)
        return self.state

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "REDIS_URL": self.state.redis_url if self._state else "",
            "STREAMTOMO_HTTP_HOST": HOST,
            "STREAMTOMO_HTTP_PORT": str(self._ports["live"]),
            "STREAMTOMO_LOG_LEVEL": self.log_level,
            "PYTHONUNBUFFERED": "1",
        })
        # Service processes import our classes from the checkout, as tests do.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.update(self.extra_env)
        return env

    def _popen(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self._env(), **(env or {})}, cwd=self.run_dir, start_new_session=True,  # own process group
                preexec_fn=_die_with_parent,
            )
        service = ServiceProcess(name, popen, log)
        self.processes[name] = service
        logger.info("started %s (pid %d), log %s", name, popen.pid, log)
        return service

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        return self._popen(name, [sys.executable, "-m", "streamtomo.app.services", *args], env)

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise DeploymentError("redis-server not found: install it (apt-get install -y redis-server) or pass --redis URL")
        port = self._ports["redis"]
        # No persistence: a deployment's Redis holds only live coordination state.
        self._popen("redis", [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
                              "--protected-mode", "yes", "--dir", str(self.run_dir), "--daemonize", "no"])
        url = f"redis://{HOST}:{port}/0"
        wait_for("redis", lambda: _redis_ping(HOST, port), self.ready_timeout)
        logger.info("redis ready at %s", url)
        return url

    def _start_reducer(self) -> None:
        self._spawn("reducer", ["reducer", "--port", str(self._ports["reducer_api"]),
                                "--zmq-port", str(self._ports["reducer_zmq"]), "--class", self.reducer_class])

    def _spawn_ingesters(self) -> None:
        state = self.state
        self._spawn("detector-ingester", [
            "ingester", "--class", DETECTOR_INGESTERS[self.detector_format], "--stream", state.detector_stream,
            "--port", str(self._ports["detector_ingester"]), "--upstream", state.detector_upstream,
        ])
        self._spawn("angle-ingester", [
            "ingester", "--class", ANGLE_INGESTER, "--stream", state.angle_stream,
            "--port", str(self._ports["angle_ingester"]), "--upstream", state.angle_upstream,
        ])

    def _spawn_worker(self) -> str:
        self._worker_serial += 1
        name = f"worker-{self._worker_serial}"
        # Workers share this machine's cores: each numba kernel gets its share, not all
        # of them (oversubscribed thread pools spin against each other).
        threads = max(1, (os.cpu_count() or 1) // self.n_workers)
        env = {} if "NUMBA_NUM_THREADS" in self.extra_env else {"NUMBA_NUM_THREADS": str(threads)}
        self._spawn(name, ["worker", "--name", name, "--class", self.worker_class], env)
        self._worker_names.append(name)
        return name

    # -- readiness --------------------------------------------------------------------
    def _ensemble(self) -> dict[str, Any]:
        config: dict[str, Any] = http_json(f"{self.state.controller_url}/api/v1/config", timeout=5)
        return config

    def _check_alive(self) -> None:
        dead = [s for s in self.processes.values() if not s.alive() and s.name in self._expected_names()]
        if dead:
            s = dead[0]
            raise DeploymentError(f"{s.name} exited with status {s.popen.returncode}; its log ends:\n{s.tail()}")

    def _expected_names(self) -> set[str]:
        names = {"controller", "reducer", "detector-ingester", "angle-ingester", *self._worker_names}
        return names | ({"redis"} if self.redis_url_given is None else set())

    def readiness(self) -> str | None:
        """None when ready, else what is still missing (for logs and errors)."""
        self._check_alive()
        cfg = self._ensemble()
        ingesters = {i["name"]: i for i in cfg["ingesters"]}
        want_ingesters = {f"{self.state.detector_stream}-ingester", f"{self.state.angle_stream}-ingester"}
        if cfg.get("reducer") is None:
            return "reducer not registered"
        if not want_ingesters <= set(ingesters):
            return f"ingesters registered: {sorted(ingesters)}"
        workers = {w["name"]: w for w in cfg["workers"]}
        if set(workers) != set(self._worker_names):
            return f"workers registered: {sorted(workers)} of {self._worker_names}"
        for name, w in workers.items():
            seen = {i["name"] for i in w["ingesters"]}
            if not want_ingesters <= seen:
                return f"{name} connected to {sorted(seen)}"
        uuids = {w["service_uuid"] for w in workers.values()}
        for name in want_ingesters:
            connected = {c["service_uuid"] for c in ingesters[name]["connected_workers"].values()}
            if not uuids <= connected:
                return f"{name} reached by {len(connected & uuids)} of {len(uuids)} workers"
        return None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until every service has registered and workers reach both ingesters."""
        last = ""

        def probe() -> bool | None:
            nonlocal last
            missing = self.readiness()
            if missing and missing != last:
                last = missing
                logger.info("waiting: %s", missing)
            return True if missing is None else None

        try:
            wait_for("the deployment", probe, timeout or self.ready_timeout, interval=0.2)
        except DeploymentError as error:
            raise DeploymentError(f"{error}; still {last}; logs in {self.log_dir}") from None
        # The reducer class serves the live domain from its first instance on.
        if self.reducer_class == TOMO_REDUCER:
            wait_for("the live domain", lambda: http_json(f"{self.state.live_endpoint}/about", timeout=2), self.ready_timeout)

    def wait_defaults(self, timeout: float | None = None) -> None:
        """Until the reducer registered and the controller holds a value for every
        parameter it describes (the controller sets defaults every 2 s)."""
        url = self.state.controller_url

        def probe() -> bool | None:
            self._check_alive()
            if http_json(f"{url}/api/v1/config", timeout=5).get("reducer") is None:
                return None
            names = [p["name"] for p in http_json(f"{url}/api/v1/parameters", timeout=5) if p["name"] != "dump_prefix"]
            for name in names:
                try:
                    with urllib.request.urlopen(f"{url}/api/v1/parameter/{name}", timeout=5):
                        pass
                except urllib.error.HTTPError:
                    return None
            return True

        wait_for("the reducer and parameter defaults", probe, timeout or self.ready_timeout, interval=0.2)

    def set_parameter(self, name: str, data: bytes) -> str:
        """Set a dranspose parameter; returns the controller's new parameters hash."""
        self._parameters_hash = set_parameter(self.state.controller_url, name, data)
        return self._parameters_hash

    def wait_parameters_consistent(self, timeout: float | None = None) -> None:
        wait_consistent(self.state.controller_url, self._parameters_hash, timeout or self.ready_timeout)
        self._parameters_hash = None  # later changes (the reducer's references) move the target

    # -- changing a running deployment ---------------------------------------------------
    def kill_worker(self, name: str | None = None) -> str:
        """SIGKILL one worker (the last started by default): a crash, for fault tests.

        As after a real crash, dranspose forgets the worker when its registration
        expires (10 s); :meth:`scale` forgets it at once.
        """
        name = name or self._worker_names[-1]
        service = self.processes[name]
        service.signal(signal.SIGKILL)
        service.popen.wait(10)
        self._worker_names.remove(name)
        self._crashed.append(name)
        logger.info("killed %s", name)
        return name

    def _forget_crashed(self) -> None:
        """Delete crashed workers' registrations, which would linger until they expire."""
        if not self._crashed:
            return
        import redis

        client = redis.Redis.from_url(self.state.redis_url)
        try:
            client.delete(*(f"dranspose:worker:{name}:config" for name in self._crashed))
        finally:
            client.close()
        self._crashed.clear()

    def scale(self, workers: int, worker_class: str | None = None, reducer_class: str | None = None) -> None:
        """Replace workers (and the reducer, if its class changes) on the same
        Redis, controller and ingesters; waits until ready again."""
        self._forget_crashed()
        if worker_class is not None and worker_class != self.worker_class:
            self.worker_class = worker_class
            for name in list(self._worker_names):
                self._stop_worker(name)
        while len(self._worker_names) > workers:
            self._stop_worker(self._worker_names[-1])
        if reducer_class is not None and reducer_class != self.reducer_class:
            self.reducer_class = reducer_class
            self.processes.pop("reducer").stop()
            self._start_reducer()
            self.wait_defaults()
        self.n_workers = workers
        while len(self._worker_names) < workers:
            self._spawn_worker()
        self.wait_ready()
        self.wait_parameters_consistent()
        self.state.workers = list(self._worker_names)
        self.state.pids = {name: p.pid for name, p in self.processes.items() if p.alive()}

    def _stop_worker(self, name: str) -> None:
        self.processes.pop(name).stop()
        self._worker_names.remove(name)

    # -- stop -------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop in dependency order: what sends to a service stops before it."""
        order = list(self._worker_names)
        order += ["detector-ingester", "angle-ingester", "reducer", "controller", "redis"]
        order += [n for n in self.processes if n not in order]
        for name in order:
            service = self.processes.get(name)
            if service is not None:
                code = service.stop(timeout)
                logger.debug("%s stopped (status %s)", name, code)
        self.processes.clear()
        self._worker_names.clear()

    def error_lines(self, allow: Sequence[str] = ()) -> list[str]:
        """ERROR/CRITICAL lines in the service logs, minus those containing ``allow``."""
        found = []
        for log in sorted(self.log_dir.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if (" ERROR " in line or " CRITICAL " in line) and not any(a in line for a in allow):
                    found.append(f"{log.name}: {line}")
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, all threads) each running service used so far."""
        return {name: process_cpu_seconds(svc.pid) for name, svc in self.processes.items() if svc.alive()}



def set_parameter(controller_url: str, name: str, data: bytes) -> str:
    """POST one dranspose parameter; returns the controller's parameters hash after it."""
    request = urllib.request.Request(f"{controller_url}/api/v1/parameter/{name}", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read()))


def parameters_consistent(cfg: dict[str, Any], target: str | None = None) -> bool:
    """Every service has the controller's parameters (and ``target``, if given)."""
    want = cfg.get("parameters_hash") if target is None else target
    services = [*cfg["ingesters"], *cfg["workers"], *([cfg["reducer"]] if cfg.get("reducer") else [])]
    return cfg.get("parameters_hash") == want and bool(services) and all(s.get("parameters_hash") == want for s in services)


def wait_consistent(controller_url: str, target: str | None, timeout: float) -> None:
    """Until every service holds the controller's parameters, and the controller knows.

    The controller's view may be up to 0.5 s old: right after a change it can still
    show the state before it, consistent. So wait for ``target`` (the hash a POST
    returned, if any), and for consistency seen twice across a cache period: then
    the controller's own consistency check, which runs every 2 s on that view, has
    no stale inconsistency to "repair" with an update. Such an update sent while a
    new mapping is distributed would reach services after it and, as dranspose
    applies only the last queued update, leave ingesters without active streams.
    """
    first: tuple[float, str] | None = None

    def probe() -> bool | None:
        nonlocal first
        cfg = http_json(f"{controller_url}/api/v1/config", timeout=5)
        if not parameters_consistent(cfg, target):
            first = None
            return None
        now, current = time.monotonic(), str(cfg.get("parameters_hash"))
        if first is None or first[1] != current:
            first = (now, current)
            return None
        return True if now - first[0] > CONTROLLER_CACHE_S + 0.1 else None

    wait_for("parameters on every service", probe, timeout, interval=0.1)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_url_ping(url: str) -> bool | None:
    import redis  # redis-py comes with dranspose; only a given URL (auth, db) needs it

    try:
        return True if redis.Redis.from_url(url, socket_timeout=2).ping() else None
    except redis.RedisError:
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL, so
    that no service outlives a crashed ``up`` or test run. (Linux fires this when
    the *thread* that started the child exits: start deployments from a thread that
    lives as long as they do, e.g. the main thread.)"""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _redis_ping(host: str, port: int) -> bool | None:
    with socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return True if sock.recv(64).startswith(b"+PONG") else None


# -- service processes (python -m streamtomo.app.services KIND ...) ------------------------------


def _bind_loopback(host: str = HOST) -> None:
    """dranspose binds its ZeroMQ ROUTER/PULL sockets to ``tcp://*:PORT``: rewrite
    wildcard binds to ``host`` before any socket exists."""
    import zmq

    original = zmq.Socket.bind

    def bind(self: zmq.Socket[Any], addr: str) -> Any:
        for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
            if addr.startswith(wildcard):
                addr = f"tcp://{host}:{addr[len(wildcard):]}"
        return original(self, addr)

    zmq.Socket.bind = bind  # type: ignore[method-assign]


def tolerant_ingester(cls: type[Any]) -> type[Any]:
    """The ingester class, dropping (with a warning) messages for workers that died."""
    import zmq

    class Tolerant(cls):  # type: ignore[misc]
        async def _send_workermessages(self, workermessages: dict[Any, Any]) -> None:
            for worker, message in workermessages.items():
                try:
                    await super()._send_workermessages({worker: message})
                except zmq.ZMQError as error:
                    if error.errno != zmq.EHOSTUNREACH:
                        raise
                    self._logger.warning("worker %s is gone: event %d not delivered to it", worker, message.event_number)

    Tolerant.__name__ = Tolerant.__qualname__ = f"Tolerant{cls.__name__}"
    return Tolerant


def _import(path: str) -> Any:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _add_redis_log_handler() -> None:
    """As dranspose's own CLI does: the controller's /api/v1/logs shows service logs."""
    try:
        import redis as redis_sync
        from rlh import RedisStreamLogHandler

        client = redis_sync.from_url(f"{os.environ['REDIS_URL']}?decode_responses=True&protocol=3")
        handler = RedisStreamLogHandler(redis_client=client, stream_name="dranspose_logs", maxlen=1000,
                                        fields=["msg", "lineno", "name", "created", "levelname"])
        handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(handler)
    except (ImportError, KeyError) as error:
        logger.info("no redis log stream: %r", error)


async def _run_until_sigterm(service: Any, announce_first: bool = False) -> None:
    """Run a dranspose service until SIGTERM/SIGINT, then close it.

    ``announce_first``: publish the service's registration and let the
    controller's cached view expire before the service listens for updates. A new
    worker that answers an update (with "ready") before the controller's cached
    view lists it makes the controller's assignment task crash (StopIteration in
    ``assign_worker_in_mapping``, logged at ERROR); this closes that window.
    """
    loop = asyncio.get_running_loop()
    if announce_first:
        await service.publish_config()
        await asyncio.sleep(CONTROLLER_CACHE_S + 0.2)
    task = asyncio.create_task(service.run())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task.done() and task.exception() is not None:
        logger.error("service failed: %r", task.exception())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await service.close()
    stopper.cancel()


def _serve_app(app_path: str, port: int) -> None:
    import uvicorn

    app = _import(app_path)
    # uvicorn turns SIGTERM into a graceful shutdown: the app's lifespan closes the service.
    uvicorn.run(app, host=HOST, port=port, log_level="info", access_log=False, log_config=None)


def service_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one service process."""
    parser = argparse.ArgumentParser(prog="python -m streamtomo.app.services")
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

    logging.basicConfig(level=os.environ.get("STREAMTOMO_LOG_LEVEL", "INFO"), format=LOG_FORMAT)
    _bind_loopback()
    _add_redis_log_handler()
    if args.kind == "controller":
        _serve_app("dranspose.controller:app", args.port)
    elif args.kind == "reducer":
        os.environ["REDUCER_CLASS"] = args.cls
        os.environ["REDUCER_URL"] = f"tcp://{HOST}:{args.zmq_port}"
        _serve_app("dranspose.reducer:app", args.port)
    elif args.kind == "worker":
        from dranspose.worker import Worker, WorkerSettings

        worker = Worker(WorkerSettings(worker_name=args.name, worker_class=args.cls))
        asyncio.run(_run_until_sigterm(worker, announce_first=True))
    else:
        cls = _import(args.cls)
        settings_cls = _import(args.cls.replace("Ingester", "Settings"))
        settings = settings_cls(upstream_url=args.upstream, ingester_streams=[args.stream],
                                ingester_url=f"tcp://{HOST}:{args.port}")
        asyncio.run(_run_until_sigterm(tolerant_ingester(cls)(settings=settings)))
    return 0


if __name__ == "__main__":
    sys.exit(service_main())
