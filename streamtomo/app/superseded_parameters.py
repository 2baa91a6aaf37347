"""A parameter's superseded value leaves Redis a minute after its successor came.

dranspose's controller stores every value a parameter is given under a key of its
own (``dranspose:parameters:<name>:<uuid>``, ``Controller.set_param``) and never
deletes one: each change left the old value in Redis for the deployment's life. Most
values are bytes, but the reducer shares darks and flats through the ``references``
parameter (rows x columns x 2 float32: 32 MB per set at 2048x2048 with every row
assembled), and a deployment that posts a set per scan grew Redis by that much per
scan, until the machine's memory ran out. The controller also lists every parameter
key twice a second (``get_configs``), over a list that only grew.

:func:`install` gives the superseded value's key an expiry of
:data:`SUPERSEDED_GRACE_S` when its successor is
stored: a service that reads the update naming the old value just before the change
still finds it, and none needs it after (the controller redistributes the current
values to any service whose hash differs, every 2 s).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)
SUPERSEDED_GRACE_S = 60  # seconds
_WRAPPED = "_streamtomo_expires_superseded"


def install() -> None:
    """In the controller (once per process)."""
    from dranspose.controller import Controller
    from dranspose.protocol import RedisKeys
    from redis.exceptions import RedisError

    original = Controller.set_param
    if getattr(original, _WRAPPED, False):
        return

    async def set_param(self: Any, name: Any, data: bytes) -> Any:
        previous = self.parameters.get(name)
        digest = await original(self, name, data)
        current = self.parameters.get(name)
        if previous is not None and current is not None and previous.uuid != current.uuid:
            # After the new value is stored and announced: the old one goes a grace later.
            # Best effort: the set succeeded, and a failure here must not turn it into a
            # 500 (or end the controller's defaults task, which catches nothing).
            try:
                await self.redis.expire(RedisKeys.parameters(name, previous.uuid), SUPERSEDED_GRACE_S)
            except RedisError as error:
                logger.warning("parameter %s: its superseded value stays in Redis: %s", name, error)
        return digest

    setattr(set_param, _WRAPPED, True)
    Controller.set_param = set_param
