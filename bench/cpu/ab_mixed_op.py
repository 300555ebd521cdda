"""Interleaved A/B timing of one mixed-op fwd+bwd: eager NCHW, eager channels_last, fused.

``python bench/cpu/ab_mixed_op.py [threads] [rounds] [--only SUBSTR,...]``. Rounds alternate
between providers, so a shared machine's load drifts equally onto all three (the
pytest-benchmark run times each provider in its own block of minutes). Prints a markdown
table (median over ``rounds``, default 5, after one warm-up round) and writes
``bench/results/ab_mixed_op.json`` (per case: every round's time per provider, the
medians, the ratio, the kernels' ISA variant).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # siblings, bench/conftest.py
import bench_mixed_op as b  # noqa: E402

PROVIDERS = ("eager_nchw", "eager_cl", "fused")
OUT = Path(__file__).parents[1] / "results" / "ab_mixed_op.json"


def _isa() -> str:
    try:
        from fbnet_fast.ops import _ext

        return _ext.load().isa() if hasattr(_ext.load(), "isa") else "single build"
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return f"unavailable ({e})"


def main(threads: int, rounds: int, only: list[str] | None) -> None:
    torch.set_num_threads(threads)
    rows = []
    print(f"| case (threads={threads}, median of {rounds}) | eager NCHW ms | eager CL ms | fused ms "
          f"| fused / faster eager |")
    print("|---|---|---|---|---|")
    for case, space, layer, batch in b.CASES:
        if only and not any(s in case for s in only):
            continue
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
        for _ in range(rounds):
            for p in PROVIDERS:
                t = time.perf_counter()
                step(p)
                ts[p].append(time.perf_counter() - t)
        med = {p: sorted(v)[len(v) // 2] for p, v in ts.items()}
        best = min(med["eager_nchw"], med["eager_cl"])
        ratio = med["fused"] / best
        rows.append(dict(case=case, batch=batch, threads=threads, rounds=ts, median_s=med, ratio=ratio))
        print(f"| {case} | {med['eager_nchw'] * 1e3:.0f} | {med['eager_cl'] * 1e3:.0f} | {med['fused'] * 1e3:.0f} "
              f"| {ratio:.2f}x |", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(isa=_isa(), torch=torch.__version__, timestamp=time.time(), cases=rows),
                              indent=1))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--only")]
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--only=")), None)
    main(int(args[0]) if args else 1, int(args[1]) if len(args) > 1 else 5, only)
