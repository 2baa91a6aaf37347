"""Creating the domain's skeleton on HSDS: folders, the domain itself, ACLs, objects.

Every step is idempotent, so setup can be repeated after a server restart lost it:
object ids are chosen here (:mod:`hsds_ids`), and a domain is reopened by its root
id, never recreated under another. A name that exists already is never touched
unless asked (``on_exists``): the next free ``_v2``, ``_v3``... is taken instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from streamtomo.hsds_bridge.chunk_plan import NodeSnapshot
from streamtomo.hsds_bridge.hsds_client import OK, HsdsClient, HsdsWriterError
from streamtomo.hsds_bridge.hsds_ids import MAX_VERSIONS, new_object_id, new_root_id, versioned_name
from streamtomo.hsds_bridge.hsds_settings import FILTERS, HsdsWriterSettings
from streamtomo.hsds_bridge.rest_types import attribute_body, type_json

log = logging.getLogger(__name__)


def dataset_create_body(node: NodeSnapshot, compression: str | None) -> dict[str, Any]:
    """Type, shape and layout of a ``POST /datasets`` (type spelled by rest_types)."""
    assert node.dtype is not None
    body: dict[str, Any] = {"type": type_json(node.dtype)}
    if node.shape:
        body["shape"] = list(node.shape)
        props: dict[str, Any] = {"layout": {"class": "H5D_CHUNKED", "dims": list(node.chunks)}}
        if compression:
            props["filters"] = [FILTERS[compression]]
        body["creationProperties"] = props
    return body


class DomainSetup:
    """What the writer knows of the domain's identity on HSDS: name, root and object ids."""

    def __init__(
        self,
        client: HsdsClient,
        requested_name: str,
        settings: HsdsWriterSettings,
        forget_chunks: Callable[[str], None],
    ) -> None:
        self.client = client
        self.requested_name = requested_name
        self.settings = settings
        self._forget_chunks = forget_chunks  # a (re)created dataset: old chunk knowledge is void
        self.name: str | None = None  # final, after versioning
        self.root_id: str | None = None
        self.ids: dict[str, str] = {}  # path -> HSDS object id
        self.versions: dict[str, int] = {}  # path -> node version that id belongs to
        self.fresh: set[str] = set()  # datasets we created: the server holds zeros

    async def run(self, nodes: Sequence[NodeSnapshot]) -> None:
        await self.ensure_folders()
        await self.create_domain()
        await self.set_acls()
        await self.ensure_nodes(nodes)

    async def ensure_folders(self) -> None:
        call, user = self.client.call, self.client.credentials.username
        parts = self.requested_name.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/" + "/".join(parts[:depth])
            status, reason = await call("GET", "/", params={"domain": folder})
            if status in (200, 403):  # 403: exists, just not listable for us
                continue
            if status != 404:
                raise self.client.refused(f"GET folder {folder}", status, reason)
            status, reason = await call("PUT", "/", params={"domain": folder}, json_body={"folder": True})
            if status == 403:
                raise HsdsWriterError(
                    f"folder {folder}/ does not exist and {user!r} may not create it: ask the HSDS "
                    f"admin to create it with owner {user!r} (LocalHsds does this for /home/<writer>/)",
                    403,
                )
            if status not in (201, 409):
                raise self.client.refused(f"create folder {folder}", status, reason)
            log.info("created HSDS folder %s/", folder)

    async def create_domain(self) -> None:
        """PUT the domain with a client-chosen root id; never reuse another's domain."""
        call = self.client.call
        if self.root_id is not None and self.name is not None:
            # Retried setup: the name is ours; (re)create it if a crash lost it.
            status, reason = await call("PUT", "/", json_body={"root_id": self.root_id})
            if status == 201:
                log.warning("domain %s was lost by HSDS; re-created it", self.name)
                return
            if status == 409:
                status, body = await call("GET", "/")
                if status == 200 and isinstance(body, dict) and body.get("root") == self.root_id:
                    return
            raise self.client.refused(f"reopen domain {self.name}", status, reason)
        for version in range(1, MAX_VERSIONS + 1):
            self.name = self.requested_name if version == 1 else versioned_name(self.requested_name, version)
            if await self._claim(version):
                if version > 1:
                    log.warning("domain %s exists; publishing to %s", self.requested_name, self.name)
                return
        self.name = None
        raise HsdsWriterError(f"no free version of {self.requested_name} up to _v{MAX_VERSIONS}", 409)

    async def _claim(self, version: int) -> bool:
        """Create ``self.name`` unless it exists; False: try the next version."""
        call = self.client.call
        status, body = await call("GET", "/")
        if status in (404, 410):
            # A fresh root id per attempt: HSDS creates the root group before it
            # finds a name taken, so a refused id is used up.
            root_id = new_root_id()
            status, body = await call("PUT", "/", json_body={"root_id": root_id})
            if status == 201:
                self.root_id = root_id
                return True
            if status != 409:
                raise self.client.refused(f"create domain {self.name}", status, body)
            status, body = await call("GET", "/")
            if status == 200 and isinstance(body, dict) and body.get("root") == root_id:
                self.root_id = root_id  # our own create, its reply was lost
                return True
        elif status not in (200, 403):
            raise self.client.refused(f"look up domain {self.name}", status, body)
        # The name is taken (403: by a domain we may not even read).
        if self.settings.on_exists == "fail":
            raise HsdsWriterError(f"domain {self.name} already exists (on_exists='fail')", 409)
        if self.settings.on_exists == "overwrite" and version == 1:
            status, reason = await call("DELETE", "/")
            if status not in OK:
                raise self.client.refused(f"delete existing domain {self.name}", status, reason)
            log.warning("deleted existing domain %s (on_exists='overwrite')", self.name)
            root_id = new_root_id()
            status, body = await call("PUT", "/", json_body={"root_id": root_id})
            if status != 201:
                raise self.client.refused(f"re-create domain {self.name}", status, body)
            self.root_id = root_id
            return True
        return False

    async def set_acls(self) -> None:
        none = dict.fromkeys(("create", "read", "update", "delete", "readACL", "updateACL"), False)
        acls = {user: {**none, "read": True} for user in self.settings.reader_accounts}
        # Explicit default entry: other authenticated users get read only if asked.
        acls["default"] = {**none, "read": self.settings.public_read}
        for user, acl in acls.items():
            status, reason = await self.client.call("PUT", f"/acls/{user}", json_body=acl)
            if status not in OK:
                raise self.client.refused(f"set ACL for {user}", status, reason)

    async def ensure_nodes(self, nodes: Sequence[NodeSnapshot]) -> None:
        """Create groups/datasets parents first; siblings concurrently; idempotent."""
        assert self.root_id is not None
        self.ids["/"] = self.root_id
        by_depth: dict[int, list[NodeSnapshot]] = defaultdict(list)
        for node in nodes:
            by_depth[node.depth].append(node)
        for depth in sorted(by_depth):
            level = by_depth[depth]
            for node in level:
                if node.path != "/" and self.versions.get(node.path) != node.version:
                    kind: Literal["groups", "datasets"] = "groups" if node.is_group else "datasets"
                    self.ids[node.path] = new_object_id(self.root_id, kind)
                    self.versions[node.path] = node.version
                    self._forget_chunks(node.path)
            await gather_limited((self.create_node(n) for n in level), self.settings.max_concurrency)

    async def create_node(self, node: NodeSnapshot) -> None:
        call = self.client.call
        attrs = {k: attribute_body(v) for k, v in node.attrs.items()}
        if node.path == "/":
            if attrs:
                status, reason = await call(
                    "PUT", f"/groups/{self.root_id}/attributes", json_body={"attributes": attrs}
                )
                if status not in OK:
                    raise self.client.refused("root attributes", status, reason)
            return
        obj_id = self.ids[node.path]
        parent_id = self.ids[node.parent]
        body: dict[str, Any] = {"id": obj_id, "link": {"id": parent_id, "name": node.name}}
        if attrs:
            body["attributes"] = attrs
        collection = "groups" if node.is_group else "datasets"
        if not node.is_group:
            body.update(dataset_create_body(node, self.settings.compression))
        if node.version:
            # the previous object under this name (other shape) loses its link
            status, reason = await call("DELETE", f"/groups/{parent_id}/links/{node.name}")
            if status not in (*OK, 404, 410):
                raise self.client.refused(f"unlink old {node.path}", status, reason)
        status, reason = await call("POST", f"/{collection}", json_body=body)
        if status == 201:
            if not node.is_group:
                self.fresh.add(node.path)
            return
        # 400/409 after a retried POST: the object may already be ours
        status_get, _ = await call("GET", f"/{collection}/{obj_id}")
        if status_get != 200:
            raise self.client.refused(f"create {node.path}", status, reason)
        await self.link(node)

    async def link(self, node: NodeSnapshot) -> None:
        """(Re)link an existing object of ours under its name."""
        parent_id, obj_id = self.ids[node.parent], self.ids[node.path]
        status, reason = await self.client.call(
            "PUT", f"/groups/{parent_id}/links/{node.name}", json_body={"id": obj_id}
        )
        if status not in OK:
            raise self.client.refused(f"link {node.path}", status, reason)


async def gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    """Run coroutines with at most ``limit`` at once; cancel the rest on failure."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    tasks = [asyncio.ensure_future(run(c)) for c in coros]
    if not tasks:
        return []
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
