"""No service misses the controller's one ``finished`` update.

dranspose's services follow the controller through its updates stream in their
``register`` loop, and apply only the newest update of each ``XREAD``
(``update_msgs[...][0][-1]``): an update superseded by a newer one in the same read
is skipped. That is right for parameters and mappings, which every update carries
whole, but the controller says ``finished=True`` exactly once per scan. A service
that read it together with a later update (the controller's consistency check
redistributes parameters every 2 s; a live change posts one) never runs its
``finish_work``, and the scan never finishes. That is the likely cause (not proven:
the logs cannot show a skipped update) of a worker that never logged "finished
messages" in 2 of 5 ``bench_pipeline.py`` runs, after a redistribute that came
within a second of the scan's end.

:func:`install` makes every ``XREAD`` of the updates stream in this process end at
its first ``finished`` update: the loop applies it, and reads the updates after it
next time.
"""

from __future__ import annotations

import json
from typing import Any

_installed = False


def through_first_finished(reply: Any, stream: str) -> Any:
    """``reply`` of ``XREAD`` (RESP3: ``{stream: [[(id, fields), ...]]}``) cut after the
    first entry of ``stream`` whose ``data`` is an update with ``finished`` true."""
    if not isinstance(reply, dict) or stream not in reply:
        return reply
    per_stream = reply[stream]
    if not per_stream or not isinstance(per_stream[0], list):
        return reply
    entries = per_stream[0]
    for position, (_, fields) in enumerate(entries[:-1]):
        if _is_finished(fields):
            per_stream[0] = entries[: position + 1]
            break
    return reply


def _is_finished(fields: Any) -> bool:
    data = fields.get("data") if isinstance(fields, dict) else None
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    if not isinstance(data, str) or "finished" not in data:
        return False
    try:
        return bool(json.loads(data).get("finished"))
    except (ValueError, AttributeError):
        return False


def install() -> None:
    """Wrap redis-py's asyncio ``XREAD`` for the controller's updates stream (once per process)."""
    global _installed
    if _installed:
        return
    from dranspose.protocol import RedisKeys
    from redis.asyncio import Redis

    stream = RedisKeys.updates()
    original = Redis.xread

    async def xread(self: Redis, streams: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await original(self, streams, *args, **kwargs)
        return through_first_finished(reply, stream) if stream in streams else reply

    Redis.xread = xread  # type: ignore[method-assign,assignment]
    _installed = True
