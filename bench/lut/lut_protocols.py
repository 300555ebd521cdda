"""Would the block-wise LUT be more reproducible timed like whole networks (primed, shuffled, p10)?

    python bench/lut/lut_protocols.py --backend onnxruntime --width-mult 0.25 [--reps 3]

Measures the full LUT of fbnet-cifar ``--reps`` times with each of two rules, alternating: ``old``
(``lut measure`` as it is: the candidates of a layer shape in interleaved rounds, always in the same
order, 40 samples, 2 passes) and ``primed+shuffled`` (the same with one untimed call before each sample
and a fresh random order every round, as ``lut fit`` now times networks). For each rule and each
statistic of the samples (the median, which the LUT's entries use, and the 10th percentile, which
they record), every pair of repetitions is compared: the mean per-layer Kendall tau between the two
orders of the candidates, and the median and max |difference| over the 198 entries after one common
rescale. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from fbnet_fast.measure import get_backend, measure_lut
from fbnet_fast.measure.additivity import kendall_tau
from fbnet_fast.measure.core import cpu_name
from fbnet_fast.space import load_space

sys.path.insert(0, str(Path(__file__).parent))
from network_protocols import agreement  # noqa: E402  (the same rescaled comparison as for networks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnxruntime", choices=("torch-cpu", "onnxruntime", "executorch"))
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = p.parse_args(argv)
    space = load_space("fbnet-cifar", width_mult=args.width_mult)
    got: dict[tuple[str, str], list[np.ndarray]] = {}
    for rep in range(args.reps):
        for rule, prime, shuffle in (("old", 0, False), ("primed+shuffled", 1, True)):
            be = get_backend(args.backend, threads=1, repeats=40, passes=2)
            be.prime, be.shuffle = prime, shuffle
            t = measure_lut(space, backend=be, progress=False)
            for stat in ("median_ms", "p10_ms"):
                got.setdefault((rule, stat), []).append(np.array(
                    [[getattr(t.layers[l][c], stat) for c in space.candidates] for l in range(space.num_layers)]))
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    rows = []
    for (rule, stat), ms in got.items():
        pairs = [(np.mean([kendall_tau(a[l].tolist(), b[l].tolist()) for l in range(len(a))]),
                  agreement(a.ravel(), b.ravel())) for a, b in itertools.combinations(ms, 2)]
        rows.append({"rule": rule, "statistic": stat.removesuffix("_ms"),
                     "per_layer_tau": float(np.mean([t for t, _ in pairs])),
                     "median_abs_pct": float(np.mean([g["median_abs_pct"] for _, g in pairs])),
                     "max_abs_pct": float(np.mean([g["max_abs_pct"] for _, g in pairs]))})
    print(json.dumps({"cpu": cpu_name(), "backend": args.backend, "width_mult": args.width_mult, "reps": args.reps}))
    print("| rule | statistic | per-layer Kendall τ between repetitions | median \\|diff\\| | max \\|diff\\| |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['statistic']} | {r['per_layer_tau']:.3f} | {r['median_abs_pct']:.2f} % | "
              f"{r['max_abs_pct']:.1f} % |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
