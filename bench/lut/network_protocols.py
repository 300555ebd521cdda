"""How should a whole network be timed so that a second measurement agrees with the first?

    python bench/lut/network_protocols.py --backend onnxruntime --width-mult 0.25 -n 40 --reps 4 \
        [--rounds 200] [--out protocols.json]

Draws ``-n`` uniform networks of fbnet-cifar, prepares each once on a local back end (``torch-cpu``,
``onnxruntime``, ``executorch``: export / lower, session), then measures all of them ``--reps``
times with each protocol in turn (protocols interleaved per repetition, so the machine's drift
reaches all of them alike) and compares every pair of repetitions of one protocol: Kendall's tau
between the two orders, the median and max |difference| after one common rescale (the machine's
level may move between repetitions), and the share within +-2 %. The protocols:

* ``groups of 10, 30 samples, 2 passes, median`` -- how ``lut fit`` / ``lut validate`` timed networks
  before the ninth session (10 networks interleaved at a time, best pass by median);
* ``groups of 10, R rounds, p10`` -- more samples and a low quantile, groups kept;
* ``one group, R rounds, median`` / ``p10`` / ``min`` -- every network in one interleaved group
  (what they do now, with p10), each round one sample of every network.

Nothing else may run on the machine meanwhile (the figures are about the machine's own noise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fbnet_fast.measure import get_backend
from fbnet_fast.measure.additivity import kendall_tau, sample_architectures
from fbnet_fast.measure.core import Job, cpu_name
from fbnet_fast.measure.remote_runner import CLOCKS, time_interleaved
from fbnet_fast.model import build_model
from fbnet_fast.space import load_space

STATS = {"median": np.median, "p10": lambda x: np.quantile(x, 0.1), "min": np.min}


def measure(fns, clock, group: int, rounds: int, passes: int, stat: str) -> np.ndarray:
    """Per-network latency (ms) under one protocol: groups of ``group`` networks, ``rounds`` samples
    each, the best of ``passes`` passes by ``stat``."""
    out = np.full((passes, len(fns)), np.inf)
    for p in range(passes):
        for g in range(0, len(fns), group):
            samples = time_interleaved(fns[g:g + group], repeats=rounds, clock=clock)
            out[p, g:g + group] = [STATS[stat](s) for s in samples]
    return out.min(0)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    r = float(np.median(b / a))
    d = np.abs(b / (a * r) - 1) * 100
    return {"tau": kendall_tau(a.tolist(), b.tolist()), "median_abs_pct": float(np.median(d)),
            "max_abs_pct": float(d.max()), "within_2pct": float((d <= 2).mean()), "level": r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnxruntime", choices=("torch-cpu", "onnxruntime", "executorch"))
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("-n", type=int, default=40, help="networks (default: %(default)s)")
    p.add_argument("--reps", type=int, default=4, help="repetitions of every protocol (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=200, help="R: rounds of the new protocols (default: %(default)s)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    space = load_space(args.space, width_mult=args.width_mult)
    archs = sample_architectures(space, args.n, seed=args.seed)
    backend = get_backend(args.backend, threads=1)
    shape = (1, space.in_channels, space.input_size, space.input_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        fns = [backend.prepare(Job(f"net{i}", (lambda a=a: build_model(space, a)), shape)) for i, a in enumerate(archs)]
    prep = time.perf_counter() - t0
    clock = CLOCKS[backend.clock]
    R = args.rounds
    protocols = {"groups of 10, 30 samples, 2 passes, median (before)": (10, 30, 2, "median"),
                 f"groups of 10, {R} rounds, p10": (10, R, 1, "p10"),
                 f"one group, {R} rounds, median": (len(fns), R, 1, "median"),
                 f"one group, {R} rounds, p10 (now)": (len(fns), R, 1, "p10"),
                 f"one group, {R} rounds, min": (len(fns), R, 1, "min")}
    got: dict[str, list[np.ndarray]] = {k: [] for k in protocols}
    secs: dict[str, float] = {k: 0.0 for k in protocols}
    for rep in range(args.reps):
        for name, (g, r, ps, st) in protocols.items():
            t0 = time.perf_counter()
            got[name].append(measure(fns, clock, g, r, ps, st))
            secs[name] += time.perf_counter() - t0
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    lat = np.median(np.stack([x for v in got.values() for x in v]), 0)
    rows = {}
    for name, vals in got.items():
        pairs = [agreement(a, b) for a, b in itertools.combinations(vals, 2)]
        rows[name] = {k: float(np.mean([q[k] for q in pairs])) for k in pairs[0]}
        rows[name]["tau_min"] = float(min(q["tau"] for q in pairs))
        rows[name]["seconds_per_measurement"] = secs[name] / args.reps
    head = {"cpu": cpu_name(), "backend": backend.describe().get("runtime", args.backend), "clock": backend.clock,
            "width_mult": args.width_mult, "networks": args.n, "reps": args.reps, "prepare_s": round(prep, 1),
            "latency_ms_range": [float(lat.min()), float(lat.max())]}
    print(json.dumps(head))
    print(f"| protocol | Kendall tau (mean / min of {args.reps * (args.reps - 1) // 2} pairs) | median |diff| | "
          "max |diff| | within ±2 % | s per measurement |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['tau']:.3f} / {r['tau_min']:.3f} | {r['median_abs_pct']:.2f} % | {r['max_abs_pct']:.1f} % "
              f"| {r['within_2pct'] * 100:.0f} % | {r['seconds_per_measurement']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "protocols": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
