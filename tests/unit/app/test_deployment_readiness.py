"""Readiness of a deployment from the controller's view, and the reducer's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from streamtomo.app.deployment_readiness import missing_services
from streamtomo.app.reducer_environment import ReducerEnvironment


def _config(workers: dict[str, set[str]], reached: dict[str, set[str]], reducer: bool = True) -> dict[str, Any]:
    """A /api/v1/config answer: workers with the ingesters they see, ingesters with the workers they reach."""
    return {
        "reducer": {"name": "reducer"} if reducer else None,
        "workers": [
            {"name": n, "service_uuid": f"u-{n}", "ingesters": [{"name": i} for i in sorted(seen)]}
            for n, seen in workers.items()
        ],
        "ingesters": [
            {"name": i, "connected_workers": {str(k): {"service_uuid": f"u-{w}"} for k, w in enumerate(sorted(ws))}}
            for i, ws in reached.items()
        ],
    }


STREAMS = ("detector", "angle")
BOTH = {"detector-ingester", "angle-ingester"}


def test_ready_when_every_worker_reaches_every_ingester() -> None:
    config = _config({"w1": BOTH, "w2": BOTH}, {"detector-ingester": {"w1", "w2"}, "angle-ingester": {"w1", "w2"}})
    assert missing_services(config, STREAMS, ["w1", "w2"]) is None


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        (_config({}, {}, reducer=False), "reducer not registered"),
        (_config({"w1": BOTH}, {"detector-ingester": {"w1"}}), "ingesters registered: ['detector-ingester']"),
        (_config({"w1": BOTH}, {i: {"w1"} for i in BOTH}), "workers registered: ['w1'] of ['w1', 'w2']"),
        (_config({"w1": BOTH, "w2": {"angle-ingester"}}, {i: {"w1", "w2"} for i in BOTH}), "w2 connected to"),
        (
            _config({"w1": BOTH, "w2": BOTH}, {"detector-ingester": {"w1"}, "angle-ingester": {"w1", "w2"}}),
            "detector-ingester reached by 1 of 2 workers",
        ),
    ],
)
def test_what_is_missing(config: dict[str, Any], missing: str) -> None:
    assert (missing_services(config, STREAMS, ["w1", "w2"]) or "").startswith(missing)


def test_reducer_environment_is_applied_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "1234")
    monkeypatch.delenv("STREAMTOMO_HSDS_ENDPOINT", raising=False)
    settings = ReducerEnvironment(http_port=0, hsds_endpoint="http://127.0.0.1:5101")
    assert settings.to_env() == {
        "STREAMTOMO_HTTP_HOST": "127.0.0.1",
        "STREAMTOMO_HTTP_PORT": "0",
        "STREAMTOMO_HSDS_ENDPOINT": "http://127.0.0.1:5101",
    }
    with settings.applied():
        assert os.environ["STREAMTOMO_HTTP_PORT"] == "0"
        assert os.environ["STREAMTOMO_HSDS_ENDPOINT"] == "http://127.0.0.1:5101"
    assert os.environ["STREAMTOMO_HTTP_PORT"] == "1234"
    assert "STREAMTOMO_HSDS_ENDPOINT" not in os.environ


def test_a_local_deployment_keeps_its_control_listener_on_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A STREAMTOMO_CONTROL_HOST inherited from the shell (0.0.0.0) went to the reducer:
    its control API listened on every address while up printed 127.0.0.1."""
    from streamtomo.app.deployment import LocalDeployment

    monkeypatch.setenv("STREAMTOMO_CONTROL_HOST", "0.0.0.0")
    deployment = LocalDeployment(workers=1, run_dir=tmp_path)
    deployment._ports = {"live": 8100, "control": 8101}
    env = deployment._env()
    assert env["STREAMTOMO_CONTROL_HOST"] == env["STREAMTOMO_HTTP_HOST"] == "127.0.0.1"


def test_a_credentials_file_named_relative_to_up_is_the_one_its_services_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The services run in the run dir: STREAMTOMO_HSDS_CREDENTIALS=cred.txt passed up's
    check where up was started, and the reducer could not read it (no mirror, a WARNING)."""
    from streamtomo.app.deployment import LocalDeployment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMTOMO_HSDS_CREDENTIALS", "cred.txt")
    monkeypatch.setenv("STREAMTOMO_HSDS_PASSWORD_FILE", "secrets/password")
    deployment = LocalDeployment(workers=1, run_dir=tmp_path / "run")
    deployment._ports = {"live": 8100, "control": 8101}
    env = deployment._env()
    assert env["STREAMTOMO_HSDS_CREDENTIALS"] == str(tmp_path / "cred.txt")
    assert env["STREAMTOMO_HSDS_PASSWORD_FILE"] == str(tmp_path / "secrets" / "password")
