"""The fused depthwise kernels against eager's depthwise convolution alone, shape by shape.

    python bench/cpu/dwconv_vs_eager.py [--threads 1] [--rounds 7] [--shapes JSON]

``dwconv_bn_forward`` (BN1 + ReLU as its prologue, the conv, BN2's batch statistics) and ``dwconv_bn_backward``
(input gradient, weight gradient, BN1's sums) against ``F.conv2d(groups=C)`` on a channels_last tensor (forward;
forward + both gradients), stride 1. The eager side does less (no BN, no ReLU, no statistics), so a ratio below 1
here is an upper bound on what our kernel loses to oneDNN's. Shapes: the default search's (fbnet-cifar width 0.25,
batch 64) widest mid tensors at 8x8, 16x16 and 32x32. Medians of ``--rounds`` x 10 calls, ms. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from ab_gemm import _median_ms as ab_gemm_median_ms  # noqa: E402

SHAPES = [(64, 8, 8, 96, 3), (64, 8, 8, 96, 5), (64, 8, 8, 168, 3), (64, 8, 8, 168, 5), (64, 16, 16, 48, 5),
          (64, 32, 32, 48, 5)]


def _median_ms(f, rounds: int, calls: int = 10) -> float:
    """ab_gemm's median over ``rounds`` of one call, each round here ``calls`` calls (the kernels take well under
    a millisecond at 8x8), per call."""
    return ab_gemm_median_ms(lambda: [f() for _ in range(calls)], rounds) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shapes", type=json.loads, default=SHAPES, help="JSON list of [n, h, w, c, k]")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _ext
    from fbnet_fast.ops.dwconv_bn import dwconv_bn_backward, dwconv_bn_forward

    isa = _ext.load().isa() if _ext.available() else None
    print(f"{cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fused isa {isa}, "
          f"threads {args.threads}; median of {args.rounds} x 10 calls, ms")
    print("| shape [N, H, W, C] k | ours fwd | eager conv fwd | eager/ours | ours bwd | eager conv bwd | eager/ours |")
    print("|---|---|---|---|---|---|---|")
    for n, h, w, c, k in args.shapes:
        g = torch.Generator().manual_seed(0)
        z1 = torch.randn(n, h, w, c, generator=g)
        scale, shift = torch.rand(c, generator=g) + 0.5, 0.1 * torch.randn(c, generator=g)
        wt = 0.1 * torch.randn(k * k, c, generator=g)
        grad = torch.randn(n, h, w, c, generator=g)
        mean = z1.mean((0, 1, 2))
        ours_f = _median_ms(lambda: dwconv_bn_forward(z1, scale, shift, wt, 1, stats=True), args.rounds)
        ours_b = _median_ms(lambda: dwconv_bn_backward(grad, z1, scale, shift, wt, 1, mean, weight_grad=True),
                            args.rounds)
        x = torch.relu(z1 * scale + shift).permute(0, 3, 1, 2).requires_grad_(True)  # channels_last [N, C, H, W]
        weight = wt.t().reshape(c, 1, k, k).contiguous().requires_grad_(True)
        gy = grad.permute(0, 3, 1, 2)

        def eager_fb():
            y = F.conv2d(x, weight, padding=k // 2, groups=c)
            torch.autograd.grad(y, (x, weight), gy)

        with torch.no_grad():
            eager_f = _median_ms(lambda: F.conv2d(x, weight, padding=k // 2, groups=c), args.rounds)
        eager_b = _median_ms(eager_fb, args.rounds) - eager_f
        print(f"| {n}x{h}x{w}x{c} k{k} | {ours_f:.2f} | {eager_f:.2f} | {eager_f / ours_f:.2f}x | {ours_b:.2f} | "
              f"{eager_b:.2f} | {eager_b / ours_b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
