"""Act as the beamline for a running deployment (``streamtomo play``).

A scan is played in four steps, in this order because dranspose services pick up
parameters and sockets at fixed moments:

1. Parameters: every :class:`PipelineConfig` field, ``controller_url`` (so that the
   reducer can share darks and flats), ``dump_prefix`` (recordings), and an empty
   ``references`` unless the scan takes no darks or flats and ``keep_references``
   is set: references of an earlier scan must not reach this scan's workers (see
   :func:`scan_parameters`). Then wait until every service has them (same
   parameter hash): a worker or the reducer reads them when the new mapping starts.
2. Sockets: bind the detector's ZeroMQ PUSH and open the PandA's TCP server before
   the mapping exists, because the ingesters connect at their first assignment (a
   refused TCP connection would end the angle ingester's work for this scan).
3. Mapping: ``POST /api/v1/sequence``: darks and flats go to every worker
   (``constraint: null``), each projection to one worker; dranspose adds the start
   (headers) and end events for all workers. The call returns once every service
   has the mapping.
4. Stream: per event the detector message (STINS or Dectris Stream v1), then the
   PandA value line, at ``rate_hz`` or as fast as the PUSH socket's high-water mark
   lets frames go, i.e. as fast as the pipeline takes them. Then wait until the
   controller reports the scan finished (a worker that died costs it only what
   it held: streamtomo.app.departed_workers); if progress stalls (a stream stopped
   early) end the scan with ``POST /api/v1/stop`` so that the
   reducer finishes and keeps the partial result. So does a play stopped (Ctrl-C,
   SIGTERM) or failed mid-scan: the scan stayed open until the reducer's stream
   timeout, and a play within it replaced the scan before its end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamtomo.app.beamline_events import BROADCAST, BeamlineEvent, frame_events, recorded_events, scan_mapping
from streamtomo.app.departed_workers import STALL_TIMEOUT_S
from streamtomo.app.deployment_state import DeploymentState, runs_our_service
from streamtomo.app.parameter_files import load_config, parameter_list
from streamtomo.app.upstream import DetectorPush, NotConnected, PandaServer, PlayError, PlayRefused
from streamtomo.controller_client import ControllerClient, ControllerError, ControllerTimeout
from streamtomo.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)
# How long a play stopped mid-scan waits for the scan it ended to be reduced (a second
# Ctrl-C stops waiting): the reducer's end of it takes a publish, not the volume.
INTERRUPTED_END_WAIT_S = 30.0

__all__ = [
    "BeamlineEvent",
    "DeploymentGone",
    "NotConnected",
    "PandaServer",
    "PlayError",
    "PlayRefused",
    "PlayResult",
    "frame_events",
    "play",
    "recorded_config",
    "recorded_events",
    "scan_mapping",
    "scan_parameters",
]


def scan_parameters(
    config: PipelineConfig,
    state: DeploymentState,
    dump_prefix: str | None,
    takes_references: bool = True,
) -> dict[str, bytes]:
    """Parameter values as dranspose encodes them (``str(value)``).

    ``references`` is emptied unless the scan takes no darks or flats and
    ``keep_references`` is set: a worker still holding an earlier scan's set would
    correct this scan's frames with that scan's darks and flats. Each scan's reducer
    numbers its reference versions from a random start, so it does not know that
    set's version and would reject those rows (``unknown_references``).
    """
    values = {p["name"]: p["data"].encode() for p in parameter_list(config)}
    values["controller_url"] = state.controller_url.encode()
    values["detector_stream"] = state.detector_stream.encode()
    values["angle_stream"] = state.angle_stream.encode()
    prefix = state.dump_prefix if dump_prefix is None else dump_prefix
    values["dump_prefix"] = prefix.encode()
    if not config.keep_references or takes_references:
        values["references"] = b""
    return values


# -- playing ------------------------------------------------------------------------------


@dataclass
class PlayResult:
    mapping_uuid: str
    frames_sent: int
    bytes_sent: int
    started: float  # time.time() of the first frame
    last_sent: float
    finished: float
    ended_by_stop: bool
    send_times: dict[int, float] = field(default_factory=dict)  # frame index -> time.time() sent
    progress: dict[str, Any] = field(default_factory=dict)
    dump_prefix: str = ""
    events_sent: int = 0  # dranspose events whose messages went out (headers and ends too)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def recordings(self, streams: Sequence[str] = ("detector", "angle")) -> list[Path]:
        """The ingesters' recordings of this scan (``dump_prefix``)."""
        return [Path(f"{self.dump_prefix}{s}-ingester-{self.mapping_uuid}.cbors") for s in streams]

    def recorded_config(self) -> PipelineConfig:
        """The configuration the controller recorded for this scan, for replay.

        ``controller_url`` is dropped: a replay must not post to a live controller.
        """
        return recorded_config(self.dump_prefix, self.mapping_uuid)


