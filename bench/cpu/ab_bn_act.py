"""BatchNorm + ReLU's two backward passes, ``act_grad_sums`` and ``act_grad_apply``, in a baseline build of the
extension and this checkout's, side by side in one process.

    python bench/cpu/ab_bn_act.py --baseline-so PATH [--isa v3] [--rounds 31] [--threads 1]

Each pass runs over ``z [M, C]`` and its gradient at the channel counts of the search spaces' BNs (8 to 672;
``M`` rows as many as the default search's 32x32 layers at batch 64, fewer for wide ``C``), with the ReLU mask.
Rounds alternate which build goes first; the table gives each build's median and the ratio baseline / this (above
1: this checkout faster), and says whether the two builds give the same bits. ``--isa``: the variant both builds
run (default: the best this CPU has). Run it alone on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_kernel import alternate, kernel_ab  # noqa: E402

CASES = [(65536, 8), (65536, 16), (65536, 24), (65536, 32), (65536, 48), (16384, 64), (16384, 96), (4096, 672)]


def main(argv: list[str] | None = None) -> None:
    with kernel_ab(__doc__.split("\n\n")[0], argv) as (args, mods):
        import torch

        print("| M x C | sums baseline | sums this | ratio | apply baseline | apply this | ratio | same bits |")
        print("|---|---|---|---|---|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for m, c in CASES:
            grad, z = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g)
            a, b, ctr, k1, k2, k3 = (torch.randn(c, generator=g) for _ in range(6))
            outs = {name: (torch.empty(c), torch.empty(c), torch.empty(m, c)) for name in mods}

            def sums(name, into=None):
                s, q, _ = into or outs[name]
                mods[name].act_grad_sums(grad.data_ptr(), z.data_ptr(), m, c, a.data_ptr(), b.data_ptr(), True,
                                         ctr.data_ptr(), s.data_ptr(), q.data_ptr())

            def apply(name, into=None):
                mods[name].act_grad_apply(grad.data_ptr(), z.data_ptr(), m, c, a.data_ptr(), b.data_ptr(), True,
                                          ctr.data_ptr(), k1.data_ptr(), k2.data_ptr(), k3.data_ptr(),
                                          (into or outs[name])[2].data_ptr())

            for name in mods:  # warm-up, each build into its own outputs: compared here
                sums(name)
                apply(name)
            same = all(torch.equal(u, v) for u, v in zip(outs["baseline"], outs["this"]))
            shared = outs["baseline"]  # timed into the same buffers (ab_kernel.py says why)
            med = {label: alternate(lambda name, fn=fn: fn(name, shared), args.rounds)
                   for label, fn in (("sums", sums), ("apply", apply))}
            s, a_ = med["sums"], med["apply"]
            print(f"| {m} x {c} | {s['baseline']:.3f} | {s['this']:.3f} | {s['baseline'] / s['this']:.2f}x | "
                  f"{a_['baseline']:.3f} | {a_['this']:.3f} | {a_['baseline'] / a_['this']:.2f}x | {same} |")


if __name__ == "__main__":
    main()
