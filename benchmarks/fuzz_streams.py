"""Hostile streams through the worker adapter and the reducer core: what survives.

Each round takes a clean scan (darks, flats, projections; 1-based frame numbers and a
wrapping 32-bit encoder as at MAX IV DanMAX), lays out its detector and PandA messages
as dranspose's ingesters number them (message i of each stream in event i), and then
damages the streams the ways a detector, a network and a PandA do:

* malformed detector messages *inserted* next to good ones (a bad copy of a frame, with
  its frame number: truncated, misdeclared, corrupt compression, hostile JSON, ...);
* detector messages *dropped* (as dranspose's ingester drops one that fails its own
  header check), which moves every later detector message one event earlier;
* PandA rows *replaced* by malformed lines (a corrupt row; the PandA's TCP stream has
  no extra lines);
* duplicates of good frames, sent again with another frame's angle;
* with ``--panda-shifts``: 0-2 *shifts* of the PandA stream among the projections (a
  repeated header on top of the rows, a re-arm: END and header, a double trigger: a
  row twice, a lost row), which move every later row one event off its frame.

Events go to 1-3 workers as dranspose routes them; the results to the reducer core.
Counted per round: messages, distinct malformations, crashes (any exception out of a
worker or the reducer), ERROR log lines, good frames lost (frames whose own messages
were intact but that are not in the sinogram), and slots holding the wrong data
(compared with the clean scan's sinogram). The goal is 0 crashes, 0 good frames lost
and 0 wrong slots.

With ``--panda-shifts`` (and ``check_nominal_angles=true``) frames may be refused where
their PandA row was destroyed or cannot be found, but only under a counted reason of
their own (missing_angle, angle_mismatch, no_angle_row, ...); no slot may hold another
frame's data, and every round whose PandA stream was shifted must count a sign of it
that the same round without the shifts does not (angle_stream_out_of_step,
pcap_header_mid_scan, a frame refused for its angle): never a silent shift. Each
shifted round is run twice, with and without its shifts, to tell the two apart.

    python benchmarks/fuzz_streams.py --rounds 40 --seed 1
    python benchmarks/fuzz_streams.py --panda-shifts --rounds 300 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dranspose.event import EventData  # noqa: E402
from dranspose.protocol import ParameterName, WorkParameter  # noqa: E402

from streamtomo.app.recordings import synthetic_scan  # noqa: E402
from streamtomo.pipeline.config import PipelineConfig  # noqa: E402
from streamtomo.pipeline.formats import pcap, stins  # noqa: E402
from streamtomo.pipeline.reconstruction.fbp import fbp  # noqa: E402
from streamtomo.pipeline.scan import Frame  # noqa: E402
from streamtomo.pipeline.streaming.live_scan import LiveScan  # noqa: E402
from streamtomo.workers.tomo_worker import TomoWorker  # noqa: E402
from tests.support.stream_events import events_by_stream  # noqa: E402

N_DARKS, N_FLATS, N_PROJ, ROWS, COLS = 4, 4, 90, 4, 32
# The Orca's frames count from 1, as a beamline configures it. With 'auto' (--frame-base
# auto) the base comes from the earliest image, which a malformed or lost first image
# shifts: those rounds show what auto cannot know.
FRAME_BASE = "1"
COUNTS_PER_DEGREE, OFFSET = 11930463.0, -50.0
FIELDS = [
    pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s"),
    pcap.PcapField("INENC2.VAL", "double", "Mean", 1.0, 0.0, ""),
    pcap.PcapField("INENC2.VAL", "double", "Min", 1.0, 0.0, ""),
    pcap.PcapField("INENC2.VAL", "double", "Max", 1.0, 0.0, ""),
]


class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# -- the clean scan -----------------------------------------------------------------------


def counts(angle_deg: float) -> int:
    value = round((angle_deg - OFFSET) * COUNTS_PER_DEGREE)
    return (value + 2**31) % 2**32 - 2**31


def pcap_line(number: int, angle_deg: float) -> bytes:
    c = counts(angle_deg)
    return pcap.encode_pcap_values([number * 0.01, float(c), c, c])


def clean_streams() -> tuple[list[Frame], list[list[bytes]], list[bytes]]:
    frames = [
        Frame(f.index + 1, f.key, f.data, f.angle_deg) for f in synthetic_scan(N_DARKS, N_FLATS, N_PROJ, ROWS, COLS)
    ]
    detector = [stins.encode_header(0, "fuzz")]
    detector += [stins.encode_image(100 + i, f.index, f.data) for i, f in enumerate(frames, start=1)]
    detector.append(stins.encode_series_end(100 + len(frames) + 1))
    at = [frames[N_DARKS + N_FLATS].angle_deg or 0.0] * (N_DARKS + N_FLATS) + [
        f.angle_deg or 0.0 for f in frames[N_DARKS + N_FLATS :]
    ]
    angle = [pcap.encode_pcap_header(FIELDS, "2024-11-05T10:00:00.000Z")]
    angle += [pcap_line(n, a) for n, a in enumerate(at, start=1)]
    angle.append(pcap.encode_pcap_end(len(at)))
    return frames, detector, angle


def config() -> dict[str, object]:
    return {
        "n_darks_before": N_DARKS,
        "n_flats_before": N_FLATS,
        "n_projections": N_PROJ,
        "angle_stream": "angle",
        "encoder_field": "INENC2.VAL.Mean",
        "counts_per_degree": COUNTS_PER_DEGREE,
        "encoder_offset": OFFSET,
        "flush_every": 4,
        "cor_sweep_steps": 3,
        "volume": False,
        "frame_base": FRAME_BASE,
    }


# -- malformations --------------------------------------------------------------------------


def _head(parts: list[bytes]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(parts[0])
    return doc


def _with(parts: list[bytes], **changes: Any) -> list[bytes]:
    head = _head(parts)
    head.update(changes)
    return [json.dumps(head).encode(), *parts[1:]]


DetectorDamage = Callable[[list[bytes], random.Random], list[bytes]]

DETECTOR: dict[str, DetectorDamage] = {
    "truncated_data": lambda p, r: [p[0], p[1][: len(p[1]) // 2]],
    "extra_data": lambda p, r: [p[0], p[1] + b"\0\0"],
    "shape_mismatch": lambda p, r: _with(p, shape=[ROWS * 2, COLS]),
    "shape_string": lambda p, r: _with(p, shape=f"{ROWS}x{COLS}"),
    "shape_zero": lambda p, r: [_with(p, shape=[ROWS, 0])[0], b""],
    "shape_huge": lambda p, r: _with(p, shape=[1 << 20, 1 << 20]),
    "shape_3d": lambda p, r: _with(p, shape=[1, ROWS, COLS]),
    "negative_frame": lambda p, r: _with(p, frame=-5),
    "huge_frame": lambda p, r: _with(p, frame=2**63),
    "frame_string": lambda p, r: _with(p, frame="7"),
    "no_frame": lambda p, r: [json.dumps({k: v for k, v in _head(p).items() if k != "frame"}).encode(), p[1]],
    "dtype_unknown": lambda p, r: _with(p, type="mono12p"),
    "dtype_object": lambda p, r: _with(p, type="object"),
    "dtype_complex": lambda p, r: [_with(p, type="complex64")[0], p[1] * 4],
    "compression_unknown": lambda p, r: _with(p, compression="zstd"),
    "bslz4_garbage": lambda p, r: [_with(p, compression="bslz4")[0], bytes(r.getrandbits(8) for _ in range(64))],
    "bslz4_bomb": lambda p, r: [
        _with(p, compression="bslz4", shape=[16384, 16384])[0],
        (16384 * 16384 * 2).to_bytes(8, "big") + (8192).to_bytes(4, "big") + b"\0" * 64,
    ],
    "json_invalid": lambda p, r: [b"{not json", p[1]],
    "json_deep": lambda p, r: [b"[" * 50_000 + b"]" * 50_000, p[1]],
    "json_huge_int": lambda p, r: [p[0][:-1] + b', "x": ' + b"9" * 5000 + b"}", p[1]],
    "json_infinity": lambda p, r: [p[0][:-1] + b', "image_key": Infinity}', p[1]],
    "json_nan": lambda p, r: [p[0][:-1] + b', "x": NaN}', p[1]],
    "no_data_part": lambda p, r: [p[0]],
    "three_parts": lambda p, r: [p[0], p[1], p[1]],
    "empty_message": lambda p, r: [],
    "binary_junk": lambda p, r: [bytes(r.getrandbits(8) for _ in range(40))],
    "htype_unknown": lambda p, r: _with(p, htype="dimage-1.0"),
    "float_nan_frame": lambda p, r: [
        _with(p, type="float32")[0],
        np.full((ROWS, COLS), np.nan, np.float32).tobytes(),
    ],
    "consistent_wrong_shape": lambda p, r: [_with(p, shape=[2, 16])[0], bytes(2 * 16 * 2)],
    "series_end_early": lambda p, r: [json.dumps({"htype": "series_end", "msg_number": 1}).encode()],
}

PANDA: dict[str, Callable[[random.Random], bytes]] = {
    "not_ascii": lambda r: b"\xff\xfe 1 2 3 4\n",
    "too_many_values": lambda r: b" 1 2 3 4 5 6\n",
    "too_few_values": lambda r: b" 1 2\n",
    "not_a_number": lambda r: b" 1 abc 3 4\n",
    "huge_int": lambda r: b" 1 " + b"9" * 5000 + b" 3 4\n",
    "infinity": lambda r: b" 1 inf 3 4\n",
    "nan": lambda r: b" 1 nan 3 4\n",
    "long_line": lambda r: b" " + b"1 " * 50_000 + b"\n",
    "stray_header": lambda r: pcap.encode_pcap_header(list(reversed(FIELDS)), "2024-11-05T10:00:01.000Z"),
    "empty_line": lambda r: b"   \n",
    "end_huge": lambda r: b"END " + b"9" * 5000 + b" Disarmed\n",
}


# -- one round ------------------------------------------------------------------------------


def run(
    scan_events: list[EventData],
    values: dict[str, object],
    workers: int,
    seed: int,
    frame_reasons: dict[int, list[tuple[str, bool]]] | None = None,
) -> tuple[LiveScan, int]:
    """Returns the reducer core and the number of exceptions that escaped.
    ``frame_reasons``: filled with every rejection naming a frame, as (reason, counted):
    counted False where the reducer kept the frame's first reason instead."""
    params = {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v) for k, v in values.items()
    }
    scan = LiveScan(PipelineConfig.from_mapping(values))
    if frame_reasons is not None:
        record_frame_reasons(scan, frame_reasons)
    pool = [TomoWorker(parameters=params, state=SimpleNamespace(name=f"w{i}")) for i in range(workers)]
    rng = random.Random(seed)
    crashes = 0
    last = len(scan_events) - 1
    for event in scan_events:
        number = int(event.event_number)
        targets = pool if number in (0, last) else [rng.choice(pool)]
        for worker in targets:
            try:
                result = worker.process_event(event, params)
                if result is not None:
                    scan.add_result(result)
            except Exception as error:  # what dranspose would log and swallow
                crashes += 1
                print(f"  crash: {error!r}", file=sys.stderr)
    try:
        scan.finish()
    except Exception as error:
        crashes += 1
        print(f"  crash at finish: {error!r}", file=sys.stderr)
    return scan, crashes


