"""Which ingesters of a local deployment stopped, as play sees it while it waits on a send.

(The controller's side of the check runs against real deployments in
tests/system/test_component_death.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from streamtomo.app.play import stopped_ingesters
from tests.support.named_processes import sleeper


@pytest.fixture
def service() -> Iterator[int]:
    """A service of ours, as up starts them (python -m streamtomo.app.services)."""
    process = sleeper("streamtomo.app.services")
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_deployment_has_none_stopped(service: int) -> None:
    pids = {"controller": service, "detector-ingester": service, "angle-ingester": service}
    assert stopped_ingesters(pids) == []


def test_an_ingester_that_stopped_is_named_with_its_pid(service: int) -> None:
    dead = _gone_pid()
    pids = {"controller": service, "detector-ingester": dead, "angle-ingester": service, "worker-1": _gone_pid()}
    assert stopped_ingesters(pids) == [f"detector-ingester (pid {dead})"]  # workers are not its concern


def test_pids_of_another_machine_say_nothing() -> None:
    """A state file from elsewhere (or a deployment gone whole): none of its pids runs here."""
    assert stopped_ingesters({"controller": _gone_pid(), "detector-ingester": _gone_pid()}) == []
    assert stopped_ingesters({}) == []


def test_a_process_that_only_names_streamtomo_is_no_service() -> None:
    """play itself, its shell, a path with streamtomo in it: their pids prove nothing."""
    other = sleeper("streamtomo", "play")
    try:
        assert stopped_ingesters({"controller": other.pid, "detector-ingester": _gone_pid()}) == []
    finally:
        other.kill()
        other.wait()
