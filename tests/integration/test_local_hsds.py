"""``streamtomo hsds``'s server: its storage is its user's only, and its processes
start and stop as one group."""

from __future__ import annotations

import base64
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamtomo.app.local_hsds import LocalHsds
from tests.support.hsds_fixtures import hsds_available, open_domain, unique_domain


def _exposed(root: Path) -> list[str]:
    """Paths under ``root`` (and ``root``) that group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root)} {stat.filemode(mode)}")
    return found


def test_storage_is_private_after_a_domain_was_written(local_hsds: LocalHsds) -> None:
    name = unique_domain(local_hsds, "private")
    with open_domain(local_hsds, name, local_hsds.accounts.writer, "w") as f:
        f.create_dataset("data", data=np.arange(1000, dtype=np.float32).reshape(10, 100), chunks=(1, 100))
    assert local_hsds.flush_all() >= 1  # the chunks and metadata are files now
    assert any((local_hsds.storage_dir / local_hsds.bucket).rglob("*")), "nothing was written to storage"
    assert _exposed(local_hsds.root_dir) == []


def test_an_existing_root_is_made_private_and_the_group_stops(tmp_path: Path) -> None:
    root = tmp_path / "hsds"
    (root / "storage" / "streamtomo").mkdir(parents=True)
    (root / "storage" / "streamtomo" / "old").write_text("written by an earlier, careless run")
    for path in (root, root / "storage", root / "storage" / "streamtomo"):
        path.chmod(0o755)
    (root / "storage" / "streamtomo" / "old").chmod(0o644)
    server = LocalHsds(root)
    with server:
        assert _exposed(root) == []
        pids = server.pids()
        assert len(pids) >= 2  # the launcher, its nodes and the proxy
    assert not server.running
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]


def test_a_second_server_on_the_same_root_is_refused(tmp_path: Path) -> None:
    """It started beside the first, the two sharing one storage folder."""
    from streamtomo.app.hsds_admin import HsdsStartError

    if not hsds_available():
        pytest.skip("hsds not installed")
    root = tmp_path / "hsds"
    refused = r"another HSDS serves .* \(it holds .*\.streamtomo-hsds\.lock\)"
    with LocalHsds(root), pytest.raises(HsdsStartError, match=refused):
        LocalHsds(root).start()
    with LocalHsds(root) as again:  # stopped: the root is free
        assert again.running


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _start_cli(root: Path, *origins: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    """``streamtomo hsds`` as a user starts it; returns the process, its URL and the
    lines it printed up to the URL."""
    cors = [f"--cors-origin={o}" for o in origins]
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtomo.app.cli", "hsds", "--root", str(root), "--port", "0", *cors],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("hsds endpoint: "):
            return proc, line.split(": ", 1)[1].strip(), lines
    proc.wait(timeout=30)
    raise AssertionError("streamtomo hsds printed no endpoint:\n" + "".join(lines))


def _request(url: str, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


@pytest.mark.hsds
def test_cors_origins_are_configurable(tmp_path: Path) -> None:
    if not hsds_available():
        pytest.skip("the hsds and h5pyd packages are needed (pip install hsds h5pyd)")
    allowed = ("http://localhost:5173", "http://viewer.example:8080", "https://beamline.example")
    # Repeated and comma-separated, as a user may write them.
    proc, url, lines = _start_cli(tmp_path / "hsds", f"{allowed[0]},{allowed[1]}", allowed[2])
    try:
        assert proc.stdout is not None
        lines.append(proc.stdout.readline())
        assert f"browser origins allowed (CORS): {', '.join(allowed)}" in "".join(lines)
        viewer = (tmp_path / "hsds" / "config" / "viewer.credentials").read_text().strip()
        auth = "Basic " + base64.b64encode(viewer.encode()).decode()
        for origin in allowed:
            status, headers = _request(
                url + "/domains",
                "OPTIONS",
                {
                    "Origin": origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert status == 204
            assert headers.get("Access-Control-Allow-Origin") == origin
            assert headers.get("Access-Control-Allow-Credentials") == "true"
            assert "authorization" in headers.get("Access-Control-Allow-Headers", "").lower()
            assert "GET" in headers.get("Access-Control-Allow-Methods", "")
            status, headers = _request(url + "/about", "GET", {"Origin": origin, "Authorization": auth})
            assert status == 200
            assert headers.get("Access-Control-Allow-Origin") == origin
            assert headers.get("Vary") == "Origin"
        for origin in ("http://127.0.0.1", "https://evil.example", "http://localhost:5174"):
            status, headers = _request(
                url + "/domains", "OPTIONS", {"Origin": origin, "Access-Control-Request-Method": "GET"}
            )
            assert status == 403
            assert "Access-Control-Allow-Origin" not in headers
            status, headers = _request(url + "/about", "GET", {"Origin": origin, "Authorization": auth})
            assert status == 200  # answered, but a browser will not hand it to that page
            assert "Access-Control-Allow-Origin" not in headers
            # A "simple" POST needs no preflight: the browser sends it with the Basic auth
            # it cached for this address, and it went on to HSDS as the user's change.
            status, _ = _request(
                url + "/groups", "POST", {"Origin": origin, "Authorization": auth, "Content-Type": "text/plain"}
            )
            assert status == 403
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: flush, then stop
        assert proc.wait(timeout=60) == 0


def test_a_wildcard_origin_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cli", "hsds", "--root", str(tmp_path), "--cors-origin", "*"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CORS origin '*' must look like http://host[:port]" in done.stderr
    assert not (tmp_path / "config").exists()  # refused before anything was started
