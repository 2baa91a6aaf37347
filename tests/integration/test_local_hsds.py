"""``streamtomo hsds``'s server: its storage is its user's only, and its processes
start and stop as one group."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from streamtomo.app.local_hsds import LocalHsds
from tests.support.hsds_fixtures import open_domain, unique_domain


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


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
