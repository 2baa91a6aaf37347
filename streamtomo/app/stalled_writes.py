"""An ``XADD`` whose answer a stopped or starved process did not read in time is
looked up, not taken for lost.

redis-py gives every command its connection's socket timeout (5 s), measured by the
clock. A process stopped or starved for longer while its ``XADD`` was under way finds,
when it runs again, the time up: redis-py raises ``TimeoutError`` and drops the
connection, although Redis had appended the entry and its answer was waiting. The
loops of dranspose's that post updates end on it. Seen in a deployment test: a worker
stopped for 13 s lost its ``work`` task ("subroutine crashed network:TimeoutError",
from the ``XADD`` of its report to the controller), in 1 run of 6 with two CPU hogs
beside it; it stayed registered and never took an event again.
(:mod:`streamtomo.app.blocking_reads` does the same for blocking reads.)

:func:`install` wraps redis-py's asyncio ``XADD`` (with the id left to Redis, as all of
dranspose's are): on ``TimeoutError`` the stream's newest :data:`LOOKBACK` entries are
searched for one with the same fields. Found, its id is the answer; not found, the
``XADD`` is made once more. Each of dranspose's updates names its service, scan and
events, so an entry with the same fields is this one; an earlier one equal to it (a
log line, a controller's periodic update) stands for it as well.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

LOOKBACK = 1000
_installed = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def same_fields(entry: Any, fields: dict[Any, Any]) -> bool:
    """Whether a stream entry's fields (as redis-py returns them) are ``fields``."""
    return {_text(k): _text(v) for k, v in dict(entry).items()} == {_text(k): _text(v) for k, v in fields.items()}


def install() -> None:
    """Wrap redis-py's asyncio ``XADD`` (once per process)."""
    global _installed
    if _installed:
        return
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.exceptions import TimeoutError as RedisTimeout

    original = Redis.xadd

    async def looked_up(self: Redis, name: Any, fields: Any, id: Any, args: Any, kwargs: Any) -> Any:
        try:
            return await original(self, name, fields, id, *args, **kwargs)
        except RedisTimeout as error:
            # redis-py dropped the connection with its late answer: a new one asks.
            newest: Any = await self.xrevrange(name, count=LOOKBACK)
            for entry_id, entry in newest or []:
                if same_fields(entry, fields):
                    logger.warning(
                        "an XADD to %s got no answer in time (%s): this process was stopped or starved; "
                        "Redis has the entry (%s)",
                        _text(name),
                        error,
                        _text(entry_id),
                    )
                    return entry_id
            logger.warning(
                "an XADD to %s got no answer in time (%s), and Redis has no such entry: adding it again",
                _text(name),
                error,
            )
            return await original(self, name, fields, id, *args, **kwargs)

    def xadd(self: Redis, name: Any, fields: Any, id: Any = "*", *args: Any, **kwargs: Any) -> Any:
        # A pipeline queues the command (it returns itself, not an awaitable): unchanged,
        # as an XADD with an id of its own (Redis refuses one added twice).
        if isinstance(self, Pipeline) or id != "*":
            return original(self, name, fields, id, *args, **kwargs)
        return looked_up(self, name, fields, id, args, kwargs)

    Redis.xadd = xadd  # type: ignore[method-assign,assignment]
    _installed = True
