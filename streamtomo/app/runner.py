"""Run a scan through the dranspose worker and reducer in this process (replay).

This is the composition root for ``streamtomo demo`` and ``streamtomo replay``: it
writes the parameter file, starts ``dranspose.replay`` in a thread, reports the
live endpoint before the first frame, shows progress, and writes the final file.
dranspose and the adapters are imported here, lazily, never by the core.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamtomo.app.adapters import TOMO_REDUCER, TOMO_WORKER
from streamtomo.app.parameter_files import write_parameter_file
from streamtomo.app.reducer_environment import ReducerEnvironment
from streamtomo.app.scan_outcome import BASE_DOUBTED
from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.streaming.admission import describe_lost

logger = logging.getLogger(__name__)


class ReplayFailed(RuntimeError):
    """dranspose's replay stopped with an error (a recording that does not decode, say)."""


@dataclass
class RunSummary:
    frames: int
    projections: int
    rejected: dict[str, int]
    seconds: float
    last_frame_to_final_s: float | None  # None: no frame arrived or no final slices
    endpoint: str
    domain: str
    state: str = "finished"
    reason: str = ""
    missing_angles: int = 0  # angle slots no projection filled (their sinogram rows are zeros)
    angle_slots: int = 0
    notices: dict[str, int] = field(default_factory=dict)  # what the streams showed, no frame's rejection
    pixels_repaired: int = 0  # dead, saturated or NaN pixels replaced by their row neighbours' median
    # [first, last] ranges of frames that never reached the reducer
    lost_frames: list[tuple[int, int]] = field(default_factory=list)
    # From the stream reduced to the run's end: the end-of-scan volume and the final
    # file's start. ``seconds`` leaves it out: a 2 s stream with a 60 s volume read as
    # 3 frames/s.
    end_of_scan_s: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        """The scan failed or reduced nothing: a run that a script must not take as done."""
        return self.state == "failed" or self.projections == 0

    def describe(self) -> str:
        """One line a scientist reads: counts, rate and how long the final slices took."""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.rejected.items()))
        notices = ", ".join(f"{n} {reason}" for reason, n in sorted(self.notices.items()))
        text = (
            f"{self.frames} frames ({self.projections} projections, {rejected} rejected"
            f"{': ' + reasons if reasons else ''}{'; noticed: ' + notices if notices else ''})"
            f" in {self.seconds:.2f} s, {self.frames_per_second:.1f} frames/s"
        )
        lost = describe_lost(self.lost_frames, BASE_DOUBTED in self.notices)
        if lost:
            text += f"; {lost}"
        if self.pixels_repaired:
            text += f"; {self.pixels_repaired} pixels repaired"
        if self.missing_angles and self.projections:
            # A parameter file that does not match the data (angle_range 360 for a 180-degree
            # scan, the default n_projections for another count) looked like a clean scan.
            why = "rejected frames, or see" if rejected else "see"
            text += f"; {self.missing_angles} of {self.angle_slots} angle slots empty ({why} the angle grid parameters)"
        if self.last_frame_to_final_s is not None:
            text += f"; last frame to final slices {self.last_frame_to_final_s * 1000:.0f} ms"
        if self.end_of_scan_s >= 0.05:
            text += f"; then {self.end_of_scan_s:.2f} s to the end of the scan (volume, final file)"
        return text


