"""Service processes we start and stop: one helper for the dranspose deployment
(:mod:`streamtomo.app.deployment`) and the local HSDS (:mod:`streamtomo.app.local_hsds`).

A service runs as the leader of its own process group, logging to a file; it is
stopped with SIGTERM to the whole group, then SIGKILL if the group has not gone
within a timeout. Also here: free ports, polling with a deadline, and what /proc
says about processes (CPU time, group members, listening sockets).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_T = TypeVar("_T")


class NotReady(RuntimeError):
    """Something polled with :func:`wait_for` was not ready in time."""


# Where free_port looks: from this port up to the kernel's ephemeral range, if that
# leaves at least MIN_SPAN ports, else wherever outside that range there is room.
LOWEST_FREE_PORT = 15000
MIN_SPAN = 1000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel picks itself (``bind`` to port 0, and the source port of
    every outgoing connection), inclusive; Linux's default where it cannot be read."""
    try:
        low, high = (int(field) for field in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def allocatable_ports() -> range:
    """Where :func:`free_port` chooses: outside the kernel's ephemeral range, below it
    where there is room (empty where the range leaves none: the kernel then chooses).

    A port chosen there is bound seconds later by a service process, and until then
    nothing holds it. Chosen inside the ephemeral range (the kernel's own choice, as
    this function once did), it could meanwhile become the source port of any outgoing
    connection, a Redis client's or an HTTP poll's, and the service failed to start
    with "Address already in use" (a reducer's ZeroMQ port, 60545, in CI). Outside
    the range the kernel never puts anything of its own accord.
    """
    low, high = ephemeral_port_range()
    for candidates in (range(LOWEST_FREE_PORT, low), range(1024, low), range(high + 1, 65536)):
        if len(candidates) >= MIN_SPAN:
            return candidates
    return range(0)


def port_unused(host: str, port: int) -> bool:
    """Whether ``port`` can be bound now. Without SO_REUSEADDR, so that a port held by
    any socket, a connection in TIME_WAIT included, counts as used."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port nobody holds now, for a service that will bind it shortly.

    Chosen at random from :func:`allocatable_ports` (so that two processes choosing at
    once rarely meet), never one this process handed out before (so that the ports of
    one deployment differ, and a port is not given again while the service it was
    given for starts). It may still be taken by another program that chooses fixed
    ports; the service then fails to start with that port in its error.
    """
    ports = allocatable_ports()
    chooser = random.SystemRandom()
    with _handed_out_lock:
        if not ports:  # the ephemeral range covers (nearly) every port: the kernel's choice
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                return int(sock.getsockname()[1])
        for port in _candidates(ports, chooser):
            if port not in _handed_out and port_unused(host, port):
                _handed_out.add(port)
                return port
    raise OSError(f"no free port on {host} in {ports.start}-{ports.stop - 1} (outside the kernel's ephemeral range)")


def _candidates(ports: range, chooser: random.Random, draws: int = 64) -> Iterator[int]:
    """Some ports at random, then every port once, from a random one on.

    Random draws alone could miss the free port of a nearly full range: 12 draws
    among three ports, one of them free, missed it 0.8% of the time, and free_port
    said there was none (the unit test of three ports failed so, once). The scan
    after them is what makes "no free port" true when it is said."""
    for _ in range(min(draws, len(ports))):
        yield chooser.choice(ports)
    start = chooser.randrange(len(ports))
    for offset in range(len(ports)):
        yield ports[(start + offset) % len(ports)]


def wait_for(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    interval: float = 0.1,
    error: type[Exception] = NotReady,
) -> _T:
    """Poll ``probe`` until it returns something other than None (errors count as not yet).

    Raises ``error`` (default :class:`NotReady`) with what was awaited and the last error.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (OSError, ValueError) as problem:  # not up yet: connection refused, bad JSON, ...
            last_error = problem
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise error(f"{what} not ready within {timeout:.0f} s{detail}")
        time.sleep(interval)


@dataclass
class ServiceProcess:
    """One service process, leader of its own process group (or a member of one)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    pgid: int

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        """Whether any process of the group is left (the leader may have exited)."""
        self.popen.poll()  # reap the leader so that it leaves the group
        return bool(pids_in_group(self.pgid))

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the group. A group with no process left is not signalled:
        its id may belong to someone else by now."""
        if self.alive() or pids_in_group(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)

    def wait_group(self, timeout: float) -> bool:
        """Until no process of the group is left; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.group_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the group, then SIGKILL if it does not exit within ``timeout``."""
        self.signal(signal.SIGTERM)
        if not self.wait_group(timeout):
            logger.warning("%s did not stop within %.0f s: killing it", self.name, timeout)
            self.signal(signal.SIGKILL)
            self.wait_group(timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        return self.popen.returncode

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole group at once (a crash)."""
        self.signal(signal.SIGKILL)
        self.wait_group(timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    group: int | None = None,
    new_session: bool = False,
    die_with_parent: bool = False,
    private: bool = False,
) -> ServiceProcess:
    """Start ``argv`` with stdout and stderr appended to ``log``.

    ``group`` None makes it the leader of a new process group (with ``new_session``,
    of a new session too); an int joins that group. ``die_with_parent`` asks Linux
    to SIGTERM it when we die, even by SIGKILL. ``private`` runs it with umask 077
    (what it creates is its user's only) and makes the log 0600.
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600 if private else 0o644)
    if private:
        os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as out:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session and group is None,
            process_group=None if new_session and group is None else (0 if group is None else group),
            preexec_fn=_die_with_parent if die_with_parent else None,
            umask=0o077 if private else -1,
        )
    logger.info("started %s (pid %d), log %s", name, popen.pid, log)
    return ServiceProcess(name, popen, log, popen.pid if group is None else group)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL, so
    that no service outlives a crashed ``up`` or test run. (Linux fires this when
    the *thread* that started the child exits: start services from a thread that
    lives as long as they do, e.g. the main thread.)"""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- what /proc says ----------------------------------------------------------------------


def process_cpu_seconds(pid: int, main_thread_only: bool = False) -> float:
    """utime + stime of ``pid`` from /proc, all its threads or only its main thread
    (0.0 once it is gone). A dranspose service's main thread runs its asyncio loop
    (receiving, assembling and sending messages, Redis); the worker's
    ``process_event`` and the reducer's ``process_result`` run in executor threads."""
    stat = f"/proc/{pid}/task/{pid}/stat" if main_thread_only else f"/proc/{pid}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_in_group(pgid: int) -> set[int]:
    """Every process whose process group is ``pgid``."""
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
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids


def is_loopback(address: str) -> bool:
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"


def _decode_proc_addr(hex_addr: str) -> tuple[str, int]:
    ip_hex, port_hex = hex_addr.split(":")
    port = int(port_hex, 16)
    raw = bytes.fromhex(ip_hex)
    # /proc prints each 32-bit word in host (little-endian) order. inet_ntop writes a
    # v4-mapped address as ::ffff:127.0.0.1 (ipaddress, before 3.13: ::ffff:7f00:1).
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words), port


def listening_tcp_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state held by ``pids``."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
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
