"""HSDS-style object ids for the nodes of an in-memory :class:`Domain`.

h5pyd 1.0 validates every id it is handed (``h5json.objid.isValidUuid``): it must be a
collection prefix (``g-``, ``d-``, ``t-``) followed by a 36-character UUID, and the
prefix decides which REST collection (``/groups``, ``/datasets``) h5pyd asks. The ids
are derived with uuid5 from the domain name and the node path, so they are stable
for the life of the domain *and* across a server restart: a reader that cached an id
(h5pyd caches all object JSON) keeps working when the reducer restarts.
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


def make_id(domain_name: str, collection: Collection, path: str) -> str:
    """The id of the node at ``path``: ``g-``/``d-`` + uuid5(domain, collection, path)."""
    token = uuid.uuid5(_NAMESPACE, f"{domain_name}\n{collection}\n{path}")
    return f"{_PREFIX[collection]}-{token}"


def node_id(domain_name: str, node: DomainGroup | DomainDataset) -> str:
    return make_id(domain_name, collection_of(node), node.path)


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
        paths = {node_id(self.domain.name, node): node.path for node in self.domain.walk()}
        with self._guard:
            self._paths = paths

    def resolve(self, obj_id: str) -> DomainGroup | DomainDataset | None:
        """The node with this id, or None (caller holds ``domain.lock``)."""
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
        # A path can be re-used by a node of another kind (group replaced by a
        # dataset): the id encodes the kind, so only a matching node answers.
        return node if node_id(self.domain.name, node) == obj_id else None
