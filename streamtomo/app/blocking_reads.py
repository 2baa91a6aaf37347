"""A blocking ``XREAD`` that Redis did not answer in time reads as empty, as one that
found nothing would: the loop around it reads again.

redis-py 8 gives every connection a 5 s socket timeout. dranspose's loops wait on
blocking ``XREAD`` calls of 1 to 1.3 s (the controller's updates in every service's
``register``, the workers' assignments, the controller's ready workers) and end only
on a ``ConnectionError``. A process stopped or starved for a few seconds (SIGSTOP, a
paused VM, a machine swapping) met the timeout on the read under way: redis-py raised
``TimeoutError``, the loop's task died with it, and nothing restarted it. A reducer
stopped for 12 s under ``up`` lost its registration that way: its key expired, the
controller answered the next scan's POST with a 500, and ``up`` saw nothing wrong.

:func:`install` wraps redis-py's asyncio ``XREAD``: with ``block`` given, a
``TimeoutError`` returns the empty reply of the connection's protocol (redis-py has
already dropped the connection,
so no late answer is read as the next one's) and is logged as a WARNING. A dead Redis
still ends the loops: it raises ``ConnectionError``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)
_installed = False


def empty_reply(client: Any) -> Any:
    """What redis-py returns for a blocking ``XREAD`` that found nothing: ``{}`` on a
    RESP3 connection (dranspose's), ``[]`` on RESP2."""
    protocol = client.connection_pool.connection_kwargs.get("protocol")
    return {} if str(protocol) == "3" else []


def install() -> None:
    """Wrap redis-py's asyncio ``XREAD`` (once per process)."""
    global _installed
    if _installed:
        return
    from redis.asyncio import Redis
    from redis.exceptions import TimeoutError as RedisTimeout

    original = Redis.xread

    async def xread(self: Redis, streams: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, streams, *args, **kwargs)
        except RedisTimeout as error:
            block = kwargs.get("block", args[1] if len(args) > 1 else None)  # xread(streams, count, block)
            if block is None:
                raise
            logger.warning(
                "a blocking read of %s got no answer in time (%s): this process was stopped or starved; reading again",
                ", ".join(str(s) for s in streams),
                error,
            )
            return empty_reply(self)

    Redis.xread = xread  # type: ignore[method-assign,assignment]
    _installed = True
