"""Every layer of the default search's supernet in each way the search runs it, fused vs reference.

    python bench/cpu/ab_layer_modes.py [--threads 2] [--rounds 2]

fbnet-cifar at width 0.25, channels_last, the 22 mixed ops on their own inputs (one forward of the stem and
the layers before), soft Gumbel weights at tau 5 (all 9 candidates), per layer:

* ``weight``: forward + backward with every parameter and the input wanting a gradient (a weight step, batch 64);
* ``theta``: forward + backward with the parameters frozen (a theta step, batch 64); the first layer's input
  wants no gradient, as the frozen stem's output does not;
* ``eval``: forward without autograd, BN on running statistics, batch 256 (the end-of-epoch evaluation of
  the supernet);
* ``recal``: forward without autograd in training mode, one-hot weights of a random architecture, batch 64
  (the BN recalibration before an architecture is evaluated);
* ``eval 1-hot``: ``eval`` with those one-hot weights (the evaluation of one sampled architecture).

Median of 5 calls per round, the best round; ``fused`` = ``impl="cpp"``, ``reference`` = the eager mixed op.
Prints per layer reference / fused ms and the ratio, and the sums. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

MODES = ("weight", "theta", "eval", "recal", "eval 1-hot")


def _median_ms(f, n: int = 5) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fbnet_fast.malloc import tune_malloc

    tune_malloc()  # as the fbnet-fast commands run
    from fbnet_fast.space import load_space
    from fbnet_fast.supernet import Supernet

    torch.manual_seed(0)
    m = Supernet(load_space("fbnet-cifar", width_mult=0.25), impl="cpp").to(memory_format=torch.channels_last)
    with torch.no_grad():  # running statistics that are not the initial 0 / 1
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    k = len(m.space.candidates)
    soft = m.sample_weights(5.0).detach()
    idx = torch.randint(0, k, (len(m.layers),), generator=torch.Generator().manual_seed(1))
    onehot = torch.zeros(len(m.layers), k).scatter_(1, idx[:, None], 1.0)

    def layer_inputs(batch: int, w: torch.Tensor) -> list[torch.Tensor]:
        h = m.stem(torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last))
        ins = []
        with torch.no_grad():
            for op, wl in zip(m.layers, w):
                ins.append(h.detach())
                h = op(h, wl)
        return ins

    m.train()
    ins = {64: layer_inputs(64, soft), 256: layer_inputs(256, soft), "1hot": layer_inputs(64, onehot)}
    ins256_1hot = layer_inputs(256, onehot)
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(args.rounds):
        for impl in ("cpp", "reference"):
            m.set_impl(impl)
            for l, op in enumerate(m.layers):
                def step(x, w):
                    y = op(x, w)
                    y.backward(torch.ones_like(y))

                m.train()
                for prm in op.parameters():
                    prm.requires_grad_(True)
                t = {"weight": _median_ms(lambda: step(ins[64][l].requires_grad_(True), soft[l]))}
                for prm in op.parameters():
                    prm.requires_grad_(False)
                ws = soft[l].clone().requires_grad_(True)
                t["theta"] = _median_ms(lambda: step(ins[64][l].requires_grad_(l > 0), ws))
                for prm in op.parameters():
                    prm.requires_grad_(True)
                with torch.no_grad():
                    t["recal"] = _median_ms(lambda: op(ins["1hot"][l], onehot[l]))
                    op.eval()
                    t["eval"] = _median_ms(lambda: op(ins[256][l], soft[l]))
                    t["eval 1-hot"] = _median_ms(lambda: op(ins256_1hot[l], onehot[l]))
                    op.train()
                for mode, v in t.items():
                    key = (mode, impl, l)
                    best[key] = min(best.get(key, float("inf")), v)
    print(f"default supernet per layer, {args.threads} thread(s), best of {args.rounds} rounds of medians (ms): "
          "reference / fused (ratio)")
    print("layer " + "".join(f"{mode:>26s}" for mode in MODES))
    sums = {mode: [0.0, 0.0] for mode in MODES}
    for l in range(len(m.layers)):
        row = f"L{l:02d}  "
        for mode in MODES:
            r, f = best[(mode, "reference", l)], best[(mode, "cpp", l)]
            sums[mode][0] += r
            sums[mode][1] += f
            row += f"{r:9.2f} {f:8.2f} ({r / f:4.2f}x)"
        print(row)
    print("sum  " + "".join(f"{r:9.1f} {f:8.1f} ({r / f:4.2f}x)" for r, f in sums.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
