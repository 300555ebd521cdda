"""Shared by the checkout A/B benchmarks (ab_layers.py, ab_dwconv.py): one child script run in fresh processes,
alternating between checkouts, and the per-key medians over the rounds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def alternate(baseline: Path, child: str, child_args: list[str], rounds: int) -> dict[str, list[dict]]:
    """``{"baseline": [...], "this": [...]}``: the child's last stdout line (a JSON object) of each round, run
    with each checkout first on ``sys.path`` (and as the working directory)."""
    roots = {"baseline": baseline.resolve(), "this": ROOT}
    out: dict[str, list[dict]] = {k: [] for k in roots}
    for _ in range(rounds):
        for name, root in roots.items():
            env = dict(os.environ, PYTHONPATH=str(root))
            r = subprocess.run([sys.executable, "-c", child, *child_args], cwd=root, env=env, check=True,
                               capture_output=True, text=True)
            out[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def medians(out: dict[str, list[dict]], key: str) -> tuple[float, float]:
    """(baseline, this) medians of one key over the rounds."""
    return (statistics.median(o[key] for o in out["baseline"]), statistics.median(o[key] for o in out["this"]))


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every checkout A/B takes: ``--baseline DIR`` (required), ``--threads``, ``--rounds``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    return p
