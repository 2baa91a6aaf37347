"""Where the real data sets live (``../shared/data``, beside the repository) and what a
test does when one is missing: every real-data test reaches them through
:func:`shared_path` (the ``shared_data`` and ``tooth_h5`` fixtures of tests/conftest.py).

A checkout without the data skips those tests; with ``STREAMTOMO_REQUIRE_SHARED_DATA``
set (CI exports 1) they fail instead, so a run that is meant to check the real data
cannot pass by skipping all of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REQUIRE_ENV = "STREAMTOMO_REQUIRE_SHARED_DATA"
TOOTH_PARTS = ("tomopy_tooth", "tooth.h5")


def shared_data_required() -> bool:
    # Any non-empty value, as the tooth and DIAD fixtures of tests/integration read it:
    # one reading, so the directory and the files in it are required alike.
    return bool(os.environ.get(REQUIRE_ENV))


def shared_path(*parts: str) -> Path:
    """``SHARED_DATA`` joined with ``parts``; where it does not exist the test fails if
    the data are required (:func:`shared_data_required`) and is skipped otherwise."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"shared test data not found at {path}"
        if shared_data_required():
            pytest.fail(f"{reason}, and {REQUIRE_ENV}={os.environ[REQUIRE_ENV]!r} requires it", pytrace=False)
        pytest.skip(reason)
    return path
