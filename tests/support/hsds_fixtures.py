"""Fixtures and helpers for tests against a real HSDS (``pip install hsds``).

The session fixture ``local_hsds`` lives in ``tests/integration/conftest.py`` (one server
for the whole session); these are the helpers the HSDS tests share.
"""

from __future__ import annotations

import importlib.util
import re
import uuid
from typing import Any

import numpy as np

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.hsds_bridge.credentials import Credentials
from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.rest_types import wire_dtype


def hsds_available() -> bool:
    return importlib.util.find_spec("hsds") is not None and importlib.util.find_spec("h5pyd") is not None


def unique_domain(server: LocalHsds, label: str) -> str:
    """A fresh domain name in the writer's home folder."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", label)[:40]
    return f"{server.writer_folder}{safe}_{uuid.uuid4().hex[:8]}.h5"


def open_domain(server: LocalHsds, name: str, account: Credentials, mode: str = "r") -> Any:
    """``h5pyd.File`` on ``name`` as ``account`` (a fresh File sees new objects)."""
    import h5pyd

    return h5pyd.File(name, mode, endpoint=server.url, username=account.username, password=account.password)


def _as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_as_text(v) for v in value.tolist()]
    return value


def assert_attrs_equal(got: Any, expected: dict[str, Any], where: str) -> None:
    assert sorted(got.keys()) == sorted(expected), f"{where}: attribute names differ"
    for key, want in expected.items():
        have = _as_text(got[key])
        if isinstance(want, str) or (isinstance(want, list) and want and isinstance(want[0], str)):
            assert have == want, f"{where}@{key}: {have!r} != {want!r}"
        else:
            np.testing.assert_array_equal(np.asarray(have), np.asarray(want), err_msg=f"{where}@{key}")


def assert_dataset_equal(got: Any, ds: DomainDataset) -> None:
    if ds.is_string:
        assert _as_text(got[()]) == str(ds.array[()]), ds.path
        return
    assert got.shape == ds.shape, ds.path
    assert np.dtype(got.dtype) == wire_dtype(ds.dtype), f"{ds.path}: {got.dtype} != {ds.dtype}"
    if ds.array.ndim:
        assert tuple(got.chunks) == tuple(ds.chunks or ()), f"{ds.path}: chunks {got.chunks}"
        values = got[...]
    else:
        values = got[()]
    np.testing.assert_array_equal(np.asarray(values), ds.array, err_msg=ds.path)


def assert_mirrors(f: Any, domain: Domain) -> None:
    """Every group, dataset, value and attribute of ``domain`` is in h5pyd file ``f``."""
    with domain.lock:
        nodes = list(domain.walk())
        for node in nodes:
            obj = f if node.path == "/" else f[node.path]
            assert_attrs_equal(obj.attrs, node.attrs, node.path)
            if isinstance(node, DomainGroup):
                assert sorted(obj) == sorted(node.children), f"{node.path}: members differ"
            else:
                assert_dataset_equal(obj, node)
