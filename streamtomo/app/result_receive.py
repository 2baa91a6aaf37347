"""The reducer takes worker results out of ZeroMQ without copying them first.

dranspose's reducer receives each result with ``recv_multipart()`` and unpickles its
second frame. pyzmq's default copies every frame into a new ``bytes`` first: 4 MB per
1024^2 projection, 54 MB for a partial sum of live slices and sweep, and a buffer
that large is mapped fresh for every copy (glibc maps what is above 32 MiB, see
:mod:`streamtomo.reducer.malloc_tuning`): ``perf`` put 45% of the reducer's page
faults on that copy. ``pickle`` copies the arrays out of the frame anyway, so the copy
before it buys nothing. :func:`install` makes the results' PULL socket hand out
large frames as views of ZeroMQ's own buffer (``copy=False``); small ones (the JSON
header dranspose ``json.loads``) stay ``bytes``. A view keeps its ZeroMQ message
alive until it is dropped, which dranspose does with the next result.

Results sent with their arrays as frames of their own (a worker with
:mod:`streamtomo.app.result_frames`) are handed out as the JSON header and one
:class:`~streamtomo.app.result_frames.ReceivedResult` holding views of all the rest.

Only the reducer process installs it (:func:`streamtomo.app.services.install_mends`):
its results' socket is the only PULL socket it receives from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamtomo.app.result_frames import ReceivedResult

# Frames at least this large are handed out as views; smaller ones as bytes.
VIEW_BYTES = 64 << 10

_installed = False


def frames_as_received(frames: Sequence[Any], view_bytes: int = VIEW_BYTES) -> list[Any]:
    """``bytes`` for small frames, a view of the frame's buffer for large ones; a
    result whose arrays came as frames of their own (:mod:`streamtomo.app.result_frames`)
    as ``[header, ReceivedResult]``, the form dranspose's reducer reads."""
    parts = [frame.buffer if len(frame) >= view_bytes else frame.bytes for frame in frames[:2]]
    if len(frames) > 2:  # the arrays' frames: views, however small
        return [parts[0], ReceivedResult(parts[1], [frame.buffer for frame in frames[2:]])]
    return parts


def install() -> None:
    """Patch ``zmq.asyncio.Socket.recv_multipart`` for PULL sockets (once per process)."""
    global _installed
    if _installed:
        return
    import zmq
    import zmq.asyncio

    original: Callable[..., Awaitable[list[Any]]] = zmq.asyncio.Socket.recv_multipart

    async def recv_multipart(
        self: zmq.asyncio.Socket, flags: int = 0, copy: bool = True, track: bool = False, **kwargs: Any
    ) -> list[Any]:
        if not copy or self.type != zmq.PULL:
            return await original(self, flags, copy=copy, track=track, **kwargs)
        return frames_as_received(await original(self, flags, copy=False, track=track, **kwargs))

    zmq.asyncio.Socket.recv_multipart = recv_multipart  # type: ignore[method-assign,assignment]
    _installed = True
