"""Scans as dranspose streams: event layout, recordings, read-back, replay sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from streamtomo.app import recordings as sources
from streamtomo.pipeline.formats import pcap, stins
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.scan import Frame, ImageKey


def small_scan() -> list[Frame]:
    return list(sources.synthetic_scan(n_darks=2, n_flats=3, n_projections=6, rows=3, cols=20))


def assert_frames_equal(got: list[Frame], want: list[Frame]) -> None:
    assert [(f.index, f.key) for f in got] == [(f.index, f.key) for f in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.data, w.data)
        assert g.data.dtype == w.data.dtype
        assert g.angle_deg == pytest.approx(w.angle_deg, abs=1e-6)


def test_synthetic_scan_is_a_scan() -> None:
    frames = small_scan()
    assert [f.key for f in frames] == [ImageKey.DARK] * 2 + [ImageKey.FLAT] * 3 + [ImageKey.PROJECTION] * 6
    assert [f.angle_deg for f in frames[5:]] == [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
    proj = frames[5].data.astype(float)
    assert proj.min() < 0.8 * frames[3].data.mean()  # the disc absorbs


def test_event_layout_matches_the_ingesters() -> None:
    frames = small_scan()
    det, ang = sources.scan_to_internals(frames, counts_per_degree=1000.0, offset_deg=-10.0)
    det_msgs, ang_msgs = list(det), list(ang)
    n = len(frames)
    assert [m.event_number for m in det_msgs] == list(range(n + 2))
    assert [m.event_number for m in ang_msgs] == list(range(n + 2))
    assert {m.streams["detector"].typ for m in det_msgs} == {"STINS"}
    assert {m.streams["angle"].typ for m in ang_msgs} == {"PCAP_RAW"}
    decoded = [stins.decode_stins(m.streams["detector"].frames) for m in det_msgs]
    assert isinstance(decoded[0], stins.StinsHeader)
    assert isinstance(decoded[-1], stins.StinsEnd)
    assert all(d.msg_number == e for e, d in enumerate(decoded))
    header = pcap.decode_pcap_event(ang_msgs[0].streams["angle"].frames)
    assert isinstance(header, pcap.PcapHeader)
    assert pcap.decode_pcap_event(ang_msgs[-1].streams["angle"].frames) == pcap.PcapEnd(n, "Disarmed")
    for event in range(1, n + 1):
        image = decoded[event]
        values = pcap.decode_pcap_event(ang_msgs[event].streams["angle"].frames, header)
        assert isinstance(image, stins.StinsImage)
        assert isinstance(values, pcap.PcapValues)
        frame = frames[event - 1]
        assert image.frame == frame.index
        assert image.extra == {"image_key": int(frame.key)}
        assert values.values["INENC1.VAL.Mean"] == pytest.approx(((frame.angle_deg or 0.0) + 10.0) * 1000.0)
        assert pcap.angle_from_values(values.values, "INENC1.VAL.Mean", 1000.0, -10.0) == pytest.approx(frame.angle_deg)
    # the PCAP frames are exactly the bytes the PandA sends over TCP
    stream = b"".join(m.streams["angle"].frames[0] for m in ang_msgs)
    assert stream.startswith(b"arm_time: ")
    assert stream.endswith(f"END {n} Disarmed\n".encode())


def test_options_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        sources.scan_to_internals([], compression="zip")
    with pytest.raises(ValueError, match=r"BLOCK\.FIELD\.Capture"):
        sources.scan_to_internals([], encoder_field="INENC1")


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_recordings_round_trip(tmp_path: Path, compression: str) -> None:
    from dranspose.replay import get_internals

    frames = small_scan()
    paths = sources.write_recordings(
        iter(frames),
        tmp_path,
        compression=compression,
        counts_per_degree=11930463,
        offset_deg=-50.0,
        encoder_field="SFP3_SYNC_IN.POS1.Mean",
        mapping_uuid="0000-run",
    )
    assert [p.name for p in paths] == [
        "dump_detector-ingester-0000-run.cbors",
        "dump_angle-ingester-0000-run.cbors",
    ]
    assert paths[0].read_bytes()[:3] == b"\xd9\xd9\xf7"  # CBOR self-describe tag, as Dumper writes
    assert len(list(get_internals(paths[0]))) == len(frames) + 2
    back = list(
        sources.read_frames(paths, encoder_field="SFP3_SYNC_IN.POS1.Mean", counts_per_degree=11930463, offset_deg=-50.0)
    )
    assert_frames_equal(back, frames)


def test_read_frames_by_counts_without_header_keys(tmp_path: Path) -> None:
    frames = small_scan()
    paths = sources.write_recordings(frames, tmp_path, image_key_in_header=False, detector_stream="orca")
    assert paths[0].name.startswith("dump_orca-ingester-")
    back = list(sources.read_frames(paths, rule=FrameKindRule.from_counts(2, 3)))
    assert_frames_equal(back, frames)
    default = list(sources.read_frames(paths))  # no image_key: all projections
    assert {f.key for f in default} == {ImageKey.PROJECTION}


def test_read_frames_of_the_real_recording(shared_data: Path) -> None:
    frames = list(sources.read_frames([shared_data / "dranspose_recordings" / "dump_xrd.cbors"]))
    assert [f.index for f in frames] == list(range(9))
    assert all(f.data.shape == (10, 10) and f.data.dtype == np.uint16 for f in frames)
    assert all(f.angle_deg is None and f.key == ImageKey.PROJECTION for f in frames)


# -- dranspose replay -----------------------------------------------------------------


class CollectWorker:
    def __init__(self, **kwargs: Any) -> None:
        self.header: pcap.PcapHeader | None = None

    def process_event(self, event: Any, parameters: Any = None, tick: bool = False) -> Any:
        msg = stins.decode_stins(event.streams["detector"].frames)
        angle = pcap.decode_pcap_event(event.streams["angle"].frames, self.header)
        if isinstance(angle, pcap.PcapHeader):
            self.header = angle
        if isinstance(msg, stins.StinsImage) and isinstance(angle, pcap.PcapValues):
            return (event.event_number, msg.frame, pcap.angle_from_values(angle.values))
        return None


class CollectReducer:
    results: ClassVar[list[Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        CollectReducer.results = []

    def process_result(self, result: Any, parameters: Any = None) -> None:
        CollectReducer.results.append(result.payload)


ThreeFrames = sources.make_source_class(lambda: small_scan()[-3:], name="ThreeFrames")


@pytest.mark.parametrize(
    "source", ["tests.unit.app.test_recordings:ThreeFrames", "streamtomo.app.recordings:SimulatedSource"]
)
def test_replay_source_class(source: str) -> None:
    from dranspose.replay import replay

    replay(
        "tests.unit.app.test_recordings:CollectWorker",
        "tests.unit.app.test_recordings:CollectReducer",
        source=source,
        nworkers=1,
    )
    got = sorted(CollectReducer.results)
    if source.endswith("ThreeFrames"):
        assert got == [(1, 8, pytest.approx(90.0)), (2, 9, pytest.approx(120.0)), (3, 10, pytest.approx(150.0))]
    else:
        assert len(got) == 40
        assert [g[0] for g in got] == list(range(1, 41))


def test_replay_files(tmp_path: Path) -> None:
    from dranspose.replay import replay

    paths = sources.write_recordings(small_scan(), tmp_path)
    replay(
        "tests.unit.app.test_recordings:CollectWorker",
        "tests.unit.app.test_recordings:CollectReducer",
        zmq_files=paths,
        nworkers=2,
    )
    assert sorted(r[1] for r in CollectReducer.results) == list(range(11))
