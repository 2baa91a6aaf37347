"""free_port: ports for services that bind them later, where nothing else lands
meanwhile; process_cpu_seconds: what /proc says a service used."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from streamtomo.app import processes
from streamtomo.app.processes import HOST, allocatable_ports, ephemeral_port_range, free_port, process_cpu_seconds


def test_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    low, high = ephemeral_port_range()
    assert 1 <= low <= high <= 65535
    if not allocatable_ports():
        pytest.skip(f"the ephemeral range {low}-{high} leaves no room outside it")
    ports = [free_port() for _ in range(50)]
    assert all(port in allocatable_ports() and not low <= port <= high for port in ports)


@pytest.mark.parametrize(
    ("ephemeral", "expected"),
    [
        ((32768, 60999), range(15000, 32768)),  # Linux's default
        ((10000, 60999), range(1024, 10000)),  # little room above 15000
        ((1024, 60000), range(60001, 65536)),  # none below: above
        ((1024, 65000), range(0)),  # none anywhere: the kernel chooses
    ],
)
def test_where_ports_are_chosen(monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], expected: range) -> None:
    monkeypatch.setattr(processes, "ephemeral_port_range", lambda: ephemeral)
    assert allocatable_ports() == expected
    port = free_port()
    assert port in expected if expected else 0 < port <= 65535


def test_a_process_never_hands_out_a_port_twice() -> None:
    """The ports of one deployment are all chosen before any service binds one."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


@pytest.fixture
def three_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[range]:
    """A range of three ports free now, as the only place free_port may choose."""
    for start in range(allocatable_ports().start, allocatable_ports().stop - 3, 3):
        candidates = range(start, start + 3)
        if all(processes.port_unused(HOST, p) and p not in processes._handed_out for p in candidates):
            monkeypatch.setattr(processes, "allocatable_ports", lambda chosen=candidates: chosen)
            yield candidates
            return
    pytest.skip("no three free ports side by side")


def test_a_port_held_by_a_listener_or_a_connection_is_not_chosen(three_ports: range) -> None:
    listener = socket.create_server((HOST, three_ports[0]))
    # The source port of a connection: what a port in the ephemeral range could become.
    client = socket.socket()
    client.bind((HOST, three_ports[1]))
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    with listener, client, accepted:
        assert free_port() == three_ports[2]
        with pytest.raises(OSError, match=f"no free port on {HOST} in {three_ports[0]}-{three_ports[2]}"):
            free_port()  # the third is handed out already


class WorstLuck(random.Random):
    """A chooser whose every draw falls on the range's first port."""

    def choice(self, seq: Sequence[int]) -> int:  # type: ignore[override]
        return seq[0]

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        return 0


def test_the_one_free_port_is_found_however_the_draws_fall(three_ports: range, monkeypatch: pytest.MonkeyPatch) -> None:
    # Random draws alone missed the one free port of three 0.8% of the time (12 draws),
    # and free_port said there was none; here every draw misses it.
    monkeypatch.setattr(processes.random, "SystemRandom", WorstLuck)
    with socket.create_server((HOST, three_ports[0])), socket.create_server((HOST, three_ports[1])):
        assert free_port() == three_ports[2]


def test_a_process_cpu_time_splits_into_its_main_thread_and_the_rest() -> None:
    # bench_pipeline splits each service's CPU into its event loop (the main thread)
    # and its executor threads: a thread's work must land in the process's total only.
    def burn() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    pid = os.getpid()
    total, main = process_cpu_seconds(pid), process_cpu_seconds(pid, main_thread_only=True)
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    grown, main_grown = process_cpu_seconds(pid) - total, process_cpu_seconds(pid, main_thread_only=True) - main
    assert grown >= 0.25
    assert main_grown < 0.1


def test_a_gone_process_used_no_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_seconds(child.pid) == 0.0
    assert process_cpu_seconds(child.pid, main_thread_only=True) == 0.0