def record_frame_reasons(scan: LiveScan, out: dict[int, list[tuple[str, bool]]]) -> None:
    """Wrap the scan's admission so that each rejection of a frame is recorded."""
    admission = scan.admission
    reject = admission.reject

    def recording(reason: str, detail: str, frame_index: int | None = None, *, counted: bool = False) -> None:
        before = sum(admission.rejected.values())
        reject(reason, detail, frame_index, counted=counted)
        if frame_index is not None:
            out.setdefault(frame_index, []).append((reason, sum(admission.rejected.values()) > before))

    admission.reject = recording  # type: ignore[method-assign]


def slices_error(scan: LiveScan) -> float:
    """Live slices against an offline FBP of the final sinogram: the ledger took every
    rejected copy and misangled contribution back out if this is ~0."""
    assert scan.sinogram is not None and scan.geometry is not None
    slices = scan.slices()
    if slices is None:
        return 0.0
    filled = scan.sinogram.filled_slots()
    sino = scan.sinogram.data[scan.geometry.slice_positions][:, filled]
    reference = fbp(sino, scan.sinogram.angles()[filled], scan.geometry.center, scan.config.filter)
    return float(np.abs(slices - reference).max() / np.abs(reference).max())


# -- PandA stream shifts (--panda-shifts) ------------------------------------------------------

