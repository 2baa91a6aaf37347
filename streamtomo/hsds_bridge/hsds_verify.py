"""Read a domain back the way h5pyd opens it, and list what a reader would miss.

h5pyd opens a domain with ``GET /?getobjs=1`` and trusts the consolidated metadata
in the answer (``domain_objs``: links, attributes, shapes and even the values of
small datasets) over the live objects, for as long as the file is open. HSDS writes
that summary (``.summary.json``) in a background scan some time after the last
change, so after a stall it can describe an older domain than the one acknowledged:
a dataset created near the end (``/entry/reconstruction/volume``) is then missing for
every h5pyd reader although ``GET /groups/{id}/links`` lists it. The writer therefore
asks for a rescan after its final flush and checks the result here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtomo.hsds_bridge.chunk_plan import ChunkKey, NodeSnapshot, Shadow
from streamtomo.hsds_bridge.hsds_client import HsdsClient
from streamtomo.hsds_bridge.hsds_domain_setup import DomainSetup
from streamtomo.hsds_bridge.rest_types import type_json


@dataclass(frozen=True)
class Unreadable:
    """Something a reader would not see as written."""

    path: str
    why: str
    node: NodeSnapshot | None = None  # re-create/re-link it; None: a fresh summary will do
    resend: bool = False  # the server lost the object: its data goes again too


async def find_unreadable(
    client: HsdsClient,
    setup: DomainSetup,
    nodes: Sequence[NodeSnapshot],
    shadow: Mapping[ChunkKey, Shadow],
) -> list[Unreadable]:
    """What h5pyd would miss in the domain (empty: it sees every node as written)."""
    status, body = await client.call("GET", "/", params={"getobjs": "1"})
    if status != 200 or not isinstance(body, dict):
        return [Unreadable("/", f"GET domain answered {status}")]
    summary = body.get("domain_objs")
    cached: dict[str, Any] = summary if isinstance(summary, dict) else {}
    problems: list[Unreadable] = []
    by_path = {n.path: n for n in nodes}
    for node in nodes:
        obj_id = setup.ids.get(node.path)
        if obj_id is None:
            problems.append(Unreadable(node.path, "never created", node, resend=True))
            continue
        obj = cached.get(obj_id)
        if obj is None:  # not in the summary: h5pyd asks for the object itself
            obj = await _live_object(client, node, obj_id)
            if obj is None:
                problems.append(Unreadable(node.path, "object missing", node, resend=True))
                continue
        if node.is_group:
            problems.extend(_missing_links(node, obj, by_path, setup.ids))
        else:
            why = _dataset_differs(node, obj, shadow)
            if why:
                problems.append(Unreadable(node.path, why))
    # Whatever else was found: a scalar whose summary holds an old value because HSDS
    # holds one is only mended by writing it again (a fresh summary will not do).
    problems.extend(await _scalars_differ(client, setup, nodes, shadow))
    return problems


async def _live_object(client: HsdsClient, node: NodeSnapshot, obj_id: str) -> dict[str, Any] | None:
    collection = "groups" if node.is_group else "datasets"
    params = {"include_attrs": "1", "include_links": "1"}
    status, body = await client.call("GET", f"/{collection}/{obj_id}", params=params)
    return body if status == 200 and isinstance(body, dict) else None


def _missing_links(
    group: NodeSnapshot, obj: Mapping[str, Any], by_path: Mapping[str, NodeSnapshot], ids: Mapping[str, str]
) -> list[Unreadable]:
    links = obj.get("links", {})
    if isinstance(links, list):  # the /links collection's spelling
        links = {link.get("title"): link for link in links if isinstance(link, dict)}
    prefix = "/" if group.path == "/" else group.path + "/"
    out = []
    for path, child in by_path.items():
        if path == group.path or not path.startswith(prefix) or "/" in path[len(prefix) :]:
            continue
        link = links.get(child.name) if isinstance(links, dict) else None
        if not isinstance(link, dict) or link.get("id") != ids.get(path):
            out.append(Unreadable(path, f"no link {child.name!r} in {group.path}", child))
    return out


def _dataset_differs(node: NodeSnapshot, obj: Mapping[str, Any], shadow: Mapping[ChunkKey, Shadow]) -> str:
    assert node.dtype is not None
    shape = obj.get("shape", {})
    dims = shape.get("dims", []) if isinstance(shape, dict) else shape
    if list(dims or []) != list(node.shape):
        return f"shape {dims} != {list(node.shape)}"
    want, got = type_json(node.dtype), obj.get("type")
    if isinstance(got, dict) and any(got.get(k) != want.get(k) for k in ("class", "base", "length")):
        return f"type {got} != {want}"
    if "value" in obj:  # h5pyd serves this cached value instead of reading the dataset
        held = shadow.get((node.path, (0,) * len(node.shape)))
        if isinstance(held, str):
            if obj["value"] != held:
                return "summary holds an old value"
        elif isinstance(held, np.ndarray) and held.shape == tuple(node.shape) and not _same(obj["value"], held):
            return "summary holds an old value"
    return ""


def _same(value: Any, held: np.ndarray[Any, Any]) -> bool:
    try:
        got = np.asarray(value, dtype=held.dtype)
    except (TypeError, ValueError):
        return False
    return bool(np.array_equal(got, held, equal_nan=held.dtype.kind == "f"))


async def _scalars_differ(
    client: HsdsClient, setup: DomainSetup, nodes: Sequence[NodeSnapshot], shadow: Mapping[ChunkKey, Shadow]
) -> list[Unreadable]:
    """Every scalar dataset (the status, the generation counter readers poll) must read
    as its last acknowledged value. They are written again and again, and a request
    HSDS took in while stalled (SIGSTOP, an overloaded node), which the writer gave up
    on and sent again, can still be carried out after the newer one once HSDS goes on,
    putting an older value back: the stall test once found ``/entry/status/state``
    reading otherwise than ``finished`` after the writer had called the domain
    complete. A few requests, once per close."""
    problems = []
    for node in nodes:
        held = shadow.get((node.path, ()))
        obj_id = setup.ids.get(node.path)
        if node.is_group or node.shape != () or obj_id is None or not isinstance(held, str | np.ndarray):
            continue
        status, body = await client.call("GET", f"/datasets/{obj_id}/value")
        value = body.get("value") if status == 200 and isinstance(body, dict) else None
        if isinstance(held, str):
            # An empty string's value is answered as 0 (HSDS 1.0), not "".
            same = value == held or (held == "" and value == 0)
        else:
            same = value is not None and _same(value, held)
        if not same:
            problems.append(Unreadable(node.path, f"reads {value!r}, not {held!r}", resend=True))
    return problems
