"""While HSDS is down, each scan's writer goes on trying in the background after the
next scan starts; the reducer keeps the newest few and gives up the older ones, so an
outage does not pile up a writer (and up to a GiB of chunk copies) per scan."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest

from streamtomo.hsds_bridge.credentials import Credentials
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter, HsdsWriterSettings
from streamtomo.reducer.tomo_reducer import MAX_HSDS_WRITERS_BEHIND, leave_behind


def _writer_behind(url: str, n: int, side: int = 4, max_backlog_bytes: int = 1 << 30) -> HsdsWriter:
    domain = Domain(f"/a/live{n}.h5")
    domain.create_dataset("/entry/data", np.zeros((side, side), np.float32))
    settings = HsdsWriterSettings(start_timeout=0.2, max_backlog_bytes=max_backlog_bytes)
    writer = HsdsWriter(url, f"/home/w/live{n}.h5", Credentials("w", "p"), settings)
    writer.start(domain)
    writer.close(timeout=300.0, give_way=lambda: True)  # the next scan started
    return writer


@pytest.mark.allow_error_logs  # a writer given up says its domain is NOT complete: an ERROR
def test_the_oldest_writers_behind_are_given_up(caplog: pytest.LogCaptureFixture, refused_url: str) -> None:
    url = refused_url  # HSDS down
    context: dict[Any, Any] = {}
    writers = [_writer_behind(url, n) for n in range(MAX_HSDS_WRITERS_BEHIND + 2)]
    try:
        for writer in writers:
            assert writer.behind
            leave_behind(context, writer)
        assert context["hsds_writers_behind"] == writers[-MAX_HSDS_WRITERS_BEHIND:]
        assert [w.behind for w in writers] == [False, False] + [True] * MAX_HSDS_WRITERS_BEHIND
        given_up = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(given_up) == 2 and all("is NOT complete" in m for m in given_up)
        assert "/home/w/live0.h5" in given_up[0] and "/home/w/live1.h5" in given_up[1]
    finally:
        for writer in writers:
            writer.abandon()
    deadline = time.monotonic() + 30.0  # their last ERROR lines land in this test
    while sum(r.levelno >= logging.ERROR for r in caplog.records) < len(writers):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.allow_error_logs
def test_older_writers_behind_are_given_up_beyond_one_backlog_of_bytes(
    caplog: pytest.LogCaptureFixture, refused_url: str
) -> None:
    """Two writers behind each held their whole domain (a writer's close queues it past
    ``max_backlog_bytes``): up to three backlogs' bytes in all. Older writers are kept
    only while those behind hold one backlog's bytes together; the newest always."""
    url = refused_url
    context: dict[Any, Any] = {}
    side = 256  # a 256 kB domain, of which a backlog of 384 kB holds one
    writers = [_writer_behind(url, n, side, max_backlog_bytes=384 << 10) for n in range(2)]
    try:
        assert all(w.held_bytes >= side * side * 4 for w in writers)
        leave_behind(context, writers[0])
        assert context["hsds_writers_behind"] == writers[:1]  # alone, over the budget: kept
        leave_behind(context, writers[1])
        assert context["hsds_writers_behind"] == writers[1:]
        assert [w.behind for w in writers] == [False, True]
        warned = [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "giving up" in r.getMessage()
        ]
        assert len(warned) == 1 and "/home/w/live0.h5" in warned[0] and "0.3 MB not delivered" in warned[0], warned
    finally:
        for writer in writers:
            writer.abandon()
    deadline = time.monotonic() + 30.0
    while sum(r.levelno >= logging.ERROR for r in caplog.records) < len(writers):
        assert time.monotonic() < deadline
        time.sleep(0.05)
