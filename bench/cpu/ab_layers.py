"""Every layer of the default search's supernet, forward + backward, this checkout vs another, A/B.

    python bench/cpu/ab_layers.py --baseline DIR [--threads 1] [--rounds 3]

fbnet-cifar at width 0.25, batch 64, soft Gumbel weights at tau 5 (all 9 candidates), channels_last, the fused
kernels (``impl="cpp"``). Each measurement is a fresh process per checkout (rounds alternate them) that runs the
stem and the 22 mixed ops once to get each layer's input, then times each layer's forward + backward 5 times
(median). Prints per layer the medians over rounds and the ratio baseline / this checkout, and their sums.
``DIR``: e.g. a ``git worktree`` of an older commit with its own build of ``fbnet_fast._C``. Run it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkout_ab import alternate, medians, parser  # noqa: E402

CHILD = r"""
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[1]))
from fbnet_fast.space import load_space
from fbnet_fast.supernet import Supernet
torch.manual_seed(0)
m = Supernet(load_space("fbnet-cifar", width_mult=0.25), impl="cpp").to(memory_format=torch.channels_last).train()
x = torch.randn(64, 3, 32, 32).to(memory_format=torch.channels_last)
w = m.sample_weights(5.0).detach()
with torch.no_grad():
    h = m.stem(x)
ins = []
for l, op in enumerate(m.layers):
    ins.append(h.detach())
    with torch.no_grad():
        h = op(h, w[l])
res = {}
for l, op in enumerate(m.layers):
    xi = ins[l].clone().requires_grad_(True)
    ts = []
    for r in range(5):
        t0 = time.perf_counter()
        y = op(xi, w[l])
        y.backward(torch.ones_like(y))
        ts.append(time.perf_counter() - t0)
    res[l] = sorted(ts)[2] * 1e3
print(json.dumps(res))
"""


def main() -> int:
    p = parser(__doc__)
    args = p.parse_args()
    out = alternate(args.baseline, CHILD, [str(args.threads)], args.rounds)
    print(f"default supernet, per layer fwd+bwd, {args.threads} thread(s), median of {args.rounds} rounds (ms)")
    tb = tn = 0.0
    for layer in out["this"][0]:
        b, n = medians(out, layer)
        tb, tn = tb + b, tn + n
        print(f"  L{int(layer):02d} baseline {b:8.2f}  this {n:8.2f}  ({b / n:.2f}x)")
    print(f"  sum baseline {tb:.1f}  this {tn:.1f}  ({tb / tn:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
