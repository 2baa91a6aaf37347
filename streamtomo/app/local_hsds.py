"""A local HSDS for development and tests, reachable from this machine only.

Layout under ``root_dir`` (created on first start, reused afterwards)::

    storage/<bucket>/          HSDS POSIX storage (the launcher's --root_dir)
    config/passwd.txt          HSDS password file, 0600 (admin, writer, viewer)
    config/<user>.credentials  one ``user:password`` file per account, 0600
    config/override.yml        HSDS settings (cache size, auth, CORS)
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
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from streamtomo.app import hsds_proxy
from streamtomo.hsds_bridge.credentials import (
    Credentials,
    parse_credentials_line,
    write_credentials_file,
    write_private_file,
)

log = logging.getLogger(__name__)

MAX_SOCKET_DIR_LEN = 63  # hsds app.py: longer unix socket paths break binding
DEFAULT_BUCKET = "streamtomo"
# HSDS config keys we set in override.yml. Environment variables outrank the
# override file, so any of these inherited from the caller's shell are removed.
_SCRUBBED_ENV = (
    "ALLOW_NOAUTH",
    "BUCKET_NAME",
    "ROOT_DIR",
    "PASSWORD_FILE",
    "CORS_DOMAIN",
    "CHUNK_MEM_CACHE_SIZE",
    "LOG_LEVEL",
    "CONFIG_DIR",
    "CONFIG_OVERRIDE_PATH",
    "DEFAULT_PUBLIC",
    "ADMIN_USER",
    "ADMIN_GROUP",
    "PASSWORD_SALT",
    "AWS_S3_GATEWAY",
    "AZURE_CONNECTION_STRING",
    "HS_USERNAME",
    "HS_PASSWORD",
    "HS_ENDPOINT",
)


class HsdsStartError(RuntimeError):
    """HSDS did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class HsdsAccounts:
    """The three accounts of a local server."""

    admin: Credentials
    writer: Credentials
    viewer: Credentials

    def by_name(self) -> dict[str, Credentials]:
        return {c.username: c for c in (self.admin, self.writer, self.viewer)}


def _generate_password() -> str:
    # token_urlsafe never yields ':' (HSDS splits password-file lines on it).
    return secrets.token_urlsafe(24)


def _load_or_create_accounts(passwd: Path, writer: str, viewer: str) -> HsdsAccounts:
    existing: dict[str, Credentials] = {}
    if passwd.exists():
        for line in passwd.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                cred = parse_credentials_line(line, source=str(passwd))
                existing[cred.username] = cred

    def get(user: str) -> Credentials:
        return existing.get(user) or Credentials(user, _generate_password())

    accounts = HsdsAccounts(admin=get("admin"), writer=get(writer), viewer=get(viewer))
    lines = [c.as_line() for c in accounts.by_name().values()]
    write_private_file(passwd, "\n".join(lines) + "\n")
    return accounts


def _override_yaml(settings: dict[str, Any]) -> str:
    # JSON is valid YAML; it keeps booleans real booleans (an env var "false"
    # would be cast with bool("false") == True by hsds.config).
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())


def _loopback(addr: str) -> bool:
    return addr.startswith(("127.", "::ffff:127.")) or addr == "::1"


def _decode_proc_addr(hex_addr: str) -> tuple[str, int]:
    ip_hex, port_hex = hex_addr.split(":")
    port = int(port_hex, 16)
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1]), port
    # /proc/net/tcp6: four little-endian 32-bit words
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    b = b"".join(words)
    return str(ipaddress.IPv6Address(b)), port


def listening_tcp_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state held by ``pids``."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode_pid[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inode_pid:
                addr, port = _decode_proc_addr(cols[1])
                found.append((inode_pid[cols[9]], addr, port))
    return found


