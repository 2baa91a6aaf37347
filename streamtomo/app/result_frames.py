"""Worker results cross ZeroMQ with their large arrays as frames of their own.

dranspose's worker sends a result as ``[json header, pickle.dumps(payload)]``, with
pickle's default protocol (4): numpy copies each array into a ``bytes``, pickle copies
that into its stream and pyzmq copies the stream into a ZeroMQ message. At 1024^2
that is three copies of 4 MB per projection (and of 48 MB per partial sum), about a
fifth of a worker's CPU (py-spy: ``pickle.dumps`` in ``Worker.work``). The reducer
then copies every array once more out of the stream.

Installed in both (:func:`streamtomo.app.services.install_mends`, also in the Helm
chart's pods), a result is pickled with protocol 5 and its arrays of at least
:data:`OUT_OF_BAND_BYTES` are left out of the stream (``buffer_callback``): the worker
sends ``[header, stream, array, array, ...]``, the arrays without a copy
(``copy=False``: ZeroMQ holds them until sent; a result's arrays are never written
after it is returned). The reducer's results socket hands them out as views of
ZeroMQ's messages (:mod:`streamtomo.app.result_receive`) and the arrays are rebuilt
on that memory, without a copy either. Small arrays stay in the stream. Where the
workers and the reducer share a host's memory, projection rows and partial sums take
a slot of the worker's shared-memory rings instead (:mod:`streamtomo.app.shared_rows`).

dranspose reaches pickle through its modules' ``pickle`` name (``dranspose.worker``,
``dranspose.reducer``): that name is pointed at :data:`RESULT_PICKLE`, which pickles as
above and unpickles both this form and a plain pickle (a worker without the mend).
A reducer without it cannot read a worker with it: the two are installed together.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from streamtomo.app.shared_rows import WorkerRings, dumps_with_rings, sender_from_env

# Arrays at least this large leave the pickle stream (pyzmq copies smaller frames anyway).
OUT_OF_BAND_BYTES = 64 << 10


@dataclass
class PickledResult:
    """A result pickled with its large buffers apart, as the worker sends it."""

    stream: bytes
    buffers: list[memoryview] = field(default_factory=list)

    def __len__(self) -> int:  # dranspose logs len(body)
        return len(self.stream) + sum(buffer.nbytes for buffer in self.buffers)

    def frames(self) -> list[bytes | memoryview]:
        return [self.stream, *self.buffers]


@dataclass
class ReceivedResult:
    """The stream and buffers of one result as the reducer received them."""

    stream: bytes | memoryview
    buffers: list[memoryview]


def dumps(payload: Any, out_of_band_bytes: int = OUT_OF_BAND_BYTES, rings: WorkerRings | None = None) -> PickledResult:
    """``rings``: projection rows and partial sums go into the worker's shared-memory
    rings where a slot is free (:mod:`streamtomo.app.shared_rows`), the other large
    arrays apart."""
    buffers: list[memoryview] = []

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < out_of_band_bytes:
            return True  # in the stream
        buffers.append(view)
        return False

    if rings is not None and rings.takes_some(payload):
        return PickledResult(dumps_with_rings(payload, rings, buffer_callback=keep_apart), buffers)
    return PickledResult(pickle.dumps(payload, protocol=5, buffer_callback=keep_apart), buffers)


def loads(data: ReceivedResult | bytes | memoryview) -> Any:
    if isinstance(data, ReceivedResult):
        return pickle.loads(data.stream, buffers=data.buffers)
    return pickle.loads(data)


class ResultPickle:
    """Stands in for the ``pickle`` module where dranspose pickles results."""

    PickleBuffer = pickle.PickleBuffer

    @staticmethod
    def dumps(payload: Any, *args: Any, **kwargs: Any) -> PickledResult:
        return dumps(payload, rings=sender_from_env())

    @staticmethod
    def loads(data: ReceivedResult | bytes | memoryview, *args: Any, **kwargs: Any) -> Any:
        return loads(data)


RESULT_PICKLE = ResultPickle()
_sender_installed = False


def install_sender() -> None:
    """In a worker: results pickled as above and their frames sent without a copy."""
    global _sender_installed
    if _sender_installed:
        return
    import dranspose.worker
    import zmq.asyncio

    original = zmq.asyncio.Socket.send_multipart

    def send_multipart(self: zmq.asyncio.Socket, msg_parts: Any, *args: Any, **kwargs: Any) -> Any:
        if not any(isinstance(part, PickledResult) for part in msg_parts):
            return original(self, msg_parts, *args, **kwargs)
        frames: list[Any] = []
        for part in msg_parts:
            frames.extend(part.frames() if isinstance(part, PickledResult) else [part])
        kwargs["copy"] = False  # pyzmq still copies frames under its copy threshold
        return original(self, frames, *args, **kwargs)

    zmq.asyncio.Socket.send_multipart = send_multipart  # type: ignore[method-assign,assignment]
    dranspose.worker.pickle = RESULT_PICKLE
    _sender_installed = True


def install_receiver() -> None:
    """In the reducer: results unpickled with the buffers that came apart."""
    import dranspose.reducer

    dranspose.reducer.pickle = RESULT_PICKLE
