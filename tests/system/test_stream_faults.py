"""Issue 12.1 through a real deployment: a detector message that fails dranspose's own
header check is dropped by its ingester (one ERROR line there) and the later messages
move one event earlier. Every frame must still land at its own angle, and the loss be
visible."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from streamtomo.app.beamline_events import frame_events
from streamtomo.app.deployment import LocalDeployment
from streamtomo.app.play import play
from tests.support.distributed_fixtures import ended_domain, simulated_scan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    with LocalDeployment(workers=2, run_dir=tmp_path_factory.mktemp("faults")) as d:
        yield d


def _malformed(parts: list[bytes]) -> list[bytes]:
    """The same image with a shape dranspose's STINS model refuses ("16x64", a string)."""
    head = json.loads(parts[0])
    head["shape"] = "x".join(str(n) for n in head["shape"])
    return [json.dumps(head).encode(), *parts[1:]]


def test_a_dropped_detector_message_leaves_every_frame_at_its_own_angle(deployment: LocalDeployment) -> None:
    spec, frames = simulated_scan(seed=11, angles=60)
    config = spec.config()
    clean_events = frame_events(frames, config)
    play(deployment.state, clean_events, config)
    clean = ended_domain(deployment.state.live_endpoint, config.domain)
    assert clean["/entry/status/state"] == "finished"

    events = list(clean_events)
    victim = next(i for i, e in enumerate(events) if e.frame is not None and e.frame >= 20 + 25)
    dropped_frame = events[victim].frame
    events[victim] = dataclasses.replace(events[victim], detector=_malformed(events[victim].detector))
    play(deployment.state, events, config, stall_timeout=5.0)
    live = ended_domain(deployment.state.live_endpoint, config.domain)

    assert live["/entry/status/state"] == "finished"
    assert json.loads(live["/entry/status/lost_frames"]) == [[dropped_frame, dropped_frame]]
    assert int(live["/entry/status/angles_joined"]) > 0
    assert json.loads(live["/entry/status/rejected"]) == {}
    sinogram, reference = live["/entry/sinogram/data"], clean["/entry/sinogram/data"]
    counts = np.asarray(live["/entry/sinogram/frames_per_angle"])
    missing = np.flatnonzero(counts == 0)
    assert missing.size == 1  # the dropped frame's slot, nothing else
    kept = counts > 0
    # Every other frame in its own slot: the same sinogram as the clean scan.
    np.testing.assert_allclose(sinogram[:, kept], reference[:, kept], atol=1e-5)
    errors = deployment.error_lines()
    assert errors and all("ingester" in line for line in errors), errors
