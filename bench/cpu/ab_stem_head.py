"""The stem's and the head's training steps (forward and backward), eager vs fused.

    python bench/cpu/ab_stem_head.py [--threads 1 2] [--rounds 7] [--batch 64]

fbnet-cifar at width 0.25, channels_last input: the stem (3x3 conv 3 -> 8 + BN + ReLU at 32x32) and the head
(88 -> 1504 channels on 4x4 maps + BN + ReLU + pool + classifier, 10 classes). ``Stem.forward`` /
``Head.forward`` (eager: BatchNorm, ReLU and the pool as separate passes) against ``fbnet_fast.ops.stem_op`` /
``head_op`` (``impl="cpp"``: fbnet_fast/ops/head_fused.py). Rounds alternate the two; each round times 20
steps; prints the medians and the ratios. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fbnet_fast.blocks import Head, Stem
from fbnet_fast.ops import head_op, stem_op


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    head = Head(c_in=88, c_head=1504, num_classes=10).train()
    stem = Stem(c_in=3, c_out=8, stride=1).train()
    xh = torch.randn(args.batch, 88, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    xs = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    gs = torch.randn(args.batch, 8, 32, 32).contiguous(memory_format=torch.channels_last)
    runs = {
        ("head", "eager"): lambda: torch.nn.functional.cross_entropy(head(xh), y).backward(),
        ("head", "fused"): lambda: torch.nn.functional.cross_entropy(head_op(xh, head, impl="cpp"), y).backward(),
        ("stem", "eager"): lambda: stem(xs).backward(gs),
        ("stem", "fused"): lambda: stem_op(xs, stem, impl="cpp").backward(gs),
    }
    print(f"training steps, batch {args.batch}: stem 3->8 at 32x32, head 88->1504 at 4x4; torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}); median of {args.rounds} rounds of 20 steps")
    for t in args.threads:
        torch.set_num_threads(t)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
        for f in runs.values():
            f()  # warm-up
        for _ in range(args.rounds):
            for key, f in runs.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    f()
                times[key].append((time.perf_counter() - t0) / 20 * 1e3)
        for part in ("stem", "head"):
            e, fu = statistics.median(times[(part, "eager")]), statistics.median(times[(part, "fused")])
            print(f"  {t} thread(s) {part}: eager {e:.2f} ms  fused {fu:.2f} ms  ({e / fu:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
