"""What a PandA capture says about itself that the angles depend on.

The PandA's rows carry no frame number: event ``e`` pairs the detector's frame with
the PandA's row ``e - 1`` only while both streams send one message per trigger. Each
check here turns a sign that they do not, or that the values are no angles, into a
counted reason (``Rejected`` with ``frame=False``: a notice, not a frame), so a shift
is never silent:

* :func:`streams_out_of_step`: the two streams end in different events. One sent a
  message too many or too few (a double trigger, rows lost, a header or END in the
  middle of a capture), and every frame after it was paired with another frame's row,
  unless the detector's own losses or extras explain it (its frames carry numbers:
  :func:`~streamtomo.pipeline.streaming.scan_end.judge_stream_steps`).
  :func:`pandas_count` says which: the PandA's own count against the scan's frames.
* :func:`pcap_header_notices`: the PandA reports samples it missed, or captures the
  mean of a wrapping encoder without its Min and Max (a frame whose exposure
  straddled the wrap then has a mean that is no angle, and nothing shows it);
  :func:`pcap_end_notices`: it ended its capture without sending every row.
* :func:`raw_mean_refusal`: in ``process: Raw`` a ``Mean`` capture is a sum over the
  exposure; every such angle is refused.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container
from dataclasses import dataclass

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats.pcap import PcapEnd, PcapHeader, PcapMessage, PcapValues, split_field_key
from streamtomo.pipeline.formats.stins import StinsEnd, StinsHeader, StinsImage
from streamtomo.pipeline.messages import Rejected

# How a PandA ends a capture that sent every row (anything else: "Driver data overrun", ...).
PCAP_END_COMPLETE = ("Ok", "Disarmed")
# Frames past the layout lost in a row that still continue an overrun's run.
OVERRUN_GAP = 2
# Frames short of the layout from which a scan whose streams both stopped there counts
# as stopped early (fewer: its last images lost).
EARLY_STOP = 3
REMEDY = "check_nominal_angles=true (kind_rule counts) finds and repairs such shifts"


def streams_out_of_step(
    detector: StinsHeader | StinsImage | StinsEnd | None,
    detector_present: bool,
    pcap: PcapMessage | None,
    pcap_present: bool,
) -> tuple[bool, str] | None:
    """Whether the event shows the two streams out of step: (the PandA sent more
    messages than the detector, why), or None."""
    if isinstance(detector, StinsEnd) and isinstance(pcap, PcapValues):
        return True, "the detector's series ended beside a PandA value row: the PandA sent more messages"
    if isinstance(detector, StinsEnd) and not pcap_present:
        return False, "the detector's series ended in an event without a PandA message: the PandA sent fewer messages"
    if isinstance(pcap, PcapEnd) and isinstance(detector, StinsImage):
        return False, "the PandA's capture ended beside a detector image: the PandA sent fewer messages"
    if isinstance(pcap, PcapEnd) and not detector_present:
        return True, "the PandA's capture ended after the detector's last message: the PandA sent more messages"
    return None


@dataclass(frozen=True)
class PandaCount:
    """The PandA's messages before its capture's last END against the scan's frames."""

    surplus: int  # more (negative: fewer) than the frames; 0: one row per frame
    frames: int  # the frames it is judged against
    came: int  # one past the last position of those that came
    end_event: int
    # The count fits the frames that came, 1 or 2 short of the layout: both streams
    # stopped there, or the PandA lost a row and the detector its last images.
    fits_came: bool = False

    def describe(self) -> str:
        """What the count shows, as the reducer's notice and ``check --data`` say it."""
        came = f", {self.came} of which came" if self.came < self.frames else ""
        text = (
            f"the PandA sent {abs(self.surplus)} message(s) {'more' if self.surplus > 0 else 'fewer'} than the "
            f"scan's {self.frames} frames{came} before its capture's END (event {self.end_event})"
        )
        if self.fits_came:
            text = (
                f"either both streams stopped {self.frames - self.came} frame(s) short of the layout, or the PandA "
                f"lost a row and the detector its last image(s): {text}"
            )
        return text


def pandas_count(
    end_events: Collection[int], last_row_event: int | None, expected: int | None, positions: Collection[int]
) -> PandaCount | None:
    """The PandA's count of messages against the scan's frames, or None where it cannot
    be told: no layout (``expected`` None), no END, or messages after the last END (a
    re-armed capture's END, the final one never sent).

    The PandA's header is event 0 and row i is in event i + 1, so its END comes in
    event ``frames + 1`` when it sent one row per frame. Every message more or fewer
    before a row (a double trigger, a row lost, a header or END of a re-armed capture)
    puts that row and every later one beside another frame, whatever the detector
    did: its frames carry their numbers and find their rows by them. The frames are
    the layout's (with an overrun, :func:`frames_with_overrun`); a PandA whose count
    matches the frames that came instead is in step too (``surplus`` 0) where those
    stop at least :data:`EARLY_STOP` short of the layout: a scan stopped early, both
    streams at once. Closer to the end that would take a PandA that lost a row, where
    the detector lost its last image, for one in step (24 slots at other frames'
    angles, nothing counted); so would, undetectably, such a pair of losses in a scan
    stopped early.
    """
    last = max(end_events, default=None)
    if last is None or not expected or (last_row_event is not None and last_row_event > last):
        return None
    messages = last - 1
    frames, came = frames_and_came(expected, positions)
    stopped_early = frames - came >= EARLY_STOP
    if stopped_early and messages == came:
        return PandaCount(0, frames, came, last)
    return PandaCount(messages - frames, frames, came, last, fits_came=messages == came < frames)


