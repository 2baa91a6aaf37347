"""A local HSDS for development and tests, reachable from this machine only.

(About 440 lines: the launcher is one lifecycle, start, readiness, accounts, ACL
bootstrap, stop, whose steps share the process handles; accounts and admin requests
already live in ``local_hsds_setup`` and ``hsds_admin``.)

Layout under ``root_dir`` (created on first start, reused afterwards)::

    storage/<bucket>/          HSDS POSIX storage (the launcher's --root_dir)
    config/passwd.txt          HSDS password file, 0600 (admin, writer, viewer)
    config/<user>.credentials  one ``user:password`` file per account, 0600
    config/override.yml        HSDS settings (cache size, auth; CORS is the proxy's)
    logs/                      hs.log (HSDS nodes), proxy.log

Why a unix socket plus a proxy: in TCP mode the ``hsds`` launcher binds every node
to all interfaces (DN ports 6101.. fixed) whatever ``--host`` says. With
``--socket_dir`` it listens on unix sockets only; we put them in a fresh 0700
directory under /tmp (the socket path must stay under 63 characters), and the only
TCP listener is :mod:`streamtomo.app.hsds_proxy`, bound to 127.0.0.1.
:meth:`LocalHsds.listening_sockets` reads /proc to prove it.

Passwords are generated once (``secrets``), kept across restarts of the same
``root_dir`` (a restarted server must accept the writer that is still running),
and never passed on a command line: HSDS reads them from the password file.
Everything under ``root_dir`` is private to its user: directories 0700, files 0600
(:func:`streamtomo.app.local_hsds_setup.make_private`, and umask 077 for the servers).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from streamtomo.app import hsds_proxy
from streamtomo.app.hsds_admin import HsdsStartError, ensure_folder, flush_all, hsds_request
from streamtomo.app.local_hsds_setup import (
    DEFAULT_BUCKET,
    SCRUBBED_ENV,
    HsdsAccounts,
    load_or_create_accounts,
    make_private,
    override_yaml,
)
from streamtomo.app.processes import ServiceProcess, is_loopback, listening_tcp_sockets, pids_in_group, spawn
from streamtomo.hsds_bridge.credentials import (
    Credentials,
    write_credentials_file,
    write_private_file,
)

log = logging.getLogger(__name__)
ROOT_LOCK = ".streamtomo-hsds.lock"  # in the root: one server per root at a time

MAX_SOCKET_DIR_LEN = 63  # hsds app.py: longer unix socket paths break binding


class LocalHsds:
    """Start/stop an ``hsds`` server with POSIX storage under ``root_dir``.

    Use as a context manager, or ``start()``/``stop()``; ``run_forever()`` serves
    until Ctrl-C (for the ``streamtomo hsds`` command).
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        writer_user: str = "streamtomo",
        viewer_user: str = "viewer",
        bucket: str = DEFAULT_BUCKET,
        dn_count: int = 1,
        chunk_mem_cache_size: str = "1g",
        cors_origins: Sequence[str] = ("http://127.0.0.1",),
        log_level: str = "WARNING",
        startup_timeout: float = 60.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self._root_lock: int | None = None  # the descriptor holding ROOT_LOCK while running
        self.port = port
        self.writer_user = writer_user
        self.viewer_user = viewer_user
        self.bucket = bucket
        self.dn_count = dn_count
        self.startup_timeout = startup_timeout
        # The proxy answers CORS for these (HSDS's cors_domain takes only one origin).
        self.cors_origins = hsds_proxy.parse_origins(cors_origins)
        self._settings: dict[str, Any] = {
            "allow_noauth": False,  # every request must authenticate
            "default_public": False,  # new domains are not world readable
            "bucket_name": bucket,
            # With HSDS's default (128 MiB per DN) sinogram writes were answered 503.
            "chunk_mem_cache_size": chunk_mem_cache_size,
            # Off in HSDS (its default "*" echoes any origin with credentials
            # allowed): the proxy answers CORS for ``cors_origins`` only.
            "cors_domain": "",
            "log_level": log_level,
            "admin_user": "admin",
            # poll granularity of a flush request (default 1 s): flushes end sooner
            "flush_sleep_interval": 0.1,
            **(extra_config or {}),
        }
        self._accounts: HsdsAccounts | None = None
        self._socket_dir: Path | None = None
        self._launcher: ServiceProcess | None = None
        self._proxy: ServiceProcess | None = None
        self._atexit_registered = False

    # -- paths and accounts -----------------------------------------------------
    @property
    def storage_dir(self) -> Path:
        return self.root_dir / "storage"

    @property
    def config_dir(self) -> Path:
        return self.root_dir / "config"

    @property
    def log_dir(self) -> Path:
        return self.root_dir / "logs"

    @property
    def accounts(self) -> HsdsAccounts:
        if self._accounts is None:
            self._prepare_accounts()
        assert self._accounts is not None
        return self._accounts

    def credentials_file(self, username: str) -> Path:
        """The 0600 ``user:password`` file for ``username`` (for STREAMTOMO_HSDS_CREDENTIALS)."""
        return self.config_dir / f"{username}.credentials"

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("LocalHsds is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def writer_folder(self) -> str:
        """Folder the writer account owns: ``/home/<writer>/``."""
        return f"/home/{self.writer_user}/"

    @property
    def running(self) -> bool:
        return self._launcher is not None and self._launcher.alive()

    @property
    def pgid(self) -> int | None:
        return self._launcher.pgid if self._launcher is not None else None

    # -- start ------------------------------------------------------------------
    def _prepare_accounts(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o700)
        self._accounts = load_or_create_accounts(self.config_dir / "passwd.txt", self.writer_user, self.viewer_user)
        for cred in self._accounts.by_name().values():
            write_credentials_file(self.credentials_file(cred.username), cred)

    def _prepare(self) -> None:
        self._prepare_accounts()
        (self.storage_dir / self.bucket).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_private_file(self.config_dir / "override.yml", override_yaml(self._settings))
        make_private(self.root_dir)
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="sth", dir="/tmp"))  # 0700
        if len(str(self._socket_dir)) > MAX_SOCKET_DIR_LEN - len("/sn_1.sock"):
            raise HsdsStartError(f"socket dir {self._socket_dir} too long for unix sockets")
        for stale in self._socket_dir.glob("*.sock"):
            stale.unlink()  # left behind by a killed server

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env["CONFIG_OVERRIDE_PATH"] = str(self.config_dir / "override.yml")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _launch(self) -> None:
        assert self._socket_dir is not None
        cmd = [
            sys.executable,
            "-c",
            "import sys; from hsds.app import main; sys.argv[0] = 'hsds'; main()",
            "--root_dir", str(self.storage_dir),
            "--socket_dir", str(self._socket_dir),
            "--password_file", str(self.config_dir / "passwd.txt"),
            "--config_dir", str(self.config_dir),
            "--bucket_name", self.bucket,
            "--count", str(self.dn_count),
            "--logfile", str(self.log_dir / "hs.log"),
        ]  # fmt: skip
        env = self._child_env()
        # A process group of its own in our session, so a terminal's Ctrl-C reaches
        # only us (we flush first); the proxy joins the group. umask 077: the storage,
        # logs and sockets are this user's only.
        self._launcher = spawn("hsds", cmd, self.log_dir / "launcher.log", env=env, cwd=self.log_dir, private=True)
        port_file = self.config_dir / "proxy.port"
        port_file.unlink(missing_ok=True)
        proxy_cmd = [
            sys.executable, hsds_proxy.__file__,
            "--socket", str(self._socket_dir / "sn_1.sock"),
            "--port", str(self.port), "--port-file", str(port_file),
            *(f"--cors-origin={origin}" for origin in self.cors_origins),
        ]  # fmt: skip
        self._proxy = spawn(
            "hsds-proxy",
            proxy_cmd,
            self.log_dir / "proxy.log",
            env=env,
            cwd=self.log_dir,
            group=self._launcher.pgid,
            private=True,
        )

    def start(self) -> LocalHsds:
        """Start HSDS and the proxy; return once ``/about`` reports READY."""
        if self.running:
            return self
        self._lock_root()
        try:
            self._prepare()
            log.info("starting HSDS (storage %s)", self.storage_dir)
            self._launch()
        except BaseException:
            self.kill()
            self._unlock_root()
            raise
        if not self._atexit_registered:
            # A crashed test run or CLI must not leave HSDS processes behind.
            atexit.register(self._atexit_cleanup)
            self._atexit_registered = True
        try:
            deadline = time.monotonic() + self.startup_timeout
            self.port = self._wait_port(deadline)
            self._wait_ready(deadline)
            self._ensure_writer_folder(deadline)
        except BaseException:
            self.kill()
            raise
        log.info("HSDS ready at %s (writer %s, viewer %s)", self.url, self.writer_user,
                 self.viewer_user)  # fmt: skip
        return self

    def _lock_root(self) -> None:
        """Hold ``ROOT/.streamtomo-hsds.lock`` while this server runs: a second server on
        the same root started beside the first, the two sharing one storage folder. The
        system releases the lock when the process ends, however it ends."""
        import fcntl

        self.root_dir.mkdir(parents=True, exist_ok=True)
        path = self.root_dir / ROOT_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HsdsStartError(
                f"another HSDS serves {self.root_dir} (it holds {path}): stop it, or give another root"
            ) from None
        self._root_lock = fd

    def _unlock_root(self) -> None:
        if self._root_lock is not None:
            os.close(self._root_lock)  # closing the descriptor releases the lock
            self._root_lock = None

    def _check_alive(self) -> None:
        for proc in (self._launcher, self._proxy):
            if proc is not None and not proc.alive():
                raise HsdsStartError(f"{proc.name} exited with {proc.popen.returncode}: {self.log_tail()}")

    def _wait_port(self, deadline: float) -> int:
        port_file = self.config_dir / "proxy.port"
        while time.monotonic() < deadline:
            self._check_alive()
            if port_file.exists():
                return int(port_file.read_text().strip())
            time.sleep(0.05)
        raise HsdsStartError(f"proxy did not report its port: {self.log_tail()}")

    def _wait_ready(self, deadline: float) -> None:
        delay = 0.05
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, body = self.request("GET", "/about", auth=None, timeout=2.0)
                if status == 200 and json.loads(body).get("state") == "READY":
                    return
            except OSError:
                pass  # sockets not bound yet
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise HsdsStartError(f"HSDS not READY within {self.startup_timeout}s: {self.log_tail()}")

    # -- admin requests -----------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        auth: Credentials | None,
        body: Any = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """One synchronous HTTP request through the proxy: ``(status, body)``."""
        return hsds_request(self.url, method, path, auth=auth, body=body, timeout=timeout)

    def _ensure_writer_folder(self, deadline: float) -> None:
        # Top-level folders need the admin; the writer then owns its home folder
        # and creates its domains (and sub-folders) there with its own account.
        ensure_folder(self.url, self.accounts.admin, "/home/", "admin", deadline)
        ensure_folder(self.url, self.accounts.admin, self.writer_folder, self.writer_user, deadline)

    def flush_all(self) -> int:
        """Flush every domain (admin); returns how many were flushed."""
        return flush_all(self.url, self.accounts.admin) if self.running else 0

    # -- stop -------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        """Flush all domains, SIGTERM the process group, SIGKILL after ``timeout``."""
        if self._launcher is None:
            return
        try:
            flushed = self.flush_all()
            log.info("flushed %d HSDS domain(s) before stopping", flushed)
        except OSError as exc:
            log.warning("flush before stop failed: %s", exc)
        self._launcher.stop(timeout)
        self._reap()
        log.info("HSDS stopped")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (simulates a crash)."""
        if self._launcher is None:
            return
        self._launcher.kill(10.0)
        self._reap()

    def _reap(self) -> None:
        for proc in (self._launcher, self._proxy):
            if proc is not None and proc.alive():
                proc.popen.wait(timeout=5)
        self._launcher = self._proxy = None
        self._unlock_root()
        if self._socket_dir is not None:
            for sock in self._socket_dir.glob("*.sock"):
                sock.unlink(missing_ok=True)

    def _atexit_cleanup(self) -> None:
        self.kill()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop and remove the socket directory."""
        self.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- diagnostics ----------------------------------------------------------------
    def pids(self) -> set[int]:
        return pids_in_group(self.pgid) if self.pgid is not None else set()

    def listening_sockets(self) -> list[tuple[int, str, int]]:
        """Every TCP listener of the server's processes: ``(pid, address, port)``."""
        return listening_tcp_sockets(self.pids())

    def assert_loopback_only(self) -> None:
        sockets = self.listening_sockets()
        if not sockets:
            raise AssertionError("no TCP listener found for the HSDS process group")
        exposed = [s for s in sockets if not is_loopback(s[1])]
        if exposed:
            raise AssertionError(f"HSDS listens beyond loopback: {exposed}")

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for name in ("launcher.log", "hs.log", "proxy.log"):
            path = self.log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- context manager / CLI ---------------------------------------------------------
    def __enter__(self) -> LocalHsds:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (Ctrl-C), then flush and stop."""
        stop = threading.Event()

        def _on_signal(signum: int, frame: Any) -> None:
            stop.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            log.info("HSDS serving at %s; credentials in %s (Ctrl-C to stop)",
                     self.url, self.config_dir)  # fmt: skip
            while not stop.wait(1.0):
                if not self.running:
                    log.error("HSDS exited unexpectedly: %s", self.log_tail())
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("stopping HSDS (flushing first)")
            self.close()
