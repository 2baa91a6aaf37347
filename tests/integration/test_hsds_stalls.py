"""HSDS stalls (SIGSTOP/SIGCONT of the whole server) and what h5pyd readers see after close.

"Complete" must mean what a reader sees: h5pyd opens a domain with HSDS's
consolidated summary (``GET /?getobjs=1``), which HSDS rewrites in a background scan
some time after a change. This module's server scans soon (``scan_wait_time`` 1 s, as
a busy production server would during a long scan), so a summary of the domain
*before* its last objects exists when the scan ends.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.app.runner import ReplayRun
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter, HsdsWriterSettings
from streamtomo.hsds_bridge.nexus_file import write_nexus
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from streamtomo.reducer.domain_layout import new_domain
from tests.support.hsds_fixtures import assert_mirrors, hsds_available, open_domain, unique_domain
from tests.support.replay_helpers import record

pytestmark = [pytest.mark.hsds, pytest.mark.slow]

GEN = "/entry/status/generation"
DROPPED = "/entry/status/publisher_dropped"


@pytest.fixture(scope="module")
def scanning_hsds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHsds]:
    """An HSDS of this module's own (the tests stop it) that writes domain summaries soon."""
    if not hsds_available():
        pytest.skip("the hsds and h5pyd packages are needed (pip install hsds h5pyd)")
    server = LocalHsds(
        tmp_path_factory.mktemp("stalls"), extra_config={"scan_wait_time": 1, "scan_sleep_time": 1}
    ).start()
    try:
        yield server
    finally:
        server.close()


