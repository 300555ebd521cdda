"""The narrow-product kernel ``small_gemm`` in a baseline build of the extension and this checkout's, side by side in
one process.

    python bench/cpu/ab_small_gemm.py --baseline-so PATH [--isa v3] [--rounds 31] [--threads 1]

The products are every distinct one a soft supernet step of the default search (fbnet-cifar, width 0.25, batch 64)
runs on the narrow-product kernels, by role (``ab_gemm.step_products``): ``small_gemm``'s ``z1 = x W1^T`` (with the
output's batch statistics), ``z3 = relu(bn2(z2)) W3^T`` (the BN2 + ReLU prologue, statistics), ``gh2 = gz3 W3`` and
``gx += gz1 W1`` (accumulate), and ``small_gemm_tn``'s weight gradients ``gw3 = gz3^T relu(bn2(z2))`` (the prologue)
and ``gw1 = gz1^T x``, called as ``gemm.mm_tn`` calls it (the narrower operand broadcast).
Rounds alternate which build goes first; each row gives both builds' medians, the ratio baseline / this
(above 1: this checkout faster) and whether the two gave the same bits. ``--isa``: the variant both builds run
(default: the best this CPU has). Run it alone on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_kernel import alternate, kernel_ab  # noqa: E402

# What each role's call adds to the plain product: (prologue, accumulate, statistics, small_gemm_tn)
MODES = {"z1": (False, False, True, False), "z3": (True, False, True, False), "gh2": (False, False, False, False),
         "gx": (False, True, False, False), "gw3": (True, False, False, True), "gw1": (False, False, False, True)}


def cases():
    """(label, M, K, N, prologue, accumulate, stats, tn) of each distinct product of the default search's step, in
    step order; tn: ``[M, K]^T [M, N]`` by ``small_gemm_tn`` (the prologue on the ``[M, N]`` operand), else
    ``[M, K] @ [K, N]`` by ``small_gemm``."""
    from ab_gemm import step_products
    from fbnet_fast.space import load_space

    for role, m, k, n in dict.fromkeys(step_products(load_space("fbnet-cifar", width_mult=0.25), 64)):
        yield f"{role} {m}x{k}->{n}" if role not in ("gw3", "gw1") else f"{role} {m}x{k}x{n}", m, k, n, *MODES[role]


def main(argv: list[str] | None = None) -> None:
    with kernel_ab(__doc__.split("\n\n")[0], argv) as (args, mods):
        import torch

        print("| product | baseline | this | ratio | same bits |")
        print("|---|---|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for label, m, k, n, pro, acc, stats, tn in cases():
            swap = tn and k > n  # gemm.mm_tn broadcasts the narrower operand: [M, N] first
            if tn:
                a, b = torch.randn(m, k, generator=g), torch.randn(m, n, generator=g)
                sc, sh = torch.randn(n, generator=g), torch.randn(n, generator=g)
                start = torch.zeros(n, k) if swap else torch.zeros(k, n)
            else:
                a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
                sc, sh = torch.randn(k, generator=g), torch.randn(k, generator=g)
                start = torch.randn(m, n, generator=g)
            outs = {name: (start.clone(), torch.empty(n), torch.empty(n)) for name in mods}

            def run(name, bufs=None):
                o, mean, var = bufs or outs[name]
                pro_args = (sc.data_ptr(), sh.data_ptr()) if pro else (0, 0)
                if swap:
                    mods[name].small_gemm_tn(b.data_ptr(), m, n, n, a.data_ptr(), k, k, o.data_ptr(), *pro_args, True)
                elif tn:
                    mods[name].small_gemm_tn(a.data_ptr(), m, k, k, b.data_ptr(), n, n, o.data_ptr(), *pro_args, False)
                else:
                    mods[name].small_gemm(a.data_ptr(), m, k, k, b.data_ptr(), n, o.data_ptr(), n, acc, *pro_args,
                                          mean.data_ptr() if stats else 0, var.data_ptr() if stats else 0)

            for name in mods:
                run(name)  # warm-up; the outputs compared are this first call's
            kept = 3 if stats else 1  # the statistics' vectors are written only with stats
            same = all(torch.equal(u, v) for u, v in zip(outs["baseline"][:kept], outs["this"][:kept]))
            shared = outs["baseline"]  # timed into the same buffers (ab_kernel.py says why)
            med = alternate(lambda name: run(name, shared), args.rounds)
            print(f"| {label} | {med['baseline']:.3f} | {med['this']:.3f} | {med['baseline'] / med['this']:.2f}x | "
                  f"{same} |")


if __name__ == "__main__":
    main()
