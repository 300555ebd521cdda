"""Does a LUT add up? The additivity study behind ``fbnet-fast lut validate``.

FBNet predicts a network's latency as the sum of its blocks' LUT entries (plus
stem and head) and never checks it. This module samples architectures (uniformly
and/or from a search's theta), builds each as a plain model, measures it end to
end with the *same* back end and settings as the LUT, and compares:

* median and max absolute % error of the LUT sum,
* Kendall's tau between the two rankings (what the search needs is the order),
* a scatter plot (predicted vs measured, y = x),
* a fitted correction ``measured ~= scale * lut_sum + offset_ms`` (least squares),
  reported in sample and on held-out halves, and stored in the LUT's
  ``correction`` field, which :meth:`LatencyTable.predict` (hence the search) applies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..lut import LatencyTable
from ..model import build_model
from ..space import Architecture, SearchSpace

__all__ = ["sample_architectures", "load_theta", "kendall_tau", "fit_correction",
           "AdditivityReport", "validate_lut", "plot_scatter", "STATISTICS"]


def load_theta(path: str | Path, space: SearchSpace) -> torch.Tensor:
    """``[L, K]`` theta from a search's ``theta.json`` (``{"theta": [[...]], "candidates": [...]}``)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"theta file {str(path)!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"theta file {str(path)!r} cannot be read as JSON: {e}") from None
    theta = d.get("theta") if isinstance(d, dict) else None
    if theta is None and isinstance(d, dict) and "probs" in d:
        theta = [[math.log(max(p, 1e-12)) for p in row] for row in d["probs"]]
    try:
        t = torch.tensor(theta, dtype=torch.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"theta file {str(path)!r}: field 'theta' must be a [layers, candidates] list") from None
    if t.shape != (space.num_layers, len(space.candidates)):
        raise ConfigError(f"theta file {str(path)!r}: theta is {list(t.shape)}, space {space.name!r} needs "
                          f"[{space.num_layers}, {len(space.candidates)}]")
    cands = d.get("candidates")
    if cands is not None and list(cands) != list(space.candidates):
        raise ConfigError(f"theta file {str(path)!r}: candidates {cands} differ from space {space.name!r}'s")
    return t


def sample_architectures(space: SearchSpace, n: int, *, theta: torch.Tensor | None = None,
                         seed: int = 0) -> list[Architecture]:
    """``n`` architectures, each layer drawn independently: uniform, or from ``softmax(theta[l])``."""
    g = torch.Generator().manual_seed(seed)
    L, K = space.num_layers, len(space.candidates)
    probs = torch.full((L, K), 1.0 / K, dtype=torch.float64) if theta is None else torch.softmax(theta, 1)
    out = []
    for _ in range(n):
        idx = torch.multinomial(probs, 1, generator=g).squeeze(1).tolist()
        out.append(Architecture.from_indices(space, idx))
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (O(n^2); n is tens here)."""
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom > 0 else 0.0


def fit_correction(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(offset_ms, scale)`` with ``measured ~= scale * predicted + offset_ms``.

    Falls back to a pure offset (scale 1) when the fit is degenerate (one distinct
    prediction) or gives a scale <= 0, which :meth:`LatencyTable.predict` cannot use.
    """
    x = torch.tensor(predicted, dtype=torch.float64)
    y = torch.tensor(measured, dtype=torch.float64)
    if len(x) == 0:
        raise ValueError("fit_correction needs at least one point")
    var = float(((x - x.mean()) ** 2).sum())
    if len(x) >= 2 and var > 1e-12 * max(1.0, float(x.abs().max()) ** 2):
        scale = float(((x - x.mean()) * (y - y.mean())).sum()) / var
        if scale > 0:
            return float(y.mean() - scale * x.mean()), scale
    return float((y - x).mean()), 1.0


