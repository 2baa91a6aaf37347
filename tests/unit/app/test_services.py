"""What a service process of each kind runs with (streamtomo.app.services.install_mends)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: install the mends of one kind, then pass 8 MB buffers
# through malloc as an ingester passes frames (ZeroMQ allocates each frame, the send
# frees it) and count the page faults of the second half.
FRAMES = """
import ctypes, ctypes.util, resource, sys
from streamtomo.app.services import install_mends
install_mends(sys.argv[1])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 8 << 20
def frames(n):
    for _ in range(n):
        held = [libc.malloc(size) for _ in range(3)]  # a few frames queued at once
        for p in held:
            ctypes.memset(p, 1, size)
        for p in held:
            libc.free(p)
frames(10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
frames(20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
@pytest.mark.parametrize("kind", ["ingester", "worker"])
def test_frame_buffers_keep_their_pages(kind: str) -> None:
    faults = int(subprocess.check_output([sys.executable, "-c", FRAMES, kind], text=True))
    pages = 20 * 3 * (8 << 20) // 4096
    assert faults < pages // 100, f"{faults} page faults for {pages} pages of frames"
