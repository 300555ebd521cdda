"""Latency tables fitted to whole networks: ``fbnet-fast lut fit``.

A block-wise LUT times each block alone; a runtime that fuses and re-lays out across block
boundaries runs the network faster or slower than the sum (BENCHMARKS.md, "Additivity": on ONNX
Runtime the corrected sum still missed by up to 44 %). This module keeps the table *additive*, so
the search's latency term stays a differentiable expectation, but chooses its entries to predict
networks in context: N whole networks are measured on the LUT's own back end, and the entries
``x[l, k] >= 0`` and the fixed part ``c >= 0`` solve a bounded linear least-squares problem (scipy's
``lsq_linear``) regularised toward the block-wise table::

    minimise  sum_a ((c + sum_l x[l, a_l] - y_a) / y_a)^2                    relative error per network
            + lam * sum_(l,k) ((x[l, k] - s * b[l, k]) / y_bar)^2            the prior: block-wise,
            + lam * ((c - c0) / y_bar)^2                                     scaled to the networks

``b`` is the block-wise table, ``s`` and ``c0`` its scale + offset fit on the same networks (so
the prior is the corrected table), ``y_bar`` the mean network latency: ``lam`` is how many
networks' worth of evidence the prior weighs per entry. ``lam`` is chosen by k-fold
cross-validation over a grid (the fit records the grid and the choice). An entry no network used
stays at its prior; the per-layer constant that an additive model cannot identify (every network
has one block per layer) is pinned by the prior too.

By default layers of the same shape (``c_in``, ``c_out``, stride, input size: what the block-wise
LUT measures once) share their unknowns (``tie=True``): fbnet-cifar has 10-12 distinct shapes for its
22 layers, so ~100 unknowns instead of ~200 for the same networks. Refitted on the four reports of
BENCHMARKS.md ("Tables fitted to whole networks"), with lambda chosen by the same cross-validation:
ONNX Runtime width 1.0 held-out tau 0.793 -> 0.856 and within +-10 % 71 -> 88 %; ONNX Runtime width
0.25 tau 0.824 -> 0.851; eager torch within the noise of the measurement either way. ``tie=False``
fits one unknown per (layer, candidate), for a runtime whose cost depends on where a block sits.

Held-out reporting (:func:`compare`) puts three predictors side by side on networks never used in
the fit: the block-wise sum, the scale + offset correction (fitted on the fit networks) and the
fitted table, with the median and max absolute % error, the share within +-10 % and Kendall's tau.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..lut import LatencyEntry, LatencyTable
from ..space import Architecture, SearchSpace
from .additivity import fit_correction, kendall_tau

__all__ = ["LAMBDA_GRID", "FitResult", "fit_table", "compare", "predict_ms", "fitted_lut", "fit_networks",
           "shape_groups", "arch_key", "predictors", "heldout_report", "searched_like", "heldout_networks", "error_stats"]

LAMBDA_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _indices(space: SearchSpace, archs: Sequence[Architecture | Sequence[int]]) -> np.ndarray:
    out = []
    for a in archs:
        idx = a.indices(space) if isinstance(a, Architecture) else list(a)
        if len(idx) != space.num_layers:
            raise ConfigError(f"an architecture has {len(idx)} layers, the space {space.name!r} has {space.num_layers}")
        out.append(idx)
    return np.asarray(out, dtype=np.int64)


def predict_ms(matrix: np.ndarray, fixed_ms: float, idx: np.ndarray) -> np.ndarray:
    """Additive prediction ``fixed + sum_l matrix[l, idx[:, l]]`` for each row of ``idx`` ``[n, L]``."""
    L = matrix.shape[0]
    return fixed_ms + matrix[np.arange(L)[None, :], idx].sum(axis=1)


@dataclass
class FitResult:
    """The fitted entries and how they were chosen."""

    matrix: np.ndarray  # [L, K] ms
    fixed_ms: float
    lam: float
    cv_error: dict[float, float]  # lam -> cross-validated median |% error|
    prior_scale: float
    prior_offset_ms: float
    n_networks: int
    unseen_entries: int  # entries no fit network used (left at the prior)
    extra: dict[str, Any] = field(default_factory=dict)


def shape_groups(space: SearchSpace) -> np.ndarray:
    """``[L]``: the index of each layer's shape among the space's distinct layer shapes (first seen first)."""
    from ..lut import layer_shapes

    seen: dict[tuple, int] = {}
    return np.asarray([seen.setdefault(tuple(sorted(s.items())), len(seen)) for s in layer_shapes(space)],
                      dtype=np.int64)


def _solve(idx: np.ndarray, y: np.ndarray, prior: np.ndarray, c0: float, lam: float,
           groups: np.ndarray) -> tuple[np.ndarray, float]:
    """The regularised bounded least squares; ``groups[l]`` is the unknown row layer ``l`` uses (layers
    of one group share their entries; the prior of a shared entry is the mean of its layers' priors,
    weighted as that many entries)."""
    from scipy.optimize import lsq_linear

    n, L = idx.shape
    K = prior.shape[1]
    G = int(groups.max()) + 1
    m = G * K
    cnt = np.bincount(groups, minlength=G).astype(np.float64)
    gprior = np.zeros((G, K))
    np.add.at(gprior, groups, prior)
    gprior /= cnt[:, None]
    ybar = float(y.mean())
    a = np.zeros((n + m + 1, m + 1))
    b = np.zeros(n + m + 1)
    rows = np.arange(n)
    for l in range(L):
        np.add.at(a, (rows, groups[l] * K + idx[:, l]), 1.0)
    a[:n, m] = 1.0
    a[:n] /= y[:, None]
    b[:n] = 1.0
    r = math.sqrt(lam) / ybar
    w = np.repeat(np.sqrt(cnt), K) * r
    a[n:n + m, :m] = np.diag(w)
    b[n:n + m] = gprior.reshape(-1) * w
    a[n + m, m] = r
    b[n + m] = c0 * r
    sol = lsq_linear(a, b, bounds=(0.0, np.inf), method="bvls", tol=1e-12)
    x = sol.x
    return x[:m].reshape(G, K)[groups], float(x[m])


def fit_table(table: LatencyTable, space: SearchSpace, archs: Sequence[Architecture | Sequence[int]],
              measured_ms: Sequence[float], *, lambdas: Sequence[float] = LAMBDA_GRID, folds: int = 5,
              seed: int = 0, tie: bool = True) -> FitResult:
    """Fit an additive table to ``measured_ms`` of ``archs`` (see the module docstring)."""
    table.check_space(space)
    idx = _indices(space, archs)
    y = np.asarray(measured_ms, dtype=np.float64)
    L, K = space.num_layers, len(space.candidates)
    if len(y) != len(idx):
        raise ConfigError(f"{len(idx)} architectures but {len(y)} measurements")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError("every measured latency must be a finite number > 0 ms")
    # Identifiable unknowns: one per (layer, candidate) a network used, minus one per layer, plus
    # the fixed part. Fewer networks than that leaves the data unable to pin the table.
    used = np.zeros((L, K), dtype=bool)
    used[np.arange(L)[None, :], idx] = True
    free = int(used.sum()) - L + 1
    if len(y) < max(folds, 2 * L):
        raise ConfigError(f"{len(y)} networks are too few to fit a table of {L} layers x {K} candidates: "
                          f"measure at least {max(folds, 2 * L)} (better {free} or more, the unknowns the networks "
                          f"touch)")
    if not lambdas or any(not (isinstance(v, (int, float)) and v > 0) for v in lambdas):
        raise ConfigError(f"the regularisation grid must hold numbers > 0, got {list(lambdas)}")
    groups = shape_groups(space) if tie else np.arange(L)
    b = table.matrix(list(space.candidates)).numpy()
    raw = predict_ms(b, table.fixed_ms, idx)
    off, sc = fit_correction(raw.tolist(), y.tolist())
    prior = sc * b
    c0 = max(0.0, sc * table.fixed_ms + off)

    order = list(range(len(y)))
    random.Random(seed).shuffle(order)
    parts = [order[i::folds] for i in range(folds)]
    cv: dict[float, float] = {}
    for lam in lambdas:
        errs: list[float] = []
        for k in range(folds):
            test = parts[k]
            train = [i for j, p in enumerate(parts) if j != k for i in p]
            yt = y[train]
            # the prior's scale comes from the fold's own training networks
            o_k, s_k = fit_correction(raw[train].tolist(), yt.tolist())
            m_k, c_k = _solve(idx[train], yt, s_k * b, max(0.0, s_k * table.fixed_ms + o_k), lam, groups)
            pred = predict_ms(m_k, c_k, idx[test])
            errs += (np.abs(pred - y[test]) / y[test] * 100).tolist()
        cv[float(lam)] = float(np.median(errs))
    best = min(cv, key=lambda v: (cv[v], -v))  # ties: the stronger prior
    matrix, fixed = _solve(idx, y, prior, c0, best, groups)
    seen = np.zeros((int(groups.max()) + 1, K), dtype=bool)
    np.logical_or.at(seen, groups, used)  # a shared entry is seen when any of its layers used it
    return FitResult(matrix, fixed, best, cv, sc, off, len(y), int((~seen[groups]).sum()),
                     extra={"tie": "shape" if tie else "layer", "unknowns": (int(groups.max()) + 1) * K + 1})


def error_stats(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float]:
    """Median and max |% error| of ``pred`` against ``meas``, the share within +-10 %, Kendall's tau."""
    p, m = np.asarray(pred, dtype=np.float64), np.asarray(meas, dtype=np.float64)
    err = np.abs(p - m) / m * 100
    return {"median_abs_pct_error": float(np.median(err)), "max_abs_pct_error": float(err.max()),
            "share_within_10pct": float((err <= 10.0).mean()),
            "kendall_tau": kendall_tau(p.tolist(), m.tolist()) if len(p) >= 2 else float("nan")}


