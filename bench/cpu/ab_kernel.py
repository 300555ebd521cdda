"""What the one-kernel A/Bs (``ab_bn_act.py``, ``ab_small_gemm.py``) share: their options, the baseline build loaded
beside this checkout's, and rounds that alternate which build goes first.

Both builds are timed writing into the same output buffers (each first writes its own, for the bits compared): with
one buffer each, a 12 MB output's pages (huge or not) moved one product's ratio by up to 0.25 between runs (AMD EPYC
Zen 4, ``bench/results/session30/ab_small_gemm_first.txt``)."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_so import baseline_beside, setup  # noqa: E402  (the baseline build beside this checkout's, set up as ab_so's)


@contextlib.contextmanager
def kernel_ab(description: str, argv: list[str] | None):
    """Parses ``--baseline-so PATH [--isa V] [--rounds N] [--threads T]``, loads both builds (both set to ``--isa``)
    and prints the header line; yields ``(args, {"baseline": old, "this": new})``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--baseline-so", type=Path, required=True, help="the baseline build's _C.cpython-*.so")
    p.add_argument("--isa", default=None, help="the ISA variant both builds run (base, v3, v4)")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(as_avx2=False)  # the variant is --isa's; torch and its libraries run as they load
    args = p.parse_args(argv)
    new = setup(args)
    import torch

    from fbnet_fast.measure.core import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_beside(args.baseline_so, tmp, new)
        if args.isa:
            for mod in (old, new):
                mod.set_isa(args.isa)
        print(f"cpu {cpu_name()}, torch {torch.__version__}, ISA {new.isa()}, threads {args.threads}; medians of "
              f"{args.rounds} alternating rounds, ms")
        yield args, {"baseline": old, "this": new}


def alternate(fn, rounds: int) -> dict[str, float]:
    """Median ms of ``fn(name)`` for each build over ``rounds`` rounds, the first build alternating."""
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for r in range(rounds):
        for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
            t = time.perf_counter()
            fn(name)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}