class Stopped:
    """SIGSTOP the server's process group (proxy and every HSDS node); SIGCONT on exit."""

    def __init__(self, server: LocalHsds) -> None:
        assert server.pgid is not None
        self.pgid = server.pgid
        self.resumed = False

    def __enter__(self) -> Stopped:
        os.killpg(self.pgid, signal.SIGSTOP)
        return self

    def resume(self) -> None:
        if not self.resumed:
            self.resumed = True
            os.killpg(self.pgid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        self.resume()


def summary_objects(server: LocalHsds, name: str) -> dict[str, object]:
    """What h5pyd gets when it opens ``name``: HSDS's consolidated summary."""
    viewer = server.accounts.viewer
    req = urllib.request.Request(f"{server.url}/?domain={name}&getobjs=1")
    req.add_header("Authorization", viewer.authorization_header())
    with urllib.request.urlopen(req, timeout=30) as resp:
        objs = json.loads(resp.read()).get("domain_objs") or {}
    assert isinstance(objs, dict)
    return objs


def wait_for_summary(server: LocalHsds, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not summary_objects(server, name):
        assert time.monotonic() < deadline, "HSDS wrote no domain summary"
        time.sleep(0.2)


def scan_domain(name: str) -> Domain:
    domain = new_domain(name)
    domain.create_group("/entry/reconstruction", {"NX_class": "NXdata", "signal": "slices"})
    domain.create_dataset("/entry/reconstruction/slices", shape=(4, 16, 16), dtype=np.float32, chunks=(1, 16, 16))
    return domain


def step(domain: Domain, k: int) -> None:
    with domain.lock:
        domain.dataset("/entry/reconstruction/slices").write((k % 4,), np.full((16, 16), k, np.float32))
        domain.dataset("/entry/status/projections").set_scalar(k)
        domain.dataset("/entry/status/state").set_scalar("running")
        domain.dataset(GEN).set_scalar(np.int64(domain.commit()))


def finish(domain: Domain) -> None:
    """The end of a scan: a dataset that did not exist before, final status."""
    with domain.lock:
        volume = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
        domain.create_dataset("/entry/reconstruction/volume", volume, chunks=(1, 16, 16))
        domain.dataset("/entry/status/state").set_scalar("finished")
        domain.dataset(GEN).set_scalar(np.int64(domain.commit()))


def test_stall_near_the_end_ends_complete_for_h5pyd(scanning_hsds: LocalHsds) -> None:
    """HSDS stopped while the last objects go out: after close, h5pyd sees all of them."""
    server = scanning_hsds
    name = unique_domain(server, "stall_end")
    domain = scan_domain(name)
    writer = HsdsWriter(server.url, name, server.accounts.writer, settings=HsdsWriterSettings(retry_max=0.5))
    writer.start(domain)
    for k in range(10):
        step(domain, k)
        writer.notify()
    assert writer.wait_idle(60)
    wait_for_summary(server, name)  # a reader now opens the domain as it was so far
    with Stopped(server) as stopped:
        finish(domain)
        writer.notify()
        closer = threading.Thread(target=writer.close, kwargs={"timeout": 120})
        closer.start()
        closer.join(3)  # stopped: close cannot be done yet
        assert closer.is_alive()
        stopped.resume()
        closer.join(130)
    assert not closer.is_alive()
    assert writer.complete, writer.stats()
    stats = writer.stats()
    assert stats.errors == 0 and stats.dropped_updates == 0, stats
    with open_domain(server, name, server.accounts.viewer) as f:
        assert "volume" in f["/entry/reconstruction"]
        assert_mirrors(f, domain)
        assert f["/entry/status/state"].asstr()[()] == "finished"


def test_stall_longer_than_close_ends_complete_once_hsds_answers(scanning_hsds: LocalHsds) -> None:
    """close() gives up waiting, counts what is undelivered, and the domain still ends
    complete, with that count in it, once HSDS answers again."""
    server = scanning_hsds
    name = unique_domain(server, "stall_long")
    domain = scan_domain(name)
    settings = HsdsWriterSettings(retry_max=0.5, request_timeout=5)
    writer = HsdsWriter(server.url, name, server.accounts.writer, settings=settings)
    writer.start(domain)
    step(domain, 0)
    writer.notify()
    assert writer.wait_idle(60)
    with Stopped(server) as stopped:
        for k in range(1, 6):
            step(domain, k)
            writer.notify()
        finish(domain)
        writer.close(timeout=2)  # returns while HSDS is stopped
        assert not writer.complete
        dropped = writer.stats().dropped_updates
        assert dropped >= 1
        with domain.lock:  # what the reducer does after close: record the loss
            domain.dataset(DROPPED).set_scalar(dropped)
            domain.dataset(GEN).set_scalar(np.int64(domain.commit()))
        writer.notify()
        stopped.resume()
    assert writer.wait_complete(180), writer.stats()
    assert writer.stats().errors == 0, writer.stats()
    with open_domain(server, name, server.accounts.viewer) as f:
        assert_mirrors(f, domain)
        assert int(f[DROPPED][()]) == dropped


def test_reducer_records_what_hsds_missed_and_hsds_ends_complete(
    scanning_hsds: LocalHsds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HSDS stopped for the whole scan and past the reducer's close: the final domain and
    NeXus file count the dropped updates; once HSDS answers, its domain ends complete
    and says the same."""
    server = scanning_hsds
    spec = SimulationSpec(rows=4, cols=32, angles=24, seed=5)
    recordings = record(ScanSimulator(spec).frames(), tmp_path, spec.config())
    monkeypatch.setenv("STREAMTOMO_HSDS_ENDPOINT", server.url)
    monkeypatch.setenv("STREAMTOMO_HSDS_CREDENTIALS", str(server.credentials_file(server.writer_user)))
    monkeypatch.setenv("STREAMTOMO_HSDS_DOMAIN", unique_domain(server, "reducer_stall"))
    run = ReplayRun(recordings, spec.config(), workers=1, http_port=0)
    try:
        reducer = run.start()
        writer = reducer.hsds
        assert writer is not None
        with Stopped(server) as stopped:
            run.go()
            run.wait(timeout=300)  # the reducer's close gives up on HSDS after 60 s
            assert not writer.complete
            dropped = int(reducer.domain.dataset(DROPPED).array[()])
            assert dropped >= 1
            final = write_nexus(reducer.domain, tmp_path / "scan.nxs")
            with h5py.File(final, "r") as nexus:
                assert int(nexus[DROPPED][()]) == dropped
            stopped.resume()
        assert writer.wait_complete(180), writer.stats()
        with open_domain(server, writer.domain_name, server.accounts.viewer) as f:
            assert_mirrors(f, reducer.domain)
            assert int(f[DROPPED][()]) == dropped
            assert f["/entry/status/state"].asstr()[()] == "finished"
    finally:
        run.close()


def three_steps_mirrored(server: LocalHsds, label: str) -> tuple[str, Domain, HsdsWriter]:
    """A scan domain mirrored to ``server``, three steps notified (not waited for)."""
    name = unique_domain(server, label)
    domain = scan_domain(name)
    writer = HsdsWriter(server.url, name, server.accounts.writer)
    writer.start(domain)
    for k in range(3):
        step(domain, k)
        writer.notify()
    return name, domain, writer


def test_close_repairs_what_a_reader_would_miss(scanning_hsds: LocalHsds) -> None:
    """A link HSDS lost (here removed behind the writer's back): close finds it the way
    h5pyd reads the domain, puts it back, and only then calls the domain complete."""
    server = scanning_hsds
    name, domain, writer = three_steps_mirrored(server, "repair")
    assert writer.wait_idle(60)
    with open_domain(server, name, server.accounts.viewer) as f:
        group_id = f["/entry/reconstruction"].id.id
    req = urllib.request.Request(f"{server.url}/groups/{group_id}/links/slices?domain={name}", method="DELETE")
    req.add_header("Authorization", server.accounts.writer.authorization_header())
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    writer.close()
    assert writer.complete, writer.stats()
    assert writer.stats().extra["verify_repairs"] >= 1
    with open_domain(server, name, server.accounts.viewer) as f:
        assert_mirrors(f, domain)


def test_an_older_status_carried_out_late_is_written_again_before_close_says_complete(
    scanning_hsds: LocalHsds,
) -> None:
    """A request HSDS took in while stalled can be carried out after the newer one that
    replaced it, once HSDS goes on: here the scan's earlier state is put back behind the
    writer's back after the final one was acknowledged. Close reads every scalar as HSDS
    answers it now, writes the final one again, and only then calls the domain complete."""
    server = scanning_hsds
    name, domain, writer = three_steps_mirrored(server, "late_status")
    finish(domain)
    writer.notify()
    assert writer.wait_idle(60)
    with open_domain(server, name, server.accounts.viewer) as f:
        state_id = f["/entry/status/state"].id.id
    body = json.dumps({"value": "running"}).encode()
    req = urllib.request.Request(f"{server.url}/datasets/{state_id}/value?domain={name}", data=body, method="PUT")
    req.add_header("Authorization", server.accounts.writer.authorization_header())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 201)
    writer.close()
    assert writer.complete, writer.stats()
    with open_domain(server, name, server.accounts.viewer) as f:
        assert f["/entry/status/state"].asstr()[()] == "finished"
        assert_mirrors(f, domain)
    assert writer.stats().extra["verify_repairs"] >= 1


def test_an_update_superseded_while_hsds_stalls_never_puts_its_status_back(scanning_hsds: LocalHsds) -> None:
    """HSDS stalls while an update's data is in flight; a newer update of the same chunk
    and the scan's end are queued meanwhile, so the retry finds the data superseded. That
    update's status and generation must not go out after the newer ones: they used to be
    put back into the queue once the newer update had been taken from it, and HSDS ended
    at the older generation and state 'running' while close said complete."""
    server = scanning_hsds
    name = unique_domain(server, "superseded")
    domain = scan_domain(name)
    writer = HsdsWriter(
        server.url, name, server.accounts.writer, settings=HsdsWriterSettings(retry_max=0.5, request_timeout=2)
    )
    writer.start(domain)
    step(domain, 0)
    writer.notify()
    assert writer.wait_idle(60)
    with Stopped(server) as stopped:
        step(domain, 1)
        writer.notify()
        time.sleep(0.5)  # its data is in flight, waiting for the stopped server
        step(domain, 5)  # the same chunk again (slices[1]): the retry finds it superseded
        finish(domain)
        writer.notify()
        time.sleep(3)  # past the request's timeout: the retry has given up on step 1
        stopped.resume()
    writer.close(timeout=120)
    assert writer.complete, writer.stats()
    with open_domain(server, name, server.accounts.viewer) as f:
        assert int(f[GEN][()]) == int(domain.dataset(GEN).array[()])
        assert f["/entry/status/state"].asstr()[()] == "finished"
        assert_mirrors(f, domain)
