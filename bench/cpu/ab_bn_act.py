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

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_so import baseline_beside  # noqa: E402  (the baseline build loaded beside this checkout's)
from search_wall import prepare  # noqa: E402  (threads, malloc)

CASES = [(65536, 8), (65536, 16), (65536, 24), (65536, 32), (65536, 48), (16384, 64), (16384, 96), (4096, 672)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-so", type=Path, required=True, help="the baseline build's _C.cpython-*.so")
    p.add_argument("--isa", default=None, help="the ISA variant both builds run (base, v3, v4)")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not args.baseline_so.is_file():
        raise SystemExit(f"--baseline-so {args.baseline_so}: no such file")
    new = prepare(False, args.threads)
    import torch

    from fbnet_fast.measure.core import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_beside(args.baseline_so, tmp, new)
        if args.isa:
            for mod in (old, new):
                mod.set_isa(args.isa)
        mods = {"baseline": old, "this": new}
        print(f"cpu {cpu_name()}, torch {torch.__version__}, ISA {new.isa()}, threads {args.threads}; medians of "
              f"{args.rounds} alternating rounds, ms")
        print("| M x C | sums baseline | sums this | ratio | apply baseline | apply this | ratio | same bits |")
        print("|---|---|---|---|---|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for m, c in CASES:
            grad, z = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g)
            a, b, ctr, k1, k2, k3 = (torch.randn(c, generator=g) for _ in range(6))
            outs = {name: (torch.empty(c), torch.empty(c), torch.empty(m, c)) for name in mods}

            def sums(name):
                s, q, _ = outs[name]
                mods[name].act_grad_sums(grad.data_ptr(), z.data_ptr(), m, c, a.data_ptr(), b.data_ptr(), True,
                                         ctr.data_ptr(), s.data_ptr(), q.data_ptr())

            def apply(name):
                mods[name].act_grad_apply(grad.data_ptr(), z.data_ptr(), m, c, a.data_ptr(), b.data_ptr(), True,
                                          ctr.data_ptr(), k1.data_ptr(), k2.data_ptr(), k3.data_ptr(),
                                          outs[name][2].data_ptr())

            med = {}
            for label, fn in (("sums", sums), ("apply", apply)):
                times: dict[str, list[float]] = {k: [] for k in mods}
                for name in mods:
                    fn(name)  # warm-up
                for r in range(args.rounds):
                    for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                        t = time.perf_counter()
                        fn(name)
                        times[name].append(time.perf_counter() - t)
                med[label] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            same = all(torch.equal(u, v) for u, v in zip(outs["baseline"], outs["this"]))
            s, a_ = med["sums"], med["apply"]
            print(f"| {m} x {c} | {s['baseline']:.3f} | {s['this']:.3f} | {s['baseline'] / s['this']:.2f}x | "
                  f"{a_['baseline']:.3f} | {a_['this']:.3f} | {a_['baseline'] / a_['this']:.2f}x | {same} |")


if __name__ == "__main__":
    main()
