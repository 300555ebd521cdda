"""The depthwise conv kernels (``dwconv_bn_forward`` / ``_backward``), this checkout vs another, A/B.

    python bench/cpu/ab_dwconv.py --baseline DIR [--threads 1] [--rounds 3] [--no-weight-grad] [--shapes JSON]

Shapes of the default search (fbnet-cifar at width 0.25, batch 64): the reduction layers' stride-2 candidates
(8, 24 and 48 channels at 32x32, k 3 and 5), a 16x16 and an 8x8 one, and a stride-1 layer for contrast. Each
measurement is a fresh process per checkout (rounds alternate them) timing each kernel call 5 x 5 times (the
median); prints the medians over rounds and the ratio baseline / this checkout. ``--shapes`` replaces the
shape list (``'[[n, h, w, c, k, stride], ...]'``). Run it alone on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkout_ab import alternate, medians, parser  # noqa: E402
SHAPES = [(64, 32, 32, 8, 3, 2), (64, 32, 32, 8, 5, 2), (64, 32, 32, 24, 3, 2), (64, 32, 32, 24, 5, 2),
          (64, 32, 32, 48, 5, 2), (64, 16, 16, 24, 3, 2), (64, 8, 8, 96, 5, 2), (64, 32, 32, 48, 3, 1)]

CHILD = r"""
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[1]))
wgrad, shapes = bool(int(sys.argv[2])), json.loads(sys.argv[3])
from fbnet_fast.ops.dwconv_bn import dwconv_bn_forward, dwconv_bn_backward
res = {}
for (n, h, w, c, k, s) in shapes:
    torch.manual_seed(0)
    z, a, b, wt = torch.randn(n, h, w, c), torch.rand(c) + .5, torch.randn(c) * .1, torch.randn(k * k, c)
    ho = (h - 1) // s + 1
    g, cen = torch.randn(n, ho, ho, c), torch.randn(c)
    for name, f in (("fwd", lambda: dwconv_bn_forward(z, a, b, wt, s)),
                    ("bwd", lambda: dwconv_bn_backward(g, z, a, b, wt, s, cen, weight_grad=wgrad))):
        ts = []
        for r in range(5):
            t0 = time.perf_counter()
            for _ in range(5):
                f()
            ts.append((time.perf_counter() - t0) / 5 * 1e3)
        res[f"{name} {n}x{h}x{w}x{c} k{k} s{s}"] = sorted(ts)[2]
print(json.dumps(res))
"""


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--no-weight-grad", action="store_true", help="backward without the weight gradient (a theta step)")
    p.add_argument("--shapes", type=json.loads, default=SHAPES, help="JSON list of [n, h, w, c, k, stride]")
    args = p.parse_args()
    out = alternate(args.baseline, CHILD, [str(args.threads), "0" if args.no_weight_grad else "1",
                                           json.dumps(args.shapes)], args.rounds)
    print(f"dwconv_bn kernels, {args.threads} thread(s), median of {args.rounds} rounds (ms)"
          + (", backward without weight gradient" if args.no_weight_grad else ""))
    for key in out["this"][0]:
        b, n = medians(out, key)
        print(f"  {key:28s} baseline {b:8.3f}  this {n:8.3f}  ({b / n:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
