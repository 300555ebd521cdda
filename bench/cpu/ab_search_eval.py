"""The default search's evaluations, this checkout vs another (``--baseline``), A/B in fresh processes.

    python bench/cpu/ab_search_eval.py --baseline DIR [--threads 2] [--rounds 3] [--nets 6]

What a search evaluates besides its steps, on the default supernet (fbnet-cifar at width 0.25, the default
split: 1,000 held-out images in batches of 256, channels_last): the supernet with soft weights (all 9 candidates
of the 22 layers, BN running statistics: what every epoch's ``val acc`` is) and ``--nets`` random one-hot
architectures each with its BN statistics recalibrated (8 training-mode batches of 64, then the held-out split:
what the argmax at every epoch's end and the sampled nets at the search's end are), timed apart. Weights are a
fresh supernet's (the time does not depend on their values). Every measurement is a fresh process; rounds
alternate ``baseline`` (the fused path of the checkout at ``--baseline``, with its own build of
``fbnet_fast._C``, e.g. a ``git worktree`` of an older commit) and ``fused`` (this checkout). Prints the medians
and writes ``bench/results/ab_search_eval.json``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "results" / "ab_search_eval.json"

CHILD = r"""
import contextlib, json, sys, tempfile, time, types
import numpy as np, torch
threads, nets = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
from fbnet_fast.malloc import tune_malloc
tune_malloc()
from fbnet_fast.lut import LatencyTable
from fbnet_fast.search import SearchConfig, Searcher
from fbnet_fast.space import load_space
space = load_space("fbnet-cifar", width_mult=0.25)
ms = np.random.default_rng(0).uniform(0.05, 0.3, size=(space.num_layers, len(space.candidates)))
lut = LatencyTable.from_matrix(space, ms, fixed_ms=0.2)
s = Searcher(SearchConfig(progress=False, plots=False), tempfile.mkdtemp(), lut=lut, space=space, log=lambda m: None)
L, K = s.model.theta.shape
acc = {"recalibrate": 0.0, "evaluate": 0.0}
inner = type(s)._recalibrated_bn
@contextlib.contextmanager
def timed(self, w):
    t = time.perf_counter()
    with inner(self, w):
        acc["recalibrate"] += time.perf_counter() - t
        t = time.perf_counter()
        yield
        acc["evaluate"] += time.perf_counter() - t
s._recalibrated_bn = types.MethodType(timed, s)
g = torch.Generator().manual_seed(0)
onehot = [torch.nn.functional.one_hot(torch.randint(0, K, (L,), generator=g), K).float() for _ in range(nets + 1)]
s.evaluate(onehot[0])  # warm-up
acc = {"recalibrate": 0.0, "evaluate": 0.0}
for w in onehot[1:]:
    s.evaluate(w)
soft = torch.softmax(torch.randn(L, K, generator=torch.Generator().manual_seed(1)), -1)
s.model.eval()
s._evaluate(soft)  # warm-up
t = time.perf_counter()
s._evaluate(soft)
print(json.dumps({"soft_supernet_s": time.perf_counter() - t, "onehot_recalibrate_s": acc["recalibrate"],
                  "onehot_evaluate_s": acc["evaluate"]}))
"""


def _run(src: Path, threads: int, nets: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(nets)], env=env, cwd=src,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="another checkout (with its extension built)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nets", type=int, default=6, help="random one-hot architectures per process")
    args = p.parse_args(argv)
    providers = {"baseline": args.baseline.resolve(), "fused": ROOT}
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in providers}
    for r in range(args.rounds):
        for name, src in providers.items():
            rounds[name].append(_run(src, args.threads, args.nets))
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rounds[name][-1].items()),
                  flush=True)
    keys = list(rounds["fused"][0])
    med = {n: {k: statistics.median(x[k] for x in v) for k in keys} for n, v in rounds.items()}
    print(f"medians of {args.rounds} rounds, {args.threads} threads, {args.nets} one-hot nets a process:")
    for k in keys:
        print(f"  {k:<22} baseline {med['baseline'][k]:.3f} s, fused {med['fused'][k]:.3f} s, "
              f"{med['baseline'][k] / med['fused'][k]:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"threads": args.threads, "nets": args.nets, "baseline": str(args.baseline),
                               "rounds": rounds, "medians": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
