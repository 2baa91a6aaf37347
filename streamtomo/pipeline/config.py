"""The pipeline's configuration: one flat dataclass, validated, JSON in and out.

Every field is also a dranspose parameter of the same name (see
``streamtomo.dranspose_parameters``), so a scan can be configured from a parameter file, the
controller's HTTP API, or the helm chart's ``pipeline:`` values, with one set of names.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from streamtomo.pipeline.formats.kinds import FrameKindRule, Segment
from streamtomo.pipeline.scan import ImageKey

FILTERS = ("ramp", "shepp-logan", "hann")
KIND_RULES = ("counts", "header")
COMPRESSIONS = ("none", "bslz4")
LIVE_MODES = ("accumulate", "window")
# Bounds for what a running scan may be asked to do (the live parameters): the slice
# stack and each projection's backprojection cost grow with slices x size^2.
MAX_SLICE_SIZE = 16384  # any detector: refused before anything is allocated
SLICE_SIZE_PER_COLUMN = 2  # with the detector known: at most twice its width
MAX_LIVE_SLICES = 32
# A scan's frames, all kinds: 28 hours of a camera at 100 frames/s. Counts past it are
# typos, and a worker set aside per-frame bookkeeping for them (1e20 darks hung it).
MAX_SCAN_FRAMES = 10_000_000
# Fewer counts per degree put a turn of a 64-bit counter past a float (1e-308 gave
# NaN angles and a crash); an encoder scaled to radians has 0.017.
MIN_COUNTS_PER_DEGREE = 1e-6
# Sweep candidates: each is one more slice every worker backprojects per projection.
MAX_COR_SWEEP_STEPS = 128
LIVE_STACK_BUDGET_BYTES = 1 << 30  # float32 slices x size x size


BINNINGS = (1, 2, 4)


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names value and choices."""


