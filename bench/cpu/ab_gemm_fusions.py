"""The small-product kernel's fusions against the separate passes they replace, on the default search's shapes.

    python bench/cpu/ab_gemm_fusions.py [--threads 1 2] [--rounds 7]

Per shape (M = 65536 rows: fbnet-cifar's 32x32 layers at batch 64), each pair alternating in rounds of 20 calls,
medians:

* ``prologue``: ``relu(s * z2 + t) @ W3^T`` as ``affine_act`` + ``mm`` (h2 written and read back) vs ``mm`` with
  ``a_scale, a_shift`` (h2 never written); ``+stats`` the same with the output's batch statistics (``bn_stats``
  pass vs ``mm_stats``); ``tn``: the weight gradient ``gz3^T relu(s * z2 + t)`` (``affine_act`` + ``mm_tn`` vs
  ``mm_tn`` with ``y_scale, y_shift``);
* ``stats``: ``x @ W1^T`` then ``bn_stats`` vs ``mm_stats`` (the statistics from the output blocks in cache).

Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fbnet_fast.ops import _ext, gemm
from fbnet_fast.ops.bn_act import affine_act, bn_stats


def _pair(old, new, rounds: int) -> tuple[float, float]:
    ts: dict[str, list[float]] = {"old": [], "new": []}
    old(), new()
    for _ in range(rounds):
        for name, f in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            for _ in range(20):
                f()
            ts[name].append((time.perf_counter() - t0) / 20 * 1e3)
    return statistics.median(ts["old"]), statistics.median(ts["new"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    m = 65536
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fbnet_fast._C isa "
          f"{_ext.load().isa()}; M = {m}; ms, separate passes -> fused (speed-up)")
    for t in args.threads:
        torch.set_num_threads(t)
        for k, n in [(48, 8), (24, 8), (8, 8)]:  # mid -> C_out: the IR candidates' last 1x1 conv at width 0.25
            z2, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
            s, b = torch.rand(k, generator=g) + 0.5, torch.randn(k, generator=g)
            gz = torch.randn(m, n, generator=g)
            rows = {
                "prologue": _pair(lambda: gemm.mm(affine_act(z2, s, b, relu=True), w),
                                  lambda: gemm.mm(z2, w, a_scale=s, a_shift=b), args.rounds),
                "+stats": _pair(lambda: bn_stats(gemm.mm(affine_act(z2, s, b, relu=True), w)),
                                lambda: gemm.mm_stats(z2, w, a_scale=s, a_shift=b), args.rounds),
                "tn": _pair(lambda: gemm.mm_tn(gz, affine_act(z2, s, b, relu=True)),
                            lambda: gemm.mm_tn(gz, z2, y_scale=s, y_shift=b), args.rounds),
            }
            print(f"  {t} thread(s) [{m}, {k}] @ [{k}, {n}]: " + "  ".join(
                f"{name} {o:.3f} -> {nw:.3f} ({o / nw:.2f}x)" for name, (o, nw) in rows.items()))
        for k, n in [(8, 48), (8, 24), (8, 8)]:  # C_in -> mid: the first 1x1 conv
            x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
            o, nw = _pair(lambda: bn_stats(gemm.mm(x, w)), lambda: gemm.mm_stats(x, w), args.rounds)
            print(f"  {t} thread(s) [{m}, {k}] @ [{k}, {n}]: stats {o:.3f} -> {nw:.3f} ({o / nw:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
