"""dranspose worker: decode an event's detector frame and angle, hand them to the core.

Everything numeric lives in :class:`streamtomo.pipeline.streaming.frame_processor.FrameProcessor`; this
class only translates dranspose events and parameters. dranspose discards what
``finish`` returns, so partial sums leave with ``process_event`` results: every
``flush_every`` projections, on ticks once they are old enough, and on the
detector's series_end. In a worker service, small results (a projection's rows)
go several together (:mod:`streamtomo.workers.held_results`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from streamtomo.dranspose_parameters import ConfigCache, describe_parameters
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.formats.eiger import STREAM_TYPE as EIGER_LEGACY
from streamtomo.pipeline.formats.eiger import decode_eiger_legacy
from streamtomo.pipeline.formats.errors import (
    AngleError,
    EncoderFieldMissing,
    FrameError,
    PcapHeaderMissing,
    PcapNotARow,
    PcapRawMean,
    PcapRowUnreadable,
    UnknownMessage,
)
from streamtomo.pipeline.formats.kinds import BaseEvidence, FrameKindRule, FrameNumbering
from streamtomo.pipeline.formats.pcap import (
    PcapEnd,
    PcapHeader,
    PcapMessage,
    PcapValues,
    angle_from_values,
    decode_pcap_event,
)
from streamtomo.pipeline.formats.pcap_checks import (
    pcap_end_notices,
    pcap_header_notices,
    raw_mean_refusal,
    streams_out_of_step,
)
from streamtomo.pipeline.formats.stins import StinsEnd, StinsHeader, StinsImage, decode_stins
from streamtomo.pipeline.messages import (
    NOMINAL_ROW,
    AngleRow,
    PandaEnded,
    ReferenceCopy,
    ReferenceRows,
    Rejected,
    StreamEnded,
    StreamStep,
    WorkerResult,
)
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.workers import broadcast_senders
from streamtomo.workers.held_results import HeldResults, max_age

logger = logging.getLogger(__name__)

# The workers of this process share what they learn of an 'auto' frame base: in replay
# all of them run here, and the first image (event 1) settles it for each.
SERIES_BASE = BaseEvidence()


@dataclass(frozen=True)
class SurveyedFrame:
    """A frame as a worker reads it, before any correction (:attr:`TomoWorker.survey`)."""

    index: int  # position in the scan
    key: ImageKey
    shape: tuple[int, ...]
    dtype: str
    angle_deg: float | None  # None: its PandA row is in another event (angle_row)
    angle_row: int
    event: int


class TomoWorker:
    """Worker class for ``dranspose`` (``WORKER_CLASS=streamtomo.workers.tomo_worker:TomoWorker``)."""

    # A list: every frame that passed decoding, numbering, kind and angle is recorded
    # here instead of processed (``streamtomo check --data`` reads a recording through
    # exactly the worker's own rules, without correcting or backprojecting it).
    survey: list[SurveyedFrame] | None = None

    def __init__(self, parameters: dict[Any, Any] | None = None, state: Any = None, **kwargs: Any) -> None:
        self._params = ConfigCache()
        config = self._params.config(parameters or {})
        name = getattr(state, "name", None) or "worker"
        self.name = str(name)
        # dranspose makes a new worker object for each mapping (each scan).
        mapping = getattr(state, "mapping_uuid", None)
        self.mapping = None if mapping is None else str(mapping)
        self.processor = FrameProcessor(config, self.name)
        self.rule = FrameKindRule.from_config(config)
        self.numbering = FrameNumbering(config.fixed_frame_base(), SERIES_BASE)
        self.numbering.reset()  # a new worker is a new run: nothing learnt before counts
        self.pcap_header: PcapHeader | None = None
        # What the PandA sent in the event under way (None: nothing, or unreadable):
        # beside the detector's message it shows whether the two streams are in step.
        self._event_pcap: PcapMessage | None = None
        self.held = HeldResults(scan=self.mapping or "")

    @staticmethod
    def describe_parameters() -> list[Any]:
        return describe_parameters()

    def get_tick_interval(self, parameters: dict[Any, Any]) -> float:
        return max(self._params.config(parameters).publish_interval, 0.05)

    # -- dranspose entry points -----------------------------------------------------
    def process_event(
        self, event: Any, parameters: dict[Any, Any] | None = None, tick: bool = False, **kwargs: Any
    ) -> WorkerResult | None:
        result = WorkerResult(scan=self.mapping or "")  # the reducer refuses another scan's
        params = parameters or {}
        config = self._params.config(params)
        if config != self.processor.config:
            if config.frame_base != self.processor.config.frame_base:
                self.numbering = FrameNumbering(config.fixed_frame_base(), SERIES_BASE)
            pending = self.processor.configure(config)
            self.rule = FrameKindRule.from_config(config)
            if pending is not None:
                result.items.append(pending)
        self.processor.set_references(self._references(params, config))

        angle, angle_error, carried_row = self._angle(event, config, result)
        if carried_row:
            # The PandA header is event 0 and its TCP stream loses nothing: event e holds row e - 1.
            reason, detail = ("", "") if angle_error is None else (angle_error.reason, str(angle_error))
            result.items.append(AngleRow(event.event_number - 1, angle, reason, detail))
        streams = getattr(event, "streams", {})
        stream = streams.get(config.detector_stream)
        detector = None
        if stream is not None:
            detector = self._detector(stream, event.event_number, angle, angle_error, config, result)
        if config.angle_stream:
            step = streams_out_of_step(detector, stream is not None, self._event_pcap, config.angle_stream in streams)
            if step is not None:
                result.items.append(StreamStep(event.event_number, *step))
        if tick:
            flushed = self.processor.flush_if_due()
            if flushed is not None:
                result.items.append(flushed)
        # Small results go together where the service's loop allows (streamtomo.workers.held_results).
        return self.held.offer(result if result.items else None, event.event_number, max_age(config.publish_interval))

    def _references(self, params: dict[Any, Any], config: PipelineConfig) -> ReferenceSet | None:
        """The shared ``references`` parameter, unless it is another scan's: the controller
        keeps it across scans, and a set shared for scan 1 used to win over scan 2's own
        broadcast darks and flats (every projection corrected with scan 1's; a reducer
        that never made that set rejected them all as unknown_references)."""
        refs = self._params.references(params)
        if refs is not None and refs.scan and self.mapping and refs.scan != self.mapping and not config.keep_references:
            return None
        return refs

    def finish(self, parameters: dict[Any, Any] | None = None) -> None:
        # dranspose drops this return value; the reducer backfills what was unsent.
        self.held.drop("the scan ended before this worker's next event")
        self.processor.reset()
        self.numbering.reset()
        self.pcap_header = None

    # -- decoding -------------------------------------------------------------------
    def _angle(
        self, event: Any, config: PipelineConfig, result: WorkerResult
    ) -> tuple[float | None, AngleError | None, bool]:
        """The event's measured angle, or why there is none (None, None: no angle is
        due, as in the header and end events, or ``angle_stream`` is empty), and
        whether the event carried a PandA row (read or not)."""
        self._event_pcap = None
        if not config.angle_stream:
            return None, None, False
        stream = getattr(event, "streams", {}).get(config.angle_stream)
        if stream is None:
            return (
                None,
                AngleError(
                    f"the angle stream {config.angle_stream!r} is not in this event "
                    "(angle_stream '' uses nominal angles)"
                ),
                False,
            )
        try:
            message = decode_pcap_event(stream.frames, self.pcap_header)
        except FrameError as error:
            return None, PcapRowUnreadable(f"its PandA values cannot be read: {error}"), True  # a row, unreadable
        self._event_pcap = message
        if isinstance(message, PcapHeader):
            result.items.extend(pcap_header_notices(message, config, event.event_number))
            if event.event_number <= 0 or self.pcap_header is None:
                # The capture's header is event 0 (dranspose gives a stream's first
                # message to every worker); a worker that never got it takes a later one.
                self.pcap_header = message
                if event.event_number <= 0:
                    return None, None, False
            # A header only starts a capture, and the capture's is event 0. One later is
            # counted, whether or not this worker has read a row since (with 8 workers
            # one that had read none took a re-arm for its capture's start, and its frame
            # was refused where the others' were found by check_nominal_angles). If it
            # came on top of the rows (a re-arm), every later row is one event late, which
            # the stream's end shows (angle_stream_out_of_step). Other fields would change
            # how every later row is read: the capture's own header stays. Either way the
            # event brought no row where one was due: its frame has no angle here (with
            # check_nominal_angles the reducer looks for its row).
            kept = message.keys != self.pcap_header.keys
            if not kept:
                self.pcap_header = message  # the same fields: the re-armed capture's own header
            result.items.append(
                Rejected.notice(
                    "pcap_header_mid_scan",
                    f"event {event.event_number}: a PandA header with fields {list(message.keys)} came in the middle "
                    + (
                        f"of the capture; the capture's header ({list(self.pcap_header.keys)}) stays in force"
                        if kept
                        else "of the capture (a re-armed capture?)"
                    ),
                    event.event_number,
                )
            )
            no_row = PcapNotARow(
                f"event {event.event_number} brought a PandA header in the middle of the capture, not a value row"
            )
            return None, no_row, True
        if isinstance(message, PcapEnd):
            result.items.extend(pcap_end_notices(message, event.event_number))
            result.items.append(PandaEnded(event.event_number))
            # The capture's end belongs beside the detector's: in an event with an image
            # it took that image's row's place (``_image`` refuses the frame, or with
            # check_nominal_angles the reducer looks for its row, as after a header).
            return (
                None,
                PcapNotARow(f"event {event.event_number} brought the PandA's end of capture, not a value row"),
                False,
            )
        assert isinstance(message, PcapValues)
        return (*self._row_angle(message, config), True)

    def _row_angle(self, message: PcapValues, config: PipelineConfig) -> tuple[float | None, AngleError | None]:
        """The angle of one PandA row, or why it has none."""
        if self.pcap_header is None:
            # Unnamed values: which one is the encoder only the header says. Guessing a
            # column, or the nominal angle, would place the frame silently wrong.
            return None, PcapHeaderMissing(
                f"PandA values {list(message.raw)} came without the PandA header on this worker: "
                f"no way to find {config.encoder_field!r} among them"
            )
        refused = raw_mean_refusal(self.pcap_header, config.encoder_field)
        if refused:
            return None, PcapRawMean(refused)
        if config.encoder_field not in message.values:
            # A configuration error: every frame of the scan is refused, with the fields to choose from.
            return None, EncoderFieldMissing(
                f"encoder_field {config.encoder_field!r} is not in the PandA header, which captures "
                f"{', '.join(self.pcap_header.keys)}"
            )
        try:
            return angle_from_values(
                message.values,
                config.encoder_field,
                config.counts_per_degree,
                config.encoder_offset,
                config.encoder_bits,
                config.grid_middle(),
                scale=self.pcap_header.scale_of(config.encoder_field),  # the counter's wrap in the values' units
            ), None
        except AngleError as error:
            return None, error
        except FrameError as error:
            return None, PcapRowUnreadable(str(error))

    def _detector(
        self,
        stream: Any,
        event_number: int,
        angle: float | None,
        angle_error: AngleError | None,
        config: PipelineConfig,
        result: WorkerResult,
    ) -> StinsHeader | StinsImage | StinsEnd | None:
        """Decode and hand on the detector's message; returns it (None: unreadable)."""
        decode = decode_eiger_legacy if getattr(stream, "typ", "") == EIGER_LEGACY else decode_stins
        try:
            message = decode(stream.frames, self.processor.frame_bytes_limit())
        except UnknownMessage as error:
            # Readable, and no image: a notice, not a refused frame (frames_received
            # counted it as one, 71 for a scan of 70 images).
            result.items.append(
                Rejected.notice("detector_message_unknown", f"event {event_number}: {error}", event_number)
            )
            return None
        except FrameError as error:
            self.numbering.evidence.offer_unreadable(event_number)  # it may have been an image, or an extra
            result.items.append(Rejected(None, "corrupt_frame", f"event {event_number}: {error}", event_number))
            return None
        if isinstance(message, StinsHeader):
            if event_number <= 0:
                self.numbering.reset()  # a new series numbers its frames anew
            else:
                # The series' header is event 0: this one is an extra message, and the
                # frames after it are one event later. Taken as a new start, 'auto' read
                # the next image's number as the base and put every later frame one
                # position off; the scan's numbering goes on (frame numbers that start
                # again come as duplicates, which the scan's reason then names).
                result.items.append(
                    Rejected.notice(
                        "stins_header_mid_scan",
                        f"event {event_number}: a detector header (message {message.msg_number}) in the middle of the scan",
                        event_number,
                    )
                )
            return message
        if isinstance(message, StinsEnd):
            flushed = self.processor.flush()
            if flushed is not None:
                result.items.append(flushed)
            result.items.append(StreamEnded())
            return message
        assert isinstance(message, StinsImage)
        if event_number == 0:
            # A series' header is event 0: here an image came first, so the detector's
            # stream is one message short, which the stream-step judgement must know
            # (it blamed the PandA: "projections may sit at a neighbour's angle").
            result.items.append(
                Rejected.notice(
                    "stins_header_missing",
                    f"event 0 brought detector image {message.frame}, not the series' header: the detector stream "
                    "is one message short",
                    event_number,
                )
            )
        self._image(message, event_number, angle, angle_error, config, result)
        return message

    def _image(
        self,
        message: StinsImage,
        event_number: int,
        angle: float | None,
        angle_error: AngleError | None,
        config: PipelineConfig,
        result: WorkerResult,
    ) -> None:
        # Everything downstream (kinds, nominal angles, the reducer's frame indices and
        # lost_frames) counts 0-based positions in the scan, whatever the detector's base.
        index = self.numbering.position(message.frame, event_number)
        suspect = self.numbering.suspect_base()
        if suspect:
            # event -1: one notice per scan, however many workers derive the base.
            result.items.append(Rejected.notice("frame_base_suspect", suspect))
        if index < 0:
            result.items.append(
                Rejected(
                    None,
                    "frame_before_base",
                    f"event {event_number}: detector frame {message.frame} lies before the scan's first frame "
                    f"{self.numbering.base} (frame_base {config.frame_base!r})",
                    event_number,
                )
            )
            return
        try:
            key = self.rule.kind(index, message.extra)
        except FrameError as error:
            result.items.append(Rejected(index, "unknown_kind", str(error), event_number))
            return
        layout = self.rule.past_layout(index, message.extra) if key == ImageKey.INVALID else None
        if layout is not None:
            # Named for what it is: it was dropped_kind "image_key 3 (invalid)", which
            # said nothing of an overrun or of a frame_base below the detector's first.
            result.items.append(
                Rejected(
                    index,
                    "past_layout",
                    f"frame {index} lies past the scan's {layout} frames (frame_layout, or n_darks, n_flats and "
                    "n_projections): the detector sent more frames than the parameters describe, or "
                    + (
                        f"frame_base {config.frame_base} is below its first frame number"
                        if config.fixed_frame_base() is not None
                        else "frame_base 'auto' took a later frame for its first"
                    ),
                    event_number,
                )
            )
            return
        angle_row = -1
        # Event e holds PandA row e - 1: a frame at another position needs another row.
        misaligned = key == ImageKey.PROJECTION and bool(config.angle_stream) and index != event_number - 1
        if misaligned and not isinstance(angle_error, EncoderFieldMissing):
            # Its event carried another frame's PandA row (a message dropped or added
            # on one stream): its own row is in another event, joined by the reducer.
            angle_row, angle, angle_error = index, None, None
        elif (
            key == ImageKey.PROJECTION
            and isinstance(angle_error, PcapNotARow | PcapRowUnreadable)
            and config.nominal_angles_checked()
        ):
            # No row in its event (a PandA header or END where the row was due) or one
            # that cannot be read: if the PandA's rows were shifted, the frame's own row
            # is in an event nearby, and the reducer finds it by angle (it was refused
            # here when a shift had moved an unreadable row onto it). An event without
            # the PandA's stream at all is refused here: no row of it will come.
            angle_row, angle_error = NOMINAL_ROW, None
        if angle_error is not None and (key == ImageKey.PROJECTION or isinstance(angle_error, EncoderFieldMissing)):
            # A projection without its measured angle is refused under the angle's own
            # reason; a wrong encoder_field refuses every frame (the scan is misconfigured).
            result.items.append(Rejected(index, angle_error.reason, f"frame {index}: {angle_error}", event_number))
            return
        measured = angle is not None
        if key == ImageKey.PROJECTION and angle is None and not config.angle_stream and config.kind_rule == "counts":
            # No angle stream configured: the nominal angle from the frame's position.
            angle = config.nominal_angle(index - config.first_projection())
        if self.survey is not None:
            array = message.array
            self.survey.append(
                SurveyedFrame(index, key, tuple(array.shape), array.dtype.name, angle, angle_row, event_number)
            )
            return
        try:
            items = self.processor.process(index, key, message.array, angle, measured, event_number, angle_row)
        except (ValueError, MemoryError, FloatingPointError) as error:
            # Settings this worker cannot apply (or a frame it cannot handle) must not
            # lose the frame silently, as dranspose does with an exception (one ERROR
            # line, no result): the reducer counts it under its own reason.
            logger.warning("frame %d could not be processed: %r", index, error)
            result.items.append(Rejected(index, "worker_failed", f"frame {index}: {error!r}", event_number))
            return
        if key in (ImageKey.DARK, ImageKey.FLAT) and not broadcast_senders.sends_rows(
            self.mapping, event_number, config.detector_stream, self.name, config.reference_senders
        ):
            # Built into this worker's references; another worker sends the rows.
            result.items.extend(
                ReferenceCopy(item.frame_index, item.key, item.event) if isinstance(item, ReferenceRows) else item
                for item in items
            )
        else:
            result.items.extend(items)
