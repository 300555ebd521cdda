"""How should a whole network be timed so that a second measurement agrees with the first, and a
table fitted to it predicts held-out networks?

    python bench/lut/network_protocols.py --lut LUT.json -n 200 --reps 2 [--rounds 100] [--out protocols.json]
    python bench/lut/network_protocols.py --backend onnxruntime --width-mult 0.25 -n 40 --reps 4

Draws networks of the LUT's space (``--lut``: as ``lut fit`` does, ``-n`` of them, uniform, biased to
fast and to slow blocks, and the presets; without it ``-n`` uniform ones of ``--space`` /
``--width-mult``), prepares each once on a local back end (``torch-cpu``, ``onnxruntime``,
``executorch``: export / lower, session), then measures all of them ``--reps`` times with each
protocol in turn (protocols interleaved per repetition, so the machine's drift reaches all of them
alike). Per protocol: every pair of repetitions compared (Kendall's tau between the two orders, the
median and max |difference| after one common rescale, the share within +-2 %), and with ``--lut``,
per repetition, the held-out figures of a table fitted to it (``fit_table`` on 80 %, the 20 % that
``lut fit`` holds out: median |error|, share within +-10 %, Kendall tau). The protocols:

* ``groups of 10, 30 samples, 2 passes, median`` -- how ``lut fit`` / ``lut validate`` timed networks
  before the ninth session;
* ``one group, R rounds, p10, cold`` -- every network in one interleaved group, always in the same
  order, no untimed call before a sample (each sample then follows the same other network, which
  evicted it from the caches);
* ``one group, R rounds, primed, shuffled, median`` / ``p10`` (what they do now) -- one untimed call
  before each sample, a fresh random order every round;
* ``groups of 10, R rounds, primed, shuffled, p10`` -- the same in groups of 10 (``--group-size 10``).

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

from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure import get_backend
from fbnet_fast.measure.additivity import kendall_tau, sample_architectures
from fbnet_fast.measure.core import Job, cpu_name
from fbnet_fast.measure.fit import compare, fit_networks, fit_table, split_heldout
from fbnet_fast.measure.remote_runner import CLOCKS, time_interleaved
from fbnet_fast.model import build_model
from fbnet_fast.space import load_space

STATS = {"median": np.median, "p10": lambda x: np.quantile(x, 0.1), "min": np.min}


def measure(fns, clock, group: int, rounds: int, passes: int, stat: str, prime: int, shuffle: bool) -> np.ndarray:
    """Per-network latency (ms) under one protocol: groups of ``group`` networks, ``rounds`` samples
    each, the best of ``passes`` passes by ``stat``."""
    out = np.full((passes, len(fns)), np.inf)
    for p in range(passes):
        for g in range(0, len(fns), group):
            samples = time_interleaved(fns[g:g + group], repeats=rounds, clock=clock, prime=prime,
                                       shuffle_seed=1000 * p + g if shuffle else None)
            out[p, g:g + group] = [STATS[stat](s) for s in samples]
    return out.min(0)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    r = float(np.median(b / a))
    d = np.abs(b / (a * r) - 1) * 100
    return {"tau": kendall_tau(a.tolist(), b.tolist()), "median_abs_pct": float(np.median(d)),
            "max_abs_pct": float(d.max()), "within_2pct": float((d <= 2).mean()), "level": r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lut", default=None, help="draw the networks as `lut fit` does from this LUT, on its back end, "
                   "and fit a table to every measurement")
    p.add_argument("--backend", default="onnxruntime", choices=("torch-cpu", "onnxruntime", "executorch"))
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("-n", type=int, default=40, help="networks (default: %(default)s)")
    p.add_argument("--reps", type=int, default=4, help="repetitions of every protocol (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=100, help="R: rounds of the new protocols (default: %(default)s)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    table = None
    if args.lut:
        table = LatencyTable.load(args.lut)
        space = table.find_space()
        archs, _ = fit_networks(space, table, args.n, seed=0)
        backend = get_backend(table.device.get("backend", args.backend), threads=1)
    else:
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
    protocols = {"groups of 10, 30 samples, 2 passes, median (before)": (10, 30, 2, "median", 0, False),
                 f"one group, {R} rounds, p10, cold": (len(fns), R, 1, "p10", 0, False),
                 f"one group, {R} rounds, primed, shuffled, median": (len(fns), R, 1, "median", 1, True),
                 f"one group, {R} rounds, primed, shuffled, p10 (now)": (len(fns), R, 1, "p10", 1, True),
                 f"groups of 10, {R} rounds, primed, shuffled, p10": (10, R, 1, "p10", 1, True)}
    got: dict[str, list[np.ndarray]] = {k: [] for k in protocols}
    secs: dict[str, float] = {k: 0.0 for k in protocols}
    for rep in range(args.reps):
        for name, spec in protocols.items():
            t0 = time.perf_counter()
            got[name].append(measure(fns, clock, *spec))
            secs[name] += time.perf_counter() - t0
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    lat = np.median(np.stack([x for v in got.values() for x in v]), 0)
    rows = {}
    fit_i, test_i = split_heldout(len(archs), 0.2, seed=0)
    for name, vals in got.items():
        pairs = [agreement(a, b) for a, b in itertools.combinations(vals, 2)]
        rows[name] = {k: float(np.mean([q[k] for q in pairs])) for k in pairs[0]}
        rows[name]["tau_min"] = float(min(q["tau"] for q in pairs))
        rows[name]["seconds_per_measurement"] = secs[name] / args.reps
        if table is not None:  # a table fitted to each repetition, judged on the held-out 20 %
            fits = []
            for y in vals:
                fit = fit_table(table, space, [archs[i] for i in fit_i], y[fit_i].tolist(), seed=0)
                fits.append(compare(table, space, fit, [archs[i] for i in test_i], y[test_i].tolist())["fitted"])
            rows[name]["fitted_heldout"] = fits
    head = {"cpu": cpu_name(), "backend": backend.describe().get("runtime", backend.name), "clock": backend.clock,
            "space": space.name, "width_mult": args.width_mult if table is None else table.find_space().width_mult,
            "networks": len(archs), "reps": args.reps, "prepare_s": round(prep, 1),
            "latency_ms_range": [float(lat.min()), float(lat.max())]}
    print(json.dumps(head))
    print("| protocol | Kendall tau between repetitions (mean / min) | median |diff| | max |diff| | within ±2 % "
          "| s per measurement |" + (" fitted table held out, per repetition: median |err| / within ±10 % / τ |"
                                      if table is not None else ""))
    print("|---|---|---|---|---|---|" + ("---|" if table is not None else ""))
    for name, r in rows.items():
        fit = ""
        if table is not None:
            fit = " " + "; ".join(f"{f['median_abs_pct_error']:.1f} % / {f['share_within_10pct'] * 100:.0f} % / "
                                  f"{f['kendall_tau']:.3f}" for f in r["fitted_heldout"]) + " |"
        print(f"| {name} | {r['tau']:.3f} / {r['tau_min']:.3f} | {r['median_abs_pct']:.2f} % | {r['max_abs_pct']:.1f} % "
              f"| {r['within_2pct'] * 100:.0f} % | {r['seconds_per_measurement']:.1f} |{fit}")
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "protocols": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