@dataclass
class PipelineConfig:
    """Scan, correction and reconstruction settings.

    Field metadata ``help`` documents each field (the CLI's ``config`` command and
    README print it).
    """

    detector_stream: str = field(default="detector", metadata={"help": "dranspose stream with detector frames (STINS)"})
    angle_stream: str = field(
        default="angle",
        metadata={"help": "dranspose stream with the PandA position capture (PCAP_RAW); empty: nominal angles"},
    )
    kind_rule: str = field(
        default="counts",
        metadata={
            "help": "how a frame's kind is known: 'counts' (darks/flats before and after) or 'header' (a key in the image header)"
        },
    )
    kind_header_key: str = field(
        default="image_key",
        metadata={"help": "image header key holding the NXtomo image_key when kind_rule is 'header'"},
    )
    frame_base: str = field(
        default="auto",
        metadata={
            "help": "detector frame number of the scan's first frame (0 or 1 at most beamlines); 'auto': from the first image a worker sees, as its frame number minus (its event number - 1), since dranspose numbers a scan's events from 0 with the detector header as event 0"
        },
    )
    frame_layout: str = field(
        default="",
        metadata={
            "help": "kind_rule 'counts': the scan's frames in order as 'kind:count,...' (dark, flat, proj), e.g. 'flat:50,dark:50,proj:3001,flat:50,dark:50'; when set it replaces n_darks_before, n_flats_before, n_flats_after, n_darks_after, and n_projections is its projection count"
        },
    )
    n_darks_before: int = field(
        default=10, metadata={"help": "dark frames before the projections (kind_rule 'counts')"}
    )
    n_flats_before: int = field(
        default=10, metadata={"help": "flat frames before the projections (kind_rule 'counts')"}
    )
    n_projections: int = field(default=180, metadata={"help": "number of projections = angle slots of the sinogram"})
    n_flats_after: int = field(
        default=0, metadata={"help": "flat frames after the projections (interpolated with those before)"}
    )
    n_darks_after: int = field(default=0, metadata={"help": "dark frames after the projections"})
    angle_start: float = field(default=0.0, metadata={"help": "nominal angle of the first projection, degrees"})
    angle_range: float = field(
        default=180.0, metadata={"help": "angular range covered by the projections, degrees (180 or 360)"}
    )
    angle_step: float = field(
        default=0.0,
        metadata={
            "help": "degrees between projections; > 0: overrides angle_range (the grid is angle_start + i * angle_step), so an inclusive scan (91 projections from -88.2 to 91.8 degrees: 2) needs no arithmetic; a last projection one turn after the first is averaged into the first slot"
        },
    )
    angle_tolerance: float = field(
        default=0.5,
        metadata={"help": "largest distance from a slot, in angular steps, for a measured angle to be accepted"},
    )
    check_nominal_angles: bool = field(
        default=False,
        metadata={
            "help": "projections come in order at angle_start + i * step (kind_rule 'counts'): a measured angle in another slot than its frame's is matched to the PandA row within 2 frames that has the frame's angle (a trigger too many or too few), or rejected as angle_mismatch"
        },
    )
    encoder_field: str = field(
        default="INENC1.VAL.Mean", metadata={"help": "PandA capture field holding the rotation encoder"}
    )
    counts_per_degree: float = field(default=1000.0, metadata={"help": "encoder counts per degree"})
    encoder_offset: float = field(default=0.0, metadata={"help": "angle in degrees at encoder count 0"})
    encoder_bits: int = field(
        default=32,
        metadata={
            "help": "width of the encoder counter, bits (0: it never wraps); angles are unwrapped modulo 2^bits counts to the turn of the scan's angle grid, and a frame whose exposure straddled the wrap (the field's Min/Max show it) is rejected as encoder_wrapped"
        },
    )
    rows: str = field(
        default="all", metadata={"help": "detector rows assembled into sinograms: 'all', 'a:b[:step]' or 'r1,r2,...'"}
    )
    slice_rows: str = field(
        default="",
        metadata={
            "help": "detector rows reconstructed live (must be sinogram rows); empty: 5 rows spread over the sinogram rows"
        },
    )
    center: str = field(
        default="",
        metadata={
            "help": "rotation axis column (0-based); empty: detector middle; 'auto': estimated from the sinogram at the end of the scan"
        },
    )
    live_mode: str = field(
        default="accumulate",
        metadata={
            "help": "live slices: 'accumulate' (all projections so far) or 'window' (the last 180 degrees of a continuous rotation, in acquisition order)"
        },
    )
    cor_sweep_steps: int = field(
        default=7, metadata={"help": "live centre-of-rotation sweep: candidate centres around the centre (0: off)"}
    )
    cor_sweep_step: float = field(default=1.0, metadata={"help": "spacing of the sweep's candidate centres, pixels"})
    backend: str = field(
        default="default",
        metadata={
            "help": "reconstruction backend for the end-of-scan volume: default (fourier), direct, skimage, astra, tomopy-gridrec, tomopy-fbp"
        },
    )
    volume: bool = field(
        default=True,
        metadata={"help": "reconstruct every sinogram row into /entry/reconstruction/volume at the end of the scan"},
    )
    pixel_repair: bool = field(
        default=True,
        metadata={
            "help": "replace dead pixels (0 counts, or a flat at or near the dark) and saturated ones by the median of their row neighbours before -log, and count them (status pixels_repaired); off: they become 0 or -log 13.8"
        },
    )
    saturation_level: float = field(
        default=0.0,
        metadata={
            "help": "pixel_repair: counts at or above this are saturated; 0: the detector dtype's maximum (65535 for uint16)"
        },
    )
    zinger_removal: bool = field(
        default=False,
        metadata={"help": "volume: replace zingers (isolated outlier pixels) in each projection by the local median"},
    )
    ring_removal: bool = field(
        default=False,
        metadata={
            "help": "volume: stripe (ring) removal on each sinogram, Vo 2018's combination: dead/unresponsive, large and sorting-based (window 21)"
        },
    )
    paganin_delta_beta: float = field(
        default=0.0,
        metadata={
            "help": "volume: Paganin phase retrieval with this delta/beta (0: off; needs contiguous rows: 'all' or 'a:b')"
        },
    )
    energy_kev: float = field(default=20.0, metadata={"help": "X-ray energy for Paganin, keV"})
    distance_m: float = field(default=0.1, metadata={"help": "sample-detector distance for Paganin, m"})
    pixel_size_m: float = field(default=1e-6, metadata={"help": "detector pixel size for Paganin, m"})
    filter: str = field(default="ramp", metadata={"help": f"FBP filter: {', '.join(FILTERS)}"})
    slice_size: int = field(default=0, metadata={"help": "reconstructed slice width in pixels; 0: detector width"})
    bin: int = field(
        default=1,
        metadata={
            "help": "bin the detector b x b (1, 2 or 4) before everything else, for previews of big detectors: sinograms, live slices and the volume are binned, and rows, slice_rows, center and slice_size count binned pixels"
        },
    )
    window_block: int = field(
        default=0,
        metadata={
            "help": "live_mode 'window': projections per partial-sum block; the window shows the whole blocks within the last 180 degrees (1: exact, per projection; 0: an eighth of the half turn)"
        },
    )
    memory_budget_gb: float = field(
        default=0.0,
        metadata={
            "help": "most memory the reducer may hold for one scan's published arrays, GB; 0: half of this machine's memory. A scan that needs more is refused at its first frame with a message naming rows and bin"
        },
    )
    flush_every: int = field(
        default=0,
        metadata={
            "help": "projections a worker sums before sending its partial sums; 0: from their size (about 1 MB of sums per projection and at most twice the bytes of its rows, 8 to 64 projections: each send is live slices plus sweep); a sum also goes once it is a publish interval old (more for large sums)"
        },
    )
    reference_senders: int = field(
        default=2,
        metadata={
            "help": "workers that send the reducer a broadcast dark's or flat's rows (the first by name; the others only say their copy came). 2: one worker lost at a scan's start loses no reference; 1: the least traffic"
        },
    )
    publish_interval: float = field(default=0.25, metadata={"help": "seconds between live domain updates"})
    keep_references: bool = field(
        default=False,
        metadata={
            "help": "keep darks/flats across scans (for scans that take none, or one kind: flats alone keep the darks)"
        },
    )
    domain: str = field(default="/streamtomo/live.h5", metadata={"help": "name of the live domain"})
    controller_url: str = field(
        default="",
        metadata={"help": "dranspose controller URL; the reducer shares references through it in distributed mode"},
    )

    def __post_init__(self) -> None:
        if self.frame_layout.strip():
            # The layout is the one place the projection count is given: the angle grid follows it.
            self.n_projections = dict(self._layout_segments()).get(ImageKey.PROJECTION, 0) or 0
        self.validate()

    # -- validation -----------------------------------------------------------------
    def validate(self) -> None:
        _choice("kind_rule", self.kind_rule, KIND_RULES)
        _choice("filter", self.filter, FILTERS)
        _choice("live_mode", self.live_mode, LIVE_MODES)
        for name in ("n_darks_before", "n_flats_before", "n_flats_after", "n_darks_after", "slice_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.fixed_frame_base()  # 'auto' or an integer >= 0
        if self.frame_layout.strip():
            self._layout_segments()
        if self.n_projections < 1:
            raise ConfigError(f"n_projections must be >= 1, got {self.n_projections}")
        if self.kind_rule == "counts":
            frames = sum(count or 0 for _, count in self.frame_segments())
            if frames > MAX_SCAN_FRAMES:
                raise ConfigError(
                    f"the scan's frames ({'frame_layout' if self.frame_layout.strip() else 'n_darks_before + n_flats_before + n_projections + n_flats_after + n_darks_after'}) "
                    f"add up to {frames}: at most {MAX_SCAN_FRAMES}"
                )
        elif self.n_projections > MAX_SCAN_FRAMES:
            raise ConfigError(f"n_projections must be at most {MAX_SCAN_FRAMES}, got {self.n_projections}")
        if not self.angle_stream and self.kind_rule != "counts":
            # Nominal angles come from a frame's position in the layout, which only
            # kind_rule counts knows: every projection was refused as missing_angle.
            raise ConfigError(
                f"angle_stream '' (nominal angles from the frame layout) needs kind_rule 'counts', "
                f"got {self.kind_rule!r}: name the angle stream"
            )
        if self.bin not in BINNINGS:
            raise ConfigError(f"bin must be one of {list(BINNINGS)}, got {self.bin}")
        if self.window_block < 0:
            raise ConfigError(f"window_block must be >= 0 (0: automatic), got {self.window_block}")
        if not (self.memory_budget_gb >= 0 and math.isfinite(self.memory_budget_gb)):
            raise ConfigError(
                f"memory_budget_gb must be >= 0 (0: half of this machine's memory), got {self.memory_budget_gb}"
            )
        if self.reference_senders < 1:
            raise ConfigError(f"reference_senders must be >= 1, got {self.reference_senders}")
        if self.flush_every < 0:
            raise ConfigError(f"flush_every must be >= 0 (0: from the size of a partial sum), got {self.flush_every}")
        if not (0 < self.angle_range <= 360):
            raise ConfigError(f"angle_range must be in (0, 360] degrees, got {self.angle_range}")
        if not (self.angle_step >= 0 and math.isfinite(self.angle_step)):
            raise ConfigError(
                f"angle_step must be >= 0 degrees (0: angle_range / n_projections), got {self.angle_step}"
            )
        if self.angle_step * (self.n_projections - 1) > 360.0 + 1e-9:
            raise ConfigError(
                f"angle_step {self.angle_step:g} x (n_projections {self.n_projections} - 1) spans "
                f"{self.angle_step * (self.n_projections - 1):g} degrees: more than one turn"
            )
        if not (0 < self.angle_tolerance <= 0.5):
            raise ConfigError(f"angle_tolerance must be in (0, 0.5] steps, got {self.angle_tolerance}")
        if not (MIN_COUNTS_PER_DEGREE <= abs(self.counts_per_degree) < math.inf):
            raise ConfigError(
                f"counts_per_degree must be finite and at least {MIN_COUNTS_PER_DEGREE:g} in magnitude "
                f"(an encoder in radians: 0.0174533), got {self.counts_per_degree}"
            )
        if not (0 <= self.encoder_bits <= 64):
            raise ConfigError(f"encoder_bits must be in 0..64 (0: no wrap), got {self.encoder_bits}")
        if not (self.saturation_level >= 0 and math.isfinite(self.saturation_level)):
            raise ConfigError(f"saturation_level must be >= 0 (0: the dtype's maximum), got {self.saturation_level}")
        if self.publish_interval <= 0:
            raise ConfigError(f"publish_interval must be > 0, got {self.publish_interval}")
        if self.slice_size > MAX_SLICE_SIZE:
            raise ConfigError(f"slice_size must be at most {MAX_SLICE_SIZE} (0: detector width), got {self.slice_size}")
        if self.center.strip() and self.center.strip() != "auto":
            try:
                finite = math.isfinite(float(self.center))
            except (ValueError, OverflowError):
                finite = False
            if not finite:
                raise ConfigError(f"center must be a column number, 'auto' or empty, got {self.center!r}")
        for name in ("energy_kev", "distance_m", "pixel_size_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.paganin_delta_beta < 0:
            raise ConfigError(f"paganin_delta_beta must be >= 0 (0: off), got {self.paganin_delta_beta}")
        if not (0 <= self.cor_sweep_steps <= MAX_COR_SWEEP_STEPS) or self.cor_sweep_step <= 0:
            raise ConfigError(
                f"cor_sweep_steps must be in 0..{MAX_COR_SWEEP_STEPS} and cor_sweep_step > 0, "
                f"got {self.cor_sweep_steps}, {self.cor_sweep_step}"
            )
        from streamtomo.pipeline.reconstruction.backends import available_backends, resolve_name

        try:
            resolve_name(self.backend)
        except ValueError:
            raise ConfigError(
                f"backend {self.backend!r} is unknown; choose one of {list(available_backends())}"
            ) from None
        # Syntax only here; bounds are checked against the detector when it is known.
        check_rows_syntax(self.rows)
        if self.slice_rows.strip():
            check_rows_syntax(self.slice_rows)

        # Every number is finite: an angle_start of inf passed every check and crashed the
        # PandA decoding (OverflowError), a publish_interval of inf never published.
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{spec.name} must be a finite number, got {value}")

    # -- derived values -------------------------------------------------------------
    @property
    def slot_step(self) -> float:
        """Degrees between the angle slots: ``angle_step``, else angle_range / n_projections."""
        return self.angle_step if self.angle_step > 0 else self.angle_range / self.n_projections

    def angle_slots(self) -> int:
        """Distinct angle slots: ``n_projections``, less the projections one turn after
        the first (an inclusive 360-degree scan's endpoint), which share the first slots."""
        turn = 360.0 / self.slot_step
        whole = round(turn)
        if self.n_projections > whole and abs(turn - whole) <= 1e-6 * turn:
            return whole
        return self.n_projections

    def fixed_frame_base(self) -> int | None:
        """``frame_base`` as a number; None for 'auto' (found from the stream)."""
        text = self.frame_base.strip().lower()
        if text == "auto":
            return None
        try:
            base = int(text)
        except ValueError:
            base = -1
        if base < 0:
            raise ConfigError(f"frame_base must be 'auto' or an integer >= 0, got {self.frame_base!r}")
        return base

    def _layout_segments(self) -> tuple[Segment, ...]:
        """``frame_layout`` parsed and checked: closed counts, one projection segment."""
        spec = self.frame_layout
        if self.kind_rule != "counts":
            raise ConfigError(f"frame_layout {spec!r} needs kind_rule 'counts', got {self.kind_rule!r}")
        try:
            segments = FrameKindRule.from_spec(spec).segments
        except ValueError as error:
            raise ConfigError(f"frame_layout {spec!r}: {error}") from None
        for kind, count in segments:
            if count is None or count < 1:
                raise ConfigError(
                    f"frame_layout {spec!r}: every segment needs a count >= 1, got {kind.name.lower()}:{'*' if count is None else count}"
                )
        found = sum(1 for kind, _ in segments if kind == ImageKey.PROJECTION)
        if found != 1:
            raise ConfigError(f"frame_layout {spec!r} needs exactly one projection segment ('proj:N'), found {found}")
        return segments

    def frame_segments(self) -> tuple[Segment, ...]:
        """The scan's frames in order (kind, count) for ``kind_rule`` ``counts``."""
        if self.frame_layout.strip():
            return self._layout_segments()
        return FrameKindRule.from_counts(
            self.n_darks_before, self.n_flats_before, self.n_projections, self.n_flats_after, self.n_darks_after
        ).segments

    def first_projection(self) -> int:
        """Position of the first projection (``kind_rule`` ``counts``): the frames before it."""
        before = 0
        for kind, count in self.frame_segments():
            if kind == ImageKey.PROJECTION:
                break
            before += count or 0
        return before

    def expected_frames(self) -> int | None:
        """Frames the scan should have: known for ``kind_rule`` ``counts``, else None."""
        if self.kind_rule != "counts":
            return None
        return sum(count or 0 for _, count in self.frame_segments())

    def grid_middle(self) -> float:
        """The middle of the scan's angle grid: wrapped encoder angles are unwrapped
        to the turn nearest it."""
        return self.angle_start + self.slot_step * (self.n_projections - 1) / 2.0

    def nominal_angle(self, projection_index: int) -> float:
        return self.angle_start + projection_index * self.slot_step

    def nominal_angles_checked(self) -> bool:
        """Whether measured angles are checked against the frames' nominal ones: asked
        for, and the frames' order known (``kind_rule`` 'counts')."""
        return self.check_nominal_angles and self.kind_rule == "counts"

    def center_value(self, cols: int) -> float:
        """The rotation axis column, checked against the detector width."""
        if not self.center.strip() or self.center.strip() == "auto":
            # 'auto' is resolved by the reducer (LiveScan) into a number at the end.
            return (cols - 1) / 2.0
        value = float(self.center)
        if not (0.0 <= value <= cols - 1):
            raise ConfigError(f"center {value} lies outside the detector (allowed 0..{cols - 1})")
        return value

    def sinogram_rows(self, detector_rows: int) -> list[int]:
        return parse_rows(self.rows, detector_rows)

    def live_slice_rows(self, detector_rows: int) -> list[int]:
        sino_rows = self.sinogram_rows(detector_rows)
        if not self.slice_rows.strip():
            count = min(5, len(sino_rows))
            picks = [round(i * (len(sino_rows) - 1) / max(count - 1, 1)) for i in range(count)]
            return sorted({sino_rows[i] for i in picks})
        rows = parse_rows(self.slice_rows, detector_rows)
        missing = sorted(set(rows) - set(sino_rows))
        if missing:
            raise ConfigError(f"slice_rows {missing} are not sinogram rows ({self.rows!r})")
        return rows

    def check_live_bounds(self, detector_rows: int | None, detector_cols: int | None) -> None:
        """Refuse live slices that would cost far more than the detector warrants.

        Before the first frame the detector is unknown: then the slice count is
        what ``slice_rows`` names (5 by default) and only the memory budget bounds
        ``slice_size``.
        """
        size = self.slice_size or detector_cols or 0
        if detector_cols is not None and size > SLICE_SIZE_PER_COLUMN * detector_cols:
            raise ConfigError(
                f"slice_size {size} is more than {SLICE_SIZE_PER_COLUMN}x the detector width ({detector_cols}); "
                f"allowed 0..{SLICE_SIZE_PER_COLUMN * detector_cols}"
            )
        if detector_rows is not None:
            count = len(self.live_slice_rows(detector_rows))
        else:
            text = self.slice_rows.strip().lower()
            explicit = text and text != "all" and ":" not in text
            count = len({p for p in text.split(",") if p.strip()}) if explicit else 5
        if count > MAX_LIVE_SLICES:
            raise ConfigError(f"slice_rows selects {count} rows; at most {MAX_LIVE_SLICES} live slices")
        if count * size * size * 4 > LIVE_STACK_BUDGET_BYTES:
            raise ConfigError(
                f"{count} live slices of {size}x{size} need {count * size * size * 4 >> 20} MiB; "
                f"the budget is {LIVE_STACK_BUDGET_BYTES >> 20} MiB"
            )

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from a mapping, converting strings; unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        converted: dict[str, Any] = {}
        for name, value in values.items():
            converted[name] = _convert(name, known[name].type, value)
        return cls(**converted)

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        return cls.from_mapping(json.loads(text))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not allowed; choose one of {list(allowed)}")


def _convert(name: str, type_name: Any, value: Any) -> Any:
    kind = str(type_name)
    try:
        if value is None or (isinstance(value, bool) and kind != "bool"):
            # JSON null became the text 'None', and true the count 1: a slip in a
            # parameter file that read as a value.
            raise ValueError(value)
        if kind == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None


def check_rows_syntax(spec: str) -> None:
    text = spec.strip().lower()
    if text in ("all", ""):
        return
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise ValueError(spec)
            [int(p) for p in parts if p]
        else:
            [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"row selection {spec!r} is not 'all', 'a:b[:step]' or 'r1,r2,...'") from None


def parse_rows(spec: str, detector_rows: int) -> list[int]:
    """Parse 'all', 'a:b[:step]' or 'r1,r2,...' into sorted unique row indices."""
    text = spec.strip().lower()
    if text in ("all", ""):
        return list(range(detector_rows))
    malformed = ConfigError(f"row selection {spec!r} is not 'all', 'a:b[:step]' or 'r1,r2,...'")
    try:
        parts = [int(p) if p else None for p in text.split(":")] if ":" in text else []
        listed = [] if parts else sorted({int(p) for p in text.split(",") if p.strip()})
        if len(parts) > 3:
            raise ValueError(spec)
    except ValueError:
        raise malformed from None
    outside = ConfigError(f"row selection {spec!r} selects rows outside 0..{detector_rows - 1}")
    if parts:
        # A bound past the detector is refused, not clipped: '0:4000' of 2048 rows gave
        # rows 0..2047 without a word, a sinogram of other rows than asked for.
        if any(bound is not None and not -detector_rows <= bound <= detector_rows for bound in parts[:2]):
            raise outside
        try:
            rows = list(range(detector_rows))[slice(*parts)]
        except ValueError:  # a step of 0
            raise malformed from None
    else:
        rows = listed
    if not rows:
        raise ConfigError(f"row selection {spec!r} selects no row of 0..{detector_rows - 1}")
    if any(not 0 <= r < detector_rows for r in rows):
        raise outside
    return rows
