"""dranspose reducer: assemble the scan and publish it as a live HDF REST domain.

The scan state (:class:`streamtomo.pipeline.streaming.live_scan.LiveScan`) lives inside the domain's
lock: ``process_result`` and ``timer`` run concurrently in dranspose, and the
in-memory server reads the same arrays. ``timer`` reconciles worker partial sums,
copies the state into the domain, bumps ``generation`` and notifies publishers.

Settings that belong to the deployment, not the scan, come from the environment:
``STREAMTOMO_HTTP_HOST`` (default 127.0.0.1), ``STREAMTOMO_HTTP_PORT`` (default
8100; 0 picks a free port), ``STREAMTOMO_CORS_ORIGINS`` (comma separated), ``STREAMTOMO_HTTP_NAMES`` (the
names browsers know the live port by, beside localhost and IP addresses: an Ingress's) and
``STREAMTOMO_HSDS_ENDPOINT`` (with credentials from ``streamtomo.hsds_bridge.credentials``),
``STREAMTOMO_FINAL_DIR`` (each scan's final NeXus file, written after the scan has
ended: :mod:`streamtomo.reducer.final_file`), ``STREAMTOMO_FINAL_WAIT`` (how long
``close`` waits for final files still being written) and ``STREAMTOMO_POOL_WAIT`` (how
long a new scan waits for the previous scan's final file to release the sinogram's
memory before it maps a fresh one; 0: never waits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtomo.controller_client import ControllerError, post_parameter
from streamtomo.dranspose_parameters import REFERENCES, ConfigCache, describe_parameters
from streamtomo.hsds_bridge.control_api import LIVE_PARAMETERS, ControlServer, ControlSettings
from streamtomo.hsds_bridge.credentials import CredentialsError, load_credentials
from streamtomo.hsds_bridge.host_names import names_from_env
from streamtomo.hsds_bridge.hsds_settings import HsdsWriterSettings
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter, HsdsWriterError
from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError, env_port
from streamtomo.hsds_bridge.nexus_file import remove_orphaned_partials
from streamtomo.hsds_bridge.publisher import Publisher
from streamtomo.hsds_bridge.rest_server import HdfRestServer
from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import DetectorInfo, WorkerResult
from streamtomo.pipeline.streaming.broadcast_references import built_by_workers, first_batch_of_workers
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry, fit_to_detector
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.pipeline.streaming.prefault import ArrayPool
from streamtomo.reducer.domain_layout import new_domain, update_domain
from streamtomo.reducer.final_file import FINAL_FILE_WAIT_S, FinalFile, wait_all
from streamtomo.reducer.malloc_tuning import keep_buffer_pages
from streamtomo.reducer.volume_job import VolumeCancel, reconstruct_volume, volume_failed

logger = logging.getLogger(__name__)
POOL_WAIT_S = 10.0
# How long a new scan's first result waits for the previous scan's end (its volume
# cancelled between two batches, HSDS flushed, its final file started) before it goes on.
PREVIOUS_SCAN_WAIT_S = 120.0
# A live change goes on to the controller within this: below the viewer's wait for the
# control API (10 s), so a change the page reports as not taken was not taken.
CONTROLLER_POST_TIMEOUT_S = 5.0
NEXT_SCAN = "the next scan started"  # the reason a scan's end was cut short
# The notice (in /entry/status/rejected) counting results an earlier scan's worker sent late.
OTHER_SCAN = "result_of_another_scan"
# How long a new scan's reducer waits for its HSDS mirror's setup (see _start_hsds).
HSDS_START_WAIT_S = 2.0


@dataclass(frozen=True)
class ReducerSettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8100
    cors_origins: tuple[str, ...] = ()
    http_names: tuple[str, ...] = ()  # names browsers know the live port by (an Ingress's)
    hsds_endpoint: str = ""
    hsds_domain: str = ""  # default: /home/<writer account>/<live domain's file name>
    # A running scan with no result for this long, while frames are still expected
    # (the sender died, a stream stopped), is ended through the controller; 0: never.
    stream_timeout: float = 30.0
    final_dir: str = ""  # each scan's final NeXus file goes here; empty: none written
    final_wait: float = FINAL_FILE_WAIT_S  # close waits this long for final files still being written
    lost_scan: str = ""  # mapping uuid of a scan whose earlier reducer died (set when restarted)
    # A new scan waits this long for the previous scan's final file to release the
    # sinogram's memory (ArrayPool), then maps a fresh one.
    pool_wait: float = POOL_WAIT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ReducerSettings:
        """Raises EnvironmentSettingError for a value no listener or wait can use."""
        origins = tuple(o.strip() for o in env.get("STREAMTOMO_CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            http_host=env.get("STREAMTOMO_HTTP_HOST", "127.0.0.1"),
            http_port=env_port(env, "STREAMTOMO_HTTP_PORT", 8100),
            cors_origins=origins,
            http_names=names_from_env(env.get("STREAMTOMO_HTTP_NAMES", "")),
            hsds_endpoint=env.get("STREAMTOMO_HSDS_ENDPOINT", ""),
            hsds_domain=env.get("STREAMTOMO_HSDS_DOMAIN", ""),
            stream_timeout=_env_seconds(env, "STREAMTOMO_STREAM_TIMEOUT", 30.0),
            final_dir=env.get("STREAMTOMO_FINAL_DIR", ""),
            final_wait=_env_seconds(env, "STREAMTOMO_FINAL_WAIT", FINAL_FILE_WAIT_S),
            lost_scan=env.get("STREAMTOMO_LOST_SCAN", ""),
            pool_wait=_env_seconds(env, "STREAMTOMO_POOL_WAIT", POOL_WAIT_S),
        )


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration from the environment: finite and >= 0. A NaN stream timeout ended every
    scan after its first frames ("no event for nan s"), a negative one meant never."""
    text = env.get(name, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        raise EnvironmentSettingError(f"{name}={text!r} is not a number of seconds") from None
    if not (0 <= value < math.inf):
        raise EnvironmentSettingError(f"{name}={text!r}: seconds must be finite and >= 0")
    return value


# Writers of earlier scans that may go on trying in the background while HSDS is down
# (each holds its backlog, the whole domain at its scan's end): older ones are given up.
MAX_HSDS_WRITERS_BEHIND = 2
_behind_lock = threading.Lock()


def leave_behind(context: dict[Any, Any], writer: HsdsWriter) -> None:
    """Keep ``writer`` going in the background if its close left it trying (HSDS did not
    answer, or the next scan started), with at most :data:`MAX_HSDS_WRITERS_BEHIND` of
    them per reducer process, and older ones only while all of them together hold at most
    one writer's ``max_backlog_bytes`` of chunk copies: with scans no longer waiting for
    HSDS, an outage of an hour left a writer per scan, and a writer's close queues its
    whole domain past that limit (a 1024^2 scan's sinogram alone is 1.2 GB). The newest
    is always kept: it holds the scan a person most likely still wants."""
    with _behind_lock:
        behind: list[HsdsWriter] = [w for w in context.get("hsds_writers_behind", []) if w.behind]
        if writer.behind:
            behind.append(writer)
        kept: list[HsdsWriter] = []
        given_up: list[HsdsWriter] = []
        held = 0
        budget = behind[-1].settings.max_backlog_bytes if behind else 0
        for candidate in reversed(behind):  # newest first
            candidate_bytes = candidate.held_bytes
            if kept and (len(kept) >= MAX_HSDS_WRITERS_BEHIND or held + candidate_bytes > budget):
                given_up.insert(0, candidate)
            else:
                kept.insert(0, candidate)
                held += candidate_bytes
        context["hsds_writers_behind"] = kept
    for old in given_up:
        logger.warning(
            "giving up the HSDS domain %s of an earlier scan (%.1f MB not delivered): %d newer scans' "
            "writers still wait for HSDS, holding %.1f MB",
            old.domain_name,
            old.held_bytes / 1e6,
            len(kept),
            held / 1e6,
        )
        old.abandon()


class TomoReducer:
    """Reducer class for ``dranspose`` (``REDUCER_CLASS=streamtomo.reducer.tomo_reducer:TomoReducer``)."""

    def __init__(
        self, parameters: dict[Any, Any] | None = None, context: dict[Any, Any] | None = None, **kwargs: Any
    ) -> None:
        self.context = context if context is not None else {}
        self._end_cancel = VolumeCancel()
        # Set when the next scan starts: the end of this one gives way (volume and HSDS).
        # Not when the reducer stops: then HSDS gets its wait, the process is leaving.
        self._next_scan = threading.Event()
        self._end_of_scan: threading.Thread | None = None  # the volume, HSDS flush and final file
        previous = self.context.get("active_reducer")
        # dranspose builds the next scan's reducer in the same context and never closes
        # the previous one: its volume is cancelled now, and this scan's first result
        # waits for its end before taking the pooled arrays. Not here: dranspose builds
        # this object on its event loop, and the controller's POST of the scan waits
        # for that loop to answer.
        self._previous = previous if isinstance(previous, TomoReducer) else None
        if self._previous is not None:
            self._previous.cancel_end_of_scan(NEXT_SCAN, next_scan=True)
        keep_buffer_pages()  # once per process: results' buffers reuse their pages
        # Both read before anything listens: a variable no listener can use refuses the
        # reducer with its name (EnvironmentSettingError), leaving no server behind.
        self.settings = ReducerSettings.from_env()
        control_settings = ControlSettings.from_env()
        self._params = ConfigCache()
        self._parameters = parameters if parameters is not None else {}
        config = self._params.config(self._parameters)
        self.domain = new_domain(config.domain)
        self.lock = self.domain.lock
        # The sinogram's and volume's memory outlives the scan: mapping a gigabyte of
        # fresh pages costs seconds, zeroing mapped ones a tenth of one.
        pool = self.context.setdefault("array_pool", ArrayPool(self.settings.pool_wait))
        self._posted_references: set[int] = set()  # versions posted to the controller
        # Weakly: the scan holding this reducer's methods made a reducer -> scan ->
        # ReferenceBook -> method -> reducer cycle, which only a full collection frees
        # (Python's next one may come scans later); its arrays (live slices, sweep,
        # ledger rows, ~0.13 GB at 1024^2) outlived the scan. Measured, two workers,
        # 1024^2, two back-to-back scans: the second ran at 1.99 GB against the first's
        # 1.87 before (1.309 GB published).
        self.scan = LiveScan(
            config,
            on_references=_weakly(self._share_references),
            pool=pool,
            on_references_lacking=_weakly(self._post_references),
        )
        kept = self.context.get("references")
        if isinstance(kept, ReferenceSet):
            # Workers may still use them: known for re-correction, applied only if kept.
            self.scan.remember_references(kept, applicable=config.keep_references)
        started_here = not isinstance(self.context.get("rest_server"), HdfRestServer)
        self.server = self._rest_server()
        self.server.start(self.domain)
        try:
            self.control = self._control_server(control_settings)
        except BaseException:
            # The control port is taken: a caller that gets no reducer cannot close the
            # REST server (replay's runner closes the reducer it got), and it went on
            # serving an empty domain until the process left.
            if started_here:
                self.server.close()
                del self.context["rest_server"]
            raise
        self.publishers: list[Publisher] = [self.server]
        self.hsds: HsdsWriter | None = self._start_hsds() if self.settings.hsds_endpoint else None
        self._finished = threading.Event()
        self.final_slices_at = 0.0  # when the final slices were published
        self.volume_seconds: float | None = None  # how long the end-of-scan volume took
        self._closed = False
        self._refused: PipelineConfig | None = None
        # (configuration, detector, that configuration fitted to the detector): _fitted
        self._fit: tuple[PipelineConfig, DetectorInfo, PipelineConfig] | None = None
        self._pending_change: tuple[str, Any] | None = None  # a stored live change not applied yet
        self.mapping_uuid = str(getattr(kwargs.get("state"), "mapping_uuid", "") or "")
        self._last_result = time.monotonic()
        self._stopped_reason = ""  # why this reducer ended the scan early (streams stopped)
        self._final: FinalFile | None = None  # this scan's final file, once its writer started
        # A hold on the pooled arrays for an end of scan that overran (end_now): see there.
        self._overrun_release: Callable[[], None] | None = None
        self._late_results = 0  # results that came after the final file was started
        self._replaced = False  # end_if_replaced ran: the next scan came before this one ended
        # The final file's path, fixed from the start: the live domain names it while the scan runs.
        self._final_path = self._final_file_path()
        if self.mapping_uuid and self.mapping_uuid == self.settings.lost_scan:
            # Built for a scan that was under way when the previous reducer died: what
            # it had reduced died with it, and a result from the rest would pass for the
            # whole scan. Refuse it; the controller is told to end the scan.
            self.scan.state = "failed"
            self.scan.reason = (
                "the reducer died during this scan and was restarted: the results it held are lost "
                "(the ingesters' recordings, if any, replay the scan)"
            )
            logger.warning("scan %s failed: %s", self.mapping_uuid, self.scan.reason)
            with self.lock:
                self._publish_locked()
        logger.info("live domain %s at %s", self.domain.name, self.server.url)

    @staticmethod
    def describe_parameters() -> list[Any]:
        return describe_parameters()

    def _start_hsds(self) -> HsdsWriter | None:
        """Mirror the domain to HSDS; the in-memory server goes on if HSDS refuses."""
        try:
            credentials = load_credentials()
            name = self.settings.hsds_domain or f"/home/{credentials.username}/{self.domain.name.rsplit('/', 1)[-1]}"
            # Not HsdsWriter's 60 s: the reducer is built on dranspose's event loop, and an
            # HSDS that was down held it that long at every scan's start (`up` never got
            # ready). A refusal (401, 403) comes at once; an unreachable server is
            # retried in the background while the scan runs, its updates queued.
            writer = HsdsWriter(
                self.settings.hsds_endpoint, name, credentials, HsdsWriterSettings(start_timeout=HSDS_START_WAIT_S)
            )
            writer.start(self.domain)
        except (CredentialsError, HsdsWriterError, OSError, ValueError) as error:
            logger.warning("not publishing to HSDS at %s: %s", self.settings.hsds_endpoint, error)
            return None
        self.publishers.append(writer)
        logger.info("publishing to HSDS %s domain %s", self.settings.hsds_endpoint, writer.domain_name)
        return writer

    @property
    def endpoint(self) -> str:
        return self.server.url

    def _rest_server(self) -> HdfRestServer:
        # The server outlives scans: dranspose keeps ``context`` across them.
        self.context["active_reducer"] = self
        server = self.context.get("rest_server")
        if not isinstance(server, HdfRestServer):
            server = HdfRestServer(
                self.settings.http_host,
                self.settings.http_port,
                cors_origins=self.settings.cors_origins,
                host_names=self.settings.http_names,
            )
            self.context["rest_server"] = server
        return server

    def _control_server(self, settings: ControlSettings) -> ControlServer:
        """Parameter changes: a listener of their own, token required (STREAMTOMO_CONTROL_*)."""
        control = self.context.get("control_server")
        if not isinstance(control, ControlServer):
            context = self.context
            control = ControlServer(
                settings,
                sink=lambda name, value: context["active_reducer"].set_parameter(name, value),
                source=lambda: context["active_reducer"].live_parameters(),
            ).start()
            self.context["control_server"] = control
        return control

    # -- live parameter changes (viewer) --------------------------------------------
    def live_parameters(self) -> dict[str, str]:
        with self.lock:
            config = self.scan.config.to_dict()
        return {k: str(v) for k, v in config.items() if k in LIVE_PARAMETERS}

    def set_parameter(self, name: str, value: str) -> str:
        """Validate a parameter change completely, then store it for workers and reducer.

        Raises ``ValueError`` (shown to the caller) for a value the scan cannot take;
        then nothing is stored, so no worker ever sees it. The rebuild of the slices
        is not done here (this is the control API's request): the reducer's timer
        applies the stored parameters at the next publish.
        """
        from dranspose.protocol import ParameterName, WorkParameter

        if name not in LIVE_PARAMETERS:
            raise ValueError(f"parameter {name!r} cannot be changed live; allowed: {list(LIVE_PARAMETERS)}")
        with self.lock:
            config = PipelineConfig.from_mapping({**self.scan.config.to_dict(), name: value})
            detector = self.scan.detector
            config.check_live_bounds(detector.rows if detector else None, detector.cols if detector else None)
            if detector is not None:
                LiveSliceGeometry(config, detector)  # centre inside the detector, rows known
            data = value.encode()
            key = ParameterName(name)
            before = (self._parameters.get(key), self._pending_change)
            self._parameters[key] = WorkParameter(name=key, data=data, value=getattr(config, name))
            self._pending_change = (name, getattr(config, name))  # settings_pending until applied
        url = self.scan.config.controller_url
        if url:
            # Distributed: the workers take it from the controller, and the controller's
            # parameters replace the reducer's at its next timer. A change the controller
            # did not take was 'set' for the caller and then undone without a word
            # (settings_pending stayed 1): it is taken back here and refused instead.
            try:
                post_parameter(url, name, data, timeout=CONTROLLER_POST_TIMEOUT_S)
            except (OSError, ControllerError) as error:
                with self.lock:
                    previous, self._pending_change = before
                    if previous is None:
                        self._parameters.pop(key, None)
                    else:
                        self._parameters[key] = previous
                raise ConnectionError(
                    f"the controller at {url} did not take {name}: {error}; nothing was changed"
                ) from None
        logger.info("parameter %s set to %r", name, value)
        if self._end_under_way:
            return (
                "stored; the scan has ended and its volume is being made with the scan's settings: the live "
                "slices are rebuilt once the volume and the final file are done (see /entry/reconstruction/parameters)"
            )
        return "stored; the live slices are rebuilt at the next publish (see /entry/reconstruction/parameters)"

    def _post_to_controller(self, url: str, name: str, data: bytes) -> None:
        post_parameter(url, name, data, timeout=10.0, tolerant=True)

    # -- references to every worker -------------------------------------------------
    def _share_references(self, refs: ReferenceSet) -> None:
        """A reference set closed: give it to every worker that does not build it itself.

        ``dranspose replay`` (no controller): workers and reducer share one parameter
        dict, so setting it is enough. Distributed mode: the set goes through the
        controller (a POST), unless every worker built the same set from the broadcast
        darks and flats (:func:`built_by_workers`); then only once a worker shows it
        lacks it (``on_references_lacking``: a worker that started late, a lost frame).
        The dict is not touched there: a parameter the controller does not know puts
        this reducer's parameter hash out of step, and the controller redistributes
        every parameter to every service until it is.
        """
        refs = self.context["references"] = self._tagged(refs)  # the next scan keeps it (keep_references)
        if not self.scan.config.controller_url:
            from dranspose.protocol import ParameterName, WorkParameter

            data = refs.to_bytes()
            self._parameters[ParameterName(REFERENCES)] = WorkParameter(
                name=ParameterName(REFERENCES), data=data, value=data
            )
            return
        detector = self.scan.detector
        if detector is not None and not self._posted_references:
            config = self.scan.config
            if built_by_workers(config, refs, detector.dtype):
                return
            if self.scan.missing_references and first_batch_of_workers(config, refs, detector.dtype):
                # Closed lacking frames still on their way: the workers built the whole
                # set, and their rows wait here for those frames (LiveScan); given up,
                # the workers get this set (on_references_lacking).
                return
        # Once a set was posted, workers correct with the posted ones: each newer set
        # goes too (the first batch made again with a late frame, say).
        self._post_references(refs)

    def _tagged(self, refs: ReferenceSet) -> ReferenceSet:
        """``refs`` as it leaves this reducer: with where its arrays lie on the detector (a
        next scan keeps it only where its own lie there too, and a worker corrects with
        it only there: LiveSliceGeometry.unfit) and this scan's
        tag (the controller keeps the parameter for the next scan, whose workers must
        not take it over their own darks and flats: TomoWorker)."""
        return dataclasses.replace(refs, footprint=self.scan.reference_footprint(), scan=str(self.mapping_uuid or ""))

    def _post_references(self, refs: ReferenceSet) -> None:
        """Post ``refs`` to the controller once (per reducer, i.e. per scan); nothing
        in replay. Also called when a worker's rows came raw or corrected with another set."""
        url = self.scan.config.controller_url
        if not url or refs.version in self._posted_references:
            return
        refs = self._tagged(refs)
        self._posted_references.add(refs.version)
        logger.info("sharing darks and flats (version %x) with the workers through the controller", refs.version)
        # Off the result path: megabytes through the controller take a while, and
        # workers that saw the broadcast darks and flats do not wait for them.
        threading.Thread(
            target=self._post_to_controller,
            args=(url, REFERENCES, refs.to_bytes()),
            name="share-references",
            daemon=True,
        ).start()

    # -- dranspose entry points -----------------------------------------------------
    def process_result(self, result: Any, parameters: dict[Any, Any] | None = None) -> None:
        payload = getattr(result, "payload", result)
        if not isinstance(payload, WorkerResult):
            logger.warning("ignoring a result of type %s", type(payload).__name__)
            return
        if not payload.is_for(self.mapping_uuid):
            # A worker that stalled in an earlier scan and went on in this one: its frames
            # would land at their old numbers and angles (result_batches reports no completion).
            with self.lock:
                self.scan.admission.notice(
                    OTHER_SCAN,
                    f"a result of {getattr(result, 'worker', 'a worker')} made for scan {payload.scan} "
                    f"came in scan {self.mapping_uuid}: not taken",
                )
            return
        if self._previous is not None:
            # In dranspose's executor thread (one result at a time), not its event loop.
            previous, self._previous = self._previous, None
            previous.end_if_replaced(self.mapping_uuid)
            previous.end_now(NEXT_SCAN, PREVIOUS_SCAN_WAIT_S, next_scan=True)
            # Its last reference: its scan's arrays go now (see _weakly).
            del previous
        with self.lock:
            if self._end_of_scan is not None or self._final is not None:
                # The final slices are out and the volume (then the final file) is made
                # from these arrays: they hold the scan as it ended (or was closed).
                self._late_results += 1
                if self._late_results == 1:
                    logger.warning(
                        "scan %s: results after its end are not taken (counted in /entry/status/results_after_end)",
                        self.mapping_uuid,
                    )
                return
            self._last_result = time.monotonic()
            self._apply_parameters(parameters)
            self.scan.add_result(payload)

    def timer(self, parameters: dict[Any, Any] | None = None) -> float:
        if self._closed:
            # dranspose replay's timer thread outlives the run; stay quiet after close.
            return 3600.0
        previous = self._previous
        if previous is not None:
            # Not only at this scan's first result: a scan that gets none would leave
            # the one it replaced without its end until this reducer closes.
            previous.end_if_replaced(self.mapping_uuid)
        with self.lock:
            # A live change waits while the final file is written (it takes the domain
            # a block at a time): the file is the scan as it ended. Once the scan has
            # finished, only a change asked for through this reducer's control API is
            # applied: dranspose hands a finished scan's timer the next scan's parameters
            # as they are set, and each one that is not fixed (n_darks_before, say)
            # rebuilt every live product of the finished scan in the reducer (seconds
            # of backprojection at 1024^2, for a scan nobody watches any more).
            # From finish on, not only once the volume is done: a change taken while the
            # volume is made rebuilt the final slices with other settings than the
            # volume's (the next scan's parameters, too).
            ended = self._end_of_scan is not None and self._pending_change is None  # _finished comes after
            # A control API change while the volume is made waits for it and for the file:
            # the volume took its centre and filter when it started, and applying the change
            # then left a file whose centre, filter and slices were not the volume's.
            # Until the file is started, not only the volume: the HSDS close after it takes
            # up to a minute, and a change applied then went into the file.
            if (self._final is None or self._final.done) and not ended and not self._end_under_way:
                self._apply_parameters(parameters)
            if not self._finished.is_set():
                self.scan.reconcile()
                self._check_streams()
            self._publish_locked()
        return self.scan.config.publish_interval

    def _check_streams(self) -> None:
        """End a scan whose streams stopped (caller holds the lock).

        Only a running scan that still expects frames: a scan that got all of them ends
        by itself, and one that got none yet may be waiting for the beamline to start.
        """
        timeout = self.settings.stream_timeout
        scan = self.scan
        # Only a deployment's scans (a controller to end them through): a replay's streams
        # are files, and a slow --rate is not a dead sender.
        if timeout <= 0 or self._stopped_reason or scan.state != "running" or not scan.config.controller_url:
            return
        quiet = time.monotonic() - self._last_result
        expected = scan.config.expected_frames()
        received = scan.admission.received
        if quiet < timeout or (expected is not None and received >= expected):
            return
        of = f"{received} of {expected}" if expected is not None else f"{received} (of an unknown number)"
        self._stopped_reason = (
            f"the streams stopped: no event for {timeout:g} s after the last one; {of} frames received"
        )
        logger.warning("ending scan %s: %s", self.mapping_uuid, self._stopped_reason)
        url = scan.config.controller_url
        if url:
            threading.Thread(target=self._stop_scan, args=(url,), name="stop-scan", daemon=True).start()

    def _stop_scan(self, url: str) -> None:
        from streamtomo.controller_client import ControllerClient

        try:
            ControllerClient(url, timeout=10.0).stop()
        except (OSError, ValueError) as error:
            logger.warning("could not end the scan through the controller at %s: %s", url, error)

    def end_if_replaced(self, next_mapping: str) -> None:
        """End this scan now if it is still running: the next scan was posted before
        it ended (its sender was killed, a control system started the next scan).

        dranspose never calls a replaced scan's ``finish``: it had no final file, and its
        live domain was simply replaced. It ends here as a stopped scan with what it
        reduced (final slices, status, final file; no volume). Once: the next scan's
        timer and first result both call this.
        """
        with self.lock:
            if self._replaced or self._end_of_scan is not None or self._closed:
                return
            self._replaced = True
            received = self.scan.admission.received
            if received == 0 or self.scan.state not in ("waiting", "running") or not self.mapping_uuid:
                # Nothing to end: a mapping that never got a frame, or no scan of the
                # controller's (a restarted reducer's first one, built before it knew the
                # mapping, took results of the scan its predecessor died in).
                return
            if not self._stopped_reason:  # the streams' stop, if seen first, says more
                expected = self.scan.config.expected_frames()
                of = f"{received} of {expected}" if expected is not None else f"{received}"
                self._stopped_reason = (
                    f"scan {next_mapping or '(the next one)'} was posted before this one ended: "
                    f"it ended with what was reduced, {of} frames received"
                )
            logger.warning("ending scan %s: %s", self.mapping_uuid, self._stopped_reason)
            # Under the lock (an RLock) from the check on: another thread's end_now that
            # found the end not started yet would not hold the pooled arrays, and the next
            # scan could take them before this scan's file is written from them.
            self.finish(None)

    def finish(self, parameters: dict[Any, Any] | None = None) -> None:
        """The stream is reduced: publish the final slices, then start the end of the scan.

        The volume, the HSDS flush and the final file run in a thread of their own
        (:meth:`_end_scan`), so this returns once the final slices are out: dranspose
        then tells the controller the scan is finished, and the next scan can start
        (it cancels a volume still under way). :meth:`wait_end_of_scan` waits for it.
        """
        with self.lock:
            if self._end_of_scan is not None:
                logger.warning("scan %s: finish called again; its end is under way already", self.mapping_uuid)
                return
            self._apply_parameters(parameters)
            stopped = bool(self._stopped_reason)
            # A stopped scan gets no volume: its final products are what was reduced.
            self.scan.finish(volume_follows=self.scan.config.volume and not stopped)
            if stopped and self.scan.state != "failed":
                self.scan.state = "stopped"
                self.scan.add_reason(self._stopped_reason, first=True)
            self._publish_locked()
            self.final_slices_at = time.time()
            self._end_of_scan = threading.Thread(target=self._end_scan, name="end-of-scan", daemon=True)
            self._end_of_scan.start()

    @property
    def _end_under_way(self) -> bool:
        """The end-of-scan thread runs (volume, HSDS close, the final file's start)."""
        return self._end_of_scan is not None and self._end_of_scan.is_alive()

    def wait_end_of_scan(self, timeout: float | None = None) -> bool:
        """Wait until the volume is done (or cancelled) and the final file started;
        True once it is (also when ``finish`` was never called)."""
        thread = self._end_of_scan
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def cancel_end_of_scan(self, reason: str, next_scan: bool = False) -> None:
        """Stop the volume after the batch under way (``reason`` goes into the status);
        ``next_scan``: and do not wait for HSDS either (it goes on in the background)."""
        if next_scan:
            self._next_scan.set()
        self._end_cancel.set(reason)

    def end_now(self, reason: str, timeout: float, next_scan: bool = False) -> None:
        """Cancel the volume and wait up to ``timeout`` s for the end of the scan."""
        self.cancel_end_of_scan(reason, next_scan)
        if not self.wait_end_of_scan(timeout):
            logger.warning(
                "scan %s: its end (volume, HSDS, final file) still runs after %g s", self.mapping_uuid, timeout
            )
            # The caller goes on (the next scan takes the pooled arrays next): hold them
            # for this scan, whose volume, HSDS flush and final file still read them,
            # until its final file's writer holds them itself (_write_final).
            with self.lock:
                if self._overrun_release is None and self._final is None and self.scan.pool is not None:
                    self._overrun_release = self.scan.pool.hold()

    def _end_scan(self) -> None:
        """The end-of-scan thread: volume, then HSDS, then the final file (always: its
        writer also lets go of the pooled arrays)."""
        try:
            self._end_scan_products()
        finally:
            self._write_final()

    def _end_scan_products(self) -> None:
        try:
            self.volume_seconds = reconstruct_volume(self.scan, self.lock, self._publish_locked, self._end_cancel)
        except Exception as error:  # a thread's exception reaches no log by itself
            logger.exception("scan %s: the end-of-scan volume failed", self.mapping_uuid)
            volume_failed(self.scan, self.lock, self._publish_locked, error)
        with self.lock:
            self._finished.set()
        if self.hsds is not None:
            # Send the rest, flush, check the domain as readers see it. The writer stays a
            # publisher: what it could not deliver is counted by now, and this publish puts
            # the count into the domain (the final file) and, once HSDS answers, into HSDS.
            # Not past the next scan's start: with HSDS down, this wait held every next
            # scan's first result (end_now) for its 60 s, and the scan stalled.
            self.hsds.close(timeout=60.0, give_way=self._next_scan.is_set)
            leave_behind(self.context, self.hsds)
            with self.lock:
                self._publish_locked()
            state = "complete" if self.hsds.complete else "not complete yet (finishing in the background)"
            logger.info("HSDS domain %s %s (%s)", self.hsds.domain_name, state, self.hsds.stats())
        status = self.scan.status()
        # A failure was logged (WARNING, with its reason) where it happened.
        counts = self.scan.counts
        logger.info(
            "scan %s: %d projections, %d rejected %s; %d copies of broadcast darks and flats, %d of them with rows",
            self.scan.state,
            status["projections"],
            status["frames_rejected"],
            json.dumps(self.scan.rejected),
            counts.get("reference_copies", 0),
            counts.get("reference_copies_with_rows", 0),
        )

    def close(self, context: dict[Any, Any] | None = None) -> None:
        # The service stops: a volume under way ends with the slices it has (the previous
        # scan's too, when this scan had no result that waited for it).
        if self._previous is not None:
            self._previous.end_if_replaced(self.mapping_uuid)
            self._previous.end_now("the reducer stopped", PREVIOUS_SCAN_WAIT_S)
        self.end_now("the reducer stopped", PREVIOUS_SCAN_WAIT_S)
        # An end of scan that outlasted that wait writes its file when it ends: wait for it
        # (bounded), so that wait_all below has the file to wait for. The thread is a
        # daemon: the process leaving after close took it, and the scan had no file.
        for reducer in (self._previous, self):
            if reducer is not None and not reducer.wait_end_of_scan(self.settings.final_wait):
                logger.warning(
                    "scan %s: its end (volume, HSDS, final file) still runs after %g s more: its file "
                    "is lost if the process stops now",
                    reducer.mapping_uuid,
                    self.settings.final_wait,
                )
        mid_scan = self._end_of_scan is None and not self._finished.is_set()
        if mid_scan and self.scan.admission.received > 0 and self._final is None:
            # Stopped mid-scan (Redis gone, up stopping): keep what was reduced. Not a scan
            # whose end outlasted the wait above: it ended, and its end-of-scan thread
            # writes its file (a second writer of the same path, and 'failed' then
            # 'finished', came of that).
            with self.lock:
                self.scan.ended = True  # what has not come is lost to this scan's products
                if self.scan.state != "failed":
                    self.scan.state = "failed"
                    self.scan.reason = (
                        f"the reducer stopped before the scan ended: {self.scan.admission.received} frames "
                        "received; the slices and sinogram hold what was reduced"
                    )
                    logger.warning("scan %s failed: %s", self.mapping_uuid, self.scan.reason)
                self._publish_locked()
            self._write_final()
        self._closed = True
        # Every scan's file, not only this one's: dranspose closes only the last reducer.
        wait_all(self.context.get("final_files", []), self.settings.final_wait)
        self.control.close()
        for publisher in self.publishers:
            publisher.close()

    @property
    def final_file(self) -> str | None:
        """The final file's path once it is completely written; None before, or if it failed."""
        return self._final.written if self._final is not None else None

    def wait_final_file(self, timeout: float | None = None) -> str | None:
        """Wait for this scan's final file (written after ``finish`` returned): its path,
        or None if none is written (no ``final_dir``, a failure, or not within ``timeout``)."""
        started = time.monotonic()
        if not self.wait_end_of_scan(timeout):
            return None
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return self._final.wait(left) if self._final is not None else None

    # -- internals ------------------------------------------------------------------
    def _let_go_of_overrun(self) -> None:
        release, self._overrun_release = self._overrun_release, None
        if release is not None:
            release()

    def _write_final(self) -> None:
        """Start writing the domain as a NeXus file in ``final_dir``, whatever state the scan ended in."""
        if not self.settings.final_dir:
            with self.lock:
                self._let_go_of_overrun()  # the end of the scan is done with the arrays
            return
        # At every scan's end, not once per process: a long-lived reducer's first scan
        # came within the hour a killed one's partial must wait, and it stayed for good.
        for orphan in remove_orphaned_partials(self.settings.final_dir):
            logger.warning("removed %s, a final file's part that a writer which died left", orphan)
        files: list[FinalFile] = self.context.setdefault("final_files", [])
        files[:] = [f for f in files if not f.done]  # written ones need no waiting for
        with self.lock:  # from here on no result changes the domain (process_result)
            if self._final is not None:  # one file per scan, one writer of it
                return
            pool = self.scan.pool
            release = pool.hold() if pool is not None else _nothing
            self._let_go_of_overrun()  # the file's writer holds them now
            self._final = FinalFile(
                self.domain,
                self._final_path,
                release,
                f"{self.mapping_uuid or self._final_path.name} {self.scan.state}",
                identifier=str(self.mapping_uuid or ""),
                on_done=self._final_file_done,
            ).start()
        files.append(self._final)

    def _final_file_path(self) -> Path:
        # Without a scan id (no controller): the time, and a random part, since two such
        # scans in one second replaced each other's file.
        name = f"scan-{self.mapping_uuid or time.strftime('%Y%m%d-%H%M%S-') + secrets.token_hex(4)}.nxs"
        return Path(os.path.abspath(self.settings.final_dir or ".")) / name

    def _final_file_done(self) -> None:
        """The writer is done (its thread): its outcome into the live domain's status,
        where a file that could not be written (a full disk, a folder gone) showed only
        in the log."""
        with self.lock:
            self._publish_locked()

    def _fitted(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` as the workers take it (geometry_for): a centre stored before the
        first frame that the detector does not allow fell back there and in this scan;
        held against the scan's settings as stored, every later change was refused here
        while the workers applied it, and their partial sums no longer matched.

        Once per configuration and detector: this runs for every result, and fitting
        builds the live geometry (86 us per result at 32x256, 0.5 ms at 2048^2)."""
        detector = self.scan.detector
        if detector is None:
            return config
        if self._fit is None or self._fit[0] is not config or self._fit[1] != detector:
            fitted = config
            with contextlib.suppress(ConfigError):  # settings no fallback fits: refused by reconfigure
                fitted, _ = fit_to_detector(config, detector)
            self._fit = (config, detector, fitted)
        return self._fit[2]

    def _apply_parameters(self, parameters: dict[Any, Any] | None) -> None:
        if parameters is None:
            return
        if parameters is not self._parameters and REFERENCES not in parameters and REFERENCES in self._parameters:
            parameters[REFERENCES] = self._parameters[REFERENCES]
        self._parameters = parameters
        config = self._fitted(self._params.config(parameters))
        if config != self.scan.config and config != self._refused:
            try:
                self.scan.reconfigure(config)
            except ValueError as error:
                self._refused = config  # warn once, not on every result
                self._pending_change = None
                logger.warning("parameter change refused: %s", error)
        # In distributed mode the change comes back through the controller: it is
        # applied when the scan's settings hold it, not when some parameters arrive.
        if (
            self._pending_change is not None
            and getattr(self.scan.config, self._pending_change[0]) == self._pending_change[1]
        ):
            self._pending_change = None

    def _publish_locked(self) -> None:
        dropped = sum(p.stats().dropped_updates for p in self.publishers)
        extra = {
            "publisher_dropped": dropped,
            "settings_pending": int(self._pending_change is not None),
            # Results that came after finish are not taken (the products are the scan as
            # it ended): counted here, so a late worker's frames are not lost unseen.
            "results_after_end": self._late_results,
        }
        final_file = str(self._final_path) if self.settings.final_dir else ""
        outcome = self._final.outcome if self._final is not None else None
        if update_domain(self.domain, self.scan.snapshot(), extra, final_file, outcome):
            for publisher in self.publishers:
                publisher.notify()


def _weakly(method: Callable[[ReferenceSet], None]) -> Callable[[ReferenceSet], None]:
    """``method``, called through a weak reference to its object (nothing once it is gone)."""
    ref = weakref.WeakMethod(method)

    def call(refs: ReferenceSet) -> None:
        bound = ref()
        if bound is not None:
            bound(refs)

    return call


def _nothing() -> None:
    """Release of a hold on no pool."""
