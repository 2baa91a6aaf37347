"""The one error type every stream decoder raises for malformed input."""

from __future__ import annotations


class FrameError(ValueError):
    """A stream message that cannot be decoded (bad JSON, truncated data, ...).

    A ``ValueError`` so that callers validating input in general catch it too; the
    message says which message part and field is wrong.
    """


class UnknownMessage(FrameError):
    """A well-formed detector message of a type the decoder does not know (an ``htype``
    of its own): no image, and not damaged either, so no frame to count as refused."""


class AngleError(FrameError):
    """A PandA capture that gives no angle for its frame; ``reason`` is the key the
    reducer counts it under (``/entry/status/rejected``)."""

    reason = "missing_angle"


class EncoderFieldMissing(AngleError):
    """The configured ``encoder_field`` is not captured: the configuration is wrong."""

    reason = "encoder_field_missing"


class EncoderWrapped(AngleError):
    """The encoder counter wrapped during the exposure: its mean is no angle."""

    reason = "encoder_wrapped"


class PcapHeaderMissing(AngleError):
    """Values came without the PandA header that names them: no field can be found."""

    reason = "pcap_header_missing"


class PcapRawMean(AngleError):
    """The PandA's data port is in ``process: Raw``: a ``Mean`` capture is then the sum
    over the exposure, no angle."""

    reason = "pcap_raw_mean"


class PcapNotARow(AngleError):
    """The event carried another PandA message where its frame's value row was due: a
    header in the middle of a capture, or the capture's end before the detector's. The
    row is lost (the message in its place) or comes later (the message on top of the
    rows, which ``check_nominal_angles`` finds)."""


class PcapRowUnreadable(AngleError):
    """The event's PandA row could not be read (or its encoder value is no number): the
    row is lost, or, if the PandA's rows were shifted, it was another frame's and this
    frame's own row is nearby (``check_nominal_angles`` looks for it)."""