def recorded_config(prefix: str, mapping_uuid: str) -> PipelineConfig:
    """Read ``{prefix}parameters-{uuid}.json`` (or ``.cbor``, with binary parameters)."""
    base = Path(f"{prefix}parameters-{mapping_uuid}")
    path = base.with_suffix(".json") if base.with_suffix(".json").exists() else base.with_suffix(".cbor")
    return load_config(path, {"controller_url": ""})


def play(
    state: DeploymentState,
    events: Sequence[BeamlineEvent],
    config: PipelineConfig,
    *,
    rate_hz: float | None = None,
    max_frames: int | None = None,
    dump_prefix: str | None = None,
    stall_timeout: float = STALL_TIMEOUT_S,
    finish_timeout: float = 60.0,
    connect_timeout: float = 15.0,
    on_frame_sent: Callable[[int, int], None] | None = None,
) -> PlayResult:
    """Play one scan (steps in the module docstring); returns when it finished.

    ``max_frames`` sends only that many frames and no ends: a stream that stopped
    early. ``on_frame_sent(i, sent)`` runs after frame ``i`` (the ``sent``-th) left.
    """
    controller = ControllerClient(state.controller_url)
    # The beamline's ports first, and only then the parameters: a second play that failed
    # on a taken port had already set the running scan's parameters (its final file said
    # filter hann, its recording ramp).
    try:
        panda = PandaServer(state.angle_upstream)
    except OSError as error:
        raise PlayRefused(f"the PandA port {state.angle_upstream} is taken (another play?): {error}") from None
    import zmq  # pyzmq comes with dranspose

    try:
        detector = DetectorPush(state.detector_upstream)
    except zmq.ZMQError as error:  # address in use
        panda.close()
        raise PlayRefused(f"the detector port {state.detector_upstream} is taken (another play?): {error}") from None
    try:
        takes_references = any(e.key in BROADCAST for e in events)
        parameters = scan_parameters(config, state, dump_prefix, takes_references)
        hashes = [
            h for h in (controller.set_parameter_if_changed(n, v) for n, v in parameters.items()) if h is not None
        ]
        logger.info("parameters set (%d changed); waiting for every service to have them", len(hashes))
        # Services pick parameters up when the mapping starts: they must all have them first.
        try:
            controller.wait_consistent(hashes[-1] if hashes else None, 30.0)
        except ControllerTimeout as error:
            raise PlayError(str(error)) from None
        prefix = state.dump_prefix if dump_prefix is None else dump_prefix
        if prefix:
            Path(os.path.dirname(prefix) or ".").mkdir(parents=True, exist_ok=True)
    except BaseException:
        detector.close()
        panda.close()
        raise
    result: PlayResult | None = None  # once the scan is posted
    try:
        mapping = scan_mapping(events, state.detector_stream, state.angle_stream)
        n_frames = sum(1 for e in events if e.frame is not None)
        for attempt in (1, 2):
            try:
                uuid = controller.set_sequence(mapping)
            except ControllerError as error:
                raise PlayError(f"the controller refused the scan: {error}") from None
            logger.info("scan %s: %d events (%d frames) mapped", uuid, len(events), n_frames)
            result = PlayResult(uuid, 0, 0, 0.0, 0.0, 0.0, False, dump_prefix=prefix)
            try:
                _stream(
                    events,
                    detector,
                    panda,
                    result,
                    rate_hz,
                    max_frames,
                    connect_timeout,
                    on_frame_sent,
                    lambda: _check_deployment(controller, state),
                )
                break
            except NotConnected:
                # dranspose services apply only the last of several queued controller
                # updates; a parameter update right behind the mapping leaves an
                # ingester with no active stream for it. Nothing but headers went out
                # yet: post the scan again (a new mapping restarts every ingester).
                if attempt == 2:
                    raise
                logger.warning("an ingester did not connect for scan %s: posting the scan again", uuid)
                detector.close()
                detector = DetectorPush(state.detector_upstream)
        assert result is not None
        _wait_finished(controller, result, len(events), stall_timeout, finish_timeout)
    except BaseException as error:
        if result is not None and not result.ended_by_stop and not isinstance(error, DeploymentGone):
            _end_abandoned_scan(controller, result, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        raise
    finally:
        detector.close()
        panda.close()
    return result


def _end_abandoned_scan(controller: ControllerClient, result: PlayResult, why: str) -> None:
    """A play stopped or failed mid-scan ends its scan through the controller, and
    waits (:data:`INTERRUPTED_END_WAIT_S`, a second Ctrl-C stops waiting) until it is
    reduced: the reducer ends it with what it reduced, final file included."""
    try:
        controller.stop()
        deadline = time.monotonic() + INTERRUPTED_END_WAIT_S
        while time.monotonic() < deadline:
            if controller.progress().get("finished"):
                logger.warning(
                    "%s: the scan was ended through the controller; what was reduced of its %d frames sent is kept",
                    why,
                    result.frames_sent,
                )
                return
            time.sleep(0.1)
        logger.warning(
            "%s: the scan was asked to end through the controller and had not ended after %.0f s",
            why,
            INTERRUPTED_END_WAIT_S,
        )
    except (ControllerError, OSError) as error:
        logger.warning("%s: the scan could not be ended through the controller: %s", why, error)
    except KeyboardInterrupt:
        logger.warning("%s again: not waiting for the scan to end", why)


def _check_deployment(controller: ControllerClient, state: DeploymentState) -> None:
    """Raise :class:`DeploymentGone` if the deployment stopped under the scan: its
    controller does not answer, or (a local deployment, whose state names its pids) an
    ingester is not running. A send that waits for the detector ingester then gives up
    at once, where it waited 30 s and blamed the ingester for a deployment that had
    stopped."""
    stopped = stopped_ingesters(state.pids)
    try:
        _progress(controller, timeout=5.0)
    except OSError:
        pass  # a timeout: a controller too busy to answer in 5 s is not gone
    except ControllerError as error:  # it answers, with an error (Redis gone: 500)
        raise PlayError(f"the deployment's controller at {controller.url} answers with an error: {error}") from None
    if stopped:
        raise DeploymentGone(f"its {' and '.join(stopped)} stopped")


def stopped_ingesters(pids: dict[str, int]) -> list[str]:
    """The ingesters of a deployment on this machine (``up``'s state names their pids)
    that no longer run, as "name (pid N)". Pids say something only where one of the
    deployment's services runs here: a state file from elsewhere names another
    machine's pids, and a deployment whose every service is gone is seen by its
    controller's silence."""
    # Not any command line that names streamtomo (play's own, its shell's): a service's.
    running = {name: runs_our_service(pid) for name, pid in pids.items()}
    if not any(running.values()):
        return []
    return [
        f"{name} (pid {pids[name]})"
        for name in ("detector-ingester", "angle-ingester")
        if name in running and not running[name]
    ]


def _reduced(controller: ControllerClient) -> bool:
    """Whether the reducer has reported every result the workers sent (workers send
    small results together, up to 0.05 s late: streamtomo.app.reduction_progress). A
    controller that does not say (not ours) counts as reduced, as before."""
    try:
        reduction = controller.reduction(timeout=5.0)
    except (ControllerError, OSError):
        return False  # asked again in 50 ms
    return reduction is None or int(reduction.get("to_reduce", 0)) == 0


def _progress(controller: ControllerClient, timeout: float | None = None) -> dict[str, Any]:
    """The controller's progress; a controller that refuses connections (a timeout is
    not that) is :class:`DeploymentGone`."""
    try:
        return controller.progress(timeout=timeout)
    except OSError as error:
        if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
            raise
        reason = getattr(error, "reason", error)  # urllib's URLError wraps the socket's
        raise DeploymentGone(f"its controller at {controller.url} does not answer ({reason})") from None


class DeploymentGone(PlayError):
    """The deployment stopped under the scan (its controller or an ingester)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the deployment stopped under the scan: {what}; see the output of `streamtomo up` and its services' logs"
        )


def _stream(
    events: Sequence[BeamlineEvent],
    detector: DetectorPush,
    panda: PandaServer,
    result: PlayResult,
    rate_hz: float | None,
    max_frames: int | None,
    connect_timeout: float,
    on_frame_sent: Callable[[int, int], None] | None,
    check: Callable[[], None] | None = None,
) -> None:
    period = 1.0 / rate_hz if rate_hz else 0.0
    last_log = time.monotonic()
    t0 = 0.0
    total = sum(1 for e in events if e.frame is not None)
    for event in events:
        if event.frame is not None:
            if max_frames is not None and result.frames_sent >= max_frames:
                logger.info("stream stopped early after %d frames (as asked)", result.frames_sent)
                return
            if period:
                delay = t0 + result.frames_sent * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if event.detector:
            detector.send(event.detector, connect_timeout if event.number == 0 else None, check)
        if event.number == 0:
            # The angle ingester connects when its first assignment arrives.
            panda.accept(connect_timeout)
        if event.angle:
            try:
                panda.send(event.angle)
            except OSError as error:  # the angle ingester's connection closed
                if check is not None:
                    check()  # the deployment stopped: say that
                raise PlayError(f"the angle ingester closed its connection mid-scan: {error} (see its log)") from None
        result.events_sent += 1
        if event.frame is not None:
            now = time.time()
            if result.frames_sent == 0:
                result.started, t0 = now, time.monotonic()
            result.send_times[event.frame] = now
            result.frames_sent += 1
            result.bytes_sent += event.nbytes
            result.last_sent = now
            if on_frame_sent is not None:
                on_frame_sent(event.frame, result.frames_sent)
        if time.monotonic() - last_log > 2.0:
            last_log = time.monotonic()
            logger.info("sent %d/%d frames", result.frames_sent, total)


def _wait_finished(
    controller: ControllerClient, result: PlayResult, n_events: int, stall_timeout: float, finish_timeout: float
) -> None:
    """Until the controller says finished; a stall ends the scan through the controller."""
    last_done, last_change, last_log = -1, time.monotonic(), 0.0
    stopped_at: float | None = None
    while True:
        progress = _progress(controller)
        result.progress = progress
        if progress.get("finished"):
            break
        done = int(progress.get("completed_events", 0))
        now = time.monotonic()
        if done != last_done:
            last_done, last_change = done, now
        if now - last_log > 2.0:
            last_log = now
            logger.info("completed %d/%d events", done, n_events)
        # A stream cut short whose every sent event is reduced: the rest never comes, so
        # end now. Otherwise only a stall ends it, however slow the pipeline is to take
        # what was sent (a numba compile on a busy machine).
        cut_short = result.events_sent < n_events and done >= result.events_sent and _reduced(controller)
        if stopped_at is None and (cut_short or now - last_change > stall_timeout):
            logger.warning(
                "%s at %d/%d events: ending the scan (partial result kept)",
                "the stream stopped early and every event sent is reduced"
                if cut_short
                else f"no progress for {stall_timeout:.0f} s",
                done,
                n_events,
            )
            controller.stop()
            result.ended_by_stop = True
            stopped_at = now
        if stopped_at is not None and now - stopped_at > finish_timeout:
            raise PlayError(f"the scan did not finish within {finish_timeout:.0f} s of being stopped: {progress}")
        time.sleep(0.05)
    result.finished = time.time()
    logger.info(
        "scan %s finished: %d frames in %.2f s%s",
        result.mapping_uuid,
        result.frames_sent,
        result.seconds,
        " (ended by stop)" if result.ended_by_stop else "",
    )
