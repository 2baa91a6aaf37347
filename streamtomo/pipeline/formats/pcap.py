"""PandA position capture over TCP, ASCII format (dranspose stream type ``PCAP_RAW``).

The PandA data port (8889) sends, after the client's flag line ``\\n`` is answered with
``OK\\n``, per acquisition::

    arm_time: 2024-08-21T13:59:53.533Z
    missed: 0
    process: Scaled
    format: ASCII
    fields:
     PCAP.TS_TRIG double Value scale: 8e-09 offset: 0 units: s
     INENC1.VAL double Mean scale: 1 offset: 0 units:
    <empty line>
     0.035941168 375.1871248          <- one line per trigger
    END 10 Disarmed

dranspose's ``TcpPcapIngester`` turns that into one event per message: the whole header
(up to and including the empty line) is the first event, then one event per value line,
then one for the ``END`` line; each event carries exactly one frame with those bytes.
The encoders below produce exactly those frames, so concatenating them gives the TCP
byte stream. Values are named ``<field>.<capture>``, e.g. ``INENC1.VAL.Mean``.

``process: Raw`` sends each field unscaled and leaves ``value * scale + offset`` to the
client: :func:`decode_pcap_event` applies it, so a row's named values are what
``process: Scaled`` sends (``PcapValues.raw`` keeps the numbers as printed). A ``Mean``
(or ``StdDev``) is sent as a sum in Raw and stays as it came (see
``pcap_checks.raw_mean_refusal``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from streamtomo.pipeline.formats.errors import EncoderFieldMissing, EncoderWrapped, FrameError
from streamtomo.pipeline.formats.stins import Part, as_buffer

STREAM_TYPE = "PCAP_RAW"
# The mean encoder position over each exposure is the angle a continuous scan wants.
# (MAX IV DanMAX's tomography worker reads ``SFP3_SYNC_IN.POS1.Mean`` with 11930463
# counts per degree and a -50 degree offset: pass those as parameters there.)
DEFAULT_ANGLE_FIELD = "INENC1.VAL.Mean"

_FIELD_RE = re.compile(
    r"^ (?P<name>\S+) (?P<type>\S+) (?P<capture>\S+)"
    r"(?: scale: (?P<scale>\S+) offset: (?P<offset>\S+) units: ?(?P<units>.*?))?\s*$"
)
_INT_TYPES = frozenset({"uint32", "int32", "uint64", "int64"})
_FLOAT_TYPES = frozenset({"double", "float"})
# The captures the PandA's Scaled data port sends as ``scale * raw + offset`` are all
# those with a printed scale but these two: a Mean is ``scale * sum / samples + offset``
# and a StdDev another formula (PandABlocks-server capture.c), and in Raw both come as
# sums over the exposure, which no scale and offset turn into the Scaled value.
_SUMMED_IN_RAW = frozenset({"Mean", "StdDev"})

Number: TypeAlias = int | float

# A PandA captures at most a few dozen fields; each value prints in under 25 characters.
MAX_TOKEN_CHARS = 40
MAX_LINE_CHARS = 4096
MAX_HEADER_CHARS = 64 * 1024


@dataclass(frozen=True)
class PcapField:
    """One captured field; ``scale`` is None where the PandA prints no scaling."""

    name: str  # e.g. "INENC1.VAL"
    type: str  # "double", "uint32", ...
    capture: str  # "Value", "Mean", "Min", "Max", "Diff", ...
    scale: float | None = None
    offset: float = 0.0
    units: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}.{self.capture}"


@dataclass(frozen=True)
class PcapHeader:
    arm_time: str
    fields: tuple[PcapField, ...]
    info: dict[str, str] = field(default_factory=dict)  # missed, process, format, ...

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)

    def field_named(self, key: str) -> PcapField | None:
        """The captured field ``key`` (``"INENC1.VAL.Mean"``), None if not captured."""
        return next((f for f in self.fields if f.key == key), None)

    def scale_of(self, key: str) -> float:
        """The scale printed for the capture ``key``: the values' units per count of the
        field's counter; 1.0 where none is printed (or the field is not captured)."""
        captured = self.field_named(key)
        return 1.0 if captured is None or captured.scale is None else captured.scale

    def client_scaling(self) -> tuple[tuple[float, float] | None, ...]:
        """Per field, the ``(scale, offset)`` the client must apply to the value it is
        sent to get what ``process: Scaled`` sends; None where the value is that
        already (Scaled, no scale printed, a scale of 1 and offset 0, a Raw sum)."""
        if self.info.get("process", "Scaled") != "Raw":
            return (None,) * len(self.fields)
        return tuple(
            None
            if f.scale is None or f.capture in _SUMMED_IN_RAW or (f.scale == 1.0 and f.offset == 0.0)
            else (f.scale, f.offset)
            for f in self.fields
        )