def _errors_pct(pred: Sequence[float], meas: Sequence[float]) -> list[float]:
    return [abs(p - m) / m * 100.0 for p, m in zip(pred, meas)]


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@dataclass
class AdditivityReport:
    """Per-architecture figures and the summary of one study."""

    archs: list[Architecture]
    sources: list[str]  # "uniform" or "theta" per architecture
    lut_sum_ms: list[float]  # raw LUT sum incl. stem + head (no correction)
    measured_ms: list[float]
    measured_p10_ms: list[float] = field(default_factory=list)
    measured_p90_ms: list[float] = field(default_factory=list)
    offset_ms: float = 0.0
    scale: float = 1.0
    device: dict[str, Any] = field(default_factory=dict)

    @property
    def corrected_ms(self) -> list[float]:
        return [self.scale * p + self.offset_ms for p in self.lut_sum_ms]

    def holdout_errors(self) -> list[float]:
        """% errors of the correction fitted on one half (alternate points) and applied to the other."""
        n = len(self.lut_sum_ms)
        if n < 4:
            return []
        order = sorted(range(n), key=lambda i: self.lut_sum_ms[i])
        halves = (order[0::2], order[1::2])
        errs = []
        for fit_i, test_i in (halves, halves[::-1]):
            off, sc = fit_correction([self.lut_sum_ms[i] for i in fit_i], [self.measured_ms[i] for i in fit_i])
            errs += _errors_pct([sc * self.lut_sum_ms[i] + off for i in test_i], [self.measured_ms[i] for i in test_i])
        return errs

    def summary(self) -> dict[str, Any]:
        raw = _errors_pct(self.lut_sum_ms, self.measured_ms)
        corr = _errors_pct(self.corrected_ms, self.measured_ms)
        held = self.holdout_errors()
        ratio = [m / p for p, m in zip(self.lut_sum_ms, self.measured_ms)]
        return {
            "n": len(self.archs),
            "sources": {s: self.sources.count(s) for s in sorted(set(self.sources))},
            "median_abs_pct_error": _median(raw), "max_abs_pct_error": max(raw),
            "mean_measured_over_lut": sum(ratio) / len(ratio),
            "kendall_tau": kendall_tau(self.lut_sum_ms, self.measured_ms) if len(raw) >= 2 else float("nan"),
            # within one source: the pooled tau is inflated when the sources form two clusters
            "kendall_tau_by_source": {
                src: kendall_tau([self.lut_sum_ms[i] for i in idx], [self.measured_ms[i] for i in idx])
                for src in sorted(set(self.sources))
                for idx in [[i for i, x in enumerate(self.sources) if x == src]] if len(idx) >= 3},
            "correction": {"offset_ms": self.offset_ms, "scale": self.scale},
            "corrected_median_abs_pct_error": _median(corr), "corrected_max_abs_pct_error": max(corr),
            "holdout_median_abs_pct_error": _median(held) if held else None,
            "holdout_max_abs_pct_error": max(held) if held else None,
            "measured_ms_range": [min(self.measured_ms), max(self.measured_ms)],
            "device": self.device,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "archs": [
            {"blocks": list(a.blocks), "source": s, "lut_sum_ms": p, "measured_ms": m,
             "measured_p10_ms": lo, "measured_p90_ms": hi}
            for a, s, p, m, lo, hi in zip(self.archs, self.sources, self.lut_sum_ms, self.measured_ms,
                                          self.measured_p10_ms or [None] * len(self.archs),
                                          self.measured_p90_ms or [None] * len(self.archs))]}


NETWORKS_PARTIAL_SCHEMA = "fbnet-fast/networks-partial"


STATISTICS = ("p10", "median")
NETWORK_PRIME = 1  # untimed calls before each sample of a whole network (warm, as deployed)


