"""One deployment per run directory.

Two ``up`` given the same ``--run-dir`` wrote their services' logs (the same file
names), their scans' final files and their recordings into the same folders, and the
second's reducer wrote its control token over the first one's (``RUN_DIR/control.token``,
the file the first one's output names). :class:`RunDirLock` holds an exclusive ``flock`` on a file in the run
directory for the deployment's life: the kernel lets it go when the process ends,
however it ends, so a crashed ``up`` leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from streamtomo.app.deployment_state import DeploymentError

LOCK_NAME = ".streamtomo-run.lock"


class RunDirInUse(DeploymentError):
    """Another deployment runs in this run directory: a usage error (exit 2)."""


class RunDirLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the directory, or raise :class:`RunDirInUse` naming the holder's pid."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirInUse(
                f"the run directory {self.path.parent} is in use by another deployment (pid {holder}): "
                "give this one its own --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor lets go of the lock
