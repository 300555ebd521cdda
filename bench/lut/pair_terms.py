"""Do pair terms pay for themselves? Offline, on the networks a ``fbnet-fast lut fit`` measured.

    python bench/lut/pair_terms.py A.fit.report.json [B.fit.report.json ...] [--out pair_terms.json]

For each report (and its block-wise LUT, the report's name without ``.fit.report.json`` + ``.json``)
it refits the landed additive table (:func:`fbnet_fast.measure.fit.fit_table`, shape-tied) on the
report's fit networks, then adds context terms fitted to what the additive table leaves (relative
residuals, ridge with the strength chosen by 5-fold cross-validation on the fit networks) and scores
all of them on the report's held-out networks:

* ``pair-global``: one term per (kind of block l, kind of block l+1), kinds skip / k3 / k5, shared
  by every boundary (9 terms): "a k5 after a k5 runs faster", whatever the layer;
* ``pair-boundary``: the same per boundary shape (the shapes of layers l and l+1), ~130 terms.

A term survives only if held-out error and Kendall tau improve beyond the measurement's own spread
(``bench/lut/network_spread.py``). No measuring: the script reads the reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure.fit import error_stats as stats, fit_table, predict_ms, shape_groups

KINDS = ("global", "boundary")
RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def features(idx: np.ndarray, kind_of: np.ndarray, n_kinds: int, groups: np.ndarray, kind: str) -> np.ndarray:
    """``[n, terms]`` counts of each pair term in each network."""
    n, L = idx.shape
    k = kind_of[idx]
    bounds = sorted({(int(groups[l]), int(groups[l + 1])) for l in range(L - 1)}) if kind == "boundary" else [None]
    x = np.zeros((n, len(bounds) * n_kinds ** 2))
    rows = np.arange(n)
    for l in range(L - 1):
        b = bounds.index((int(groups[l]), int(groups[l + 1]))) if kind == "boundary" else 0
        np.add.at(x, (rows, b * n_kinds ** 2 + k[:, l] * n_kinds + k[:, l + 1]), 1.0)
    return x


def ridge(a: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ r)


def study(report_path: Path) -> dict[str, object]:
    rep = json.loads(report_path.read_text())
    lut_path = Path(str(report_path).removesuffix(".fit.report.json") + ".json")
    table = LatencyTable.load(lut_path)
    space = table.find_space(None, None)
    cands = list(space.candidates)
    idx = np.asarray([[cands.index(b) for b in n["blocks"]] for n in rep["networks"]])
    y = np.asarray([n["measured_ms"] for n in rep["networks"]], dtype=np.float64)
    test = np.asarray(sorted(rep["heldout_index"]))
    fit = np.asarray(sorted(set(range(len(y))) - set(test.tolist())))
    add = fit_table(table, space, idx[fit].tolist(), y[fit].tolist())
    base_f, base_t = predict_ms(add.matrix, add.fixed_ms, idx[fit]), predict_ms(add.matrix, add.fixed_ms, idx[test])
    names = sorted({"skip" if c == "skip" else c.split("_")[0] for c in cands})
    kind_of = np.asarray([names.index("skip" if c == "skip" else c.split("_")[0]) for c in cands])
    groups = shape_groups(space)
    out: dict[str, object] = {"report": str(report_path), "device": table.device.get("backend"),
                              "fit_networks": int(len(fit)), "heldout_networks": int(len(test)),
                              "additive": stats(base_t, y[test])}
    order = np.random.default_rng(0).permutation(len(fit))
    parts = [order[i::5] for i in range(5)]
    for kind in KINDS:
        xf = features(idx[fit], kind_of, len(names), groups, kind)
        xt = features(idx[test], kind_of, len(names), groups, kind)
        a, r = xf / y[fit][:, None], (y[fit] - base_f) / y[fit]  # relative residuals, as the fit weighs them
        cv = {}
        for lam in RIDGE_GRID:
            errs: list[float] = []
            for k in range(5):
                tr = np.concatenate([p for j, p in enumerate(parts) if j != k])
                w = ridge(a[tr], r[tr], lam / y.mean() ** 2)
                errs += (np.abs(r[parts[k]] - a[parts[k]] @ w) * 100).tolist()
            cv[lam] = float(np.median(errs))
        lam = min(cv, key=cv.get)
        w = ridge(a, r, lam / y.mean() ** 2)
        out[f"pair-{kind}"] = {**stats(base_t + xt @ w, y[test]), "terms": int(a.shape[1]), "ridge": lam}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", help=".fit.report.json files of `fbnet-fast lut fit`")
    p.add_argument("--out", help="write the figures here (JSON)")
    args = p.parse_args(argv)
    res = [study(Path(r)) for r in args.reports]
    for r in res:
        print(f"{r['report']} ({r['device']}): {r['fit_networks']} fit / {r['heldout_networks']} held out")
        for name in ("additive", *(f"pair-{k}" for k in KINDS)):
            s = r[name]
            extra = f" ({s['terms']} terms, ridge {s['ridge']:g})" if "terms" in s else ""
            print(f"  {name + extra:36s} median {s['median_abs_pct_error']:5.2f}%  max {s['max_abs_pct_error']:5.1f}%  "
                  f"within 10% {s['share_within_10pct'] * 100:3.0f}%  tau {s['kendall_tau']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
