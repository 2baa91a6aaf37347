"""Act as the beamline for a running deployment (``streamtomo play``).

A scan is played in four steps, in this order because dranspose services pick up
parameters and sockets at fixed moments:

1. Parameters: every :class:`PipelineConfig` field, ``controller_url`` (so that the
   reducer can share darks and flats), ``dump_prefix`` (recordings), and an empty
   ``references`` unless the scan takes no darks or flats and ``keep_references``
   is set: references of an earlier scan must not reach this scan's workers, whose
   reducer numbers its versions from 1 again. Then wait until every service has them (same parameter hash): a worker or the
   reducer reads them when the new mapping starts.
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
   controller reports the scan finished; if progress stalls (a worker died, a
   stream stopped early) end the scan with ``POST /api/v1/stop`` so that the
   reducer finishes and keeps the partial result.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamtomo.app.services import DeploymentState, http_json, set_parameter, wait_consistent
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats import eiger, pcap, stins
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.scan import Frame, ImageKey

logger = logging.getLogger(__name__)

TS_FIELD = pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s")
BROADCAST = (ImageKey.DARK, ImageKey.FLAT)


class PlayError(RuntimeError):
    """The deployment refused or did not finish the scan; the message says why."""


class NotConnected(PlayError):
    """An ingester did not connect to its upstream socket in time."""


# -- what the beamline sends ------------------------------------------------------------


@dataclass(frozen=True)
class BeamlineEvent:
    """One dranspose event: a detector message and the PandA bytes for the same trigger."""

    number: int  # 0 headers, 1..N frames, N+1 ends
    detector: list[bytes]
    angle: bytes
    frame: int | None = None  # scan frame index; None for headers and ends
    key: ImageKey | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.detector)


def kind_rule(config: PipelineConfig) -> FrameKindRule:
    """The rule the worker applies (``streamtomo.workers.tomo_worker.kind_rule``)."""
    if config.kind_rule == "header":
        return FrameKindRule(header_key=config.kind_header_key, require_header=True)
    return FrameKindRule.from_counts(config.n_darks_before, config.n_flats_before, config.n_projections,
                                     config.n_flats_after, config.n_darks_after, header_key=None)


def frame_events(
    frames: Iterable[Frame], config: PipelineConfig, detector_format: str = "stins", compression: str = "none",
) -> list[BeamlineEvent]:
    """Encode a scan as the detector and the PandA send it (layout of ``streamtomo.app.recordings``)."""
    frames = list(frames)
    name, capture = pcap.split_field_key(config.encoder_field)
    header_fields = [TS_FIELD, pcap.PcapField(name, "double", capture, 1.0, 0.0, "")]
    rows, cols = (frames[0].data.shape if frames else (0, 0))
    if detector_format == "stins":
        head = stins.encode_header(0, "streamtomo-play")
    else:
        head = eiger.encode_header(1, {"x_pixels_in_detector": cols, "y_pixels_in_detector": rows, "nimages": len(frames)})
    events = [BeamlineEvent(0, head, pcap.encode_pcap_header(header_fields))]
    for number, frame in enumerate(frames, start=1):
        if detector_format == "stins":
            parts = stins.encode_image(number, frame.index, frame.data, compression, image_key=int(frame.key))
        else:
            parts = eiger.encode_image(1, frame.index, frame.data, "bslz4" if compression == "bslz4" else "none",
                                       appendix={"image_key": int(frame.key)})
        # A dark or flat without an angle: the stage sits at encoder zero.
        counts = 0.0 if frame.angle_deg is None else pcap.counts_from_angle(frame.angle_deg, config.counts_per_degree, config.encoder_offset)
        line = pcap.encode_pcap_values([(number - 1) * 0.01, counts])
        events.append(BeamlineEvent(number, parts, line, frame.index, frame.key))
    end = stins.encode_series_end(len(frames) + 1) if detector_format == "stins" else eiger.encode_series_end(1)
    events.append(BeamlineEvent(len(frames) + 1, end, pcap.encode_pcap_end(len(frames))))
    return events


def recorded_events(paths: Sequence[str | Path], config: PipelineConfig) -> list[BeamlineEvent]:
    """Events of dranspose recordings (``.cbors``), re-sent byte for byte."""
    from streamtomo.app.recordings import read_events  # dranspose, lazily

    rule = kind_rule(config)
    events: list[BeamlineEvent] = []
    for number, streams in read_events([str(p) for p in paths]):
        detector: list[bytes] = []
        angle = b""
        frame: int | None = None
        key: ImageKey | None = None
        for data in streams.values():
            parts = [bytes(stins.as_buffer(p)) for p in data.frames]
            if data.typ == pcap.STREAM_TYPE:
                angle = b"".join(parts)
            elif data.typ in (stins.STREAM_TYPE, eiger.STREAM_TYPE):
                detector = parts
                frame, key = _frame_kind(parts, rule)
        events.append(BeamlineEvent(number, detector, angle, frame, key))
    return events


def _frame_kind(parts: Sequence[bytes], rule: FrameKindRule) -> tuple[int | None, ImageKey | None]:
    """Frame number and kind from a detector message's JSON header (data not decoded)."""
    try:
        head = json.loads(parts[0])
    except (IndexError, ValueError):
        return None, None
    if head.get("htype") not in ("image", eiger.IMAGE) or not isinstance(head.get("frame"), int):
        return None, None
    extra = dict(head)
    if head.get("htype") == eiger.IMAGE and len(parts) > 4:
        try:
            appendix = json.loads(parts[4])
            extra.update(appendix if isinstance(appendix, dict) else {})
        except ValueError:
            pass
    try:
        return head["frame"], rule.kind(head["frame"], extra)
    except (ValueError, KeyError):
        return head["frame"], ImageKey.PROJECTION


