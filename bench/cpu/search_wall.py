"""Wall time and peak memory of one ``fbnet-fast search`` command, optionally as an AVX2-only CPU runs it.

``python bench/cpu/search_wall.py [--as-avx2] -- [search options]``

``--as-avx2`` restricts every library in the process to AVX2 before any is loaded: torch's ATen
kernels (``ATEN_CPU_CAPABILITY=avx2``), oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``), MKL
(``MKL_ENABLE_INSTRUCTIONS=AVX2``) and our fused kernels (``set_isa("v3")``, the AVX2+FMA
variant). On an AVX-512 machine this runs the instruction mix an AVX2-only CPU of the same
microarchitecture would; it is not an AVX2 CPU (clock, cache and memory stay this machine's), so
figures taken this way are named as emulated. Prints one JSON line: the command, the ISA in use,
wall seconds, peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


# What --as-avx2 sets before torch loads (bench/cpu/ab_search_step.py uses the same).
AVX2_ENV = dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")


def prepare(as_avx2: bool, threads: int):
    """The in-process benchmarks' set-up (bench/cpu/ab_*.py): with ``as_avx2`` torch, oneDNN and MKL held to AVX2
    (before torch loads) and our kernels' ``v3`` variant; ``threads`` threads; glibc malloc tuned as the
    fbnet-fast commands run. Returns the extension module."""
    if as_avx2:
        os.environ.update(AVX2_ENV)
    import torch

    from fbnet_fast.malloc import tune_malloc
    from fbnet_fast.ops import _ext

    torch.set_num_threads(threads)
    tune_malloc()
    ext = _ext.load()
    if as_avx2:
        ext.set_isa("v3")
    return ext


def main(argv: list[str]) -> int:
    as_avx2 = "--as-avx2" in argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    if as_avx2:
        os.environ.update(AVX2_ENV)
    import torch

    from fbnet_fast.cli import main as cli_main
    from fbnet_fast.ops import _ext

    ext = _ext.load() if _ext.available() else None
    if as_avx2 and ext is not None:
        ext.set_isa("v3")
    t0 = time.perf_counter()
    rc = cli_main(["search", *rest])
    wall = time.perf_counter() - t0
    print(json.dumps({
        "command": "fbnet-fast search " + " ".join(rest),
        "emulated_avx2": as_avx2,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "fused_isa": ext.isa() if ext is not None else None,
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