def _pids_in_group(pgid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pgrp is the 5th field, after "pid (comm) state ppid"; comm may hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.add(int(entry.name))
    return pids


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
        cors_origin: str = "http://127.0.0.1",
        log_level: str = "WARNING",
        startup_timeout: float = 60.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self.port = port
        self.writer_user = writer_user
        self.viewer_user = viewer_user
        self.bucket = bucket
        self.dn_count = dn_count
        self.startup_timeout = startup_timeout
        self._settings: dict[str, Any] = {
            "allow_noauth": False,  # every request must authenticate
            "default_public": False,  # new domains are not world readable
            "bucket_name": bucket,
            # 128 MiB per DN answered 503 under sinogram writes (see issue).
            "chunk_mem_cache_size": chunk_mem_cache_size,
            # The default "*" echoes any origin with credentials allowed.
            "cors_domain": cors_origin,
            "log_level": log_level,
            "admin_user": "admin",
            # poll granularity of a flush request (default 1 s): flushes end sooner
            "flush_sleep_interval": 0.1,
            **(extra_config or {}),
        }
        self._accounts: HsdsAccounts | None = None
        self._socket_dir: Path | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._proxy: subprocess.Popen[bytes] | None = None
        self._log_files: list[Any] = []
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
        return self._launcher is not None and self._launcher.poll() is None

    @property
    def pgid(self) -> int | None:
        return self._launcher.pid if self._launcher is not None else None

    # -- start ------------------------------------------------------------------
    def _prepare_accounts(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o700)
        self._accounts = _load_or_create_accounts(self.config_dir / "passwd.txt", self.writer_user, self.viewer_user)
        for cred in self._accounts.by_name().values():
            write_credentials_file(self.credentials_file(cred.username), cred)

    def _prepare(self) -> None:
        self._prepare_accounts()
        (self.storage_dir / self.bucket).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "override.yml").write_text(_override_yaml(self._settings))
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="sth", dir="/tmp"))  # 0700
        if len(str(self._socket_dir)) > MAX_SOCKET_DIR_LEN - len("/sn_1.sock"):
            raise HsdsStartError(f"socket dir {self._socket_dir} too long for unix sockets")
        for stale in self._socket_dir.glob("*.sock"):
            stale.unlink()  # left behind by a killed server

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["CONFIG_OVERRIDE_PATH"] = str(self.config_dir / "override.yml")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _open_log(self, name: str) -> Any:
        fh = open(self.log_dir / name, "ab")  # noqa: SIM115 - closed in _reap()
        self._log_files.append(fh)
        return fh

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
        # process_group=0: own group in our session, so a terminal's Ctrl-C reaches
        # only us (we flush first) and the proxy can join the group.
        self._launcher = subprocess.Popen(
            cmd, cwd=self.log_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=self._open_log("launcher.log"), stderr=subprocess.STDOUT, process_group=0,
        )  # fmt: skip
        port_file = self.config_dir / "proxy.port"
        port_file.unlink(missing_ok=True)
        proxy_cmd = [
            sys.executable, hsds_proxy.__file__,
            "--socket", str(self._socket_dir / "sn_1.sock"),
            "--port", str(self.port), "--port-file", str(port_file),
        ]  # fmt: skip
        self._proxy = subprocess.Popen(
            proxy_cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._open_log("proxy.log"),
            stderr=subprocess.STDOUT, process_group=self._launcher.pid,
        )  # fmt: skip

    def start(self) -> LocalHsds:
        """Start HSDS and the proxy; return once ``/about`` reports READY."""
        if self.running:
            return self
        self._prepare()
        log.info("starting HSDS (storage %s)", self.storage_dir)
        self._launch()
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

    def _check_alive(self) -> None:
        for name, proc in (("hsds", self._launcher), ("proxy", self._proxy)):
            if proc is not None and proc.poll() is not None:
                raise HsdsStartError(f"{name} exited with {proc.returncode}: {self.log_tail()}")

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
        """One synchronous HTTP request through the proxy (stdlib only)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth is not None:
            req.add_header("Authorization", auth.authorization_header())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def _ensure_folder(self, folder: str, owner: str, deadline: float) -> None:
        domain = folder.rstrip("/")
        delay = 0.05
        while True:
            status, body = self.request("GET", f"/?domain={domain}", auth=self.accounts.admin)
            if status == 200:
                return
            if status == 404:
                status, body = self.request(
                    "PUT", f"/?domain={domain}", auth=self.accounts.admin, body={"folder": True, "owner": owner}
                )
                if status in (201, 409):
                    log.info("created folder %s (owner %s)", folder, owner)
                    return
            # Right after READY the first write sometimes gets a 500 (seen in ~1 of 3
            # starts); 5xx are transient, anything else is a real refusal.
            if status < 500 or time.monotonic() > deadline:
                raise HsdsStartError(f"cannot create folder {folder}: {status} {body[:200]!r}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _ensure_writer_folder(self, deadline: float) -> None:
        # Top-level folders need the admin; the writer then owns its home folder
        # and creates its domains (and sub-folders) there with its own account.
        self._ensure_folder("/home/", "admin", deadline)
        self._ensure_folder(self.writer_folder, self.writer_user, deadline)

    def _walk_domains(self, folder: str) -> Iterator[str]:
        status, body = self.request("GET", f"/domains?domain={folder}", auth=self.accounts.admin)
        if status != 200:
            return
        for item in json.loads(body).get("domains", []):
            if item.get("class") == "folder":
                yield from self._walk_domains(item["name"])
            else:
                yield item["name"]

    def flush_all(self) -> int:
        """Flush every domain (admin); returns how many were flushed."""
        if not self.running:
            return 0
        count = 0
        for domain in self._walk_domains("/"):
            status, _ = self.request("PUT", f"/?domain={domain}&flush=1",
                                     auth=self.accounts.admin)  # fmt: skip
            if status in (200, 204):
                count += 1
            else:
                log.warning("flush of %s answered %d", domain, status)
        return count

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
        self._signal_group(signal.SIGTERM)
        if not self._wait_exit(timeout):
            log.warning("HSDS did not stop within %.0fs; killing it", timeout)
            self._signal_group(signal.SIGKILL)
            self._wait_exit(5.0)
        self._reap()
        log.info("HSDS stopped")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (simulates a crash)."""
        if self._launcher is None:
            return
        self._signal_group(signal.SIGKILL)
        self._wait_exit(10.0)
        self._reap()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._launcher is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._launcher.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        assert self._launcher is not None
        pgid = self._launcher.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in (self._launcher, self._proxy):
                if proc is not None:
                    proc.poll()  # reap our direct children so they leave the group
            if not _pids_in_group(pgid):
                return True
            time.sleep(0.05)
        return False

    def _reap(self) -> None:
        for proc in (self._launcher, self._proxy):
            if proc is not None and proc.poll() is None:
                proc.wait(timeout=5)
        self._launcher = self._proxy = None
        for fh in self._log_files:
            fh.close()
        self._log_files.clear()
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
        return _pids_in_group(self.pgid) if self.pgid is not None else set()

    def listening_sockets(self) -> list[tuple[int, str, int]]:
        """Every TCP listener of the server's processes: ``(pid, address, port)``."""
        return listening_tcp_sockets(self.pids())

    def assert_loopback_only(self) -> None:
        sockets = self.listening_sockets()
        if not sockets:
            raise AssertionError("no TCP listener found for the HSDS process group")
        exposed = [s for s in sockets if not _loopback(s[1])]
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
