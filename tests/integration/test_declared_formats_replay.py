"""What a stream's headers declare, through the real dranspose replay: a detector's
declared byte order and a PandA's 'process: Raw' scaling reach the sinogram as the
plain streams' frames and angles do (nothing counted, nothing misplaced)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dranspose.event import InternalWorkerMessage, StreamData

from streamtomo.pipeline.formats import pcap, stins
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from tests.support.replay_helpers import record, run_to_end

pytestmark = pytest.mark.slow

SPEC = SimulationSpec(rows=4, cols=48, angles=60, seed=2)
FRAMES = list(ScanSimulator(SPEC).frames())
FIRST_PROJECTION = SPEC.n_darks + SPEC.n_flats


def _with_parts(msg: InternalWorkerMessage, parts: list[bytes]) -> InternalWorkerMessage:
    stream = next(iter(msg.streams))
    return InternalWorkerMessage(
        event_number=msg.event_number, streams={stream: StreamData(typ=msg.streams[stream].typ, frames=parts)}
    )


def _rejected(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return dict(json.loads(str(arrays["/entry/status/rejected"][()])))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("plain")
    return run_to_end(record(FRAMES, out, SPEC.config()), SPEC.config(), workers=2)


def test_big_endian_images_declared_so_reduce_as_the_little_endian_ones(
    tmp_path: Path, reference: dict[str, np.ndarray]
) -> None:
    """Images whose header says ">u2" (plain and bslz4, a flat and projections): they
    were decoded byte-swapped, 1.4 times off, and nothing was counted."""
    big = {SPEC.n_darks: "none", FIRST_PROJECTION + 3: "none", FIRST_PROJECTION + 20: "bslz4"}
    assert FRAMES[SPEC.n_darks].key == ImageKey.FLAT and FRAMES[0].data.dtype == np.uint16

    def mutate(
        det: InternalWorkerMessage, ang: InternalWorkerMessage
    ) -> tuple[InternalWorkerMessage | None, InternalWorkerMessage | None]:
        compression = big.get(det.event_number - 1)  # event e holds frame e - 1
        if compression is None:
            return det, ang
        frame = FRAMES[det.event_number - 1]
        data = frame.data.astype(">u2")
        head = {"htype": "image", "msg_number": det.event_number, "frame": frame.index, "shape": list(data.shape)}
        head |= {"type": ">u2", "compression": compression, "image_key": int(frame.key)}
        blob = data.tobytes() if compression == "none" else stins.bslz4_compress(data)
        return _with_parts(det, [json.dumps(head).encode(), blob]), ang

    config = SPEC.config()
    arrays = run_to_end(record(FRAMES, tmp_path, config, mutate), config, workers=2)
    assert _rejected(arrays) == {}
    assert arrays["/entry/status/state"][()] == "finished"
    np.testing.assert_array_equal(arrays["/entry/sinogram/data"], reference["/entry/sinogram/data"])


def test_a_raw_pandas_values_are_scaled_as_its_header_says(tmp_path: Path, reference: dict[str, np.ndarray]) -> None:
    """'process: Raw' with an encoder Value of scale 0.5 and offset 10: the client applies
    them. Taken as they came, every angle was doubled (29 projections at other slots,
    30 refused as unknown_angle)."""
    scale, offset = 0.5, 10.0
    fields = [
        pcap.PcapField("PCAP.TS_TRIG", "int64", "Value", 8e-09, 0.0, "s"),
        *(pcap.PcapField("INENC1.VAL", "int32", capture, scale, offset, "") for capture in ("Value", "Min", "Max")),
    ]
    config = SPEC.config(encoder_field="INENC1.VAL.Value")

    def mutate(
        det: InternalWorkerMessage, ang: InternalWorkerMessage
    ) -> tuple[InternalWorkerMessage | None, InternalWorkerMessage | None]:
        event = ang.event_number
        if event == 0:
            return det, _with_parts(ang, [pcap.encode_pcap_header(fields, "2024-11-05T10:00:00.000Z", process="Raw")])
        if event > len(FRAMES):  # the END
            return det, ang
        angle = FRAMES[event - 1].angle_deg or 0.0
        counts = round((pcap.counts_from_angle(angle, config.counts_per_degree) - offset) / scale)
        return det, _with_parts(ang, [pcap.encode_pcap_values([event * 1250000, counts, counts - 2, counts + 2])])

    arrays = run_to_end(record(FRAMES, tmp_path, config, mutate), config, workers=2)
    assert _rejected(arrays) == {}
    assert arrays["/entry/status/state"][()] == "finished"
    np.testing.assert_array_equal(arrays["/entry/sinogram/frames_per_angle"], np.ones(SPEC.angles))
    np.testing.assert_array_equal(arrays["/entry/sinogram/data"], reference["/entry/sinogram/data"])
