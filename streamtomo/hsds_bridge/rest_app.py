"""The aiohttp application of the read-only HDF REST server (HSDS dialect).

Routes are what h5pyd 1.0 (``h5pyd/hsds_plugin.py``, ``httpconn.py``,
``_hl/acl_manager.py``, ``_hl/folders.py``), h5web's ``HsdsProvider`` and a browser
doing binary fetches ask for. Anything that would write answers 403.

Data path: the id is resolved under ``domain.lock`` (its shape and dtype; an id
encodes both, so they are fixed for it), the selection is parsed once against that
shape without the lock (a query string on the event loop, a POST body in an executor
thread), the selected block is copied out of the live numpy array by an executor
thread holding ``domain.lock`` (only the block, never the whole array), and the copy
is serialised and streamed with the lock released.

Why one module of about 800 lines: it is the whole HSDS dialect the server speaks,
route by route, and each handler is short; split by route, the shared request
checks (domain pinning, selections, limits) would be imported back into each piece.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import hdrs, web

from streamtomo.hsds_bridge import rest_objects as objs
from streamtomo.hsds_bridge.domain import DomainDataset, DomainGroup
from streamtomo.hsds_bridge.host_names import host_name, known_host
from streamtomo.hsds_bridge.rest_ids import Collection, StaleId, parse_id
from streamtomo.hsds_bridge.rest_registry import DomainRegistry, ServedDomain, TooManyReads, normalise_domain_name
from streamtomo.hsds_bridge.rest_select import (
    Selection,
    SelectionError,
    extract,
    parse_points,
    parse_select,
    selection_size,
)
from streamtomo.hsds_bridge.rest_types import (
    JsonDict,
    array_json_pieces,
    attribute_json,
    is_vlen_str,
    itemsize_estimate,
    shape_json,
    type_json,
    vlen_to_bytes,
    wire_dtype,
)

log = logging.getLogger(__name__)

SERVER_NAME = "streamtomo-hdf-rest"
SERVER_VERSION = "1.0.0"
OCTET = "application/octet-stream"
STREAM_CHUNK = 4 << 20  # bytes per write: bounds transport buffering, keeps backpressure
REGISTRY_KEY: web.AppKey[DomainRegistry] = web.AppKey("registry", DomainRegistry)
CORS_KEY: web.AppKey[frozenset[str]] = web.AppKey("cors_origins", frozenset)
NAMES_KEY: web.AppKey[frozenset[str]] = web.AppKey("host_names", frozenset)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestError(Exception):
    """An HTTP error answered as JSON ``{"status", "message"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- helpers ----------------------------------------------------------------------
def _registry(request: web.Request) -> DomainRegistry:
    return request.app[REGISTRY_KEY]


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _domain_name(request: web.Request) -> str | None:
    # h5pyd sends ?domain=; the REST spec also allows the X-Hdf-domain header and
    # older clients send ?host=.
    name = request.query.get("domain") or request.headers.get("X-Hdf-domain") or request.query.get("host")
    if name and not name.isprintable():
        # NUL and other control characters: no domain has them, and echoing one in
        # the reason line would make aiohttp drop the connection instead of answering.
        raise RestError(400, "domain names cannot contain control characters")
    return normalise_domain_name(name) if name else None


def _served(request: web.Request) -> ServedDomain:
    name = _domain_name(request)
    if name is None:
        raise RestError(400, "no domain given: pass ?domain=/path/to/file.h5")
    served = _registry(request).get(name)
    if served is None:
        raise RestError(404, f"domain {name} not found")
    return served


def _node(served: ServedDomain, obj_id: str, collection: Collection) -> DomainGroup | DomainDataset:
    """Resolve an id (caller holds the lock); 400 for a malformed id, 404 unknown."""
    if parse_id(obj_id) != collection:
        raise RestError(400, f"{obj_id!r} is not a valid {collection[:-1]} id")
    try:
        node = served.ids.resolve(obj_id)
    except StaleId as exc:
        raise RestError(410, str(exc)) from None
    if node is None:
        raise RestError(404, f"{collection[:-1]} {obj_id} not found in domain {served.name}")
    return node


def _dataset(served: ServedDomain, obj_id: str) -> DomainDataset:
    node = _node(served, obj_id, "datasets")
    assert isinstance(node, DomainDataset)
    return node


def _group(served: ServedDomain, obj_id: str) -> DomainGroup:
    node = _node(served, obj_id, "groups")
    assert isinstance(node, DomainGroup)
    return node


def _href(request: web.Request, path: str, domain: str | None = None) -> str:
    try:
        origin = request.url.origin()
    except ValueError:  # yarl: "URL should be absolute", "Port out of range", ...
        # A Host that is no host[:port] ("[", "a:b:c", ":99999"): HTTP/1.1 answers 400
        # (RFC 9112, 3.2); it was a 500 with a traceback.
        raise RestError(400, f"malformed Host header {request.host!r}") from None
    url = origin.with_path(path)
    return str(url.with_query(domain=domain) if domain else url)


def _hrefs(request: web.Request, served: ServedDomain, **rels: str) -> list[JsonDict]:
    out = [{"rel": "self", "href": _href(request, request.path, served.name)}]
    out += [{"rel": rel, "href": _href(request, path, served.name)} for rel, path in rels.items()]
    return out


def _json(data: Any, status: int = 200, reason: str | None = None) -> web.Response:
    return web.json_response(data, status=status, reason=reason, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _wants_binary(request: web.Request) -> bool:
    return OCTET in request.headers.get("Accept", "")


def _limit(request: web.Request) -> int | None:
    value = request.query.get("Limit")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise RestError(400, f"Limit must be an integer, got {value!r}") from None


def _matches(name: str, pattern: str | None) -> bool:
    # HSDS matches a glob (fnmatch-like: *, ?, [a-z]) against the base name.
    return pattern is None or fnmatch.fnmatchcase(name, pattern)


def _page(names: list[str], marker: str | None, limit: int | None, missing_marker: str | None) -> list[str]:
    """``names`` (sorted) after ``marker`` and at most ``limit`` of them, as HSDS pages
    domains and links (h5pyd asks for the next batch after the last name it got, until
    a batch comes back short). A marker not in ``names``: 404 with ``missing_marker``,
    or, where that is None, nothing (HSDS's domain listing)."""
    start = 0
    if marker is not None:
        if marker not in names:
            if missing_marker is not None:
                raise RestError(404, missing_marker)
            return []
        start = names.index(marker) + 1
    end = len(names) if limit is None else start + max(limit, 0)
    return names[start:end]


# -- server, domain and folder endpoints -------------------------------------------
async def about(request: web.Request) -> web.StreamResponse:
    registry = _registry(request)
    return _json(
        {
            "state": "READY",
            "name": SERVER_NAME,
            "about": "read-only HDF REST view of streamtomo's live in-memory domains",
            "greeting": "streamtomo HDF REST server",
            "server": SERVER_NAME,
            "version": SERVER_VERSION,
            "start_time": int(registry.started),
            "node_count": 1,
            "username": "default",
            "isadmin": False,
        }
    )


async def get_domain(request: web.Request) -> web.StreamResponse:
    name = _domain_name(request)
    registry = _registry(request)
    if name is None or name == "/":
        return await list_domains(request)
    served = registry.get(name)
    if served is None:
        if registry.is_folder(name):
            return _json(objs.folder_entry(name, None, registry.started))
        raise RestError(404, f"domain {name} not found")
    if "h5path" in request.query:
        return await _object_by_path(request, served, request.query["h5path"])
    body = await registry.run_locked(served, lambda: _domain_body(request, served))
    body["hrefs"] = _hrefs(request, served, root=f"/groups/{body['root']}", acls="/acls")
    return _json(body)


def _domain_body(request: web.Request, served: ServedDomain) -> JsonDict:
    body = objs.domain_summary(served, verbose=_flag(request, "verbose"))
    registry = _registry(request)
    body["limits"] = {"max_request_size": registry.limits.max_response_bytes}
    body["compressors"] = []  # nothing is stored compressed: data is served raw
    body["version"] = SERVER_VERSION
    if _flag(request, "getobjs") and registry.serve_domain_objs:
        body["domain_objs"] = objs.domain_objs(served)
    return body


async def _object_by_path(request: web.Request, served: ServedDomain, h5path: str) -> web.StreamResponse:
    def find() -> JsonDict:
        try:
            node = served.domain.get(h5path)
        except (KeyError, ValueError):
            raise RestError(404, f"no object at {h5path!r} in domain {served.name}") from None
        links, attrs = _flag(request, "include_links"), _flag(request, "include_attrs")
        body = objs.object_json(served, node, links, attrs)
        body["class"] = "group" if isinstance(node, DomainGroup) else "dataset"
        return body

    return _json(await _registry(request).run_locked(served, find))


async def list_domains(request: web.Request) -> web.StreamResponse:
    """Direct children (domains and sub-folders) of the folder ``?domain=/a/b/``."""
    registry = _registry(request)
    folder = (_domain_name(request) or "/").rstrip("/") + "/"
    if folder != "/" and not registry.is_folder(folder):
        raise RestError(404, f"folder {folder} not found")
    pattern = request.query.get("pattern")
    entries: dict[str, JsonDict] = {}
    for served in sorted(registry.all(), key=lambda s: s.name):
        if not served.name.startswith(folder):
            continue
        head, sep, _ = served.name[len(folder) :].partition("/")
        name = folder + head
        if _matches(head, pattern):
            entries.setdefault(name, objs.folder_entry(name, None if sep else served, registry.started))
    # HSDS: a Limit of 0 means no limit here, and an unknown Marker lists nothing.
    names = _page(sorted(entries), request.query.get("Marker"), _limit(request) or None, None)
    return _json({"domains": [entries[n] for n in names], "hrefs": []})


async def get_acls(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    return _json({"acls": [objs.acl_json("default")], "hrefs": _hrefs(request, served)})


async def get_acl(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    user = request.match_info["user"]
    return _json({"acl": objs.acl_json(user), "hrefs": _hrefs(request, served)})


async def list_collection(request: web.Request) -> web.StreamResponse:
    """``GET /groups`` / ``GET /datasets``: every id of that kind but the root.

    ``GET /groups?h5path=/a/b`` is the group at that path instead (HSDS's ``GET
    /groups/``): listing every group for it would answer with other objects.
    """
    if "h5path" in request.query and request.path.startswith("/groups"):
        return await get_group(request)
    served = _served(request)
    want = DomainGroup if request.path.rstrip("/") == "/groups" else DomainDataset
    key = "groups" if want is DomainGroup else "datasets"

    def ids() -> list[str]:
        root = served.domain.root
        return [served.ids.id_of(n) for n in served.domain.walk() if isinstance(n, want) and n is not root]

    return _json({key: await _registry(request).run_locked(served, ids), "hrefs": _hrefs(request, served)})


# -- groups and links ---------------------------------------------------------------
async def get_group(request: web.Request) -> web.StreamResponse:
    """``GET /groups/{id}``, or the group at ``h5path`` (relative to the id if given)."""
    served = _served(request)
    start_id = request.match_info.get("id")
    h5path = request.query.get("h5path")
    if start_id is None and (not h5path or not h5path.startswith("/")):
        raise RestError(400, "h5paths must be absolute if no parent id is provided")
    links, attrs = _flag(request, "include_links"), _flag(request, "include_attrs")

    def body() -> JsonDict:
        group = _group(served, start_id) if start_id is not None else served.domain.root
        if h5path is not None:
            group = _group_at(served, group, h5path)
        return objs.group_json(served, group, links, attrs)

    out = await _registry(request).run_locked(served, body)
    obj_id = out["id"]
    out["hrefs"] = _hrefs(request, served, links=f"/groups/{obj_id}/links", attributes=f"/groups/{obj_id}/attributes")
    return _json(out)


def _group_at(served: ServedDomain, start: DomainGroup, h5path: str) -> DomainGroup:
    """The group at ``h5path`` as HSDS resolves it: absolute from the root, else from
    ``start``; ``.`` is ``start`` itself, empty components are skipped. 404 where there
    is no group (a dataset there included)."""
    node: DomainGroup | DomainDataset = served.domain.root if h5path.startswith("/") else start
    relative = h5path[2:] if h5path.startswith("./") else h5path
    if relative != ".":
        for part in (p for p in relative.split("/") if p):
            if not isinstance(node, DomainGroup) or part not in node.children:
                raise RestError(404, f"no object at {h5path!r} from {start.path} in domain {served.name}")
            node = node.children[part]
    if not isinstance(node, DomainGroup):
        raise RestError(
            404, f"no group at {h5path!r} from {start.path} in domain {served.name}: {node.path} is a dataset"
        )
    return node


async def get_links(request: web.Request) -> web.StreamResponse:
    """A group's links, by title (HSDS's order), paged by ``Marker``/``Limit`` and
    filtered by a glob ``pattern`` on the title, as HSDS does."""
    served = _served(request)
    obj_id = request.match_info["id"]
    pattern, marker, limit = request.query.get("pattern"), request.query.get("Marker"), _limit(request)

    def links() -> list[JsonDict]:
        group = _group(served, obj_id)
        titles = [t for t in sorted(group.children) if _matches(t, pattern)]
        titles = _page(titles, marker, limit, f"link marker {marker!r} not found in group {group.path}")
        return [objs.link_json(served, t, group.children[t]) for t in titles]

    items = await _registry(request).run_locked(served, links)
    for item in items:
        item["href"] = _href(request, f"/groups/{obj_id}/links/{item['title']}", served.name)
    return _json({"links": items, "hrefs": _hrefs(request, served)})


async def get_link(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    obj_id, title = request.match_info["id"], request.match_info["title"]

    def link() -> JsonDict:
        group = _group(served, obj_id)
        child = group.children.get(title)
        if child is None:
            raise RestError(404, f"link {title!r} not found in group {group.path}")
        return objs.link_json(served, title, child)

    body = await _registry(request).run_locked(served, link)
    return _json(
        {"link": body, "created": served.created, "lastModified": served.created, "hrefs": _hrefs(request, served)}
    )


# -- attributes -----------------------------------------------------------------------
def _attr_owner(served: ServedDomain, request: web.Request) -> DomainGroup | DomainDataset:
    collection = request.match_info["collection"]
    if collection == "datatypes":
        raise RestError(404, "this server has no committed datatypes")
    assert collection in ("groups", "datasets")
    return _node(served, request.match_info["id"], "groups" if collection == "groups" else "datasets")


async def get_attributes(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    with_data = _flag(request, "IncludeData", default=True)

    def attrs() -> list[JsonDict]:
        node = _attr_owner(served, request)
        return [attribute_json(k, v, served.created, with_data) for k, v in node.attrs.items()]

    return _json({"attributes": await _registry(request).run_locked(served, attrs), "hrefs": _hrefs(request, served)})


async def get_attribute(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    name = request.match_info["name"]
    with_data = _flag(request, "IncludeData", default=True)

    def attr() -> JsonDict:
        node = _attr_owner(served, request)
        if name not in node.attrs:
            raise RestError(404, f"attribute {name!r} not found on {node.path}")
        return attribute_json(name, node.attrs[name], served.created, with_data)

    body = await _registry(request).run_locked(served, attr)
    body["hrefs"] = _hrefs(request, served)
    return _json(body)


async def post_attributes(request: web.Request) -> web.StreamResponse:
    """HSDS ``POST /{collection}/{id}/attributes`` with ``attr_names``: a batched *read*."""
    served = _served(request)
    body = await _json_body(request)
    names = body.get("attr_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RestError(400, "POST attributes expects {'attr_names': [names...]}")

    def attrs() -> list[JsonDict]:
        node = _attr_owner(served, request)
        missing = [n for n in names if n not in node.attrs]
        if missing:
            raise RestError(404, f"attributes {missing} not found on {node.path}")
        return [attribute_json(n, node.attrs[n], served.created) for n in names]

    return _json({"attributes": await _registry(request).run_locked(served, attrs)})


# -- datasets -------------------------------------------------------------------------
async def get_dataset(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    obj_id = request.match_info["id"]
    attrs = _flag(request, "include_attrs")
    body = await _registry(request).run_locked(
        served, lambda: objs.dataset_json(served, _dataset(served, obj_id), attrs)
    )
    body["hrefs"] = _hrefs(request, served, value=f"/datasets/{obj_id}/value", root=f"/groups/{body['root']}")
    return _json(body)


async def get_dataset_shape(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    obj_id = request.match_info["id"]
    shape = await _registry(request).run_locked(served, lambda: _dataset(served, obj_id).shape)
    return _json(
        {
            "shape": shape_json(shape),
            "created": served.created,
            "lastModified": served.last_modified(),
            "hrefs": _hrefs(request, served),
        }
    )


async def get_dataset_type(request: web.Request) -> web.StreamResponse:
    served = _served(request)
    obj_id = request.match_info["id"]
    dtype = await _registry(request).run_locked(served, lambda: _dataset(served, obj_id).dtype)
    return _json({"type": type_json(dtype), "hrefs": _hrefs(request, served)})


def _refuse_queries(request: web.Request, body: JsonDict | None = None) -> None:
    # HSDS filters values by a query (and picks compound fields); answering the plain
    # selection instead would hand h5pyd's dset[sel, query=...] every value as a match.
    for name in ("query", "fields"):
        if name in request.query or (body is not None and name in body):
            raise RestError(400, f"{name} is not supported by this server")


async def get_value(request: web.Request) -> web.StreamResponse:
    _refuse_queries(request)
    select = request.query.get("select")
    return await _value(request, lambda shape: parse_select(select, shape))


async def post_value(request: web.Request) -> web.StreamResponse:
    """Point selection (binary uint64 or JSON ``points``) or a long ``select`` in JSON."""
    # Not request.content_type: aiohttp reports octet-stream when the header is
    # missing, and h5pyd sends its long-select JSON bodies without a Content-Type.
    _refuse_queries(request)
    # Bodies (up to 16 MiB of binary points, 1 MiB of JSON) are parsed in the read pool,
    # not on the event loop: about 0.1 s of CPU for the largest.
    if OCTET in request.headers.get("Content-Type", ""):
        raw = await _read_body(request)
        return await _value(request, lambda shape: parse_points(raw, shape), in_pool=True)
    body = await _json_body(request)
    _refuse_queries(request, body)
    if "points" in body and ("select" in body or "select" in request.query):
        raise RestError(400, "give either points or select, not both")
    if "points" in body:
        return await _value(request, lambda shape: parse_points(body["points"], shape), in_pool=True)
    select = body.get("select") or request.query.get("select")
    if not isinstance(select, str):
        raise RestError(400, "POST value expects 'points' or a 'select' string in the JSON body")
    return await _value(request, lambda shape: parse_select(select, shape), in_pool=True)


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
        # Its text is "400, message:\n  Can not decode content-encoding: gzip"; the cause
        # (aiohttp's HttpProcessingError) holds the reason alone.
        reason = getattr(exc.__cause__, "message", "") or str(exc).rsplit("\n", 1)[-1].strip()
        raise RestError(400, f"request body could not be read: {reason or 'malformed'}") from None


async def _json_body(request: web.Request) -> JsonDict:
    """The JSON object in the body, at most ``Limits.max_json_request_body`` bytes.

    Decoded on the event loop: json.loads holds the GIL throughout, so an executor
    thread would stall the loop just as long; the size cap is what bounds that (see
    ``Limits.max_json_request_body``). h5pyd sends points in binary, which is not
    capped by this.
    """
    limit = _registry(request).limits.max_json_request_body
    declared = request.content_length
    if declared is not None and declared > limit:  # refused before reading it
        raise _json_too_large(declared, limit)
    raw = await _read_body(request)
    if len(raw) > limit:  # chunked, or gzip that inflated
        raise _json_too_large(len(raw), limit)
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except LookupError:  # no such codec ("nonexistent"), or not a text one ("base64")
        raise RestError(400, f"unknown charset {charset!r} in Content-Type") from None
    except ValueError:  # UnicodeDecodeError and the other UnicodeErrors of odd codecs
        raise RestError(400, f"request body is not valid {charset} text") from None
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # the last: "[[[[..." nested deep
        raise RestError(400, "request body is not valid JSON") from None
    except ValueError:  # int("9" * 5000) in the decoder: Python reads at most 4300 digits
        raise RestError(400, "request body holds a number with too many digits to read") from None
    if not isinstance(body, dict):
        raise RestError(400, "request body must be a JSON object")
    return body


def _json_too_large(nbytes: int, limit: int) -> RestError:
    return RestError(
        413,
        f"JSON request body of {nbytes} bytes exceeds the {limit}-byte limit: "
        "send points as binary uint64 (Content-Type: application/octet-stream)",
    )


async def _value(
    request: web.Request, make_selection: Callable[[tuple[int, ...]], Selection], *, in_pool: bool = False
) -> web.StreamResponse:
    """Answer the selection ``make_selection`` makes for the dataset's shape.

    ``in_pool``: parse in the read pool (a POST body) rather than on the event loop (a
    query string, at most 8 KiB).
    """
    served = _served(request)
    registry = _registry(request)
    obj_id = request.match_info["id"]
    binary = _wants_binary(request)

    def resolve() -> tuple[tuple[int, ...], np.dtype[Any]]:
        ds = _dataset(served, obj_id)
        return ds.shape, ds.dtype

    def parse() -> Selection:
        try:
            return make_selection(shape)
        except SelectionError as exc:
            raise RestError(400, f"invalid selection: {exc}") from None

    def read() -> npt.NDArray[Any]:
        # Under domain.lock: copy only the selected block. Serialisation happens after
        # the lock is released.
        ds = _dataset(served, obj_id)
        if ds.shape != shape:
            # Cannot happen while ids encode the shape (a new shape is a new id: 410
            # above); checked because ``sel`` must never index an array of another shape.
            raise RestError(410, f"dataset {ds.path} was replaced (new shape): reopen the file")
        block = extract(ds.array, sel)
        ds.zero_unwritten(block, lambda unwritten: extract(unwritten, sel))
        return block

    # domain.lock only for the id: parsing under it (twice, 4 s for a 15 MiB JSON
    # point list) held the reducer's updates and every other reader of the domain.
    shape, dtype = await registry.run_locked(served, resolve)
    sel = await registry.run(parse) if in_pool else parse()
    nbytes = _checked_size(registry, sel, dtype, binary)
    # The cost is known before any copy: a large read first waits for a slot of its
    # client (and of the server), so one reader cannot fill the thread pool or the
    # memory while small reads (status, one slice) go straight through.
    async with registry.read_slot(request.remote or "", nbytes):
        block = await registry.run_locked(served, read)
        if binary:
            return await _send_binary(request, registry, block)
        ignore_nan = _flag(request, "ignore_nan")
        payload = await registry.run(lambda: _json_value_chunks(block, ignore_nan))
        return await _send_chunks(request, registry, payload, "application/json")


def _json_value_chunks(block: npt.NDArray[Any], ignore_nan: bool) -> list[bytes]:
    """``{"value": ...}`` as UTF-8 in chunks of about ``STREAM_CHUNK`` bytes, sent as
    they are (no joined copy of a large answer)."""
    chunks: list[bytes] = []
    parts: list[str] = ['{"value":']
    size = 0
    for piece in array_json_pieces(block, ignore_nan):
        parts.append(piece)
        size += len(piece)
        if size >= STREAM_CHUNK:
            chunks.append("".join(parts).encode())
            parts, size = [], 0
    parts.append("}")
    chunks.append("".join(parts).encode())
    return chunks


async def _send_chunks(
    request: web.Request, registry: DomainRegistry, chunks: list[bytes], content_type: str
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = sum(len(c) for c in chunks)
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    registry.counters.add(bytes_sent=response.content_length)
    return response


def _checked_size(registry: DomainRegistry, sel: Selection, dtype: np.dtype[Any], binary: bool) -> int:
    """The bytes ``sel`` selects; 413 beyond the limit of the answer's format."""
    nbytes = selection_size(sel) * itemsize_estimate(dtype)
    limit = registry.limits.max_response_bytes if binary else registry.limits.max_json_bytes
    if nbytes > limit:
        how = "" if binary else " (ask for Accept: application/octet-stream: JSON has a much lower cap)"
        raise RestError(413, f"selection of {nbytes} bytes exceeds the {limit}-byte limit{how}")
    return nbytes


async def _send_binary(request: web.Request, registry: DomainRegistry, block: npt.NDArray[Any]) -> web.StreamResponse:
    if is_vlen_str(block.dtype):
        payload = await registry.run(lambda: vlen_to_bytes(block))
        view = memoryview(payload)
    else:
        wire = wire_dtype(block.dtype)
        if wire != block.dtype:
            block = await registry.run(lambda: block.astype(wire))
        # A byte view of the copy: streamed without another copy (tobytes would double it).
        view = memoryview(block.reshape(-1).view(np.uint8).data)
    response = web.StreamResponse(headers={"Content-Type": OCTET})
    response.content_length = len(view)
    await response.prepare(request)
    for offset in range(0, len(view), STREAM_CHUNK):
        await response.write(view[offset : offset + STREAM_CHUNK])
    await response.write_eof()
    registry.counters.add(bytes_sent=len(view))
    return response


# -- read-only, errors, CORS ------------------------------------------------------------
async def not_found_or_forbidden(request: web.Request) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        raise RestError(404, f"no such endpoint: {request.path}")
    raise RestError(403, f"this HDF REST server is read-only: {request.method} {request.path} is not allowed")


def _reason(message: str) -> str:
    # h5pyd raises IOError(status, reason): the reason line is what a user sees.
    text = "".join(c if c.isprintable() else " " for c in message)
    return text.encode("ascii", "replace").decode()[:200]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _answer(request, handler)
    failed = isinstance(request.content.exception(), web.RequestPayloadError)
    if failed or (hdrs.CONTENT_ENCODING in request.headers and not request.content.is_eof()):
        # A body that fails to decode (gzip that is not gzip) leaves the connection
        # unusable, and aiohttp, reading the rest of it after the answer, logs that at
        # ERROR ("Unhandled exception"), also where the handler never read the body (a
        # 403): send the answer, then close. No client of ours compresses its requests.
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            log.debug("client went away during %s %s", request.method, request.path)
        request.protocol.force_close()
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or the JSON error answer for what it raised."""
    registry = _registry(request)
    registry.counters.add(requests=1)
    try:
        return await handler(request)
    except RestError as exc:
        status, message = exc.status, exc.message
    except TooManyReads as exc:
        status, message = 429, f"too many large reads at once: {exc}; wait for one to finish"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = exc.status
        message = exc.text or exc.reason
        if status == 405:
            status, message = 403, f"this HDF REST server is read-only: {request.method} is not allowed"
    except Exception as exc:  # answer JSON, never a bare traceback page
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # The client disconnected (mid-download, mid-upload): no error of ours. Not
            # re-raised: aiohttp logs whatever a handler raises at ERROR with a
            # traceback. The response returned instead cannot be written to the closed
            # connection, which aiohttp notes at debug ("premature client disconnection").
            log.debug("client went away during %s %s: %s", request.method, request.path, exc)
            return web.Response(status=499, reason="Client Closed Request")
        log.exception("error serving %s %s", request.method, request.path_qs)
        status, message = 500, f"internal error: {type(exc).__name__}: {exc}"
    registry.counters.record_status(status, message)
    if status >= 500:
        log.error("%s %s -> %d %s", request.method, request.path_qs, status, message)
    else:
        log.info("%s %s -> %d %s", request.method, request.path_qs, status, message)
    return _json({"status": status, "message": message}, status=status, reason=_reason(message))


def _client_gone(request: web.Request) -> bool:
    """The client's connection is closed or closing (a ConnectionError with it still
    open is a real error)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _allowed_origin(request: web.Request) -> str | None:
    origins = request.app[CORS_KEY]
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if origin in origins:
        return origin
    return "*" if "*" in origins else None


@web.middleware
async def cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    if _allowed_origin(request) is None:
        raise RestError(403, f"origin {request.headers.get('Origin')!r} is not allowed")
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": asked or "Accept, Authorization, Content-Type, X-Hdf-domain",
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


@web.middleware
async def rebinding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request must name this server (:func:`known_host`): a DNS-rebound name made
    another site's page the same origin as the live domain, free to read the scan, and a
    browser sends such a page's reads with no Origin and, over http, no Sec-Fetch-Site:
    only the Host tells them apart. h5pyd, the viewer's server and the chart's pods name
    it as they reach it (an address, or a name in ``host_names``)."""
    if "*" not in request.app[CORS_KEY]:
        for host in request.headers.getall("Host", []) or [""]:
            if host_name(host) is None:
                raise RestError(400, f"malformed Host header {host!r}")
            if not known_host(host, request.app[NAMES_KEY]):
                raise RestError(
                    403,
                    f"host {host!r} is not a name of this server (a DNS-rebound name?); "
                    "its names are given in STREAMTOMO_HTTP_NAMES",
                )
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, errors and streamed data included."""
    origin = _allowed_origin(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "Content-Length, Content-Type"
    if origin != "*":
        response.headers["Vary"] = "Origin"


# -- application --------------------------------------------------------------------------
def build_app(
    registry: DomainRegistry, cors_origins: Sequence[str] = (), host_names: frozenset[str] = frozenset()
) -> web.Application:
    """``host_names``: the names browsers may know the server by besides localhost and IP
    addresses (:func:`served_names`)."""
    app = web.Application(
        middlewares=[error_middleware, rebinding_middleware, cors_preflight_middleware],
        client_max_size=registry.limits.max_request_body,
    )
    app[REGISTRY_KEY] = registry
    app[CORS_KEY] = frozenset(cors_origins)
    app[NAMES_KEY] = host_names
    app.on_response_prepare.append(add_cors_headers)
    get = app.router.add_get
    for path in ("/about", "/info"):
        get(path, about, allow_head=False)
    get("/", get_domain, allow_head=False)
    get("/domains", list_domains, allow_head=False)
    get("/acls", get_acls, allow_head=False)
    get("/acls/{user}", get_acl, allow_head=False)
    get("/groups", list_collection, allow_head=False)
    get("/groups/", get_group, allow_head=False)  # HSDS: the group at ?h5path=
    get("/datasets", list_collection, allow_head=False)
    get("/groups/{id}", get_group, allow_head=False)
    get("/groups/{id}/links", get_links, allow_head=False)
    get("/groups/{id}/links/{title}", get_link, allow_head=False)
    get("/datasets/{id}", get_dataset, allow_head=False)
    get("/datasets/{id}/shape", get_dataset_shape, allow_head=False)
    get("/datasets/{id}/type", get_dataset_type, allow_head=False)
    get("/datasets/{id}/value", get_value, allow_head=False)
    app.router.add_post("/datasets/{id}/value", post_value)
    attrs = "/{collection:groups|datasets|datatypes}/{id}/attributes"
    get(attrs, get_attributes, allow_head=False)
    app.router.add_post(attrs, post_attributes)
    get(attrs + "/{name}", get_attribute, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", not_found_or_forbidden)
    return app