@dataclass(frozen=True)
class PcapValues:
    """One trigger's values; ``values`` is keyed by field only when the header was given."""

    raw: tuple[Number, ...]
    values: dict[str, Number] = field(default_factory=dict)


@dataclass(frozen=True)
class PcapEnd:
    samples: int
    status: str  # "Ok", "Disarmed", "Framing error", ...


PcapMessage: TypeAlias = PcapHeader | PcapValues | PcapEnd


# -- encoding -------------------------------------------------------------------------


def format_arm_time(when: datetime) -> str:
    """PandA style: UTC, millisecond precision, ``Z`` suffix."""
    utc = when.astimezone(UTC) if when.tzinfo else when
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _num(value: float) -> str:
    return format(value, ".12g")


def encode_pcap_header(
    fields: Sequence[PcapField],
    arm_time: datetime | str | None = None,
    missed: int = 0,
    process: str = "Scaled",
) -> bytes:
    """The header block, ending with its empty line (one PCAP_RAW frame)."""
    if not fields:
        raise ValueError("a PandA capture needs at least one field")
    when = datetime.now(UTC) if arm_time is None else arm_time
    stamp = when if isinstance(when, str) else format_arm_time(when)
    lines = [f"arm_time: {stamp}", f"missed: {missed}", f"process: {process}"]
    lines += ["format: ASCII", "fields:"]
    for f in fields:
        line = f" {f.name} {f.type} {f.capture}"
        if f.scale is not None:
            line += f" scale: {_num(f.scale)} offset: {_num(f.offset)} units: {f.units}"
        lines.append(line)
    return ("\n".join(lines) + "\n\n").encode()


def encode_pcap_values(values: Sequence[Number]) -> bytes:
    """One value line as the PandA prints it (leading space, 10 significant digits)."""
    tokens = [str(v) if isinstance(v, int) else format(v, ".10g") for v in values]
    return (" " + " ".join(tokens) + "\n").encode()


def encode_pcap_end(samples: int, status: str = "Disarmed") -> bytes:
    return f"END {samples} {status}\n".encode()


# -- decoding -------------------------------------------------------------------------


def _parse_header(text: str) -> PcapHeader:
    if len(text) > MAX_HEADER_CHARS:
        raise FrameError(f"PandA header is {len(text)} characters, more than {MAX_HEADER_CHARS}")
    lines = text.split("\n")
    info: dict[str, str] = {}
    fields: list[PcapField] = []
    in_fields = False
    for line in lines:
        if not line.strip():
            if in_fields:
                break
            continue
        if len(line) > MAX_LINE_CHARS:
            # The field pattern backtracks on long lines: real ones are under 100 characters.
            raise FrameError(f"PandA header line of {len(line)} characters is longer than {MAX_LINE_CHARS}")
        if in_fields:
            m = _FIELD_RE.match(line)
            if m is None:
                raise FrameError(f"PandA header has a malformed field line {line!r}")
            scale = m["scale"]
            try:
                fields.append(
                    PcapField(
                        m["name"],
                        m["type"],
                        m["capture"],
                        None if scale is None else float(scale),
                        float(m["offset"] or 0.0),
                        m["units"] or "",
                    )
                )
            except ValueError:
                raise FrameError(f"PandA header has bad scale/offset in {line!r}") from None
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FrameError(f"PandA header line {line!r} is not 'key: value'")
        if key == "fields":
            in_fields = True
        else:
            info[key] = value.strip()
    if "arm_time" not in info:
        raise FrameError("PandA header has no arm_time line")
    if not fields:
        raise FrameError("PandA header lists no fields")
    if info.get("format", "ASCII") != "ASCII":
        raise FrameError(f"PandA data format {info['format']!r} is not supported, use ASCII")
    return PcapHeader(info.pop("arm_time"), tuple(fields), info)


