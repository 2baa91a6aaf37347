"""Integration tier: dranspose replay in process, the HDF REST server, a real HSDS, helm.

The HSDS fixture lives here, once, so every module of the tier shares one server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamtomo.app.local_hsds import LocalHsds
from tests.support.hsds_fixtures import hsds_available


@pytest.fixture(scope="session")
def local_hsds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHsds]:
    """One HSDS for the session: accounts admin, ``streamtomo`` (writer), ``viewer``."""
    if not hsds_available():
        pytest.skip("the hsds and h5pyd packages are needed (pip install hsds h5pyd)")
    # s3_age_time 0: the data nodes write back at once, so the final flush of each
    # test returns in ~0.1 s instead of ~1 s (the restart tests keep the default).
    server = LocalHsds(tmp_path_factory.mktemp("hsds"), extra_config={"s3_age_time": 0})
    server.start()
    try:
        yield server
    finally:
        server.close()
