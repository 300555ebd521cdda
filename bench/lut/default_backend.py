"""Which back end should the no-argument search measure? How candidates differ within a layer, per back end.

    python bench/lut/default_backend.py torch.json ort.json et_fp32.json et_int8.json [--reference et_fp32.json ...]

The paper's trade is *which block* each layer runs; a latency table serves it only if the blocks of a
layer differ there the way they differ on the runtime the net is deployed with. For each LUT (same
space, width, batch) this prints, over the layers:

* ``contrast``: median over layers of slowest / fastest non-skip candidate (1.0 = every block costs
  the same, the search can only trade "skip or not");
* ``cv``: median coefficient of variation of the non-skip candidates;
* ``skip share``: median of (non-skip mean - skip) / non-skip mean: how much of a layer's cost the
  search saves by skipping it;
* per reference LUT (the deployment runtimes): the mean within-layer Kendall tau of the non-skip
  candidates (how alike the two rank the blocks a search chooses between), and of all candidates.

No measuring: build the LUTs with ``fbnet-fast lut measure`` first (commands in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure.additivity import kendall_tau


def _label(t: LatencyTable) -> str:
    d = t.device
    return f"{d.get('backend', '?')}" + (f" {d['dtype']}" if d.get("dtype") else "")


def profile(t: LatencyTable) -> dict[str, float]:
    cands = [c for c in t.candidates if c != "skip"]
    contrast, cv, skip_share = [], [], []
    for layer in t.layers:
        v = [layer[c].median_ms for c in cands]
        contrast.append(max(v) / min(v))
        cv.append(statistics.pstdev(v) / statistics.fmean(v))
        if "skip" in layer:
            skip_share.append((statistics.fmean(v) - layer["skip"].median_ms) / statistics.fmean(v))
    return {"contrast": statistics.median(contrast), "cv": statistics.median(cv),
            "skip_share": statistics.median(skip_share) if skip_share else float("nan"),
            "min_architecture_ms": t.min_latency(), "fixed_ms": t.fixed_ms}


def agreement(a: LatencyTable, b: LatencyTable) -> dict[str, float]:
    non_skip = [c for c in a.candidates if c != "skip"]
    t_ns, t_all = [], []
    for la, lb in zip(a.layers, b.layers):
        t_ns.append(kendall_tau([la[c].median_ms for c in non_skip], [lb[c].median_ms for c in non_skip]))
        t_all.append(kendall_tau([la[c].median_ms for c in a.candidates], [lb[c].median_ms for c in a.candidates]))
    return {"tau_non_skip": statistics.fmean(t_ns), "tau_all": statistics.fmean(t_all)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("luts", nargs="+", help="LUT JSON files of one space")
    p.add_argument("--reference", action="append", default=[], help="a deployment runtime's LUT to rank against "
                   "(repeatable; default: every LUT)")
    p.add_argument("--out", help="write the figures here (JSON)")
    args = p.parse_args(argv)
    tables = {path: LatencyTable.load(path) for path in dict.fromkeys(args.luts + args.reference)}
    fps = {t.fingerprint for t in tables.values()}
    if len(fps) > 1:
        raise SystemExit(f"the LUTs are for different spaces (fingerprints {sorted(fps)})")
    refs = args.reference or list(tables)
    res = {}
    for path in args.luts:
        t = tables[path]
        row = {"label": _label(t), **profile(t)}
        row["vs"] = {r: agreement(t, tables[r]) for r in refs if r != path}
        res[path] = row
    print(f"{'LUT':28s} {'back end':18s} {'contrast':>8s} {'cv':>6s} {'skip share':>10s} {'fastest net':>11s}")
    for path, r in res.items():
        print(f"{Path(path).name:28s} {r['label']:18s} {r['contrast']:8.2f} {r['cv']:6.2f} {r['skip_share']:10.2f} "
              f"{r['min_architecture_ms']:9.3f}ms")
    print("\nmean within-layer Kendall tau, non-skip candidates (all candidates):")
    for path, r in res.items():
        print(f"  {Path(path).name:28s} " + "  ".join(
            f"vs {Path(k).name}: {v['tau_non_skip']:.2f} ({v['tau_all']:.2f})" for k, v in r["vs"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
