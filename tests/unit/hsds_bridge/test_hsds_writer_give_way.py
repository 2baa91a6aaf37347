"""HsdsWriter against an HSDS that is down: start and close wait no longer than asked,
and close gives way at once when told to (the next scan has started)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from streamtomo.hsds_bridge.credentials import Credentials
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter, HsdsWriterSettings


def _domain() -> Domain:
    domain = Domain("/a/live.h5")
    domain.create_dataset("/entry/data", np.zeros((4, 4), np.float32))
    return domain


@pytest.mark.allow_error_logs  # the writer gives up at last: "NOT complete", an ERROR
def test_close_gives_way_when_told_though_hsds_does_not_answer(
    caplog: pytest.LogCaptureFixture, refused_url: str
) -> None:
    """With HSDS down, the reducer's end of scan waited close's 60 s, and the next
    scan's first result waited for that end: every scan after the first stalled."""
    url = refused_url  # HSDS down
    settings = HsdsWriterSettings(start_timeout=0.5, give_up_after=1.0)
    writer = HsdsWriter(url, "/home/w/live.h5", Credentials("w", "p"), settings)
    writer.start(_domain())  # not finished after 0.5 s: goes on in the background
    started = time.monotonic()
    writer.close(timeout=300.0, give_way=lambda: time.monotonic() - started > 0.2)
    assert time.monotonic() - started < 60.0  # not the 300 s: it gave way
    assert not writer.complete
    # It goes on in the background until give_up_after, then says so: here, not in a
    # later test's log.
    assert not writer.wait_complete(60.0)
    deadline = time.monotonic() + 30.0
    while not any("is NOT complete" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR):
        assert time.monotonic() < deadline, "the writer did not report giving up"
        time.sleep(0.05)