SHIFTS = ("header_repeated", "rearm", "double_trigger", "lost_row")
# A frame refused for its angle: its own reason (the PandA row destroyed, or not found).
ANGLE_REASONS = frozenset(
    {
        "missing_angle",
        "angle_mismatch",
        "no_angle_row",
        "unknown_angle",
        "pcap_header_missing",
        "encoder_wrapped",
        "encoder_field_missing",
        "pcap_raw_mean",
    }
)
# What a shifted round must count more of than the same round without its shifts (or,
# angle_stream_out_of_step, a notice counted once a scan: count at all).
SHIFT_SIGNS = (
    "angle_stream_out_of_step",
    "pcap_header_mid_scan",
    "pcap_missed_samples",
    "pcap_capture_incomplete",
    *sorted(ANGLE_REASONS),
)
STREAM_SIGNS = SHIFT_SIGNS[:4]
NOMINAL_WINDOW = 2  # streamtomo.pipeline.streaming.nominal_angles.WINDOW


def shift_panda(angle: list[bytes], rng: random.Random, rows: dict[bytes, int]) -> tuple[list[str], set[int]]:
    """Apply 0-2 shifts to the PandA stream (in place) among the projections' rows:
    returns the shifts applied and the positions of frames whose row was deleted.
    ``rows``: each clean value row -> its frame's position."""
    applied: list[str] = []
    deleted: set[int] = set()
    first = 1 + N_DARKS + N_FLATS  # the first projection's row
    for _ in range(rng.randint(0, 2)):
        name = rng.choice(SHIFTS)
        # A position whose message moves (at the latest the last row, before END).
        if name == "double_trigger":
            # The copy goes right after its row, and some row must come after it.
            candidates = [i for i in range(first, len(angle) - 2) if angle[i] in rows]
        elif name == "lost_row":
            candidates = [i for i in range(first, len(angle) - 1) if angle[i] in rows]
        else:
            candidates = list(range(first, len(angle) - 1))
        if not candidates:
            continue
        at = rng.choice(candidates)
        if name == "header_repeated":
            angle.insert(at, angle[0])
        elif name == "rearm":
            start = max(i for i in range(at) if angle[i] == angle[0])  # the capture's own header
            angle[at:at] = [pcap.encode_pcap_end(at - start - 1), angle[0]]
        elif name == "double_trigger":
            angle.insert(at + 1, angle[at])
        else:
            deleted.add(rows[angle[at]])
            del angle[at]
        applied.append(name)
    return applied, deleted