def scan_mapping(events: Sequence[BeamlineEvent], detector_stream: str, angle_stream: str) -> dict[str, Any]:
    """The controller's sequence: parts of consecutive references (to every worker)
    and of projections (each to one worker). Start and end events are added by
    dranspose (``all_wrap``): they are the headers and the ends."""
    body = [e for e in events if e.frame is not None]
    parts: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    sequence: list[str] = []
    run: list[list[dict[str, Any]]] = []
    run_broadcast: bool | None = None

    def close() -> None:
        if run:
            name = f"{'references' if run_broadcast else 'projections'}-{len(sequence)}"
            parts[name] = {detector_stream: list(run), angle_stream: list(run)}
            sequence.append(name)

    for event in body:
        broadcast = event.key in BROADCAST
        if broadcast != run_broadcast:
            close()
            run, run_broadcast = [], broadcast
        # One virtual worker per projection: dranspose gives it to the next idle worker.
        run.append([{"tags": ["generic"], "constraint": None if broadcast else len(run)}])
    close()
    return {"parts": parts, "sequence": sequence}


# -- the controller ---------------------------------------------------------------------


class ControllerClient:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get_parameter(self, name: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/parameter/{name}", timeout=10) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def set_parameter(self, name: str, data: bytes) -> str | None:
        """Set one parameter; returns the controller's new parameters hash, or None
        (and no update is sent) when it already has that value."""
        if self.get_parameter(name) == data:
            return None
        return set_parameter(self.url, name, data)

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.url}/api/v1/config")
        return result

    def progress(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.url}/api/v1/progress")
        return result

    def set_sequence(self, mapping: dict[str, Any]) -> str:
        try:
            return str(http_json(f"{self.url}/api/v1/sequence", json.dumps(mapping).encode(), timeout=60))
        except urllib.error.HTTPError as error:
            raise PlayError(f"the controller refused the scan: {error.read().decode(errors='replace')}") from None

    def stop(self) -> None:
        http_json(f"{self.url}/api/v1/stop", b"", method="POST")


