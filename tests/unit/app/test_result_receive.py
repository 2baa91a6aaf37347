"""The reducer's results socket hands large frames out as views of ZeroMQ's buffers."""

from __future__ import annotations

import asyncio
import json
import pickle

import numpy as np
import pytest
import zmq
import zmq.asyncio

from streamtomo.app import result_receive


def test_large_frames_are_views_and_small_ones_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Undone after the test: other tests of this process keep pyzmq's own receive.
    monkeypatch.setattr(zmq.asyncio.Socket, "recv_multipart", zmq.asyncio.Socket.recv_multipart)
    monkeypatch.setattr(result_receive, "_installed", False)
    result_receive.install()
    result_receive.install()  # once per process, however often asked
    rows = np.arange(256 * 1024, dtype=np.float32).reshape(256, 1024)

    async def exchange() -> tuple[list[object], list[object]]:
        ctx = zmq.asyncio.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pair_a, pair_b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        try:
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push.connect(f"tcp://127.0.0.1:{port}")
            pair_port = pair_a.bind_to_random_port("tcp://127.0.0.1")
            pair_b.connect(f"tcp://127.0.0.1:{pair_port}")
            # what dranspose's worker sends: a JSON header and the pickled payload
            await push.send_multipart([json.dumps({"event_number": 3}).encode(), pickle.dumps(rows)])
            await pair_b.send_multipart([b"x" * (1 << 20)])
            return await pull.recv_multipart(), await pair_a.recv_multipart()
        finally:
            for socket in (pull, push, pair_a, pair_b):
                socket.close(linger=0)
            ctx.term()

    parts, other = asyncio.run(exchange())
    header, body = parts
    assert isinstance(header, bytes) and json.loads(header) == {"event_number": 3}
    assert isinstance(body, memoryview)
    assert np.array_equal(pickle.loads(body), rows)  # as dranspose's reducer unpickles it
    assert isinstance(other[0], bytes) and other[0] == b"x" * (1 << 20)  # other socket types copy as before


def test_frames_as_received_splits_at_the_threshold() -> None:
    class Frame:
        def __init__(self, data: bytes) -> None:
            self.bytes, self.buffer = data, memoryview(data)

        def __len__(self) -> int:
            return len(self.bytes)

    small, large = Frame(b"a" * 9), Frame(b"b" * 10)
    got = result_receive.frames_as_received([small, large], view_bytes=10)
    assert got[0] == b"a" * 9 and isinstance(got[0], bytes)
    assert isinstance(got[1], memoryview) and got[1] == b"b" * 10
