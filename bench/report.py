"""Print BENCHMARKS.md's ratio tables from bench/results/<suite>.csv.

``python bench/report.py [bench/results/mixed_op.csv]``: per case, each provider's
median time and memory as a ratio to the faster eager layout of the same run.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    rows = list(csv.DictReader(Path(path).open()))
    val = defaultdict(dict)  # (case, mode, metric) -> provider -> value
    for r in rows:
        val[(r["case"], r["mode"], r["metric"])][r["provider"]] = float(r["value"])
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p != "eager_nchw", p != "eager_cl", p))
    for metric, unit, scale in (("time", "ms", 1e3), ("saved", "MB", 1e-6), ("peak_rss", "MB", 1e-6)):
        keys = sorted(k for k in val if k[2] == metric)
        if not keys:
            continue
        print(f"\n### {metric} ({unit}; ratio vs the faster eager layout in parentheses)\n")
        print("| case | mode | " + " | ".join(providers) + " |")
        print("|---|---|" + "---|" * len(providers))
        for case, mode, _ in keys:
            v = val[(case, mode, metric)]
            base = min(v.get("eager_nchw", float("inf")), v.get("eager_cl", float("inf")))
            cells = []
            for p in providers:
                if p not in v:
                    cells.append("")
                else:
                    cells.append(f"{v[p] * scale:.1f} ({v[p] / base:.2f}x)" if base not in (0, float('inf'))
                                 else f"{v[p] * scale:.1f}")
            print(f"| {case} | {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "results" / "mixed_op.csv"))