def fuzz_round(
    seed: int, workers: int, skip: frozenset[str] = frozenset(), panda_shifts: bool = False
) -> dict[str, Any]:
    """One damaged scan; ``skip`` leaves out kinds of damage (panda, drop, insert,
    duplicate, shift), to find which one a failure needs. ``panda_shifts``: also 0-2
    shifts of the PandA stream (their own random numbers: the rest of the round's
    damage is the same as without them)."""
    rng = random.Random(seed)
    _frames, detector, angle = clean_streams()
    rows = {line: number - 1 for number, line in enumerate(angle[1:-1], start=1)}
    clean, _ = run(events_by_stream(detector, angle), config(), workers, seed)
    assert clean.sinogram is not None
    kinds: Counter[str] = Counter()
    damaged_positions: set[int] = set()  # frames whose own messages were damaged
    dropped_positions: set[int] = set()  # frames whose detector message never came
    # PandA: replace a few rows (never the header or END).
    for _ in range(rng.randint(0, 4)):
        row = rng.randrange(1 + N_DARKS + N_FLATS, len(angle) - 1)  # a projection's row
        name = rng.choice(sorted(PANDA))
        if "panda" in skip:
            continue
        angle[row] = PANDA[name](rng)
        kinds[f"panda:{name}"] += 1
        damaged_positions.add(row - 1)
    unshifted = list(angle)
    shifts: list[str] = []
    if panda_shifts and "shift" not in skip:
        shifts, deleted = shift_panda(angle, random.Random(f"{seed}:panda-shifts"), rows)
        kinds.update(f"shift:{name}" for name in shifts)
        damaged_positions |= deleted
    shifted = angle != unshifted
    # Detector: insert bad copies next to good frames, drop a message, add duplicates.
    out: list[list[bytes]] = [detector[0]]
    for number, parts in enumerate(detector[1:-1], start=1):
        position = number - 1
        if rng.random() < 0.04 and position >= N_DARKS + N_FLATS and "drop" not in skip:
            kinds["detector:dropped"] += 1
            damaged_positions.add(position)
            dropped_positions.add(position)
            continue
        bad = rng.random() < 0.25 and "insert" not in skip
        name = rng.choice(sorted(DETECTOR)) if bad else ""
        if bad and rng.random() < 0.5:
            out.append(DETECTOR[name](parts, rng))
            kinds[f"detector:{name}"] += 1
        out.append(parts)
        if bad and rng.random() >= 0.5:
            out.append(DETECTOR[name](parts, rng))
            kinds[f"detector:{name}"] += 1
        if rng.random() < 0.02 and position >= N_DARKS + N_FLATS and "duplicate" not in skip:
            other = rng.randrange(1, len(detector) - 1)
            copy = stins.encode_image(999, _head(parts)["frame"], stins.decode_stins(detector[other]).array)  # type: ignore[union-attr]
            out.append(copy)
            kinds["detector:duplicate_other_data"] += 1
    out.append(detector[-1])
    messages = len(out) + len(angle)
    # The option's value as a beamline's parameter sends it; without shifts, as before.
    checked = {**config(), "check_nominal_angles": "true" if panda_shifts else True}
    frame_reasons: dict[int, list[tuple[str, bool]]] = {}
    handler = ErrorCounter()
    logging.getLogger().addHandler(handler)
    try:
        scan, crashes = run(events_by_stream(out, angle), checked, workers, seed, frame_reasons)
    finally:
        logging.getLogger().removeHandler(handler)
    unshifted_rejected: dict[str, int] = {}
    placed_unshifted: set[int] = set()  # positions the same round without its shifts placed
    if shifted:  # the same round without its shifts: what the shifts alone made it count
        baseline, _ = run(events_by_stream(out, unshifted), checked, workers, seed)
        unshifted_rejected = baseline.rejected
        if baseline.sinogram is not None:
            placed_unshifted = {N_DARKS + N_FLATS + int(k) for k in baseline.sinogram.filled_slots()}
    # How many events each intact row moved (its first copy): within the nominal check's
    # window (2 rows either side) its frame can be found by angle.
    moved = {
        rows[line]: angle.index(line) - index for index, line in enumerate(unshifted) if line in rows and line in angle
    }
    assert scan.sinogram is not None or crashes
    lost = wrong = 0
    slices_off = 0.0
    # --panda-shifts: the empty slots of frames whose detector message was intact, by
    # what the reducer counted for them.
    refused: Counter[str] = Counter()  # under a counted angle reason of their own
    refused_row_intact: Counter[str] = Counter()  # of those: their PandA row was there (not found)
    silent: list[int] = []  # no counted reason for the frame at all
    # Refused, row intact, placed without the shifts: its row moved beyond the window, or within it.
    lost_to_shift: dict[str, list[int]] = {"within": [], "beyond": []}
    # Only a bad copy's reason counted for the frame (its good copy's own reason was
    # refused by the admission's rule: one frame, one reason, the first).
    masked: dict[int, list[tuple[str, bool]]] = {}
    if scan.sinogram is not None:
        counts_now = scan.sinogram.counts
        for slot in range(N_PROJ):
            position = N_DARKS + N_FLATS + slot
            if counts_now[slot] == 0:
                lost += position not in damaged_positions
                own = [reason for reason, counted in frame_reasons.get(position, []) if counted]
                angle_reasons = [reason for reason in own if reason in ANGLE_REASONS]
                if position in dropped_positions:
                    continue  # its detector message never came: nothing to count
                if angle_reasons:
                    refused[angle_reasons[0]] += 1
                    if position not in damaged_positions:
                        refused_row_intact[angle_reasons[0]] += 1
                        if position in placed_unshifted:  # lost to the shifts
                            far = abs(moved.get(position, 0)) > NOMINAL_WINDOW
                            lost_to_shift["beyond" if far else "within"].append(position)
                elif own:
                    masked[position] = frame_reasons[position]
                else:
                    silent.append(position)
            elif not np.allclose(scan.sinogram.by_angle[slot], clean.sinogram.by_angle[slot], atol=1e-4):
                wrong += 1
        slices_off = slices_error(scan)
    rejected = dict(scan.rejected)
    # A sign of the shifts: a count the same round without them does not reach, or the
    # scan's one angle_stream_out_of_step notice (its reason then says the streams went
    # out of step, whatever else did so too).
    signs = (
        [
            r
            for r in SHIFT_SIGNS
            if rejected.get(r, 0) > unshifted_rejected.get(r, 0) or (r == "angle_stream_out_of_step" and r in rejected)
        ]
        if shifted
        else []
    )
    return {
        "messages": messages,
        "malformed": sum(kinds.values()),
        "kinds": kinds,
        "crashes": crashes,
        "errors": len(handler.lines),
        "good_lost": lost,
        "wrong_slots": wrong,
        "slices_off": slices_off,
        "base_suspect": bool(scan.rejected.get("frame_base_suspect")),
        "rejected": rejected,
        "state": scan.state,
        # --panda-shifts (empty or 0 without)
        "shifts": shifts,
        "shifted": shifted,
        "shift_signs": signs,
        # Its only sign the out-of-step notice that the round counts without its shifts too.
        "shift_sign_not_its_own": signs == ["angle_stream_out_of_step"]
        and "angle_stream_out_of_step" in unshifted_rejected,
        "refused": refused,
        "refused_row_intact": refused_row_intact,
        "lost_silent": silent,
        "lost_masked": masked,
        "lost_to_shift": lost_to_shift,
    }


