"""Processes whose command line names something, for the checks that read
``/proc/PID/cmdline`` to tell our services from other programs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def sleeper(*argv: str) -> subprocess.Popen[bytes]:
    """A process that sleeps a minute with ``argv`` on its command line, returned once
    ``/proc/PID/cmdline`` shows it: Popen returns after the exec, but the file read
    empty for about the first millisecond (1 check in 2 right after Popen failed)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    deadline = time.monotonic() + 10.0
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    while argv and argv[-1].encode() not in cmdline.read_bytes():
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"/proc/{process.pid}/cmdline never showed {argv!r}")
        time.sleep(0.001)
    return process
