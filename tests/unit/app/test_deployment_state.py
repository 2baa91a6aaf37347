"""Whether a state file's deployment still runs: by its services' command lines."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtomo.app.deployment_state import SERVICE_MODULE, DeploymentState, running_deployment
from tests.support.named_processes import sleeper


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _state_file(tmp_path: Path, pids: dict[str, int]) -> Path:
    state = DeploymentState("http://127.0.0.1:1", "redis://127.0.0.1:2", "http://127.0.0.1:3", "/d", "", "")
    state.pids = pids
    return state.write(tmp_path / "deployment.json")


def test_a_deployment_with_a_service_running_is_running(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(sleeper(SERVICE_MODULE, "controller"))
    path = _state_file(tmp_path, {"controller": processes[0].pid})
    found = running_deployment(path)
    assert found is not None and found.controller_url == "http://127.0.0.1:1"


def test_a_pid_reused_by_a_program_that_names_streamtomo_is_no_deployment(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A shell, an editor or play whose command line names streamtomo: up refused to
    start ("a deployment is running") after the deployment had died."""
    processes.append(sleeper("streamtomo", "play", "/home/me/streamtomo/scan.json"))
    path = _state_file(tmp_path, {"controller": processes[0].pid})
    assert running_deployment(path) is None


def test_a_state_file_with_no_pids_or_none_readable_is_no_deployment(tmp_path: Path) -> None:
    assert running_deployment(_state_file(tmp_path, {})) is None
    assert running_deployment(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert running_deployment(tmp_path / "bad.json") is None
