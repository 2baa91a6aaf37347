"""How our numba kernels run: which threading layer, and one parallel call at a time.

numba's OpenMP layer cost a fixed ~8 ms per parallel call here (5 slices of 256^2:
8.2 ms with omp, 0.47 ms with workqueue; 1024^2: 8.4 vs 6.8 ms), so we pick the
workqueue layer unless NUMBA_THREADING_LAYER says otherwise. The workqueue layer
must not be entered from two threads at once (the reducer's timer and the replay
thread both backproject), hence the lock around every parallel call.

:func:`compile_kernel` is how every kernel of ours is compiled: the threading
layer first, the same flags, the disk cache for the parallel variant only, and the
lock around parallel calls. numba is imported only when a kernel is first needed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

PARALLEL_LOCK = threading.Lock()
# Below this many element updates a parallel region costs more than it saves: waking
# the thread pool takes tens of microseconds, and far more on a loaded machine.
PARALLEL_MIN_ELEMENTS = 1 << 18
_K = TypeVar("_K", bound=Callable[..., None])


@functools.cache
def numba_available() -> bool:
    """Whether numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def parallel_pays(elements: int) -> bool:
    """Whether a kernel over ``elements`` should run its parallel variant: enough work
    to share (:data:`PARALLEL_MIN_ELEMENTS`) and more than one thread to share it. A
    parallel region on one thread, as each worker of a full node has
    (``NUMBA_NUM_THREADS=1``), still pays the thread pool's scheduling: a 1024^2 frame's
    correction took 1.76 ms so, 1.38 ms in the serial variant."""
    return elements >= PARALLEL_MIN_ELEMENTS and numba_available() and load_numba().config.NUMBA_NUM_THREADS > 1


def load_numba() -> Any:
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
    return numba


@contextlib.contextmanager
def slp_vectorization(numba: Any) -> Iterator[None]:
    """LLVM's SLP vectorizer on for the compilations inside (numba turns it off by
    default since numba#8852, for miscompilations reported in other code).

    A kernel written as straight-line lanes (several independent, identical
    statements on neighbouring memory) becomes vector code only with it. numba
    compiles under one global lock; holding it here keeps every other compilation of
    the process out of the switched-on window.
    """
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        before = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = before


def compile_kernel(define: Callable[[Any], _K], parallel: bool, *, slp: bool = False, disk_cache: bool = True) -> _K:
    """Compile the kernel ``define(numba)`` returns (it may use ``numba.prange``).

    Call it from a ``functools.cache``-d function per ``parallel`` value. numba's disk
    cache is keyed by function name and line, not by flags: caching both variants
    would load one for the other, so only the parallel one is cached. ``disk_cache``
    False: not that one either, for a kernel whose closure holds numba functions:
    numba keys a closure's cache entry by its pickled cells, and a numba function
    pickles with an identity and signatures of its own process, so such an entry was
    never found again and each process start wrote another (208 files of one kernel
    were found in one ``__pycache__``; the planar kernel compiled in 3.0 s in every
    process, the unweave kernel loaded in 0.5 s). Parallel calls
    take :data:`PARALLEL_LOCK`. ``slp``: the kernel is compiled (on its first call, for
    the argument types of that call) with :func:`slp_vectorization`; callers pass
    arguments of one set of types, so no later call compiles it again without.
    """
    numba = load_numba()  # threading layer first
    kernel = numba.njit(parallel=parallel, cache=parallel and disk_cache, nogil=True)(define(numba))
    if not parallel and not slp:
        return kernel  # type: ignore[no-any-return]
    lock = PARALLEL_LOCK if parallel else contextlib.nullcontext()

    def run(*args: Any) -> None:
        if slp and not kernel.signatures:
            with lock, slp_vectorization(numba):
                kernel(*args)  # compiles (or loads from numba's cache) with SLP, then runs
            return
        with lock:
            kernel(*args)

    return run  # type: ignore[return-value]
