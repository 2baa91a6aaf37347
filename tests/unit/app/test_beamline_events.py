"""``play`` reads a recording's detector headers to map events: hostile ones must not crash it."""

from __future__ import annotations

import json

import pytest

from streamtomo.app.beamline_events import _frame_kind
from streamtomo.pipeline.formats.kinds import FrameKindRule, FrameNumbering
from streamtomo.pipeline.scan import ImageKey

RULE = FrameKindRule.from_counts(2, 2, 10)


@pytest.mark.parametrize(
    "head",
    [
        b"[" * 50_000 + b"]" * 50_000,  # RecursionError in json before
        b'{"htype": "image", "frame": ' + b"9" * 5000 + b"}",  # int longer than 4300 digits
        b'{"htype": "image", "frame": 1, "image_key": Infinity}',
        b"\xff\xfe",
        b"[1, 2]",
    ],
)
def test_hostile_detector_headers_are_skipped(head: bytes) -> None:
    frame, key = _frame_kind([head], RULE, FrameNumbering(0), 6)
    assert (frame, key) in ((None, None), (1, ImageKey.DARK))


def test_a_good_header_gives_frame_and_kind() -> None:
    head = json.dumps({"htype": "image", "frame": 5}).encode()
    assert _frame_kind([head], RULE, FrameNumbering(0), 6) == (5, ImageKey.PROJECTION)
