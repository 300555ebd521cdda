"""Summarise paired whole-search runs: per run wall time, peak memory, held-out accuracy, skips, per-epoch seconds;
per seed the ratios; medians.

    python bench/cpu/summarise_pairs.py RUNS.jsonl [RUNS.jsonl ...]

Each line of a RUNS.jsonl is ``{"seed": S, "kernel": K, "result": R}`` with ``R`` the last line that
``bench/cpu/search_wall.py`` prints (its ``command`` names the run folder, whose ``summary.txt`` and
``metrics.jsonl`` are read). ``K`` is ``reference``, ``fused`` or another label (e.g. ``fused-old``: the fused path
on an earlier build of the extension); every label's run is compared with ``fused`` of the same seed.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def run_facts(out: Path) -> tuple[float, int, float, list[float]]:
    """Held-out % (the supernet's validation accuracy), skip layers, LUT latency (ms), seconds per epoch."""
    t = (out / "summary.txt").read_text()
    acc = float(re.search(r"supernet val acc ([0-9.]+)", t).group(1)) * 100
    skips = len(re.findall(r"^\s+\d+\s+\S+ s\d \d+px\s+skip\s", t, re.M))
    lat = float(re.search(r"LUT latency ([0-9.]+) ms", t).group(1))
    e = [json.loads(x)["elapsed_s"] for x in open(out / "metrics.jsonl")]
    return acc, skips, lat, [round(b - a, 1) for a, b in zip([0.0] + e[:-1], e)]


def summarise(path: Path) -> None:
    print(f"\n## {path.name}")
    walls: dict[int, dict[str, float]] = {}
    for line in open(path):
        d = json.loads(line)
        r = d["result"]
        out = Path(re.search(r"--out (\S+)", r["command"]).group(1))
        acc, skips, lat, epochs = run_facts(out)
        walls.setdefault(d["seed"], {})[d["kernel"]] = r["wall_s"]
        tag = "AVX2 emulated (v3)" if r["emulated_avx2"] else f"AVX-512 ({r['fused_isa']})"
        print(f"seed {d['seed']} {d['kernel']:9s} {tag}, {r['threads']} thread(s): {r['wall_s']:6.1f} s, "
              f"peak {r['peak_rss_gb']} GB, held-out {acc:.1f} %, skips {skips}, LUT latency {lat} ms, "
              f"per epoch {epochs}")
    labels = sorted({k for w in walls.values() for k in w} - {"fused"})
    for label in labels:
        seeds = [s for s, w in walls.items() if label in w and "fused" in w]
        if not seeds:
            continue
        ratios = [walls[s][label] / walls[s]["fused"] for s in seeds]
        for s, x in zip(seeds, ratios):
            print(f"seed {s}: {label} / fused = {x:.2f}x")
        lo = statistics.median(walls[s]["fused"] for s in seeds)
        hi = statistics.median(walls[s][label] for s in seeds)
        print(f"{label}: medians {lo:.1f} (fused) vs {hi:.1f} s ({hi / lo:.2f}x); per seed {min(ratios):.2f}-"
              f"{max(ratios):.2f}x, {sum(x >= 2 for x in ratios)} of {len(ratios)} >= 2x")


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print(__doc__)
        return 2
    for p in paths:
        summarise(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
