"""Interleaved A/B of the long-product weight-gradient route (``gemm.TN_LONG_NARROW``) on a whole supernet step.

    python bench/cpu/ab_tn_route.py [--threads 1] [--rounds 11] [--width 1.0] [--batch 32] [--phase weight]

One soft supernet step of fbnet-cifar (every candidate of every layer active, as ``ab_supernet.py``), fused path,
in one process: rounds alternate between ``TN_LONG_NARROW`` at its value (v4: weight gradients ``[M, p]^T [M, q]``
with at least ``TN_LONG_M`` rows and a narrow side up to that value on the kernel) and at 0 (the rule before: only
narrow sides up to ``TN_MAX_NARROW``, MKL otherwise), the order flipping every round. The rule is read once per
layer and step (``gemm.rules``), so the switch takes effect at the next step. ``--phase theta``: every weight
frozen (the theta step; no weight gradients, so no change is expected). Prints the medians, the fastest rounds and
the median of the per-round ratios, with the CPU and the kernels' ISA. Only v4 takes the route: elsewhere the
two settings are the same code and the ratio reads the noise. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--phase", choices=("weight", "theta"), default="weight")
    args = p.parse_args()

    from fbnet_fast.malloc import long_lived_frozen, tune_malloc
    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _ext, gemm
    from fbnet_fast.space import load_space
    from fbnet_fast.supernet import Supernet

    torch.set_num_threads(args.threads)
    tune_malloc()
    torch.manual_seed(0)
    net = Supernet(load_space("fbnet-cifar", width_mult=args.width), impl="cpp").to(memory_format=torch.channels_last)
    if args.phase == "theta":
        for q in net.weight_parameters():
            q.requires_grad_(False)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step() -> float:
        t = time.perf_counter()
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()
        return time.perf_counter() - t

    on = gemm.TN_LONG_NARROW
    settings = {"route": on, "before": 0}
    ts: dict[str, list[float]] = {k: [] for k in settings}
    try:
        with long_lived_frozen():  # the collector as a search's epochs run
            for k, v in settings.items():  # one untimed warm-up step each
                gemm.TN_LONG_NARROW = v
                step()
            for r in range(args.rounds):
                for k in (("route", "before") if r % 2 == 0 else ("before", "route")):
                    gemm.TN_LONG_NARROW = settings[k]
                    ts[k].append(step())
    finally:
        gemm.TN_LONG_NARROW = on
    med = {k: statistics.median(v) for k, v in ts.items()}
    fast = {k: min(v) for k, v in ts.items()}
    ratio = statistics.median(b / a for a, b in zip(ts["route"], ts["before"]))
    print(f"{cpu_name()}, kernels {_ext.load().isa()}, torch capability {torch.backends.cpu.get_cpu_capability()}, "
          f"threads {args.threads}; fbnet-cifar width {args.width}, batch {args.batch}, {args.phase} step, "
          f"{args.rounds} rounds")
    print(f"TN_LONG_NARROW {on} vs 0: medians {med['route'] * 1e3:.1f} vs {med['before'] * 1e3:.1f} ms "
          f"({med['before'] / med['route']:.3f}x), fastest {fast['route'] * 1e3:.1f} vs {fast['before'] * 1e3:.1f} ms "
          f"({fast['before'] / fast['route']:.3f}x), per-round median {ratio:.3f}x")


if __name__ == "__main__":
    main()
