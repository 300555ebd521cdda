"""``fbnet-fast train``'s evaluation: the fused forward (BN running statistics) vs the eager net with BN folded.

    python bench/cpu/ab_eval.py [--threads 1 2] [--rounds 7] [--arch band-0.6]

One of the evidence study's random nets (bench/cpu/ab_train.py's ARCHS) at fbnet-cifar width 0.25, its BN
statistics moved by three training-mode batches, evaluated on 1,000 random channels_last images in batches of
256 (as ``Trainer.evaluate``): the model itself in eval mode with its blocks as fused ops (``impl="cpp"``)
against ``fold_batchnorm`` of it run eager (what the trainer evaluated before), alternating, median of
``--rounds``. Prints the largest logit difference too. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ab_train import ARCHS  # noqa: E402

from fbnet_fast.export import fold_batchnorm  # noqa: E402
from fbnet_fast.model import build_model  # noqa: E402
from fbnet_fast.space import load_space  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--arch", default="band-0.6", choices=list(ARCHS))
    args = p.parse_args(argv)
    space = load_space("fbnet-cifar", width_mult=0.25)
    torch.manual_seed(0)
    model = build_model(space, ARCHS[args.arch].split()).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    model.eval()
    folded = fold_batchnorm(model)
    folded.impl = "reference"
    folded = folded.to(memory_format=torch.channels_last)
    model.impl = "cpp"
    x = torch.randn(1000, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def run(net):
        with torch.no_grad():
            return torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)])

    print(f"largest logit difference fused vs folded: {float((run(model) - run(folded)).abs().max()):.2e}")
    for th in args.threads:
        torch.set_num_threads(th)
        res: dict[str, list[float]] = {"fused": [], "folded eager": []}
        for _ in range(args.rounds):
            for k, net in (("fused", model), ("folded eager", folded)):
                t = time.perf_counter()
                run(net)
                res[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
        print(f"{th} thread(s), {args.arch}, 1,000 images: fused {med['fused']:.1f} ms, folded eager "
              f"{med['folded eager']:.1f} ms: {med['folded eager'] / med['fused']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
