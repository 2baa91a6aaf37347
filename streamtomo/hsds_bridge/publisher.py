"""The one interface every publishing target implements.

The reducer owns a :class:`~streamtomo.hsds_bridge.domain.Domain`, updates it under its lock,
calls ``domain.commit()`` and then ``publisher.notify()``. A publisher must never
block the reducer on the network: it either serves the domain in place (in-memory
HDF REST server) or snapshots the dirty chunks and ships them in the background
(HSDS writer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streamtomo.hsds_bridge.domain import Domain


@dataclass
class PublisherStats:
    """Counters a publisher exposes; the reducer copies them into ``/entry/status``."""

    updates_published: int = 0
    bytes_sent: int = 0
    retries: int = 0
    backlog: int = 0  # updates waiting to be sent
    dropped_updates: int = 0  # never silent: also logged
    errors: int = 0
    last_error: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Publisher(Protocol):
    """Exposes or mirrors a live domain."""

    @property
    def url(self) -> str:
        """Endpoint readers use (``http://host:port``)."""
        ...

    def start(self, domain: Domain) -> None:
        """Begin publishing ``domain`` (creates it on the target if needed)."""
        ...

    def notify(self) -> None:
        """A consistent update was committed; must return without waiting on I/O."""
        ...

    def stats(self) -> PublisherStats: ...

    def close(self, timeout: float = 30.0) -> None:
        """Publish what is pending (final flush), then release resources.

        What could not be published within ``timeout`` is counted in
        ``stats().dropped_updates`` by the time this returns (the HSDS writer then
        goes on finishing its domain in the background).
        """
        ...
