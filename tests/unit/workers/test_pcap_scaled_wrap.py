"""A wrapping encoder whose PandA header prints a scale: the worker unwraps its angles by
the counter's period in the values' units (``2^bits * |scale|``), as for scale 1."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.app.recordings import synthetic_scan
from streamtomo.pipeline.formats import pcap
from streamtomo.pipeline.scan import Frame
from tests.unit.workers.test_beamline_conventions import (
    COUNTS_PER_DEGREE,
    N_DARKS,
    N_FLATS,
    OFFSET,
    STEPPED,
    TS,
    danmax_config,
    detector_events,
    events,
    run_scan,
    wrapped,
)

SCALE = 0.5


@pytest.mark.parametrize("process", ["Raw", "Scaled"])
@pytest.mark.parametrize("workers", [1, 3])
def test_a_scaled_wrapping_encoder_unwraps_by_its_own_period(process: str, workers: int) -> None:
    fields = [TS, *(pcap.PcapField("INENC2.VAL", "int32", c, SCALE, 0.0, "") for c in ("Value", "Min", "Max"))]
    frames = list(synthetic_scan(N_DARKS, N_FLATS, len(STEPPED), rows=4, cols=32))
    frames = [Frame(f.index + 1, f.key, f.data, f.angle_deg) for f in frames]  # the Orca counts from 1
    at = [STEPPED[0]] * (N_DARKS + N_FLATS) + STEPPED
    angle = [pcap.encode_pcap_header(fields, "2024-11-05T10:00:00.000Z", process=process)]
    for number, a in enumerate(at, start=1):
        counts = int(wrapped(np.array([a]))[0])
        value = counts if process == "Raw" else counts * SCALE
        angle.append(pcap.encode_pcap_values([number, value, value, value]))
    angle.append(pcap.encode_pcap_end(len(at)))
    assert wrapped(np.array(STEPPED[-3:])).max() < 0  # the counter did wrap
    config = danmax_config(
        len(STEPPED),
        encoder_field="INENC2.VAL.Value",
        counts_per_degree=COUNTS_PER_DEGREE * SCALE,  # the values' units per degree
        encoder_offset=OFFSET,
        angle_start=8.8,
        angle_range=18.0 * len(STEPPED),
    )
    scan = run_scan(events(detector_events(frames), angle), config, workers)
    assert scan.rejected == {}
    assert scan.sinogram is not None
    np.testing.assert_allclose(scan.sinogram.angles(), STEPPED, atol=1e-3)