class ReplayRun:
    """One in-process replay; ``reducer`` is available once :meth:`start` returns."""

    def __init__(
        self,
        recordings: Sequence[Path],
        config: PipelineConfig,
        workers: int = 1,
        http_port: int = 0,
        rate_hz: float | None = None,
        keep_serving: threading.Event | None = None,
        hsds_endpoint: str = "",
    ) -> None:
        self.recordings = [Path(p) for p in recordings]
        self.config = config
        self.workers = workers
        self.http_port = http_port
        self.rate_hz = rate_hz
        self.reducer_environment = ReducerEnvironment(http_port=http_port, hsds_endpoint=hsds_endpoint)
        self._start = threading.Event()
        self._done = threading.Event()
        self._stop = keep_serving
        self._interrupted = threading.Event()  # interrupt(): no further event is streamed
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="streamtomo-")
        self.reducer: Any = None
        self.started_at = 0.0
        self.reduced_at = 0.0  # when dranspose's replay ended: every frame reduced
        self.finished_at = 0.0

    def start(self, timeout: float = 60.0) -> Any:
        """Start replay paused before the first frame; returns the reducer."""
        import dranspose.replay as dreplay

        missing = [str(p) for p in self.recordings if not p.exists()]
        if missing:
            raise FileNotFoundError(f"recordings not found: {missing}")
        params = write_parameter_file(self.config, Path(self._tmp.name) / "parameters.json")
        dreplay.reducer = None
        latency = 1.0 / self.rate_hz if self.rate_hz else None
        _stop_streaming_on(dreplay, self._interrupted)
        _quiet_prints(dreplay)

        def target() -> None:
            try:
                dreplay.replay(
                    TOMO_WORKER,
                    TOMO_REDUCER,
                    zmq_files=[str(p) for p in self.recordings],
                    parameter_file=str(params),
                    port=None,
                    nworkers=self.workers,
                    stop_event=self._stop,
                    done_event=self._done,
                    start_event=self._start,
                    latency=latency,
                )
            except BaseException as error:  # surfaced by wait()
                self._error = error
                self._done.set()

        self._thread = threading.Thread(target=target, name="dranspose-replay", daemon=True)
        # dranspose builds the reducer in that thread, from the environment (see
        # streamtomo.app.reducer_environment): keep it set until the reducer exists.
        with self.reducer_environment.applied():
            self._thread.start()
            deadline = time.monotonic() + timeout
            while getattr(dreplay, "reducer", None) is None:
                if isinstance(self._error, (OSError, EnvironmentSettingError)):
                    # A port that is taken, a path that cannot be made, a STREAMTOMO_
                    # variable no listener can use: the caller's to report as such (the
                    # CLI: one line, exit 2), not a failed replay.
                    raise self._error
                if self._error is not None:
                    raise ReplayFailed(f"replay failed to start: {self._error!r}") from self._error
                if time.monotonic() > deadline:
                    raise TimeoutError("the reducer did not start")
                time.sleep(0.01)
        self.reducer = dreplay.reducer
        return self.reducer

    def go(self) -> None:
        self.started_at = time.time()
        self._start.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended(0.2):
            if on_progress is not None:
                on_progress(self.status())
            if deadline is not None and time.monotonic() > deadline:
                what = "the end-of-scan volume" if self.done else "replay"
                raise TimeoutError(f"{what} did not finish in time")
        self.finished_at = time.time()
        if self._error is not None:
            raise ReplayFailed(f"replay failed: {self._error!r}") from self._error
        if on_progress is not None:
            on_progress(self.status())

    def _ended(self, timeout: float) -> bool:
        """The stream is done, and so is what follows it in the reducer (the end-of-scan
        volume, the final file's start)."""
        if not self._done.wait(timeout):
            return False
        if not self.reduced_at:
            self.reduced_at = time.time()
        return self.reducer is None or bool(self.reducer.wait_end_of_scan(timeout))

    def status(self) -> dict[str, Any]:
        with self.reducer.lock:
            return dict(self.reducer.scan.status())

    def summary(self) -> RunSummary:
        scan = self.reducer.scan
        with self.reducer.lock:
            status = scan.status()
            notices = scan.notices
            rejected = {reason: n for reason, n in scan.rejected.items() if reason not in notices}
            last_frame = scan.last_frame_time
            reason = scan.reason
            lost_frames = scan.lost_frames()
        # Never started (interrupted before go()): no time, not seconds since 1970.
        now = time.time()
        reduced = self.reduced_at or self.finished_at or now
        seconds = reduced - self.started_at if self.started_at else 0.0
        end_of_scan = (self.finished_at or now) - reduced if self.started_at else 0.0
        final_at = float(getattr(self.reducer, "final_slices_at", 0.0) or 0.0)
        projections = int(status["projections"])
        # Only a scan that had frames and published final slices has this latency.
        latency = max(final_at - last_frame, 0.0) if last_frame > 0 and final_at > 0 and projections else None
        return RunSummary(
            frames=int(status["frames_received"]),
            projections=projections,
            rejected=rejected,
            notices=notices,
            seconds=seconds,
            last_frame_to_final_s=latency,
            endpoint=self.reducer.endpoint,
            domain=self.reducer.domain.name,
            state=str(status.get("state", "")),
            reason=reason,
            missing_angles=int(status.get("missing_angles", 0)),
            pixels_repaired=int(status.get("pixels_repaired", 0)),
            angle_slots=scan.config.angle_slots(),
            lost_frames=lost_frames,
            end_of_scan_s=max(end_of_scan, 0.0),
        )

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop streaming after the event under way (dranspose's replay has no stop of its
        own: Ctrl-C let the whole recording play on); the scan then ends with what it
        has, and its end-of-scan volume is cancelled."""
        self._interrupted.set()
        if not self._start.is_set():  # before go(): the replay waits for it, and now streams nothing
            self._start.set()
        if self._stop is not None:
            self._stop.set()
        if self.reducer is not None:
            self.reducer.cancel_end_of_scan(reason)

    def close(self) -> None:
        if not self._start.is_set():  # closed before go() (Ctrl-C at start): the replay
            self._interrupted.set()  # would wait for it for good, and close for 30 s
            self._start.set()
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.reducer is not None:
            self.reducer.close()
        self._tmp.cleanup()


class Progress:
    """A bar on a terminal, log lines otherwise."""

    def __init__(self, total: int | None, stream: Any = None) -> None:
        self.total = total  # None: not known (kind_rule header)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_log = 0.0

    def frames_text(self, done: int) -> str:
        """``120/200 frames``; more than expected says so instead of ``463/462``."""
        if not self.total:
            return f"{done} frames"
        if done > self.total:
            return f"{done} frames ({self.total} expected, {done - self.total} extra)"
        return f"{done}/{self.total} frames"

    def __call__(self, status: dict[str, Any]) -> None:
        done = int(status.get("frames_received", 0))
        line = (
            f"{self.frames_text(done)}, {int(status.get('projections', 0))} projections, "
            f"{int(status.get('frames_rejected', 0))} rejected"
        )
        if self.tty:
            width = 30
            filled = int(width * min(done / max(self.total, 1), 1.0)) if self.total else 0
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            self.stream.flush()
        elif time.monotonic() - self._last_log > 2.0:
            self._last_log = time.monotonic()
            logger.info("progress: %s", line)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _quiet_prints(dreplay: Any) -> None:
    """``dranspose.replay`` prints "press ctrl-C to stop" once the recordings are
    streamed, into the progress bar's line on a terminal, while the summary is still to
    come, and the CLI says itself how to stop serving, after it (Enter on a terminal).
    Its prints go to the log instead (module globals come before builtins)."""

    def to_log(*values: Any, **_options: Any) -> None:
        logger.debug("dranspose.replay: %s", " ".join(str(value) for value in values))

    dreplay.print = to_log


def _stop_streaming_on(dreplay: Any, interrupted: threading.Event) -> None:
    """Make ``dranspose.replay``'s loop end once ``interrupted`` is set: its per-event
    ``_work_event`` raises StopIteration then, which the loop takes for the recordings'
    end (it calls the workers' and the reducer's ``finish``). Installed per run: the
    event is the run's."""
    work = getattr(dreplay, "_work_event", None)
    original = getattr(work, "streamtomo_original", work)
    if original is None:
        raise RuntimeError(
            "dranspose.replay has no _work_event: another dranspose version? (see streamtomo.app.runner)"
        )

    def work_event(*args: Any, **kwargs: Any) -> Any:
        if interrupted.is_set():
            raise StopIteration
        return original(*args, **kwargs)

    work_event.streamtomo_original = original  # type: ignore[attr-defined]
    dreplay._work_event = work_event
