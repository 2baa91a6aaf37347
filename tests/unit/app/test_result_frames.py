"""Results cross ZeroMQ with their large arrays as frames of their own, both ways."""

from __future__ import annotations

import asyncio
import json
import pickle
from typing import Any

import dranspose.reducer
import dranspose.worker
import numpy as np
import pytest
import zmq
import zmq.asyncio

from streamtomo.app import result_frames, result_receive
from streamtomo.app.result_frames import OUT_OF_BAND_BYTES, PickledResult, ReceivedResult


@pytest.fixture
def mended(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's and the reducer's mends in this process, undone after the test."""
    for name in ("send_multipart", "recv_multipart"):
        monkeypatch.setattr(zmq.asyncio.Socket, name, getattr(zmq.asyncio.Socket, name))
    monkeypatch.setattr(dranspose.worker, "pickle", dranspose.worker.pickle)
    monkeypatch.setattr(dranspose.reducer, "pickle", dranspose.reducer.pickle)
    monkeypatch.setattr(result_frames, "_sender_installed", False)
    monkeypatch.setattr(result_receive, "_installed", False)
    result_frames.install_sender()
    result_frames.install_sender()  # once per process, however often asked
    result_receive.install()
    result_frames.install_receiver()


def exchange(*messages: list[Any]) -> list[list[Any]]:
    """Send each message PUSH -> PULL over TCP on 127.0.0.1; what PULL received."""

    async def run() -> list[list[Any]]:
        ctx = zmq.asyncio.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        try:
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push.connect(f"tcp://127.0.0.1:{port}")
            for message in messages:
                await push.send_multipart(message)
            return [await pull.recv_multipart() for _ in messages]
        finally:
            push.close(linger=1000)
            pull.close(linger=0)
            ctx.term()

    return asyncio.run(run())


def payload() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {
        "rows": rng.standard_normal((256, 1024)).astype(np.float32),  # 1 MB: a frame of its own
        "sum": rng.standard_normal((5, 64, 64)).astype(np.float32),  # 80 kB: a frame too
        "angles": np.arange(10.0),  # 80 bytes: stays in the stream
        "name": "worker-1",
    }


def test_large_arrays_travel_apart_and_come_back_equal_and_writable(mended: None) -> None:
    sent = payload()
    header = json.dumps({"event_number": 7}).encode()
    body = dranspose.worker.pickle.dumps(sent)  # as dranspose's worker pickles a result
    assert isinstance(body, PickledResult)
    assert [b.nbytes for b in body.buffers] == [sent["rows"].nbytes, sent["sum"].nbytes]
    assert len(body.stream) < 4096 and len(body) == len(body.stream) + sent["rows"].nbytes + sent["sum"].nbytes
    [parts] = exchange([header, body])
    received_header, result = parts
    assert json.loads(received_header) == {"event_number": 7}
    assert isinstance(result, ReceivedResult) and len(result.buffers) == 2
    got = dranspose.reducer.pickle.loads(result)  # as dranspose's reducer unpickles it
    assert got["name"] == "worker-1"
    for key in ("rows", "sum", "angles"):
        np.testing.assert_array_equal(got[key], sent[key])
        assert got[key].flags.writeable
    assert not got["rows"].flags.owndata  # rebuilt on ZeroMQ's message, not copied
    got["rows"][0, 0] = 1.0  # the reducer may write into what it received


def test_a_plain_pickle_still_loads(mended: None) -> None:
    # A worker without the mend: one pickle frame, protocol 4.
    sent = payload()
    [parts] = exchange([b"{}", pickle.dumps(sent, protocol=4)])
    got = dranspose.reducer.pickle.loads(parts[1])
    np.testing.assert_array_equal(got["rows"], sent["rows"])


def test_other_messages_are_sent_as_they_are(mended: None) -> None:
    [parts] = exchange([b"a", b"b" * (1 << 20)])
    assert parts[0] == b"a" and bytes(parts[1]) == b"b" * (1 << 20)


def test_small_results_keep_their_arrays_in_the_stream() -> None:
    small = {"rows": np.zeros(OUT_OF_BAND_BYTES // 4 - 1, np.float32)}
    body = result_frames.dumps(small)
    assert body.buffers == [] and body.frames() == [body.stream]
    np.testing.assert_array_equal(result_frames.loads(body.stream)["rows"], small["rows"])
