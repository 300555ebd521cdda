"""The small-product kernel's routing limit (``gemm.NARROW_N``) at several values, in one process, A/B.

    python bench/cpu/ab_routing.py [--limits 8,48,4096] [--phase step|theta|eval] [--threads 1] [--rounds 11]
                                   [--isa v3|v4] [--as-avx2]

:func:`fbnet_fast.ops.gemm.small_rule` sends a product to our small kernel where its output is at most
``NARROW_N`` columns wide (or long over a short inner dimension); every other product goes to torch's BLAS, and
an IR candidate's one-call evaluation (``_ir_eval_cpp``) runs only where both its products stay on the small
kernel. The rule is read at every call, so this tool switches the limit between rounds on one supernet, one
batch, one process: the default search's weight step (``step``: fbnet-cifar width 0.25, batch 64, every
candidate soft, forward + cross-entropy + backward), its θ step (``theta``: weights frozen), or the supernet
evaluation's forward (``eval``: eval mode, batch 256 as ``Searcher`` evaluates, softmax weights, no gradient).
``--width`` / ``--batch`` change the supernet and batch
(e.g. ``--width 1.0 --batch 32``, the speed issue's supernet step). Rounds rotate the order; medians. The limits change which kernel computes a product, so the bits may differ
between them (printed: the largest difference of the first round's outputs). ``--isa`` picks our kernels'
variant (default ``v3``, AVX2); ``--as-avx2`` also holds torch, oneDNN and MKL to AVX2 (an AVX2-only CPU's
instruction mix on this one's cores). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_blas import step_net  # noqa: E402  (the step A/Bs' supernet)
from search_wall import AVX2_ENV  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limits", default="8,48,4096", help="comma-separated NARROW_N values; the first is the base")
    p.add_argument("--phase", choices=("step", "theta", "eval"), default="step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--width", type=float, default=0.25, help="fbnet-cifar's width multiplier")
    p.add_argument("--batch", type=int, default=None, help="default: 256 for eval, 64 for the steps")
    p.add_argument("--isa", choices=("v3", "v4"), default="v3", help="our kernels' variant")
    p.add_argument("--as-avx2", action="store_true")
    args = p.parse_args(argv)
    limits = [int(v) for v in args.limits.split(",")]
    if args.as_avx2:
        os.environ.update(AVX2_ENV)
    import torch

    from fbnet_fast.malloc import tune_malloc
    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _launch, gemm

    tune_malloc()
    torch.set_num_threads(args.threads)
    if args.as_avx2 and args.isa != "v3":
        raise SystemExit("--as-avx2 runs the v3 variant (an AVX2-only CPU has no v4)")
    _launch.cpu_ext().set_isa(args.isa)
    batch = args.batch or (256 if args.phase == "eval" else 64)
    ns = argparse.Namespace(width=args.width, batch=batch, frozen=args.phase != "step")
    net, x, y = step_net(ns)
    if args.phase == "eval":
        net.eval()
        w_eval = torch.softmax(torch.randn(len(net.layers), len(net.space.candidates),
                                           generator=torch.Generator().manual_seed(0)), -1)

    def run(seed: int) -> torch.Tensor:
        if args.phase == "eval":
            with torch.no_grad():
                return net(x, w_eval)
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(seed))
        loss = torch.nn.functional.cross_entropy(net(x, w), y)
        loss.backward()
        return loss.detach()

    first = {}
    for lim in limits:  # warm-up, and the outputs compared
        gemm.NARROW_N = lim
        first[lim] = run(0)
        run(1)
    times: dict[int, list[float]] = {lim: [] for lim in limits}
    for r in range(args.rounds):
        k = r % len(limits)
        for lim in limits[k:] + limits[:k]:
            gemm.NARROW_N = lim
            t0 = time.perf_counter()
            run(r)
            times[lim].append(time.perf_counter() - t0)
    print(f"cpu {cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fused ISA "
          f"{_launch.cpu_ext().isa()}{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}; "
          f"phase {args.phase}, width {args.width}, batch {batch}; medians of {args.rounds} rotating rounds")
    base = statistics.median(times[limits[0]])
    for lim in limits:
        m = statistics.median(times[lim])
        diff = (first[lim] - first[limits[0]]).abs().max().item()
        print(f"  NARROW_N={lim:4d}: {m * 1e3:8.1f} ms ({base / m:.3f}x vs {limits[0]}), fastest "
              f"{min(times[lim]) * 1e3:.1f} ms, max |output - limit {limits[0]}'s| {diff:.2e}")


if __name__ == "__main__":
    main()
