"""Importing the packages pulls in no optional or heavy library (they load lazily,
inside the backend that needs them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("tomopy", "astra", "h5pyd", "numba", "skimage", "hsds", "h5py", "ducc0")


@pytest.mark.parametrize(
    "module",
    [
        "streamtomo",
        "streamtomo.pipeline",
        "streamtomo.app.cli",
        "streamtomo.pipeline.streaming.live_scan",
        "streamtomo.pipeline.streaming.frame_processor",
        "streamtomo.workers.tomo_worker",
        "streamtomo.reducer.tomo_reducer",
    ],
)
def test_import_pulls_in_nothing_heavy(module: str) -> None:
    code = (
        f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} imported {out.stdout.strip()}"