def scan_parameters(
    config: PipelineConfig, state: DeploymentState, dump_prefix: str | None, takes_references: bool = True,
) -> dict[str, bytes]:
    """Parameter values as dranspose encodes them (``str(value)``).

    ``references`` is emptied unless the scan takes no darks or flats and
    ``keep_references`` is set: the reducer numbers reference versions from 1 in
    every scan, so a worker holding an earlier scan's set would label its rows with
    a version number the new reducer gives to different references.
    """
    values = {f.name: str(getattr(config, f.name)).encode() for f in fields(PipelineConfig)}
    values["controller_url"] = state.controller_url.encode()
    values["detector_stream"] = state.detector_stream.encode()
    values["angle_stream"] = state.angle_stream.encode()
    prefix = state.dump_prefix if dump_prefix is None else dump_prefix
    values["dump_prefix"] = prefix.encode()
    if not config.keep_references or takes_references:
        values["references"] = b""
    return values


# -- the upstream sockets ----------------------------------------------------------------


class PandaServer:
    """The PandA's TCP data port: one client, ``\\n`` answered with ``OK\\n``, then ASCII."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._listener = socket.create_server((parts.hostname or "127.0.0.1", parts.port or 8889), reuse_port=False)
        self._client: socket.socket | None = None

    def accept(self, timeout: float) -> None:
        """Wait for the ingester's connection and answer its greeting.

        A connection that is closed already (an ingester that restarted for a newer
        mapping left it in the backlog) is skipped.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                raise NotConnected(f"the angle ingester did not connect within {timeout:.0f} s") from None
            client.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                flag = client.recv(16)
            except OSError:
                flag = b""
            if flag and not flag.endswith(b"\n"):
                client.close()
                raise PlayError(f"unexpected PandA client greeting {flag!r}")
            if not flag or _peer_closed(client):
                client.close()
                continue
            client.sendall(b"OK\n")
            client.settimeout(None)
            if self._client is not None:
                self._client.close()
            self._client = client
            return

    def send(self, data: bytes) -> None:
        if self._client is None:
            raise PlayError("no PandA client connected")
        self._client.sendall(data)

    def close(self) -> None:
        for sock in (self._client, self._listener):
            if sock is not None:
                sock.close()
        self._client = None


def _peer_closed(client: socket.socket) -> bool:
    """Whether the peer closed its side already (EOF waits in the socket)."""
    timeout = client.gettimeout()
    client.setblocking(False)  # a socket with a timeout would wait for data first
    try:
        return client.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        client.settimeout(timeout)


class DetectorPush:
    """The detector (or streaming receiver): a bound ZeroMQ PUSH socket."""

    def __init__(self, url: str, hwm: int = 8, timeout: float = 30.0) -> None:
        import zmq  # pyzmq comes with dranspose

        self._again = zmq.Again
        self._timeout = timeout
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        # Few queued frames: a full queue makes send wait, which paces play to the pipeline.
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        # A detector ingester that takes nothing for this long is broken, not slow.
        self._socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self._socket.bind(url)

    def send(self, parts: Sequence[bytes], connect_timeout: float | None = None) -> None:
        """Send one message. With ``connect_timeout`` (the series start) a send that
        cannot go out in that time means the ingester never connected."""
        import zmq

        if connect_timeout is not None:
            self._socket.setsockopt(zmq.SNDTIMEO, int(connect_timeout * 1000))
        try:
            self._socket.send_multipart(list(parts), copy=len(parts[-1]) < 65536)
        except self._again:
            if connect_timeout is not None:
                raise NotConnected(f"the detector ingester did not connect within {connect_timeout:.0f} s") from None
            raise PlayError(f"the detector ingester took no frame for {self._timeout:.0f} s (see its log)") from None
        finally:
            if connect_timeout is not None:
                self._socket.setsockopt(zmq.SNDTIMEO, int(self._timeout * 1000))

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


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
    if base.with_suffix(".json").exists():
        entries = json.loads(base.with_suffix(".json").read_text())
    else:
        import cbor2

        entries = cbor2.loads(base.with_suffix(".cbor").read_bytes())
    names = {f.name for f in fields(PipelineConfig)}
    values = {e["name"]: (e["data"].decode() if isinstance(e["data"], bytes) else e["data"])
              for e in entries if e["name"] in names}
    values["controller_url"] = ""
    return PipelineConfig.from_mapping(values)