def validate_lut(table: LatencyTable, space: SearchSpace, archs: Sequence[Architecture], sources: Sequence[str],
                 backend: Any, *, batch_size: int | None = None, progress: bool = True,
                 partial: str | Path | None = None, group_size: int | None = None,
                 statistic: str = "p10") -> AdditivityReport:
    """Measure ``archs`` end to end with ``backend`` and compare with ``table``'s sums.

    How a network is measured, and why (BENCHMARKS.md, "Measuring whole networks"): all of them
    form **one group** timed in interleaved rounds (``backend.repeats`` rounds, one sample of every
    network each, in a fresh random order every round), every sample preceded by one untimed call
    (so it times the network warm, as a deployment that runs it repeatedly does, not after the
    other 200 networks evicted it from the caches), and a network's latency is the ``statistic``
    of its samples, by default their 10th percentile (the machine's quiet state; other work only
    adds time). Measured on a shared 2-core VM (``bench/lut/network_protocols.py``: ONNX Runtime,
    fbnet-cifar width 0.25, the same 205 networks measured twice by each rule): groups of 10 in a
    fixed order with the median of 30 samples (the rule before) agreed with itself at Kendall tau
    0.826, and tables fitted to the two measurements predicted their held-out networks at 3.9 % /
    tau 0.827 and 8.2 % / 0.756; this rule agreed at tau 0.968, its tables at 1.4 % / 0.944 and
    0.8 % / 0.941.

    ``group_size`` splits the networks into groups of that many (each timed on its own), for a
    device that cannot hold all of them at once. With ``partial`` (a path) every finished group is
    saved there (atomically) and every serialized model the back end makes (ONNX, ``.pte``) is kept
    in ``<partial>.models/``, so a run killed or failing mid-way exports or lowers only what is
    missing and measures only the unfinished groups when called again with the same networks and
    settings; both are removed at the end. The fitted correction is stored on the report, not yet
    on ``table`` (see :func:`apply_correction`).
    """
    import shutil

    from .core import Job, load_partial, measure_jobs, write_partial

    table.check_space(space)
    if len(archs) < 2:
        raise ConfigError("the additivity study needs at least 2 architectures (--num-archs)")
    if statistic not in STATISTICS:
        raise ConfigError(f"a network's latency statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if group_size is not None and group_size < 2:
        raise ConfigError(f"networks are timed in groups of at least 2 (--group-size), got {group_size}")
    bs = int(batch_size or table.device.get("batch_size", 1))
    shape = (bs, space.in_channels, space.input_size, space.input_size)
    # keyed by the blocks, so a resumed run matches its networks by what they are
    jobs = [Job("net:" + ",".join(a.blocks), (lambda a=a: build_model(space, a)), shape, f"arch {i}")
            for i, a in enumerate(archs)]
    size = len(jobs) if group_size is None else group_size
    groups = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    ppath = Path(partial) if partial is not None else None
    mdir = ppath.with_name(ppath.name + ".models") if ppath is not None else None
    settings = {**backend.settings(), "repeats": backend.repeats, "prime": NETWORK_PRIME, "shuffle": True}
    done_passes = (load_partial(ppath, space, settings, bs, NETWORKS_PARTIAL_SCHEMA)
                   if ppath is not None and ppath.exists() else [])

    def save(per_pass: list[dict[str, Any]]) -> None:
        if ppath is not None:
            write_partial(ppath, per_pass, space=space, settings=settings, batch_size=bs,
                          schema=NETWORKS_PARTIAL_SCHEMA)

    backend.cache_models(mdir)
    before = backend.prime, backend.shuffle
    backend.prime, backend.shuffle = NETWORK_PRIME, True
    try:
        res = measure_jobs(backend, groups, done_passes=done_passes, progress=progress, on_update=save,
                           desc=f"end-to-end on {backend.name}", best=f"{statistic}_ms")
    finally:
        backend.prime, backend.shuffle = before
        backend.cache_models(None)
        backend.close()
    if ppath is not None:
        ppath.unlink(missing_ok=True)
        shutil.rmtree(mdir, ignore_errors=True)
    raw = [sum(table.layers[l][b].median_ms for l, b in enumerate(a.blocks)) + table.fixed_ms for a in archs]
    meas = [getattr(res[j.key], f"{statistic}_ms") for j in jobs]
    off, sc = fit_correction(raw, meas)
    device = {**backend.describe(), "batch_size": bs, "input_size": space.input_size,
              "network_statistic": statistic, "network_group_size": size, "network_prime": NETWORK_PRIME,
              "network_shuffle": True}
    return AdditivityReport(list(archs), list(sources), raw, meas, [res[j.key].p10_ms for j in jobs],
                            [res[j.key].p90_ms for j in jobs], off, sc, device)


def apply_correction(table: LatencyTable, report: AdditivityReport) -> None:
    """Store the report's fitted correction in ``table.correction`` (used by ``predict``)."""
    s = report.summary()
    table.correction = {"offset_ms": report.offset_ms, "scale": report.scale, "fitted_on": s["n"],
                        "median_abs_pct_error_before": s["median_abs_pct_error"],
                        "median_abs_pct_error_after": s["corrected_median_abs_pct_error"],
                        "kendall_tau": s["kendall_tau"]}


def plot_scatter(report: AdditivityReport, path: str | Path, *, title: str = "") -> None:
    """Predicted (LUT sum, and corrected) vs measured end-to-end latency, with y = x."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = report.summary()
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    colors = {"uniform": "tab:blue", "theta": "tab:orange"}
    for src in sorted(set(report.sources)):
        idx = [i for i, x in enumerate(report.sources) if x == src]
        ax.scatter([report.lut_sum_ms[i] for i in idx], [report.measured_ms[i] for i in idx], s=18,
                   color=colors.get(src, "tab:gray"), label=f"LUT sum ({src})")
    ax.scatter(report.corrected_ms, report.measured_ms, s=14, marker="x", color="tab:green",
               label=f"corrected ({report.scale:.3f} x + {report.offset_ms:.3f} ms)")
    vals = report.lut_sum_ms + report.measured_ms + report.corrected_ms
    lo, hi = min(vals) * 0.95, max(vals) * 1.05
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured end-to-end latency (ms)")
    ax.set_title(title or f"{report.device.get('backend', '')}: median |err| {s['median_abs_pct_error']:.1f}%, "
                 f"tau {s['kendall_tau']:.2f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
