"""A real dranspose deployment on this machine, on 127.0.0.1 only.

(About 420 lines: one class whose start, scale and stop share the processes and ports;
readiness, state, Redis and the socket rewrite are their own modules.)

:class:`LocalDeployment` starts Redis (Debian ``redis-server``, unless a URL is
given), the dranspose controller, one ingester per stream (the detector over
ZeroMQ PULL, the PandA position capture over TCP), N workers and the reducer, each
as its own process in its own process group (:mod:`streamtomo.app.processes`),
logging to ``RUN_DIR/logs/NAME.log``. It waits until every service reports ready,
and stops them in an order that lets each one close cleanly (workers, ingesters,
reducer, controller, Redis). The service processes run
:mod:`streamtomo.app.services`, which keeps them on loopback
(:mod:`streamtomo.app.zmq_loopback` says how).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from streamtomo.app.adapters import TOMO_REDUCER, TOMO_WORKER
from streamtomo.app.copy_tuning import non_temporal_copies
from streamtomo.app.deployment_readiness import defaults_set, missing_services
from streamtomo.app.deployment_state import SERVICE_MODULE, DeploymentError, DeploymentState
from streamtomo.app.processes import HOST, ServiceProcess, free_port, process_cpu_seconds, spawn
from streamtomo.app.processes import wait_for as _wait_for
from streamtomo.app.redis_service import forget_workers, redis_ping, redis_server_argv, redis_url_ping
from streamtomo.app.reducer_environment import ReducerEnvironment
from streamtomo.app.run_dir_lock import RunDirLock
from streamtomo.app.shared_rows import ENV_DIR as SHARED_ROWS_ENV
from streamtomo.app.shared_rows import remove_rings_of, shared_rows_directory
from streamtomo.controller_client import ControllerClient, ControllerError, ControllerTimeout
from streamtomo.hsds_bridge.credentials import ENV_FILE as ENV_CREDENTIALS_FILE
from streamtomo.hsds_bridge.credentials import ENV_PASSWORD_FILE
from streamtomo.reducer.final_file import FINAL_FILE_WAIT_S

logger = logging.getLogger(__name__)

__all__ = ["TOMO_REDUCER", "TOMO_WORKER", "DeploymentError", "DeploymentState", "LocalDeployment"]

DETECTOR_INGESTERS = {
    "stins": "dranspose.ingesters.zmqpull_single:ZmqPullSingleIngester",
    "eiger_legacy": "dranspose.ingesters.zmqpull_eiger_legacy:ZmqPullEigerLegacyIngester",
}
ANGLE_INGESTER = "dranspose.ingesters.tcp_positioncap:TcpPcapIngester"


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.1) -> Any:
    """:func:`streamtomo.app.processes.wait_for`, failing with :class:`DeploymentError`."""
    return _wait_for(what, probe, timeout, interval, error=DeploymentError)


def _http_ok(url: str) -> bool | None:
    with urllib.request.urlopen(url, timeout=2) as response:
        return True if response.status == 200 else None


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
        stream_timeout: float | None = None,
        shared_rows: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError(f"need at least 1 worker, got {workers}")
        if detector_format not in DETECTOR_INGESTERS:
            raise ValueError(f"detector_format {detector_format!r}: choose one of {sorted(DETECTOR_INGESTERS)}")
        self.n_workers = workers
        self.redis_url_given = redis_url
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # Absolute: the services run with it as their working directory (redis was given
        # --dir dep/run from inside dep/run and could not start).
        self.run_dir = Path(run_dir).resolve() if run_dir else Path(tempfile.mkdtemp(prefix=f"streamtomo-run-{stamp}-"))
        self.worker_class = worker_class
        self.reducer_class = reducer_class
        self.detector_format = detector_format
        self.dump_prefix = str(self.run_dir / "recordings") + "/" if dump_prefix is None else dump_prefix
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.extra_env = dict(env or {})
        self.stream_timeout = stream_timeout
        # Every service runs on this host: workers hand the reducer their projection rows
        # and partial sums through shared memory (streamtomo.app.shared_rows), in a
        # directory of our own.
        self.shared_rows = shared_rows
        self.shared_rows_dir = ""
        self._lost_scan = ""  # the scan a dead reducer was in, for its successor
        self.processes: dict[str, ServiceProcess] = {}
        self._worker_names: list[str] = []
        self._crashed: list[str] = []
        # Dead workers whose replacement waits for the scan under way to end, and since
        # when (monotonic seconds; up's _tend).
        self.replacements_waiting: dict[str, float] = {}
        self._worker_serial = 0
        self._state: DeploymentState | None = None
        self._ports: dict[str, int] = {}
        self._parameters_hash: str | None = None
        self._run_dir_lock = RunDirLock(self.run_dir)

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def state(self) -> DeploymentState:
        if self._state is None:
            raise DeploymentError("the deployment is not started")
        return self._state

    @property
    def controller(self) -> ControllerClient:
        return ControllerClient(self.state.controller_url)

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    # -- start ------------------------------------------------------------------------
    def start(self) -> DeploymentState:
        for name in (
            "redis",
            "controller",
            "reducer_api",
            "reducer_zmq",
            "live",
            "control",
            "detector_ingester",
            "angle_ingester",
            "detector_upstream",
            "angle_upstream",
        ):
            self._ports[name] = free_port()
        self._check_environment()  # EnvironmentSettingError: nothing started, nothing written
        self._run_dir_lock.acquire()  # RunDirInUse: nothing started, nothing written
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.shared_rows and not self.shared_rows_dir:
            self.shared_rows_dir = shared_rows_directory()
        if self.dump_prefix:
            Path(os.path.dirname(self.dump_prefix) or ".").mkdir(parents=True, exist_ok=True)
        redis_url = self.redis_url_given or self._start_redis()
        if self.redis_url_given:
            wait_for(f"redis at {redis_url}", lambda: redis_url_ping(redis_url), self.ready_timeout)
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
        wait_for("the controller", lambda: self.controller.config(timeout=2), self.ready_timeout)
        logger.info("controller ready at %s", controller_url)
        self._start_reducer()
        # Workers start once the controller has set every parameter's default: the
        # defaults arrive as a burst of updates, which new workers would answer while
        # the controller's cached view does not list them yet (see service_lifecycle.run_until_sigterm).
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
        logger.info(
            "deployment ready: %d workers, controller %s, live domain %s%s",
            self.n_workers,
            controller_url,
            self.state.live_endpoint,
            self.state.domain,
        )
        logger.info(
            "parameter control: http://%s:%d, token in %s (`streamtomo view --control URL --control-token-file FILE`)",
            HOST,
            self._ports["control"],
            self.run_dir / "control.token",
        )
        return self.state

    def _check_environment(self) -> None:
        """The reducer's settings, from the environment it is to be given, before anything
        starts (EnvironmentSettingError). A value it cannot use (STREAMTOMO_FINAL_WAIT=abc)
        was raised in its service, where dranspose swallows it: `up` waited 60 s for the
        live domain and blamed it ('not ready'), exit 3, the cause in the reducer's log."""
        from streamtomo.hsds_bridge.control_api import ControlSettings
        from streamtomo.hsds_bridge.credentials import CredentialsError, load_credentials
        from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError
        from streamtomo.reducer.tomo_reducer import ReducerSettings

        env = self._env()
        settings = ReducerSettings.from_env(env)
        ControlSettings.from_env(env)
        if settings.hsds_endpoint:
            # Asked for, and without credentials the reducer mirrors nothing: a WARNING in
            # its log, and up and play said all was well (demo and replay --hsds refuse).
            try:
                load_credentials(env)
            except CredentialsError as error:
                raise EnvironmentSettingError(f"STREAMTOMO_HSDS_ENDPOINT={settings.hsds_endpoint}: {error}") from None

    @property
    def reducer_environment(self) -> ReducerEnvironment:
        """The reducer's settings: live domain on loopback; the control listener's
        token file is created by the reducer at start (0600), only this user reads it."""
        return ReducerEnvironment(
            http_host=HOST,
            http_port=self._ports["live"],
            control_port=self._ports["control"],
            # On loopback, as it says: a STREAMTOMO_CONTROL_HOST inherited from the shell
            # (0.0.0.0) bound it to every address while up printed 127.0.0.1.
            control_host=HOST,
            control_token_file=str(self.run_dir / "control.token"),
            stream_timeout=self.stream_timeout,
            final_dir=str(self.results_dir),
            lost_scan=self._lost_scan,
        )

    @property
    def results_dir(self) -> Path:
        """Where the reducer writes each scan's final NeXus file."""
        return self.run_dir / "results"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"REDIS_URL": self.state.redis_url if self._state else "", "PYTHONUNBUFFERED": "1"})
        env.update(self.reducer_environment.to_env())
        env[SHARED_ROWS_ENV] = self.shared_rows_dir  # empty: rows through ZeroMQ, whatever was inherited
        # Service processes import our classes from this checkout, as tests do.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.update(self.extra_env)
        # Services run in the run dir: a credentials file named relative to where up was
        # started passed its check there, and the reducer could not read it.
        for name in (ENV_CREDENTIALS_FILE, ENV_PASSWORD_FILE):
            if env.get(name):
                env[name] = os.path.abspath(env[name])
        return env

    def _popen(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        service = spawn(
            name,
            argv,
            self.log_dir / f"{name}.log",
            env={**self._env(), **(env or {})},
            cwd=self.run_dir,
            new_session=True,
            die_with_parent=True,
        )
        self.processes[name] = service
        return service

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        return self._popen(name, [sys.executable, "-m", SERVICE_MODULE, "--log-level", self.log_level, *args], env)

    def _start_redis(self) -> str:
        port = self._ports["redis"]
        self._popen("redis", redis_server_argv(port, self.run_dir))
        url = f"redis://{HOST}:{port}/0"
        wait_for("redis", lambda: redis_ping(HOST, port), self.ready_timeout)
        logger.info("redis ready at %s", url)
        return url

    def _start_reducer(self) -> None:
        ports = self._ports
        args = ["reducer", "--port", str(ports["reducer_api"]), "--zmq-port", str(ports["reducer_zmq"]),
                "--class", self.reducer_class]  # fmt: skip
        # Its projection copies past the CPU caches (glibc reads this at process start).
        self._spawn("reducer", args, non_temporal_copies(self._env()))

    def _spawn_ingesters(self) -> None:
        state, ports = self.state, self._ports
        for name, cls, stream, port, upstream in [
            ("detector-ingester", DETECTOR_INGESTERS[self.detector_format], state.detector_stream,
             ports["detector_ingester"], state.detector_upstream),
            ("angle-ingester", ANGLE_INGESTER, state.angle_stream, ports["angle_ingester"], state.angle_upstream),
        ]:  # fmt: skip
            args = ["ingester", "--class", cls, "--stream", stream, "--port", str(port), "--upstream", upstream]
            self._spawn(name, args)

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
        return self.controller.config(timeout=5)

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
        streams = (self.state.detector_stream, self.state.angle_stream)
        return missing_services(self._ensemble(), streams, self._worker_names)

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
            wait_for("the live domain", lambda: _http_ok(f"{self.state.live_endpoint}/about"), self.ready_timeout)

    def wait_defaults(self, timeout: float | None = None) -> None:
        """Until the reducer registered and the controller holds a value for every
        parameter it describes (the controller sets defaults every 2 s)."""
        controller = self.controller

        def probe() -> bool | None:
            self._check_alive()
            return defaults_set(controller)

        wait_for("the reducer and parameter defaults", probe, timeout or self.ready_timeout, interval=0.2)

    def set_parameter(self, name: str, data: bytes) -> str:
        """Set a dranspose parameter; returns the controller's new parameters hash."""
        self._parameters_hash = self.controller.set_parameter(name, data)
        return self._parameters_hash

    def wait_parameters_consistent(self, timeout: float | None = None) -> None:
        try:
            self.controller.wait_consistent(self._parameters_hash, timeout or self.ready_timeout)
        except ControllerTimeout as error:
            raise DeploymentError(str(error)) from None
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
        forget_workers(self.state.redis_url, self._crashed)
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

    # -- replacing dead services (streamtomo up) ------------------------------------------
    def dead(self) -> list[str]:
        """Services whose process has exited, in the order they were started."""
        return [name for name, service in self.processes.items() if not service.alive()]

    def replace_worker(self, name: str) -> str:
        """A new worker for one that died; returns its name (it registers by itself)."""
        self._remove_rings(self.processes.pop(name).pid)
        if name in self._worker_names:
            self._worker_names.remove(name)
        self._crashed.append(name)
        self._forget_crashed()
        new = self._spawn_worker()
        self.state.workers = list(self._worker_names)
        return new

    def replace_reducer(self, timeout: float | None = None) -> str:
        """A new reducer, on the same ports, for one that died; waits until it registered.

        Returns the mapping uuid of the scan the dead reducer was in ("" if none is
        known): its successor marks that scan failed, as what the dead one had reduced
        is gone. dranspose lets a reducer register again: the controller's next
        parameter check hands it the current mapping.
        """
        config = self._ensemble()
        uuids = {str(s["mapping_uuid"]) for s in [*config["workers"], *config["ingesters"]]}
        lost = uuids.pop() if len(uuids) == 1 else ""
        if lost and not self.scan_under_way():
            # The controller's empty mapping of its start, or a scan that had ended: its
            # successor marked it failed ("the reducer died during this scan") and wrote
            # a final file for it, or said 'failed' over a scan that had finished.
            lost = ""
        # A reducer killed did not delete its registration: it lingers until it expires.
        old = (config.get("reducer") or {}).get("service_uuid")
        self.processes.pop("reducer")
        self._lost_scan = lost
        try:
            self._start_reducer()
        finally:
            self._lost_scan = ""

        def registered() -> bool | None:
            self._check_alive()
            reducer = self._ensemble().get("reducer")
            return True if reducer is not None and reducer.get("service_uuid") != old else None

        wait_for("the new reducer", registered, timeout or self.ready_timeout, interval=0.2)
        return lost

    def scan_under_way(self) -> bool:
        """Whether the controller's current mapping has events and has not finished (True
        when the controller does not answer: a scan may then be lost)."""
        try:
            progress = self.controller.progress(timeout=5)
        except (ControllerError, OSError):
            return True
        return bool(progress.get("total_events")) and not progress.get("finished")

    def _stop_worker(self, name: str) -> None:
        service = self.processes.pop(name)
        service.stop()
        self._worker_names.remove(name)
        self._remove_rings(service.pid)

    def _remove_rings(self, pid: int) -> None:
        """A worker that is gone leaves its shared-memory rings."""
        if self.shared_rows_dir:
            remove_rings_of(self.shared_rows_dir, pid)

    # -- stop -------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop in dependency order: what sends to a service stops before it."""
        order = list(self._worker_names)
        order += ["detector-ingester", "angle-ingester", "reducer", "controller", "redis"]
        order += [n for n in self.processes if n not in order]
        try:
            for name in order:
                service = self.processes.get(name)
                if service is not None:
                    started = time.monotonic()
                    # The reducer's close waits for final files still being written.
                    code = service.stop(timeout + FINAL_FILE_WAIT_S if name == "reducer" else timeout)
                    logger.info("%s stopped in %.1f s (status %s)", name, time.monotonic() - started, code)
        finally:
            self.processes.clear()
            self._worker_names.clear()
            if self.shared_rows_dir:
                shutil.rmtree(self.shared_rows_dir, ignore_errors=True)
                self.shared_rows_dir = ""
            self._run_dir_lock.release()

    def error_lines(self, allow: Sequence[str] = ()) -> list[str]:
        """ERROR/CRITICAL lines in the service logs, minus those containing ``allow``."""
        found = []
        for log in sorted(self.log_dir.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if (" ERROR " in line or " CRITICAL " in line) and not any(a in line for a in allow):
                    found.append(f"{log.name}: {line}")
        return found

    def cpu_seconds(self, main_thread_only: bool = False) -> dict[str, float]:
        """CPU time (user + system) each running service used so far: all its threads,
        or only its main thread (its event loop)."""
        return {
            name: process_cpu_seconds(svc.pid, main_thread_only) for name, svc in self.processes.items() if svc.alive()
        }
