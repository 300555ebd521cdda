"""The depthwise kernels of two builds in one process, per shape of the default search's step.

    python bench/cpu/ab_so_dwconv.py --baseline-so PATH [--isa v3 v4] [--as-avx2] [--threads 1] [--rounds 5]

Every depthwise shape one soft supernet step of the default search runs (fbnet-cifar width 0.25, batch 64: each
IR candidate's mid channels, k and stride, per layer, counted), ``dwconv_bn_forward`` and ``dwconv_bn_backward``
(with the weight gradient) timed for the baseline build (a copy of its ``_C.cpython-*.so``, as
``ab_so.py --baseline-so`` loads it) and for this checkout's, each at the ISA variants named (``--isa``; the
baseline at the first), alternating call by call: the median of ``--rounds`` rounds of 3 calls. Prints each
shape's milliseconds and the count-weighted totals. ``--as-avx2`` holds torch, oneDNN and MKL to AVX2 (the
kernels' own variant is ``--isa``'s). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_so import baseline_beside, setup  # noqa: E402


def step_dw_shapes(space, batch: int, res: int = 32) -> collections.Counter:
    """``(n, h, w, c, k, stride) -> count`` of the depthwise convs one soft supernet step runs."""
    from fbnet_fast.space import parse_candidate

    shapes: collections.Counter = collections.Counter()
    for layer in space.layers:
        for cand in map(parse_candidate, space.candidates):
            if cand.kind != "skip":
                shapes[(batch, res, res, cand.mid_channels(layer.c_in), cand.kernel, layer.stride)] += 1
        res = (res + layer.stride - 1) // layer.stride
    return shapes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-so", type=Path, required=True)
    p.add_argument("--isa", nargs="+", default=["v3"], choices=("base", "v3", "v4"),
                   help="this checkout's variants to time; the baseline runs the first")
    p.add_argument("--as-avx2", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    new = setup(args)
    import torch

    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _launch
    from fbnet_fast.ops.dwconv_bn import dwconv_bn_backward, dwconv_bn_forward
    from fbnet_fast.space import load_space
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_beside(args.baseline_so, tmp, new)
        cfg = {f"baseline {args.isa[0]}": (old, args.isa[0])}
        cfg.update({f"this {isa}": (new, isa) for isa in args.isa})
        shapes = step_dw_shapes(load_space("fbnet-cifar", width_mult=0.25), 64)
        print(f"cpu {cpu_name()}, torch {torch.backends.cpu.get_cpu_capability()}"
              f"{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}; ms, median of {args.rounds}")
        print(f"{'kernel shape':30s} {'count':>5s} " + " ".join(f"{k:>11s}" for k in cfg))
        tot: collections.Counter = collections.Counter()
        for (n, h, w, c, k, s), cnt in sorted(shapes.items()):
            g0 = torch.Generator().manual_seed(0)
            z, a, b = torch.randn(n, h, w, c, generator=g0), torch.rand(c, generator=g0) + .5, torch.randn(c) * .1
            wt, ho = torch.randn(k * k, c, generator=g0), (h - 1) // s + 1
            go, cen = torch.randn(n, ho, ho, c, generator=g0), torch.randn(c, generator=g0)
            for fname, f in (("fwd", lambda: dwconv_bn_forward(z, a, b, wt, s)),
                             ("bwd", lambda: dwconv_bn_backward(go, z, a, b, wt, s, cen, weight_grad=True))):
                ts = collections.defaultdict(list)
                for _ in range(args.rounds):
                    for key, (mod, isa) in cfg.items():
                        _launch._cpu_module = mod
                        mod.set_isa(isa)
                        f()
                        t0 = time.perf_counter()
                        f(), f(), f()
                        ts[key].append((time.perf_counter() - t0) / 3 * 1e3)
                med = {key: statistics.median(v) for key, v in ts.items()}
                for key, v in med.items():
                    tot[fname, key] += cnt * v
                print(f"{fname} {n}x{h}x{w}x{c} k{k} s{s}".ljust(30) + f" {cnt:5d} "
                      + " ".join(f"{med[key]:11.3f}" for key in cfg))
        for fname in ("fwd", "bwd"):
            print(f"{fname}, count-weighted total: " + ", ".join(f"{key} {tot[fname, key]:.1f} ms" for key in cfg))
        _launch._cpu_module = new


if __name__ == "__main__":
    main()
