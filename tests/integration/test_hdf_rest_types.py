"""One HDF REST spelling of every dtype: the in-memory server, the HSDS writer and HSDS agree.

The server describes datasets and attributes with ``rest_types``; the writer creates
them on HSDS with the same module, and HSDS must accept that and answer the same
type back, so a reader sees one type whichever endpoint it opens.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np
import pytest

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.hsds_bridge.chunk_plan import capture_node
from streamtomo.hsds_bridge.domain import Domain, DomainDataset
from streamtomo.hsds_bridge.hsds_domain_setup import dataset_create_body
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter
from streamtomo.hsds_bridge.rest_objects import attributes_dict, dataset_json
from streamtomo.hsds_bridge.rest_registry import ServedDomain
from streamtomo.hsds_bridge.rest_types import attribute_body
from streamtomo.reducer.domain_layout import new_domain
from tests.support.hsds_fixtures import assert_mirrors, open_domain, unique_domain

# Every dtype a streamtomo domain holds (float32 slices and sinograms, float64 and
# int64 status and axes, bool masks, small ints, big-endian input, vlen strings),
# each as a dataset named after it.
DTYPES = ["<f4", "<f8", "<i8", "<i4", "<i2", "|u1", "<u2", "<u4", "|b1", ">f4", ">u2"]
# Every kind of attribute value the layout writes.
ATTRS: dict[str, Any] = {
    "text": "NXdata",
    "names": ["rotation_angle", "."],
    "count": 3,
    "scale": 0.5,
    "flag": True,
    "ints": [1, 2],
    "floats": np.array([0.5, 1.5]),
}


def typed_domain(name: str) -> Domain:
    domain = new_domain(name)
    domain.create_group("/types", dict(ATTRS))
    for spec in DTYPES:
        dtype = np.dtype(spec)
        domain.create_dataset(
            f"/types/d{spec[1:]}_{'be' if spec[0] == '>' else 'le'}", np.ones((3, 4), dtype), chunks=(1, 4)
        )
    domain.create_dataset("/types/vlen_str", "text ✓")
    return domain


def datasets(domain: Domain) -> list[DomainDataset]:
    return [n for n in domain.walk() if isinstance(n, DomainDataset)]


def test_server_and_writer_spell_every_type_identically() -> None:
    domain = typed_domain("/types.h5")
    served = ServedDomain.create(domain)
    for ds in datasets(domain):
        served_type = dataset_json(served, ds, attrs=False)["type"]
        written_type = dataset_create_body(capture_node(ds), "lz4")["type"]
        assert written_type == served_type, ds.path
        assert isinstance(written_type, dict), f"{ds.path}: a bare type string"
    for key, value in ATTRS.items():
        served_attr = served_attrs(served, domain)[key]
        assert attribute_body(value)["type"] == served_attr["type"], key


def served_attrs(served: ServedDomain, domain: Domain) -> dict[str, Any]:
    return attributes_dict(served, domain.get("/types"))


def hsds_json(server: LocalHsds, path: str, name: str) -> Any:
    req = urllib.request.Request(f"{server.url}{path}?domain={name}")
    req.add_header("Authorization", server.accounts.viewer.authorization_header())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.hsds
def test_hsds_accepts_and_answers_the_same_types(local_hsds: LocalHsds) -> None:
    name = unique_domain(local_hsds, "types")
    domain = typed_domain(name)
    with HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer) as writer:
        writer.start(domain)
        writer.notify()
    assert writer.complete and writer.stats().errors == 0, writer.stats()
    served = ServedDomain.create(domain)
    with open_domain(local_hsds, name, local_hsds.accounts.viewer) as f:
        assert_mirrors(f, domain)
        for ds in datasets(domain):
            answer = hsds_json(local_hsds, f"/datasets/{f[ds.path].id.id}", name)
            assert answer["type"] == dataset_json(served, ds, attrs=False)["type"], ds.path
        group_id = f["/types"].id.id
    answers = hsds_json(local_hsds, f"/groups/{group_id}/attributes", name)["attributes"]
    hsds_types = {a["name"]: a["type"] for a in answers}
    for key, want in served_attrs(served, domain).items():
        assert hsds_types[key] == want["type"], key
