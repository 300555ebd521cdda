"""How far apart are two measurements of the same networks? The floor under any latency predictor.

    python bench/lut/network_spread.py LUT.fit.report.json [--all] [--group-size 10] [--statistic median]

re-measures the networks of a ``fbnet-fast lut fit`` report (by default its held-out ones) on the
LUT's own back end with the fit's settings (``validate_lut``: by default all of them in one group
timed in interleaved rounds, the statistic the fit used), then compares the new latencies with the
report's: median and max |difference| in %, the share within +-10 %, and Kendall's tau between the
two. No predictor can beat these figures on these networks: a held-out error is measured against
one of two such measurements, and a tau against one of two such orders. The same figures with
groups of 10 (``--group-size 10``, how fits measured before the ninth session) show how much of the
spread is drift between groups.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure import backend_from_device
from fbnet_fast.measure.additivity import STATISTICS, kendall_tau, validate_lut
from fbnet_fast.space import Architecture


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="the .fit.report.json a `fbnet-fast lut fit` wrote")
    p.add_argument("--lut", help="the block-wise LUT the fit started from (default: the report's name without "
                   ".fit.report.json + .json)")
    p.add_argument("--all", action="store_true", help="every network of the report, not only the held-out ones")
    p.add_argument("--group-size", type=int, default=0, help="networks per interleaved group; 0: one group (default)")
    p.add_argument("--statistic", choices=STATISTICS, default=None,
                   help="a network's latency from its samples (default: the one the fit used)")
    p.add_argument("--out", help="write the per-network figures here (JSON)")
    args = p.parse_args(argv)

    rep = json.loads(Path(args.report).read_text())
    lut_path = args.lut or args.report.replace(".fit.report.json", ".json")
    table = LatencyTable.load(lut_path)
    space = table.find_space()
    table.check_space(space)
    nets = rep["networks"]
    idx = range(len(nets)) if args.all else rep["heldout_index"]
    archs = [Architecture(list(nets[i]["blocks"])) for i in idx]
    before = np.array([nets[i]["measured_ms"] for i in idx])
    dev = dict(rep["fit"]["measured_on"])
    backend = backend_from_device(dev, source=args.report)  # the settings the fit measured with
    t0 = time.perf_counter()
    stat = args.statistic or dev.get("network_statistic", "median")  # fits before it existed took the median
    partial = Path(args.out or "spread").with_suffix(".partial")
    report = validate_lut(table, space, archs, ["again"] * len(archs), backend, progress=False,
                          partial=str(partial), group_size=args.group_size or None, statistic=stat)
    after = np.array(report.measured_ms)
    diff = np.abs(after - before) / before * 100
    out = {"networks": len(archs), "backend": dev["backend"], "group_size": args.group_size, "statistic": stat,
           "median_abs_pct_diff": float(np.median(diff)), "max_abs_pct_diff": float(diff.max()),
           "share_within_10pct": float((diff <= 10).mean()),
           "kendall_tau": kendall_tau(before.tolist(), after.tolist()),
           "level_ratio_median": float(np.median(after / before)),
           "seconds": round(time.perf_counter() - t0, 1)}
    # the level can drift between the two sessions; the same after one scale factor
    r = float(np.median(after / before))
    d2 = np.abs(after / r - before) / before * 100
    out.update({"median_abs_pct_diff_rescaled": float(np.median(d2)), "share_within_10pct_rescaled": float((d2 <= 10).mean())})
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({**out, "before_ms": before.tolist(), "after_ms": after.tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
