"""The reducer's large copies go past the CPU caches: glibc's non-temporal threshold.

The reducer copies every projection's rows once, into the sinogram (4 MB at 1024^2,
16 MB at 2048^2), where nothing reads them again for seconds. glibc's ``memcpy``
(which numpy calls for contiguous copies) writes through the caches below a
threshold of about three quarters of the shared cache per thread and with
non-temporal stores above it; with ordinary stores the CPU first reads every
destination line it writes (and evicts what the reducer will read next).
Measured on this project's 2-core VM (48 MiB L3; glibc 2.36), 320 copies of 4 MB into
a fresh array: 0.52 ms each with glibc's default threshold, 0.24-0.27 ms with the
threshold at 1, 3 or 4 MiB; the reducer's own CPU per 1024^2 event in process
(``benchmarks/bench_reducer.py --rings``, two workers) went from 1.21-1.29 to
1.04-1.10 ms.

glibc reads the threshold once, at process start, from ``GLIBC_TUNABLES``: the
reducer's environment carries it (:class:`streamtomo.app.deployment.LocalDeployment`,
the Helm chart's reducer). :data:`NON_TEMPORAL_BYTES` is 3 MiB: a 1024^2 projection's
rows (4 MiB; glibc versions differ on whether a copy of exactly the threshold counts)
and larger go past the caches, while the HTTP servers' copies of 1-2 MiB chunks for
readers (sent to a socket right away) stay in them. Other C libraries (musl) and
other CPUs ignore the setting.
"""

from __future__ import annotations

from collections.abc import Mapping

TUNABLES = "GLIBC_TUNABLES"
THRESHOLD = "glibc.cpu.x86_non_temporal_threshold"
NON_TEMPORAL_BYTES = 3 << 20


def non_temporal_copies(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that give a process started with ``env`` the threshold: its own
    tunables kept, and nothing where it sets the threshold itself."""
    current = env.get(TUNABLES, "")
    if any(item.split("=", 1)[0] == THRESHOLD for item in current.split(":")):
        return {}
    setting = f"{THRESHOLD}={NON_TEMPORAL_BYTES}"
    return {TUNABLES: f"{current}:{setting}" if current else setting}
