"""Interleaved A/B of one whole-supernet training step: eager channels_last vs fused.

``python bench/cpu/ab_supernet.py [threads] [rounds]``: fbnet-cifar at width 1.0, batch 32 (the
pytest-benchmark supernet case, ``bench_mixed_op._supernet``), soft Gumbel weights (all 9
candidates of all 22 layers active), forward + cross-entropy + backward. Rounds alternate
(eager, fused, eager, fused, ...) after one untimed warm-up step each, so a shared machine's
load falls on both alike; eager NCHW is left out (slower than channels_last on this CPU in
every run so far). Prints the medians and writes ``bench/results/ab_supernet.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # siblings, bench/conftest.py
import bench_mixed_op as b  # noqa: E402

OUT = Path(__file__).parents[1] / "results" / "ab_supernet.json"
PROVIDERS = ("eager_cl", "fused")


def main(threads: int, rounds: int) -> None:
    torch.set_num_threads(threads)
    nets = {p: b._supernet(*b.SUPERNET_PROVIDERS[p]) for p in PROVIDERS}

    def step(p):
        net, x, y = nets[p]
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()

    for p in PROVIDERS:
        step(p)
    ts = {p: [] for p in PROVIDERS}
    for _ in range(rounds):
        for p in PROVIDERS:
            t = time.perf_counter()
            step(p)
            ts[p].append(time.perf_counter() - t)
    med = {p: sorted(v)[len(v) // 2] for p, v in ts.items()}
    print(f"supernet step (fbnet-cifar, width 1.0, batch {b.SUPERNET_BATCH}, threads={threads}, median of {rounds}): "
          f"eager_cl {med['eager_cl']:.2f} s, fused {med['fused']:.2f} s, "
          f"speed-up {med['eager_cl'] / med['fused']:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(threads=threads, rounds_s=ts, median_s=med, timestamp=time.time()), indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