def play(
    state: DeploymentState,
    events: Sequence[BeamlineEvent],
    config: PipelineConfig,
    *,
    rate_hz: float | None = None,
    max_frames: int | None = None,
    dump_prefix: str | None = None,
    stall_timeout: float = 10.0,
    finish_timeout: float = 60.0,
    connect_timeout: float = 15.0,
    on_frame_sent: Callable[[int, int], None] | None = None,
) -> PlayResult:
    """Play one scan (steps in the module docstring); returns when it finished.

    ``max_frames`` sends only that many frames and no ends: a stream that stopped
    early. ``on_frame_sent(i, sent)`` runs after frame ``i`` (the ``sent``-th) left.
    """
    controller = ControllerClient(state.controller_url)
    takes_references = any(e.key in BROADCAST for e in events)
    parameters = scan_parameters(config, state, dump_prefix, takes_references)
    hashes = [h for h in (controller.set_parameter(n, v) for n, v in parameters.items()) if h is not None]
    logger.info("parameters set (%d changed); waiting for every service to have them", len(hashes))
    # Services pick parameters up when the mapping starts: they must all have them first.
    wait_consistent(state.controller_url, hashes[-1] if hashes else None, 30.0)

    prefix = state.dump_prefix if dump_prefix is None else dump_prefix
    if prefix:
        Path(os.path.dirname(prefix) or ".").mkdir(parents=True, exist_ok=True)
    panda = PandaServer(state.angle_upstream)
    detector = DetectorPush(state.detector_upstream)
    try:
        mapping = scan_mapping(events, state.detector_stream, state.angle_stream)
        n_frames = sum(1 for e in events if e.frame is not None)
        for attempt in (1, 2):
            uuid = controller.set_sequence(mapping)
            logger.info("scan %s: %d events (%d frames) mapped", uuid, len(events), n_frames)
            result = PlayResult(uuid, 0, 0, 0.0, 0.0, 0.0, False, dump_prefix=prefix)
            try:
                _stream(events, detector, panda, result, rate_hz, max_frames, connect_timeout, on_frame_sent)
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
        _wait_finished(controller, result, len(events), stall_timeout, finish_timeout)
    finally:
        detector.close()
        panda.close()
    return result


def _stream(
    events: Sequence[BeamlineEvent], detector: DetectorPush, panda: PandaServer, result: PlayResult,
    rate_hz: float | None, max_frames: int | None, connect_timeout: float,
    on_frame_sent: Callable[[int, int], None] | None,
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
            detector.send(event.detector, connect_timeout if event.number == 0 else None)
        if event.number == 0:
            # The angle ingester connects when its first assignment arrives.
            panda.accept(connect_timeout)
        if event.angle:
            panda.send(event.angle)
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


def _wait_finished(controller: ControllerClient, result: PlayResult, n_events: int, stall_timeout: float, finish_timeout: float) -> None:
    """Until the controller says finished; a stall ends the scan through the controller."""
    last_done, last_change, last_log = -1, time.monotonic(), 0.0
    stopped_at: float | None = None
    while True:
        progress = controller.progress()
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
        if stopped_at is None and now - last_change > stall_timeout:
            logger.warning("no progress for %.0f s at %d/%d events: ending the scan (partial result kept)",
                           stall_timeout, done, n_events)
            controller.stop()
            result.ended_by_stop = True
            stopped_at = now
        if stopped_at is not None and now - stopped_at > finish_timeout:
            raise PlayError(f"the scan did not finish within {finish_timeout:.0f} s of being stopped: {progress}")
        time.sleep(0.05)
    result.finished = time.time()
    logger.info("scan %s finished: %d frames in %.2f s%s", result.mapping_uuid, result.frames_sent, result.seconds,
                " (ended by stop)" if result.ended_by_stop else "")

