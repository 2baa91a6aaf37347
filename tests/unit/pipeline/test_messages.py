"""What a worker's messages carry besides the rows: the frame's digest."""

from __future__ import annotations

import numpy as np

from streamtomo.pipeline.messages import frame_digest


def test_a_frames_digest_tells_a_copy_from_another_exposure() -> None:
    rng = np.random.default_rng(0)
    frame = rng.poisson(1000, (2048, 2048)).astype(np.uint16)
    again = rng.poisson(1000, (2048, 2048)).astype(np.uint16)  # the next exposure: photon noise
    assert frame_digest(frame) == frame_digest(frame.copy()) != 0
    assert frame_digest(frame) != frame_digest(again)
    # Any layout: a view with strides gives the digest of its own pixels.
    view = frame[::2, 1::2]
    assert frame_digest(view) == frame_digest(np.ascontiguousarray(view))
    small = np.arange(12, dtype=np.float32).reshape(3, 4)  # fewer pixels than the grid: all of them
    changed = small.copy()
    changed[2, 3] += 1
    assert frame_digest(small) != frame_digest(changed)
