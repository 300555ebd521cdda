"""Interleaved A/B of a 1x1 conv's weight gradient ``x [M, P]^T y [M, Q]``: torch (MKL) vs ``small_gemm_tn``.

    python bench/cpu/ab_tn.py [--threads 1 2] [--rounds 7] [--as-avx2] [--width 1.0 0.25] [--batch 32]

The shapes are every distinct weight-gradient product of a soft supernet step of fbnet-cifar at the given
widths and batch (``gW1 = gz1^T x``: ``[M, C_in]^T [M, mid]``; ``gW3 = gz3^T h2``: ``[M, C_out]^T [M, mid]``),
each timed alone: per round torch then the kernel, ``--calls`` calls each, median over ``--rounds``. Torch is
called as :func:`fbnet_fast.ops.gemm.mm_tn` calls it (the narrower matrix as the transposed operand); the
kernel directly. The table marks the shapes :func:`~fbnet_fast.ops.gemm.use_small_tn` routes to the kernel on
this ISA. ``--as-avx2`` holds torch, oneDNN and MKL to AVX2 and switches our kernels to their ``v3`` variant
(an AVX2-only CPU, emulated on an AVX-512 one: MKL on AMD CPUs runs its AVX2 code either way). Writes
``bench/results/ab_tn.json``. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--as-avx2" in sys.argv:  # before torch loads
    sys.path.insert(0, str(Path(__file__).parent))
    from search_wall import AVX2_ENV

    os.environ.update(AVX2_ENV)

import torch  # noqa: E402

from fbnet_fast.measure.core import cpu_name  # noqa: E402
from fbnet_fast.ops import _ext, gemm  # noqa: E402
from fbnet_fast.space import load_space  # noqa: E402

OUT = Path(__file__).parents[1] / "results" / "ab_tn.json"


def shapes(width: float, batch: int) -> list[tuple[int, int, int]]:
    """Distinct ``(M, P, Q)`` weight-gradient products (``P <= Q``) of an fbnet-cifar supernet step."""
    from fbnet_fast.supernet import Supernet

    net = Supernet(load_space("fbnet-cifar", width_mult=width), impl="reference").eval()
    found: set[tuple[int, int, int]] = set()

    def hook(layer, inputs, output):
        (_, _, h, w), (_, _, ho, wo) = inputs[0].shape, output.shape
        for b in layer.candidates:
            if getattr(b, "kind", None) == "ir":
                for m, c in ((batch * h * w, b.c_in), (batch * ho * wo, b.c_out)):
                    found.add((m, *sorted((c, b.mid))))

    handles = [layer.register_forward_hook(hook) for layer in net.layers]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32), net.sample_weights(1.0, generator=torch.Generator().manual_seed(0)))
    for hd in handles:
        hd.remove()
    return sorted(found, key=lambda s: (-s[0], s[1], s[2]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--width", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--as-avx2", action="store_true", help="as an AVX2-only CPU runs it (emulated on this one)")
    args = p.parse_args(argv)
    ext = _ext.load()
    if args.as_avx2:
        ext.set_isa("v3")
    cases = sorted({s for w in args.width for s in shapes(w, args.batch)}, key=lambda s: (-s[0], s[1], s[2]))
    print(f"cpu {cpu_name()}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), kernel ISA {ext.isa()}"
          f"{' (emulated AVX2)' if args.as_avx2 else ''}; fbnet-cifar widths {args.width}, batch {args.batch}")
    rows = []
    for th in args.threads:
        torch.set_num_threads(th)
        for m, pp, q in cases:
            g = torch.Generator().manual_seed(m + pp + q)
            x, y = torch.randn(m, pp, generator=g), torch.randn(m, q, generator=g)
            out = torch.empty(pp, q)

            def run_torch():
                torch.mm(x.t(), y)

            def run_kernel():
                ext.small_gemm_tn(x.data_ptr(), m, pp, pp, y.data_ptr(), q, q, out.data_ptr(), 0, 0, False)

            ts: dict[str, list[float]] = {"torch": [], "kernel": []}
            for f in (run_torch, run_kernel):
                f()
            for _ in range(args.rounds):
                for name, f in (("torch", run_torch), ("kernel", run_kernel)):
                    t = time.perf_counter()
                    for _ in range(args.calls):
                        f()
                    ts[name].append((time.perf_counter() - t) / args.calls)
            med = {k: statistics.median(v) for k, v in ts.items()}
            flop = 2 * m * pp * q
            routed = gemm.use_small_tn(x, y)
            rows.append(dict(threads=th, m=m, p=pp, q=q, routed_to_kernel=routed, torch_ms=1e3 * med["torch"],
                             kernel_ms=1e3 * med["kernel"], ratio=med["torch"] / med["kernel"]))
            print(f"threads {th}  [{m:6d}, {pp:4d}]^T [{m:6d}, {q:4d}]  torch {1e3 * med['torch']:7.3f} ms "
                  f"({flop / med['torch'] / 1e9:6.1f} GFLOP/s)  kernel {1e3 * med['kernel']:7.3f} ms "
                  f"({flop / med['kernel'] / 1e9:6.1f})  torch/kernel {med['torch'] / med['kernel']:5.2f}x"
                  f"{'  <- routed to the kernel' if routed else ''}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(cpu=cpu_name(), isa=ext.isa(), as_avx2=args.as_avx2,
                                   torch=torch.__version__, rows=rows, timestamp=time.time()), indent=1))


if __name__ == "__main__":
    main()
