"""The control token is its file's: a rotated token applies without a restart, in the
control API and in the viewer's proxy to it; a file with no valid token lets nobody in."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from streamtomo.app.viewer.server import start_viewer
from streamtomo.hsds_bridge.control_api import ControlServer, ControlSettings, ParameterError

pytestmark = pytest.mark.slow


class KubernetesSecret:
    """A Secret as the kubelet mounts it: ``token`` -> ``..data/token``, ``..data`` a
    symlink to a timestamped folder, swapped atomically when the Secret changes."""

    def __init__(self, root: Path, token: str) -> None:
        self.root, self.version = root, 0
        root.mkdir()
        self.rotate(token)
        (root / "token").symlink_to(Path("..data") / "token")

    @property
    def path(self) -> Path:
        return self.root / "token"

    def rotate(self, token: str) -> None:
        self.version += 1
        folder = self.root / f"..2026_12_06_{self.version}"
        folder.mkdir(mode=0o700)
        fd = os.open(folder / "token", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        (self.root / "..data_tmp").symlink_to(folder.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")


def new_token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[ControlServer, KubernetesSecret, dict[str, str]]]:
    secret = KubernetesSecret(tmp_path / "secret", new_token())
    stored: dict[str, str] = {"center": ""}

    def sink(name: str, value: str) -> str:
        if name != "center":
            raise ParameterError(f"{name} cannot change live")
        stored[name] = value
        return "the slices follow"

    server = ControlServer(ControlSettings(token_file=str(secret.path)), sink, lambda: dict(stored)).start()
    try:
        yield server, secret, stored
    finally:
        server.close()


def _status(url: str, token: str | None, value: str = "12.5") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/center", json={"value": value}, headers=headers, timeout=10).status_code


def test_a_rotated_token_applies_without_a_restart_and_an_empty_file_locks_everyone_out(
    control: tuple[ControlServer, KubernetesSecret, dict[str, str]],
) -> None:
    server, secret, stored = control
    url = f"{server.url}/streamtomo/parameters"
    first = secret.path.read_text()
    assert _status(url, first) == 202

    second = new_token()
    secret.rotate(second)  # what the kubelet does when the Secret is changed
    assert _status(url, first, "13.5") == 401  # the old token no longer changes the scan
    assert _status(url, second, "14.5") == 202
    assert stored["center"] == "14.5"
    assert server.token == second

    secret.rotate("")  # no valid token in the file: closed, not the last token kept
    assert _status(url, second, "15.5") == 401
    assert _status(url, first, "15.5") == 401
    third = new_token()
    secret.rotate(third)
    assert _status(url, third, "16.5") == 202
    assert stored["center"] == "16.5"


def test_the_viewer_follows_a_rotated_token(
    control: tuple[ControlServer, KubernetesSecret, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, secret, stored = control
    # The viewer reads the same mounted Secret as the reducer (the chart mounts it in both).
    monkeypatch.setenv("STREAMTOMO_CONTROL_TOKEN_FILE", str(secret.path))
    viewer = start_viewer("http://127.0.0.1:9", "/d.h5", control=server.url)
    try:
        proxy = f"{viewer.url.rstrip('/')}/control/parameters"
        assert _status(proxy, None, "21.5") == 202  # the viewer attaches the token
        secret.rotate(new_token())
        assert _status(proxy, None, "22.5") == 202  # ... the new one, without a restart
        assert stored["center"] == "22.5"
    finally:
        viewer.close()


def test_a_rotation_while_the_server_starts_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token was read before the file's identity was taken: a rotation in between
    kept the old token valid and refused the new one, until the file changed again."""
    from streamtomo.hsds_bridge import control_api

    secret = KubernetesSecret(tmp_path / "secret", new_token())
    old, rotated = secret.path.read_text(), new_token()
    real = control_api.load_or_create_token

    def then_rotate(path: Path) -> str:
        token = real(path)
        secret.rotate(rotated)  # the kubelet, at the worst moment
        return token

    monkeypatch.setattr(control_api, "load_or_create_token", then_rotate)
    server = ControlServer(ControlSettings(token_file=str(secret.path)), lambda n, v: "ok", dict).start()
    try:
        url = f"{server.url}/streamtomo/parameters"
        assert _status(url, rotated) == 202
        assert _status(url, old) == 401
    finally:
        server.close()


def test_the_viewer_reads_the_token_by_the_control_apis_rule(
    control: tuple[ControlServer, KubernetesSecret, dict[str, str]], tmp_path: Path
) -> None:
    """The viewer took any non-empty file: a short token started it (the control API
    refuses one), and a two-line file made every control request a 500 with a traceback."""
    from streamtomo.app.viewer.server import control_token_file

    short = tmp_path / "short"
    short.write_text("abc12")
    with pytest.raises(ValueError, match="at least 16 characters"):
        control_token_file(short)
    server, secret, stored = control
    viewer = start_viewer(
        "http://127.0.0.1:9", "/d.h5", control=server.url, control_token=control_token_file(secret.path)
    )
    try:
        proxy = f"{viewer.url.rstrip('/')}/control/parameters"
        assert _status(proxy, None, "31.5") == 202
        secret.rotate(new_token() + "\n" + new_token())  # no valid token: the viewer sends none
        answer = requests.post(f"{proxy}/center", json={"value": "32.5"}, timeout=10)
        assert answer.status_code == 401 and answer.headers["Content-Type"].startswith("application/json")
        assert stored["center"] == "31.5"
    finally:
        viewer.close()
