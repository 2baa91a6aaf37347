"""The beamline's side of the upstream sockets: what the ingesters connect to.

The detector (or its streaming receiver) binds a ZeroMQ PUSH socket; the PandA
serves its position capture on a TCP port. ``streamtomo play`` plays both.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

# How often a send that waits for the detector ingester checks that the deployment runs.
CHECK_INTERVAL_S = 2.0


class PlayError(RuntimeError):
    """The deployment refused or did not finish the scan; the message says why."""


class PlayRefused(PlayError):
    """The scan cannot start, and nothing was changed: the beamline's ports are taken
    (another ``play``). A usage error (exit 2)."""


class NotConnected(PlayError):
    """An ingester did not connect to its upstream socket in time."""


class PandaServer:
    """The PandA's TCP data port: one client, ``\\n`` answered with ``OK\\n``, then ASCII."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._listener = socket.create_server((parts.hostname or "127.0.0.1", parts.port or 8889), reuse_port=False)
        self._client: socket.socket | None = None

    def accept(self, timeout: float) -> None:
        """Wait for the ingester's connection and answer its greeting.

        A connection that is closed already (an ingester that restarted for a newer
        mapping left it in the backlog) is skipped.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                raise NotConnected(f"the angle ingester did not connect within {timeout:.0f} s") from None
            client.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                flag = client.recv(16)
            except OSError:
                flag = b""
            if flag and not flag.endswith(b"\n"):
                client.close()
                raise PlayError(f"unexpected PandA client greeting {flag!r}")
            if not flag or _peer_closed(client):
                client.close()
                continue
            client.sendall(b"OK\n")
            client.settimeout(None)
            if self._client is not None:
                self._client.close()
            self._client = client
            return

    def send(self, data: bytes) -> None:
        if self._client is None:
            raise PlayError("no PandA client connected")
        self._client.sendall(data)

    def close(self) -> None:
        for sock in (self._client, self._listener):
            if sock is not None:
                sock.close()
        self._client = None


def _peer_closed(client: socket.socket) -> bool:
    """Whether the peer closed its side already (EOF waits in the socket)."""
    timeout = client.gettimeout()
    client.setblocking(False)  # a socket with a timeout would wait for data first
    try:
        return client.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        client.settimeout(timeout)


class DetectorPush:
    """The detector (or streaming receiver): a bound ZeroMQ PUSH socket."""

    def __init__(self, url: str, hwm: int = 8, timeout: float = 30.0) -> None:
        import zmq  # pyzmq comes with dranspose

        self._again = zmq.Again
        self._timeout = timeout  # a detector ingester that takes nothing for this long is broken, not slow
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        # Few queued frames: a full queue makes send wait, which paces play to the pipeline.
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.bind(url)

    def send(
        self,
        parts: Sequence[bytes],
        connect_timeout: float | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Send one message. With ``connect_timeout`` (the series start) a send that
        cannot go out in that time means the ingester never connected. While it waits,
        ``check()`` runs every :data:`CHECK_INTERVAL_S` and may raise to give up (the
        deployment stopped: waiting the whole timeout only to blame the ingester misled)."""
        import zmq

        timeout = self._timeout if connect_timeout is None else connect_timeout
        started = time.monotonic()
        deadline, next_check = started + timeout, started + CHECK_INTERVAL_S
        copy = len(parts[-1]) < 65536
        while True:
            try:
                # Non-blocking: a multipart message is queued whole or not at all.
                self._socket.send_multipart(list(parts), flags=zmq.NOBLOCK, copy=copy)
                return
            except self._again:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                if connect_timeout is not None:
                    raise NotConnected(f"the detector ingester did not connect within {connect_timeout:.0f} s")
                raise PlayError(f"the detector ingester took no frame for {self._timeout:.0f} s (see its log)")
            # Wakes as soon as the queue has room (a paced play waits here every frame);
            # the check runs only once per interval of waiting for the same message.
            self._socket.poll(int(min(left, CHECK_INTERVAL_S) * 1000) + 1, zmq.POLLOUT)
            now = time.monotonic()
            if check is not None and next_check <= now < deadline:
                next_check = now + CHECK_INTERVAL_S
                check()

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()
