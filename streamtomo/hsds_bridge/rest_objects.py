"""HDF REST JSON for domains, groups, datasets, links and attributes.

The shapes follow HSDS 1.0 (``domain_sn``/``group_dn``/``dset_dn``/``link_sn``) where
h5pyd 1.0 reads them: h5pyd's ``HsdsPlugin.getObjectById`` asks
``/{collection}/{id}?include_attrs=1&include_links=1`` and keeps the answer as the
object's whole metadata, reading ``links`` (title -> ``{"class", "id"}``) and
``attributes`` (name -> ``{"type", "shape", "value"}``) as *dicts*; the stand-alone
``/links`` and ``/attributes`` collections answer *lists*, as h5web expects.

Every function here reads the domain tree: call them with ``domain.lock`` held. Ids
go through ``served.ids.id_of``, which remembers each one handed out (see IdIndex).
"""

from __future__ import annotations

import math
from typing import Any

from streamtomo.hsds_bridge.domain import DomainDataset, DomainGroup
from streamtomo.hsds_bridge.rest_ids import collection_of
from streamtomo.hsds_bridge.rest_registry import OWNER, ServedDomain
from streamtomo.hsds_bridge.rest_types import JsonDict, attribute_json, shape_json, type_json

Node = DomainGroup | DomainDataset


def root_id(served: ServedDomain) -> str:
    return served.ids.id_of(served.domain.root)


def link_json(served: ServedDomain, title: str, child: Node) -> JsonDict:
    return {
        "class": "H5L_TYPE_HARD",
        "title": title,
        "collection": collection_of(child),
        "id": served.ids.id_of(child),
        "created": served.created,
    }


def links_dict(served: ServedDomain, group: DomainGroup) -> dict[str, JsonDict]:
    return {title: link_json(served, title, child) for title, child in group.children.items()}


def attributes_dict(served: ServedDomain, node: Node) -> dict[str, JsonDict]:
    return {name: attribute_json(name, value, served.created) for name, value in node.attrs.items()}


def layout_json(ds: DomainDataset) -> JsonDict:
    if not ds.shape:
        return {"class": "H5D_CONTIGUOUS"}
    assert ds.chunks is not None
    return {"class": "H5D_CHUNKED", "dims": list(ds.chunks)}


def _common(served: ServedDomain, node: Node) -> JsonDict:
    return {
        "id": served.ids.id_of(node),
        "root": root_id(served),
        "domain": served.name,
        "created": served.created,
        "lastModified": served.last_modified(),
        "attributeCount": len(node.attrs),
    }


def group_json(served: ServedDomain, group: DomainGroup, links: bool, attrs: bool) -> JsonDict:
    out = _common(served, group)
    out["linkCount"] = len(group.children)
    out["creationProperties"] = {}
    if links:
        out["links"] = links_dict(served, group)
    if attrs:
        out["attributes"] = attributes_dict(served, group)
    return out


def dataset_json(served: ServedDomain, ds: DomainDataset, attrs: bool) -> JsonDict:
    out = _common(served, ds)
    layout = layout_json(ds)
    out["type"] = type_json(ds.dtype)
    out["shape"] = shape_json(ds.shape)
    out["layout"] = layout  # where HSDS < 0.8 put it
    out["creationProperties"] = {"layout": layout}  # where h5pyd 1.0 reads it
    if attrs:
        out["attributes"] = attributes_dict(served, ds)
    return out


def object_json(served: ServedDomain, node: Node, links: bool, attrs: bool) -> JsonDict:
    if isinstance(node, DomainGroup):
        return group_json(served, node, links, attrs)
    return dataset_json(served, node, attrs)


def domain_objs(served: ServedDomain) -> dict[str, JsonDict]:
    """Consolidated metadata (``GET /?getobjs=1``): h5pyd opens with one request.

    Dataset *values* are deliberately left out: h5pyd would serve reads of any
    dataset whose value came this way from its cache forever, hiding live updates.
    """
    return {served.ids.id_of(n): object_json(served, n, True, True) for n in served.domain.walk()}


def domain_summary(served: ServedDomain, verbose: bool) -> JsonDict:
    out: JsonDict = {
        "root": root_id(served),
        "class": "domain",
        "owner": OWNER,
        "created": served.created,
        "lastModified": served.last_modified(),
    }
    if verbose:
        out.update(_storage_stats(served))
    return out


def _storage_stats(served: ServedDomain) -> JsonDict:
    groups = datasets = chunks = allocated = 0
    for node in served.domain.walk():
        if isinstance(node, DomainGroup):
            groups += 1
        else:
            datasets += 1
            chunks += math.prod(node.chunk_grid())
            allocated += int(node.array.nbytes)
    return {
        "num_groups": groups,
        "num_datasets": datasets,
        "num_datatypes": 0,
        "num_chunks": chunks,
        "num_objects": groups + datasets + chunks,
        "allocated_bytes": allocated,
        "metadata_bytes": 0,
        "linked_bytes": 0,
        "num_linked_chunks": 0,
        "total_size": allocated,
        "md5_sum": "",
    }


def acl_json(username: str) -> JsonDict:
    """Read-only: anyone may read the domain and its ACLs, nobody may change anything."""
    return {
        "userName": username,
        "create": False,
        "read": True,
        "update": False,
        "delete": False,
        "readACL": True,
        "updateACL": False,
    }


def folder_entry(name: str, served: ServedDomain | None, created: float) -> JsonDict:
    if served is None:
        return {"name": name, "class": "folder", "owner": OWNER, "created": created, "lastModified": created}
    out: dict[str, Any] = {"name": name, **domain_summary(served, verbose=False)}
    return out
