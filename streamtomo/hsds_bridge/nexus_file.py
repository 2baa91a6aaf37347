"""Write a domain to a NeXus/HDF5 file with the same layout (the final result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup


def _attr(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=object)
    return value


def write_nexus(domain: Domain, path: str | Path) -> Path:
    """Copy every group, dataset and attribute of ``domain`` into ``path``."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    string = h5py.string_dtype()
    with domain.lock, h5py.File(path, "w") as f:
        for node in domain.walk():
            if isinstance(node, DomainGroup):
                target = f if node.path == "/" else f.require_group(node.path)
            else:
                assert isinstance(node, DomainDataset)
                if node.is_string:
                    target = f.create_dataset(node.path, data=str(node.array[()]), dtype=string)
                else:
                    chunks = node.chunks if node.array.ndim and node.array.size else None
                    target = f.create_dataset(node.path, data=node.array, chunks=chunks)
            for key, value in node.attrs.items():
                target.attrs[key] = _attr(value)
    return path