def frames_and_came(expected: int, positions: Collection[int]) -> tuple[int, int]:
    """The scan's frames (:func:`frames_with_overrun`), and one past the last of them
    that came (positions far past the run, corrupt numbers, do not count)."""
    frames = frames_with_overrun(expected, positions)
    assert frames is not None  # a layout
    return frames, 1 + max((p for p in positions if p < frames), default=-1)


def panda_rows(end_events: Collection[int], row_indices: Collection[int]) -> int | None:
    """How many messages the PandA sent after its header: before its last END, or up to
    its last row where no END came (None: nothing)."""
    if end_events:
        return max(end_events) - 1
    return max(row_indices) + 1 if row_indices else None


def frames_with_overrun(expected: int | None, positions: Container[int]) -> int | None:
    """The detector's frames of a scan whose layout has ``expected``: more where frames
    came past it in a run from there (an overrun, which the PandA triggered for too;
    gaps of up to :data:`OVERRUN_GAP` lost frames allowed). A lone position far past
    the layout (a corrupt frame number) adds nothing: it would have made the PandA look
    thousands of rows short. None without a layout."""
    if not expected:
        return None
    frames = expected
    while True:
        later = [frames + gap for gap in range(OVERRUN_GAP + 1) if frames + gap in positions]
        if not later:
            return frames
        frames = later[-1] + 1


def pcap_header_notices(header: PcapHeader, config: PipelineConfig, event: int) -> list[Rejected]:
    """Notices a capture's header gives: samples missed, a wrap that cannot be seen."""
    notices = []
    missed = header.info.get("missed", "0")
    if missed.isdigit() and int(missed) > 0:
        notices.append(
            Rejected.notice(
                "pcap_missed_samples",
                f"event {event}: the PandA's header says it missed {missed} samples: their frames' rows are not in the "
                f"stream, so later frames may be paired with another frame's angle; {REMEDY}",
                event,
            )
        )
    name, capture = split_field_key(config.encoder_field)
    captured = set(header.keys)
    # A field that is not captured at all is refused frame by frame (encoder_field_missing).
    if (
        capture == "Mean"
        and config.encoder_field in captured
        and not {f"{name}.Min", f"{name}.Max"} <= captured
        and wrap_within_scan(config, *_scaling(header, config.encoder_field))
    ):
        notices.append(
            Rejected.notice(
                "encoder_wrap_unchecked",
                f"event {event}: {config.encoder_field} wraps ({config.encoder_bits} bits) but the PandA does not "
                f"capture {name}.Min and {name}.Max: a frame whose exposure straddles the wrap gets a mean that is no "
                "angle, and nothing shows which; capture Min and Max of the field too",
                event,
            )
        )
    return notices


def pcap_end_notices(end: PcapEnd, event: int) -> list[Rejected]:
    """Notices a capture's END gives: a status other than a complete capture's."""
    if end.status in PCAP_END_COMPLETE:
        return []
    return [
        Rejected.notice(
            "pcap_capture_incomplete",
            f"event {event}: the PandA ended its capture after {end.samples} rows with {end.status!r}: rows it did "
            f"not send leave later frames paired with other frames' angles; {REMEDY}",
            event,
        )
    ]


def _scaling(header: PcapHeader, key: str) -> tuple[float, float]:
    """The scale and offset the header prints for ``key`` (1 and 0 where none)."""
    field = header.field_named(key)
    if field is None or field.scale is None:
        return 1.0, 0.0
    return field.scale, field.offset


def wrap_within_scan(config: PipelineConfig, scale: float = 1.0, offset: float = 0.0) -> bool:
    """Whether the encoder's counter wraps at an angle the scan's grid reaches (one
    step either side): the wraps lie at ``encoder_offset + 2^(bits-1) / counts_per_degree``
    and every turn of ``2^bits`` counts from there (DanMAX: at 130 degrees, in any
    full turn; 1000 counts per degree: past two million degrees, never).

    ``scale`` and ``offset``: the field's in the PandA's header. Its values are
    ``scale * counts + offset`` (the Scaled data port's, and the decoder's in Raw), so
    the counter's wrap at ``2^(bits-1)`` counts lies at ``offset + scale * 2^(bits-1)``
    in them, and the next every ``2^bits * |scale|``.
    """
    if config.encoder_bits <= 0 or config.counts_per_degree == 0 or scale == 0 or not math.isfinite(scale):
        return False
    half = 2.0 ** (config.encoder_bits - 1) * abs(scale) / abs(config.counts_per_degree)
    step = abs(config.slot_step)
    ends = (config.nominal_angle(0), config.nominal_angle(config.n_projections - 1))
    low, high = min(ends) - step, max(ends) + step
    # +half and -half lie a whole period apart: either is the wrap's angle.
    first = config.encoder_offset + offset / config.counts_per_degree + half
    k = math.ceil((low - first) / (2 * half))  # the first wrap at or above low
    return first + k * 2 * half <= high


def raw_mean_refusal(header: PcapHeader | None, encoder_field: str) -> str:
    """Why the encoder field's values are no angles in this capture ('' if they are)."""
    if header is None or header.info.get("process", "Scaled") != "Raw":
        return ""
    if split_field_key(encoder_field)[1] != "Mean":
        return ""
    return (
        f"the PandA's data port sends 'process: Raw', in which {encoder_field} is the sum over the exposure, not "
        "its mean: set the data port to Scaled (or capture the field's Value)"
    )
