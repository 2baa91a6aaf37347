"""``streamtomo play``: what it is pointed at is checked, one line and a non-zero exit
where it is wrong (a traceback, a refused connection or a 30 s wait before)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamtomo.app.cli import main

SMALL = ["--rows", "8", "--cols", "32", "--angles", "20", "--no-record"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{bad", "is no deployment state written by `streamtomo up`: Expecting property name"),
        ('[{"name": "center", "data": "3"}]', "is no deployment state written by `streamtomo up`"),
        ('{"controller": "http://127.0.0.1:1"}', "is no deployment state written by `streamtomo up`"),
    ],
)
def test_a_state_file_that_is_none_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    assert main(["play", "--simulate", "--state", str(state), *SMALL]) == 2
    assert f"streamtomo: error: {state} {message}" in capsys.readouterr().err


def test_the_state_of_a_deployment_that_is_gone_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    gone = {"controller_url": "http://127.0.0.1:1", "redis_url": "", "live_endpoint": "", "domain": ""}
    gone |= {"detector_upstream": "tcp://127.0.0.1:2", "angle_upstream": "tcp://127.0.0.1:3"}
    state.write_text(json.dumps(gone | {"pids": {"controller": 2**22 + 1}}))  # above any pid_max
    assert main(["play", "--simulate", "--state", str(state), *SMALL]) == 2
    assert f"the deployment of {state} is not running (none of its services is)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("garbage", "argument --controller: 'garbage' is not an http(s)://HOST[:PORT] URL"),
        ("http://[::1", "argument --controller: 'http://[::1' is not a URL: Invalid IPv6 URL"),
    ],
)
def test_a_controller_address_that_is_no_url_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    # It was a ValueError traceback, exit 1.
    addresses = ["--controller", url, "--detector", "tcp://127.0.0.1:2", "--panda", "tcp://127.0.0.1:3"]
    with pytest.raises(SystemExit) as exited:
        main(["play", "--simulate", "--state", str(tmp_path / "none.json"), *addresses, *SMALL])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_controller_client_names_an_address_that_is_no_url() -> None:
    from streamtomo.controller_client import ControllerClient, ControllerError

    with pytest.raises(ControllerError, match=r"'http://\[::1' is no controller URL \(http://HOST:PORT\)"):
        ControllerClient("http://[::1").progress()


def test_recordings_are_checked_before_the_scan_is_posted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recording cut part-way was played up to the cut and reported as done; nothing
    is sent here (the state names no deployment that runs)."""
    out = tmp_path / "scan"
    assert main(["simulate", "--out", str(out), "--rows", "4", "--cols", "16", "--angles", "4"]) == 0
    detector, angle = sorted(out.glob("dump_detector-*.cbors")), sorted(out.glob("dump_angle-*.cbors"))
    cut = tmp_path / detector[0].name
    cut.write_bytes(detector[0].read_bytes()[:-10])
    capsys.readouterr()
    addresses = [
        "--controller",
        "http://127.0.0.1:1",
        "--detector",
        "tcp://127.0.0.1:2",
        "--panda",
        "tcp://127.0.0.1:3",
    ]
    argv = ["play", "-f", str(cut), str(angle[0]), "-p", str(out / "parameters.json"), *addresses]
    assert main([*argv, "--state", str(tmp_path / "none.json")]) == 2
    assert f"streamtomo: error: {cut} ends inside message" in capsys.readouterr().err
