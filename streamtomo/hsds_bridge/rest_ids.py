"""HSDS-style object ids for the nodes of an in-memory :class:`Domain`.

h5pyd 1.0 validates every id it is handed (``h5json.objid.isValidUuid``): it must be a
collection prefix (``g-``, ``d-``, ``t-``) followed by a 36-character UUID, and the
prefix decides which REST collection (``/groups``, ``/datasets``) h5pyd asks. The ids
are derived with uuid5 from the domain name, the node path and, for datasets, the
shape and dtype, so they are stable for the life of a dataset *and* across a server
restart: a reader that cached an id (h5pyd caches all object JSON) keeps working when
the reducer restarts. A dataset recreated (or its array swapped) with another shape
or dtype is a new object with a new id, as in HSDS: a reader still holding the old
id and shape gets 410 instead of the new values reshaped to the old shape.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Literal

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup

Collection = Literal["groups", "datasets", "datatypes"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://streamtomo/hsds_bridge/rest-ids")
_PREFIX: dict[Collection, str] = {"groups": "g", "datasets": "d", "datatypes": "t"}
_COLLECTION_BY_PREFIX: dict[str, Collection] = {v: k for k, v in _PREFIX.items()}


def collection_of(node: DomainGroup | DomainDataset) -> Collection:
    return "groups" if isinstance(node, DomainGroup) else "datasets"


class StaleId(LookupError):
    """An id of a dataset that was replaced by one of another shape or dtype (HTTP 410)."""


def make_id(domain_name: str, collection: Collection, path: str, shape: tuple[int, ...] = (), dtype: str = "") -> str:
    """The id of the node at ``path``: ``g-``/``d-`` + uuid5(domain, collection, path,
    and for datasets shape and ``dtype`` (numpy's ``dtype.str``))."""
    key = f"{domain_name}\n{collection}\n{path}"
    if collection == "datasets":
        key += f"\n{','.join(map(str, shape))}\n{dtype}"
    return f"{_PREFIX[collection]}-{uuid.uuid5(_NAMESPACE, key)}"


def node_id(domain_name: str, node: DomainGroup | DomainDataset) -> str:
    if isinstance(node, DomainGroup):
        return make_id(domain_name, "groups", node.path)
    return make_id(domain_name, "datasets", node.path, node.shape, node.dtype.str)


def parse_id(obj_id: str) -> Collection | None:
    """The collection an id belongs to, or None if it is not a well-formed id."""
    if len(obj_id) != 38 or obj_id[1] != "-":
        return None
    collection = _COLLECTION_BY_PREFIX.get(obj_id[0])
    if collection is None:
        return None
    try:
        uuid.UUID(obj_id[2:])
    except ValueError:
        return None
    return collection


@dataclass
class IdIndex:
    """Maps ids back to node paths for one domain.

    The tree can grow while it is served (the reducer may create datasets after
    ``start``), so a miss triggers one re-walk of the tree instead of failing.
    Re-walks keep the ids seen (or handed out by :meth:`id_of`) before while their path
    still exists, so that an id of a replaced dataset answers "replaced"
    (:class:`StaleId`) rather than "unknown"; they are few (one per shape a path has
    had) and dropped with their path.
    Callers must hold ``domain.lock`` for :meth:`resolve`.
    """

    domain: Domain
    _paths: dict[str, str]
    _guard: threading.Lock

    @classmethod
    def for_domain(cls, domain: Domain) -> IdIndex:
        index = cls(domain, {}, threading.Lock())
        with domain.lock:
            index._rebuild()
        return index

    def _rebuild(self) -> None:
        nodes = list(self.domain.walk())
        current = {node_id(self.domain.name, node): node.path for node in nodes}
        live_paths = {node.path for node in nodes}
        with self._guard:
            kept = {i: p for i, p in self._paths.items() if p in live_paths}
            self._paths = kept | current

    def id_of(self, node: DomainGroup | DomainDataset) -> str:
        """``node``'s id, remembered: every id a reader is handed (links, getobjs, ...)
        answers "replaced" once its dataset is, even one created and replaced between
        two re-walks."""
        obj_id = node_id(self.domain.name, node)
        with self._guard:
            self._paths[obj_id] = node.path
        return obj_id

    def resolve(self, obj_id: str) -> DomainGroup | DomainDataset | None:
        """The node with this id, or None; raises :class:`StaleId` for an id of a
        dataset since replaced by one of another shape or dtype (caller holds
        ``domain.lock``)."""
        node = self._lookup(obj_id)
        if node is None:
            self._rebuild()
            node = self._lookup(obj_id)
        return node

    def _lookup(self, obj_id: str) -> DomainGroup | DomainDataset | None:
        with self._guard:
            path = self._paths.get(obj_id)
        if path is None:
            return None
        try:
            node = self.domain.get(path)
        except KeyError:
            return None
        if node_id(self.domain.name, node) == obj_id:
            return node
        if parse_id(obj_id) == collection_of(node) == "datasets":
            # The id encodes shape and dtype: the dataset there now is another one, and
            # serving it by the old id would give a reader new values in the old shape.
            raise StaleId(f"dataset {path} was replaced (new shape or type): reopen the file")
        # A path re-used by a node of another kind (group replaced by a dataset):
        # the id encodes the kind, so only a matching node answers.
        return None
