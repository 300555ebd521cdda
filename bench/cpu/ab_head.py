"""The head's training step (1x1 conv + BN + ReLU + pool + classifier, forward and backward), eager vs fused.

    python bench/cpu/ab_head.py [--threads 1 2] [--rounds 7] [--batch 64]

The head of fbnet-cifar at width 0.25 (88 -> 1504 channels on 4x4 maps, 10 classes), channels_last input:
``Head.forward`` (eager: conv, BatchNorm, ReLU, pool as separate passes) against ``fbnet_fast.ops.head_op``
(``impl="cpp"``: conv + BN + ReLU + pool as one Function, fbnet_fast/ops/head_fused.py). Rounds alternate the
two; each round times 20 steps; prints the medians and the ratio. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fbnet_fast.blocks import Head
from fbnet_fast.ops import head_op


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    head = Head(c_in=88, c_head=1504, num_classes=10).train()
    x = torch.randn(args.batch, 88, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = torch.randint(0, 10, (args.batch,))
    runs = {"eager": lambda: head(x), "fused": lambda: head_op(x, head, impl="cpp")}

    def step(f):
        torch.nn.functional.cross_entropy(f(), y).backward()

    print(f"head training step, batch {args.batch}, 88->1504 at 4x4; torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}); median of {args.rounds} rounds of 20 steps")
    for t in args.threads:
        torch.set_num_threads(t)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():
            step(f)  # warm-up
        for _ in range(args.rounds):
            for name, f in runs.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    step(f)
                times[name].append((time.perf_counter() - t0) / 20 * 1e3)
        e, fu = statistics.median(times["eager"]), statistics.median(times["fused"])
        print(f"  {t} thread(s): eager {e:.2f} ms  fused {fu:.2f} ms  ({e / fu:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