class ShiftTally:
    """What --panda-shifts rounds add up to (the summary's last lines)."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.refused_row_intact: Counter[str] = Counter()
        self.signs: Counter[str] = Counter()
        self.findings: list[str] = []

    def add(self, i: int, seed: int, workers: int, result: dict[str, Any]) -> None:
        totals = self.totals
        self.refused.update(result["refused"])
        self.refused_row_intact.update(result["refused_row_intact"])
        totals["lost_silent"] += len(result["lost_silent"])
        totals["lost_masked"] += len(result["lost_masked"])
        totals["lost_within_window"] += len(result["lost_to_shift"]["within"])
        totals["lost_beyond_window"] += len(result["lost_to_shift"]["beyond"])
        totals["rounds_shifted"] += result["shifted"]
        silent_shift = result["shifted"] and not result["shift_signs"]
        totals["rounds_shift_silent"] += silent_shift
        totals["rounds_shift_stream_sign"] += any(s in STREAM_SIGNS for s in result["shift_signs"])
        totals["rounds_shift_sign_not_its_own"] += result["shift_sign_not_its_own"]
        self.signs.update(result["shift_signs"])
        wrong = bool(result["wrong_slots"] or result["lost_silent"])
        totals["rounds_wrong"] += wrong
        totals["rounds_wrong_warned"] += wrong and result["base_suspect"]
        named = wrong and result["base_suspect"] and not silent_shift  # 'auto' cannot know; it says so
        if (result["crashes"] or result["errors"] or wrong or silent_shift) and not named:
            self.findings.append(
                f"  round {i} (fuzz_round({seed}, workers={workers}, panda_shifts=True)): shifts {result['shifts']}, "
                f"crashes {result['crashes']}, ERROR lines {result['errors']}, wrong slots {result['wrong_slots']}, "
                f"lost without a reason {result['lost_silent']}, shift signs {result['shift_signs']}"
            )

    def print(self, kinds: Counter[str]) -> None:
        totals = self.totals
        shifts = dict(sorted((k, n) for k, n in kinds.items() if k.startswith("shift:")))
        print(
            f"PandA shifts: {totals['rounds_shifted']} rounds shifted ({shifts}), {totals['rounds_shift_silent']} of "
            f"them with no sign of it counted, {totals['rounds_shift_sign_not_its_own']} more whose only sign is the "
            f"angle_stream_out_of_step the round counts without its shifts too, {totals['rounds_shift_stream_sign']} "
            f"with a stream notice (out of step, PandA header, END); signs counted beyond the unshifted round: "
            f"{dict(sorted(self.signs.items()))}"
        )
        print(
            f"frames with an intact detector message and an empty slot: lost without any counted reason "
            f"{totals['lost_silent']}; refused for their angle {sum(self.refused.values())} "
            f"{dict(sorted(self.refused.items()))}, of them with their own PandA row intact but not found "
            f"{sum(self.refused_row_intact.values())} {dict(sorted(self.refused_row_intact.items()))}; counted only "
            f"under a bad copy's reason (one frame, one reason) {totals['lost_masked']}"
        )
        print(
            f"frames placed without the shifts, refused with them (own row intact): {totals['lost_within_window']} "
            f"whose row moved within the nominal check's {NOMINAL_WINDOW} rows, {totals['lost_beyond_window']} beyond"
        )
        if totals["rounds_wrong"]:
            print(
                f"rounds with wrong slots or frames lost without a reason: {totals['rounds_wrong']}, of them with the "
                f"reducer's warning to set frame_base (frame_base_suspect): {totals['rounds_wrong_warned']}"
            )
        for line in self.findings:
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frame-base", default="1", help="frame_base for the damaged scans (1 or auto)")
    parser.add_argument(
        "--panda-shifts",
        action="store_true",
        help="also shift the PandA stream 0-2 times a round (check_nominal_angles=true): frames may be refused "
        "under a reason, never lost silently or placed at another frame's angle, and no shift may go uncounted",
    )
    args = parser.parse_args()
    global FRAME_BASE
    FRAME_BASE = args.frame_base
    logging.basicConfig(level=logging.CRITICAL)
    started = time.perf_counter()
    totals: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    tally = ShiftTally()
    worst = 0.0
    for i in range(args.rounds):
        seed, workers = args.seed * 1000 + i, 1 + i % 3
        result = fuzz_round(seed, workers=workers, panda_shifts=args.panda_shifts)
        if args.panda_shifts:
            tally.add(i, seed, workers, result)
        for key in ("messages", "malformed", "crashes", "errors", "good_lost", "wrong_slots"):
            totals[key] += result[key]
        kinds.update(result["kinds"])
        totals["slices_inconsistent"] += result["slices_off"] > 1e-3
        totals["rounds_wrong"] += result["wrong_slots"] > 0 or result["good_lost"] > 0
        totals["rounds_wrong_warned"] += (result["wrong_slots"] > 0 or result["good_lost"] > 0) and result[
            "base_suspect"
        ]
        worst = max(worst, result["slices_off"])
        reasons.update(result["rejected"])
        totals["finished"] += result["state"] == "finished"
    seconds = time.perf_counter() - started
    print(f"rounds {args.rounds} (1-3 workers, frame_base {FRAME_BASE}), {seconds:.1f} s")
    shift_kinds = f" and {len(SHIFTS)} PandA shift kinds" if args.panda_shifts else ""
    print(
        f"messages {totals['messages']}, malformed {totals['malformed']} of {len(kinds)} distinct kinds "
        f"({len(DETECTOR) + 2} detector and {len(PANDA)} PandA kinds{shift_kinds} defined)"
    )
    if args.panda_shifts:
        lost = (
            f"good frames lost without a reason {tally.totals['lost_silent']}, refused with a reason "
            f"{sum(tally.refused.values()) + tally.totals['lost_masked']}"
        )
    else:
        lost = f"good frames lost {totals['good_lost']}"
    print(
        f"crashes {totals['crashes']}, ERROR lines {totals['errors']}, {lost}, "
        f"slots with wrong data {totals['wrong_slots']}, scans finished {totals['finished']}/{args.rounds}"
    )
    print(
        f"live slices against an offline FBP of the final sinogram: {totals['slices_inconsistent']} rounds off by "
        f"more than 1e-3 (largest relative difference {worst:.1e})"
    )
    if totals["rounds_wrong"] and not args.panda_shifts:
        print(
            f"rounds with lost or wrong frames: {totals['rounds_wrong']}, of them with the reducer's warning to set "
            f"frame_base (frame_base_suspect): {totals['rounds_wrong_warned']}"
        )
    print("rejections by reason:", dict(sorted(reasons.items())))
    if not args.panda_shifts:
        bad = totals["crashes"] + totals["good_lost"] + totals["wrong_slots"] + totals["slices_inconsistent"]
        return 0 if bad == 0 else 1
    tally.print(kinds)
    bad = (
        totals["crashes"]
        + totals["errors"]
        + totals["wrong_slots"]
        + tally.totals["lost_silent"]
        + tally.totals["rounds_shift_silent"]
        + totals["slices_inconsistent"]
    )
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
