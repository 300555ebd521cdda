"""Interleaved A/B timing of one mixed-op fwd+bwd: eager NCHW, eager channels_last, fused.

``python bench/ab_mixed_op.py [threads]``. Rounds alternate between providers, so
a shared machine's load drifts equally onto all three (the pytest-benchmark run times
each provider in its own block of minutes). Prints a markdown table (median of 3).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_mixed_op as b  # noqa: E402

PROVIDERS = ("eager_nchw", "eager_cl", "fused")


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"| case (threads={threads}) | eager NCHW ms | eager CL ms | fused ms | fused / faster eager |")
    print("|---|---|---|---|---|")
    for case, space, layer, batch in b.CASES:
        setups = {}
        for p in PROVIDERS:
            fn, cl = b._fn(p)
            setups[p] = (fn, *b._setup(space, layer, batch, cl))

        def step(p):
            fn, op, x, w = setups[p]
            xx = x.detach().requires_grad_(True)
            y = fn(xx, w, op.candidates)
            y.backward(torch.ones_like(y))

        for p in PROVIDERS:
            step(p)
        ts = {p: [] for p in PROVIDERS}
        for _ in range(3):
            for p in PROVIDERS:
                t = time.perf_counter()
                step(p)
                ts[p].append(time.perf_counter() - t)
        med = {p: sorted(v)[1] for p, v in ts.items()}
        best = min(med["eager_nchw"], med["eager_cl"])
        print(f"| {case} | {med['eager_nchw'] * 1e3:.0f} | {med['eager_cl'] * 1e3:.0f} | {med['fused'] * 1e3:.0f} "
              f"| {med['fused'] / best:.2f}x |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