def _parse_token(token: str, typ: str | None) -> Number:
    if len(token) > MAX_TOKEN_CHARS:
        raise FrameError(f"PandA value of {len(token)} characters is out of range")
    value: Number
    try:
        if typ in _FLOAT_TYPES:
            value = float(token)
        else:
            try:
                value = int(token)
            except ValueError:
                value = float(token)  # a scaled integer field may print as a decimal
    except ValueError:
        raise FrameError(f"PandA value {token!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise FrameError(f"PandA value {token!r} is not a finite number")
    return value


def decode_pcap_event(parts: Sequence[Part], header: PcapHeader | None = None) -> PcapMessage:
    """Decode one PCAP_RAW event (one frame). Pass the scan's header to name values."""
    if len(parts) != 1:
        raise FrameError(f"a PCAP_RAW event has exactly 1 frame, got {len(parts)}")
    try:
        text = bytes(as_buffer(parts[0])).decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("PCAP_RAW frame is not ASCII text") from None
    if text.startswith("arm_time:"):
        return _parse_header(text)
    if text.startswith("END"):
        tokens = text.split(maxsplit=2)
        if len(tokens) < 2 or not tokens[1].isdigit() or len(tokens[1]) > MAX_TOKEN_CHARS:
            raise FrameError(f"malformed PandA END line {text[:80]!r}")
        return PcapEnd(int(tokens[1]), tokens[2].strip() if len(tokens) > 2 else "")
    if len(text) > MAX_LINE_CHARS:
        raise FrameError(f"PandA value line of {len(text)} characters is longer than {MAX_LINE_CHARS}")
    tokens = text.split()
    if not tokens:
        raise FrameError("empty PandA value line")
    if header is None:
        return PcapValues(tuple(_parse_token(t, None) for t in tokens))
    if len(tokens) != len(header.fields):
        raise FrameError(
            f"PandA value line has {len(tokens)} values, the header lists "
            f"{len(header.fields)} fields {list(header.keys)}"
        )
    raw = tuple(_parse_token(t, f.type) for t, f in zip(tokens, header.fields, strict=True))
    named = [
        value if scaling is None else _scaled(value, *scaling, key)
        for value, scaling, key in zip(raw, header.client_scaling(), header.keys, strict=True)
    ]
    return PcapValues(raw, dict(zip(header.keys, named, strict=True)))


def _scaled(value: Number, scale: float, offset: float, key: str) -> float:
    """A Raw value as the PandA's Scaled data port computes it (in doubles)."""
    out = scale * value + offset
    if not math.isfinite(out):
        raise FrameError(f"PandA value {value} of {key} scaled by {scale:g} (offset {offset:g}) is not finite")
    return out


def angle_from_values(
    values: Mapping[str, Number],
    field: str = DEFAULT_ANGLE_FIELD,
    counts_per_degree: float = 1.0,
    offset_deg: float = 0.0,
    encoder_bits: int = 0,
    near_deg: float | None = None,
    *,
    scale: float = 1.0,
) -> float:
    """Rotation angle in degrees: ``value / counts_per_degree + offset_deg``.

    ``encoder_bits`` > 0: the counter is that wide and wraps (DanMAX: 32 bits,
    11930463 counts per degree, so once per turn). ``scale`` is the field's scale in
    the PandA's header (:meth:`PcapHeader.scale_of`): the values count ``scale`` per
    count of the counter, which wraps every ``2**bits`` of its own counts, so every
    ``2**bits * |scale|`` of the values. The angle is then known modulo
    ``2**bits * |scale| / counts_per_degree`` degrees and is unwrapped to the representative
    nearest ``near_deg`` (the middle of the scan's angle grid): each frame on its own,
    so workers that see only some frames need no history, and exact for any scan
    shorter than one counter period. An exposure that straddled the wrap has a
    meaningless ``Mean``; the ``Min`` and ``Max`` of the same field, when captured,
    show it (they differ by more than half the counter range) and the frame is
    refused (:class:`EncoderWrapped`): its Mean mixes counts from both sides of the
    wrap in an unknown proportion.
    """
    if counts_per_degree == 0:
        raise ValueError("counts_per_degree must not be 0")
    if field not in values:
        raise EncoderFieldMissing(
            f"PandA capture has no field {field!r}; captured: {sorted(values)}"
            + ("" if values else " (decode the value line with its header)")
        )
    if scale == 0 or not math.isfinite(scale):
        # Input, not a setting: the header's scale. Every value would be the offset.
        raise FrameError(f"the PandA's header gives {field} the scale {scale}: its values hold no position")
    angle = float(values[field]) / counts_per_degree + offset_deg
    if encoder_bits <= 0:
        return angle
    name, _capture = split_field_key(field)
    low, high = values.get(f"{name}.Min"), values.get(f"{name}.Max")
    # abs: with a negative scale the PandA's scaled Min is above its Max.
    if low is not None and high is not None and abs(float(high) - float(low)) > 2.0 ** (encoder_bits - 1) * abs(scale):
        raise EncoderWrapped(
            f"{name} wrapped during the exposure (Min {low}, Max {high} differ by more than half its "
            f"{encoder_bits}-bit range): its Mean is no angle"
        )
    if near_deg is not None:
        period = 2.0**encoder_bits * abs(scale) / abs(counts_per_degree)
        angle += period * round((near_deg - angle) / period)
    return angle


def counts_from_angle(angle_deg: float, counts_per_degree: float = 1.0, offset_deg: float = 0.0) -> float:
    """Inverse of :func:`angle_from_values`, for simulated captures."""
    return (angle_deg - offset_deg) * counts_per_degree


def split_field_key(key: str) -> tuple[str, str]:
    """``"INENC1.VAL.Mean"`` -> ``("INENC1.VAL", "Mean")``."""
    name, dot, capture = key.rpartition(".")
    if not dot or not name or not capture:
        raise ValueError(f"field key {key!r} must look like 'BLOCK.FIELD.Capture'")
    return name, capture
