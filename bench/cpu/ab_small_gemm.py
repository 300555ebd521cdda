"""The narrow-product kernel ``small_gemm`` in a baseline build of the extension and this checkout's, side by side in
one process.

    python bench/cpu/ab_small_gemm.py --baseline-so PATH [--isa v3] [--rounds 31] [--threads 1]

The products are an IR candidate's that run on the narrow-product kernels in a step of the default search
(fbnet-cifar, width 0.25, batch 64), at its 8-, 16- and 32-channel layers, for the expansions 1, 3 and 6:
``small_gemm``'s ``x W1^T`` (with the output's batch statistics), ``relu(bn2(z2)) W3^T`` (the BN2 + ReLU prologue,
statistics), ``gz3 W3`` and ``gx += gz1 W1`` (accumulate), and ``small_gemm_tn``'s weight gradients
``gz3^T relu(bn2(z2))`` (the prologue) and ``gz1^T x``, as ``gemm.mm_tn`` calls it (the narrower side broadcast).
Rounds alternate which build goes first; each row gives both builds' medians, the ratio baseline / this
(above 1: this checkout faster) and whether the two gave the same bits. ``--isa``: the variant both builds run
(default: the best this CPU has). Run it alone on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_kernel import alternate, kernel_ab  # noqa: E402

# (rows, channels in = out) of the default search's layers at 32x32, 16x16 and 8x8 (batch 64)
LAYERS = [(65536, 8), (16384, 16), (4096, 32)]
EXPANSIONS = (1, 3, 6)


def cases():
    """(label, M, K, N, prologue, accumulate, stats, tn) of each product; tn: ``small_gemm_tn`` of ``[M, K]^T
    [M, N]`` (the prologue on the ``[M, N]`` side), else ``small_gemm`` of ``[M, K] @ [K, N]``."""
    for m, c in LAYERS:
        for e in EXPANSIONS:
            mid = c * e
            yield f"x W1^T {m}x{c}->{mid}", m, c, mid, False, False, True, False
            yield f"h2 W3^T {m}x{mid}->{c}", m, mid, c, True, False, True, False
            yield f"gz3 W3 {m}x{c}->{mid}", m, c, mid, False, False, False, False
            yield f"gx += gz1 W1 {m}x{mid}->{c}", m, mid, c, False, True, False, False
            yield f"gz3^T h2 {m}x{c}x{mid}", m, c, mid, True, False, False, True
            yield f"gz1^T x {m}x{c}x{mid}", m, c, mid, False, False, False, True


def main(argv: list[str] | None = None) -> None:
    with kernel_ab(__doc__.split("\n\n")[0], argv) as (args, mods):
        import torch

        print("| product | baseline | this | ratio | same bits |")
        print("|---|---|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for label, m, k, n, pro, acc, stats, tn in cases():
            if tn:
                a, b = torch.randn(m, k, generator=g), torch.randn(m, n, generator=g)
                sc, sh = torch.randn(n, generator=g), torch.randn(n, generator=g)
                start = torch.zeros(k, n)
            else:
                a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
                sc, sh = torch.randn(k, generator=g), torch.randn(k, generator=g)
                start = torch.randn(m, n, generator=g)
            outs = {name: (start.clone(), torch.empty(n), torch.empty(n)) for name in mods}

            def run(name, bufs=None):
                o, mean, var = bufs or outs[name]
                pro_args = (sc.data_ptr(), sh.data_ptr()) if pro else (0, 0)
                if tn:
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