def compare(table: LatencyTable, space: SearchSpace, fit: FitResult, test_archs: Sequence[Any],
            test_measured: Sequence[float]) -> dict[str, dict[str, float]]:
    """Held-out figures of the block-wise sum, its scale + offset correction (the one the fit
    computed on its own networks as the prior's scale) and the fitted table, on ``test_archs``
    (never used in the fit)."""
    b = table.matrix(list(space.candidates)).numpy()
    ti = _indices(space, test_archs)
    raw = predict_ms(b, table.fixed_ms, ti)
    return {"blockwise": error_stats(raw, test_measured),
            "scale_offset": error_stats(fit.prior_scale * raw + fit.prior_offset_ms, test_measured),
            "fitted": error_stats(predict_ms(fit.matrix, fit.fixed_ms, ti), test_measured)}


def arch_key(idx: Sequence[int]) -> str:
    """A network as the compact string of its candidate indices (``"3.0.12..."``), as a fitted
    table records its fit networks."""
    return ".".join(str(int(i)) for i in idx)


def predictors(table: LatencyTable, space: SearchSpace) -> dict[str, tuple[np.ndarray, float]]:
    """The additive predictors a table carries, each as ``(matrix [L, K], fixed_ms)``: for a fitted
    table the block-wise sum it started from, that sum's scale + offset correction (fitted on the
    fit's own networks) and the fitted entries; for a block-wise table its sum and, when it holds one
    (``lut validate`` wrote it), its correction."""
    cands = list(space.candidates)
    if table.fit:
        bw = table.fit.get("blockwise")
        if not isinstance(bw, dict) or "ms" not in bw:
            raise ConfigError("the fitted table does not record the block-wise entries it came from (field "
                              "fit.blockwise); refit it with this version's `lut fit`")
        b = np.asarray(bw["ms"], dtype=np.float64)
        if b.shape != (space.num_layers, len(cands)):
            raise ConfigError(f"fit.blockwise is {list(b.shape)}, the space needs [{space.num_layers}, {len(cands)}]")
        bf = float(bw.get("fixed_ms", 0.0))
        sc, off = float(table.fit["prior_scale"]), float(table.fit["prior_offset_ms"])
        return {"blockwise": (b, bf), "scale_offset": (sc * b, sc * bf + off),
                "fitted": (table.matrix(cands).numpy().astype(np.float64), table.fixed_ms)}
    b = table.matrix(cands).numpy().astype(np.float64)
    out = {"blockwise": (b, table.fixed_ms)}
    if table.correction:
        sc, off = float(table.correction["scale"]), float(table.correction["offset_ms"])
        out["scale_offset"] = (sc * b, sc * table.fixed_ms + off)
    return out


