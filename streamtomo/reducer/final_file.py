"""Each scan's final NeXus file, written in a thread after the scan has ended.

dranspose reports a scan finished when the reducer's ``finish`` returns: writing the
file inside it held that back by the file's time (a quarter of events/s at 512x512,
200 projections, 2 workers). The thread writes from this scan's own domain: dranspose
builds a new reducer, hence a new domain, for every scan (``Reducer.work``), so the
next scan does not change it. The arrays behind it (sinogram, volume) come from the
pool the next scan takes its arrays from: they are held (``ArrayPool.hold``) until
the file is written.

dranspose calls ``close`` only on the last scan's reducer: the writers are kept in
the dranspose context, which outlives scans, so that ``close`` waits for each one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the deployment reads FINAL_FILE_WAIT_S without numpy
    from streamtomo.hsds_bridge.domain import Domain

logger = logging.getLogger(__name__)

# How long ``close`` waits for files still being written (all of them together).
FINAL_FILE_WAIT_S = 60.0
# The writer thread's niceness: the file waits for a core the next scan's results need.
FINAL_FILE_NICE = 10


class FinalFile:
    """One scan's final file: :attr:`written` is its path once it is complete, else None."""

    def __init__(
        self,
        domain: Domain,
        path: Path,
        release: Callable[[], None],
        scan: str,
        identifier: str = "",
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.scan = scan
        self.identifier = identifier or path.stem  # the dranspose mapping uuid: what the file says it is
        self.ended = time.time()  # made when the scan has ended
        self.written: str | None = None
        self.error = ""  # why it was not written
        self._on_done = on_done  # called in the writer's thread once :attr:`outcome` is known
        self._domain: Domain | None = domain
        self._release = release
        # A daemon: a write that hangs (a dead network mount) must not keep the process
        # alive past close's wait, which warns about it.
        self._thread = threading.Thread(target=self._run, name=f"final-file-{path.name}", daemon=True)

    @property
    def outcome(self) -> tuple[bool, str] | None:
        """(True, "") once written, (False, why) once it failed; None while it is written."""
        if self.written is not None:
            return True, ""
        return (False, self.error) if self.error else None

    def start(self) -> FinalFile:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> str | None:
        """The file's path once written; None if it failed or is not written within ``timeout``."""
        self._thread.join(timeout)
        return self.written

    def _run(self) -> None:
        from streamtomo.reducer.final_metadata import write_final_file

        assert self._domain is not None
        with contextlib.suppress(OSError, AttributeError):  # Linux only (per thread there)
            # Behind the next scan's frames when both want a core.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FINAL_FILE_NICE)
        started, cpu = time.monotonic(), time.thread_time()
        try:
            path = write_final_file(self._domain, self.path, self.identifier, self.ended)
        except OSError as error:
            self.error = str(error) or type(error).__name__
            logger.warning("final file %s not written: %s", self.path, error)
        except Exception as error:
            # In finish this reached dranspose, which logs it as an ERROR; a thread's
            # exception would only be printed to stderr.
            self.error = f"{type(error).__name__}: {error}"
            logger.exception("final file %s not written", self.path)
        else:
            self.written = str(path)
            # The seconds are read by benchmarks/bench_pipeline.py (the file's share of the reducer's CPU).
            logger.info(
                "scan %s: final file %s written in %.2f s, %.2f s CPU",
                self.scan,
                path,
                time.monotonic() - started,
                time.thread_time() - cpu,
            )
        finally:
            self._domain = None
            # Let go of the callback too: it is the reducer's (a bound method), and this
            # object stays in the dranspose context until the next scan's file starts. Kept,
            # it kept the whole previous reducer (its domain, live sums, ledger) through
            # the next scan: 0.2 GB more at the reducer's peak at 1024^2.
            on_done, self._on_done = self._on_done, None
            if on_done is not None:
                # After the write (what it reports, the live domain's status, is not in the
                # file) and before the release: the report publishes the scan's domain,
                # whose arrays the next scan may take once they are let go.
                try:
                    on_done()
                except Exception:
                    logger.exception("final file %s: reporting its outcome failed", self.path)
            self._release()  # the scan's arrays may go


def wait_all(files: Iterable[FinalFile], timeout: float) -> None:
    """Wait up to ``timeout`` in all for the files still being written; warn for each one that is not."""
    deadline = time.monotonic() + timeout
    for final in list(files):
        if final.done:
            continue
        final.wait(max(deadline - time.monotonic(), 0.0))
        if not final.done:
            logger.warning(
                "final file %s of scan %s not written within %.0f s: lost if the process stops now",
                final.path,
                final.scan,
                timeout,
            )
