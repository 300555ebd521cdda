"""glibc malloc tuned for training steps that allocate the same mid-size tensors every step.

PyTorch's CPU tensors come from ``malloc``. glibc serves a request above its mmap threshold (128 KiB at
start, raised dynamically up to 32 MiB as mapped blocks are freed) with a fresh ``mmap``, and returns
freed heap tops above its trim threshold to the system; either way the next step's tensors of that size
are page-faulted (and zeroed by the kernel) again. Where the dynamic threshold settles depends on the
order of earlier allocations, so the same training step ran in two modes: a default-search weight step
(fused kernels, 1 thread, AMD EPYC Zen 4) took 0.93-1.0 s in some processes and 1.2-1.3 s in others, and
1.78 s with the threshold held at 128 KiB. Held at 64 MiB with a 512 MiB trim threshold it ran 0.93-0.99 s in
every process, for 2-10 % more peak memory (1.29-1.39 GB against 1.22-1.26 GB).

:func:`tune_malloc` sets those two thresholds (``mallopt``) for the process. The ``fbnet-fast`` commands
call it first; a library user can call it too. Nothing is changed when the environment already sets one of
glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (or ``GLIBC_TUNABLES``), when
``FBNET_FAST_MALLOC=0``, or off glibc (macOS, musl; an allocator preloaded in its place is left alone too,
as ``mallopt`` then belongs to glibc's unused one).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform

__all__ = ["ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "long_lived_frozen", "tune_malloc"]

ENV = "FBNET_FAST_MALLOC"
MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_done: bool | None = None


def tune_malloc() -> bool:
    """Hold glibc's mmap and trim thresholds at 64 MiB / 512 MiB for this process (once); whether it did."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok



@contextlib.contextmanager
def long_lived_frozen():
    """Within the block, every Python object alive at its start is exempt from the cyclic garbage collector's
    scans (``gc.freeze``; ``gc.unfreeze`` after, so the interpreter's shutdown collects them as usual).

    A search or a training runs its epochs inside it, once its model, data and tables are built. The process
    then holds ~330,000 tracked objects, almost all of them for its whole life (the imported modules'
    functions, tuples and dicts; every ``nn.Module``'s dicts), and the collector's full collection walked all of
    them: 157 ms, once every ~15 default-search weight steps, 2 % of the fused step (AMD EPYC Zen 4, 2 threads;
    the fused path allocates more small Python objects a step, so its collections came more often). Frozen, a
    collection scans only what the steps allocate.
    """
    outer = gc.get_freeze_count() > 0  # inside another such block, or the caller froze: theirs to unfreeze
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()
    try:
        yield
    finally:
        if not outer:
            gc.unfreeze()