def heldout_report(table: LatencyTable, space: SearchSpace, archs: Sequence[Any], measured_ms: Sequence[float],
                   sources: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{predictor: {"all" | source: figures}}`` of every predictor :func:`predictors` finds, on
    networks measured end to end (median and max |% error|, share within +-10 %, Kendall tau)."""
    idx = _indices(space, archs)
    meas = np.asarray(measured_ms, dtype=np.float64)
    groups = {"all": np.arange(len(meas))}
    for src in sorted(set(sources)):
        sel = np.asarray([i for i, s in enumerate(sources) if s == src])
        if len(set(sources)) > 1 and len(sel) >= 2:
            groups[src] = sel
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (m, c) in predictors(table, space).items():
        pred = predict_ms(m, c, idx)
        out[name] = {g: {**error_stats(pred[sel], meas[sel]), "n": int(len(sel))} for g, sel in groups.items()}
    return out


def _distinct(space: SearchSpace, draw: Callable[[], list[int]], n: int, seen: set[str], what: str) -> list[Architecture]:
    """``n`` networks from ``draw`` (candidate indices per layer), none already in ``seen`` (which
    gains them), each kept the first time it is drawn."""
    out: list[Architecture] = []
    for _ in range(100 * max(n, 1)):
        if len(out) == n:
            break
        idx = draw()
        if arch_key(idx) not in seen:
            seen.add(arch_key(idx))
            out.append(Architecture.from_indices(space, idx))
    if len(out) < n:  # pragma: no cover - a space with a handful of networks
        raise ConfigError(f"could not draw {n} distinct {what} networks outside the fit set")
    return out


def searched_like(space: SearchSpace, table: LatencyTable, n: int, *, seed: int = 0,
                  exclude: Sequence[str] = ()) -> list[Architecture]:
    """``n`` networks shaped like a search's results, none in ``exclude`` (:func:`arch_key` strings):
    each from its own concentrated P_theta, ``theta = -beta * z + 2 * eps`` with ``z`` the per-layer
    z-score of the table's latencies, ``beta ~ U(0, 3)`` (how hard that search pressed on latency)
    and ``eps ~ N(0, 1)`` (the layer preferences its accuracy term learned). A search's argmax
    keeps most of its layers at one or two blocks and leans toward fast ones by as much as its
    budget asks; uniform draws cover neither end."""
    m = table.matrix(list(space.candidates)).double().numpy()
    z = (m - m.mean(1, keepdims=True)) / np.maximum(m.std(1, ddof=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed + 11)
    L, K = z.shape

    def draw() -> list[int]:
        theta = -rng.uniform(0.0, 3.0) * z + 2.0 * rng.standard_normal((L, K))
        p = np.exp(theta - theta.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return [int(rng.choice(K, p=p[l])) for l in range(L)]

    return _distinct(space, draw, n, set(exclude), "searched-like")


def heldout_networks(space: SearchSpace, table: LatencyTable, n_uniform: int, n_searched: int, *, seed: int = 0,
                     exclude: Sequence[str] = ()) -> tuple[list[Architecture], list[str]]:
    """``n_uniform`` uniform draws and ``n_searched`` :func:`searched_like` ones, all distinct and
    none in ``exclude`` (a fitted table's ``fit_networks``): the networks ``lut validate`` measures."""
    if n_uniform < 0 or n_searched < 0:
        raise ConfigError(f"network counts must be >= 0, got {n_uniform} uniform and {n_searched} searched-like")
    rng = np.random.default_rng(seed + 13)
    seen = set(exclude)
    L, K = space.num_layers, len(space.candidates)
    out = _distinct(space, lambda: rng.integers(K, size=L).tolist(), n_uniform, seen, "uniform")
    out_s = searched_like(space, table, n_searched, seed=seed, exclude=sorted(seen))
    return out + out_s, ["uniform"] * len(out) + ["searched-like"] * len(out_s)


def fitted_lut(table: LatencyTable, space: SearchSpace, fit: FitResult, record: dict[str, Any]) -> LatencyTable:
    """A copy of ``table`` whose entries are the fitted ones (given values, ``repeats`` 0), with no
    scale + offset correction (the fit replaces it) and ``fit`` recording how it was made, the
    block-wise entries included."""
    cands = list(space.candidates)
    layers = [{c: LatencyEntry.constant(float(fit.matrix[l, k])) for k, c in enumerate(cands)}
              for l in range(space.num_layers)]
    fixed = {"stem": LatencyEntry.constant(fit.fixed_ms), "head": LatencyEntry.constant(0.0)}
    how = {"method": "bounded least squares on whole networks, regularised toward the block-wise table",
           "networks": fit.n_networks, "lambda": fit.lam,
           "cv_median_abs_pct_error": {f"{k:g}": v for k, v in fit.cv_error.items()},
           "prior_scale": fit.prior_scale, "prior_offset_ms": fit.prior_offset_ms,
           "unseen_entries": fit.unseen_entries, **fit.extra,
           "blockwise": {"fixed_ms": table.fixed_ms,
                         "ms": [[round(float(v), 6) for v in row] for row in table.matrix(cands).tolist()]},
           **record}
    return LatencyTable(table.space_name, table.fingerprint, table.input_size, cands, layers, fixed=fixed,
                        device=dict(table.device), layer_shapes=list(table.layer_shapes), correction=None,
                        source=table.source, fit=how)

def fit_networks(space: SearchSpace, table: LatencyTable, n: int, *, seed: int = 0) -> tuple[list[Architecture], list[str]]:
    """``n`` networks to measure for a fit: half drawn uniformly, a quarter biased to the LUT's fast
    blocks and a quarter to its slow ones (per layer ``P ~ exp(-+ 2 z)`` of the latency's z-score),
    so the fit sees the latencies a search visits at both ends; plus every preset that fits the space."""
    from .additivity import sample_architectures

    if n < 1:
        raise ConfigError(f"-n must be >= 1, got {n}")
    m = table.matrix(list(space.candidates))
    z = (m - m.mean(1, keepdim=True)) / m.std(1, keepdim=True).clamp_min(1e-12)
    n_fast = n_slow = n // 4
    archs = sample_architectures(space, n - n_fast - n_slow, seed=seed)
    archs += sample_architectures(space, n_fast, theta=-2.0 * z, seed=seed + 1)
    archs += sample_architectures(space, n_slow, theta=2.0 * z, seed=seed + 2)
    sources = ["uniform"] * (n - n_fast - n_slow) + ["fast"] * n_fast + ["slow"] * n_slow
    from ..presets import fitting_presets

    for name, _, arch in fitting_presets(space):
        archs.append(arch)
        sources.append(f"preset:{name}")
    return archs, sources


def split_heldout(n: int, share: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(fit, held_out)``: ``share`` of the networks (at least 2), drawn by a seeded shuffle,
    are held out."""
    order = list(range(n))
    random.Random(seed + 7).shuffle(order)
    k = max(2, int(round(n * share)))
    return sorted(order[k:]), sorted(order[:k])

