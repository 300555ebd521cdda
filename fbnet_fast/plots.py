"""Pictures of a search run folder (matplotlib, Agg; no display needed).

:func:`write_plots` reads ``metrics.jsonl``, ``config.json`` and ``samples.json``
(written by the search) and writes three PNGs next to them:

``theta_heatmap.png``
    one panel per searchable layer: softmax(theta) of every candidate (rows) at the
    end of every epoch (columns); the colour scale is shared so layers compare.
``search_curves.png``
    expected latency under P_theta and the argmax architecture's LUT latency (top),
    held-out accuracy of the argmax architecture with the supernet's weights and the
    training accuracy (bottom), over epochs; warm-up epochs shaded.
``samples_scatter.png``
    held-out accuracy against LUT latency of the architectures drawn from P_theta
    (one-hot weights, supernet weights and BN statistics), the argmax highlighted.

``fbnet-fast plot RUN_DIR`` regenerates them (e.g. after a search that ran with
plots off, or on a machine where the search ran without matplotlib).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from .errors import RunDirError

__all__ = ["write_plots", "read_history", "PLOT_FILES"]

PLOT_FILES = ("theta_heatmap.png", "search_curves.png", "samples_scatter.png")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (one per finished epoch)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist; expected the run folder of a search with at least one "
                          f"finished epoch") from None
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e.strerror}") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path} line {i} is not valid JSON: {e.msg}") from None
        if not isinstance(rec, dict) or "epoch" not in rec or "probs" not in rec:
            raise RunDirError(f"{path} line {i}: expected an epoch record with 'epoch' and 'probs'")
        out.append(rec)
    if not out:
        raise RunDirError(f"{path} holds no epoch yet; nothing to plot")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from None


def _layer_labels(config: Any, num_layers: int) -> list[str]:
    try:
        from .space import SearchSpace

        space = SearchSpace.from_dict(config["space"])
        return [f"layer {l.index}: {l.c_in}->{l.c_out} s{l.stride}" for l in space.layers]
    except Exception:  # an old or hand-edited config: plain labels are enough
        return [f"layer {l}" for l in range(num_layers)]


def _save(fig, path: Path) -> Path:
    # Same-folder temp + os.replace: a reader never sees half a PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


def plot_theta_heatmap(history: Sequence[dict[str, Any]], candidates: Sequence[str], labels: Sequence[str],
                       path: Path) -> Path:
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    L, K = len(history[-1]["probs"]), len(candidates)
    cols = min(L, 4)
    rows = math.ceil(L / cols)
    # Diverging colours centred on the uniform 1/K: a short search moves theta by a few
    # percent, which a 0..1 scale would not show at all.
    uniform = 1.0 / K
    lo = min(min(min(row) for row in r["probs"]) for r in history)
    hi = max(max(max(row) for row in r["probs"]) for r in history)
    spread = max(hi - uniform, uniform - lo, 1e-3)
    norm = TwoSlopeNorm(vcenter=uniform, vmin=max(0.0, uniform - spread), vmax=min(1.0, uniform + spread))
    fig = Figure(figsize=((2.2 + 0.25 * len(epochs)) * cols + 1.5, (0.2 * K + 0.8) * rows + 0.6),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    im = None
    for l in range(rows * cols):
        ax = axes[l // cols][l % cols]
        if l >= L:
            ax.set_visible(False)
            continue
        grid = [[r["probs"][l][k] for r in history] for k in range(K)]  # [K, E]
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest",
                       extent=(epochs[0] - 0.5, epochs[-1] + 0.5, K - 0.5, -0.5))
        best = max(range(K), key=lambda k: history[-1]["probs"][l][k])
        ax.set_title(f"{labels[l]}\nargmax {candidates[best]} (p={history[-1]['probs'][l][best]:.2f})", fontsize=8)
        ax.set_yticks(range(K))
        ax.set_yticklabels(candidates, fontsize=7)
        step = max(1, len(epochs) // 8)
        ax.set_xticks(epochs[::step])
        ax.tick_params(axis="x", labelsize=7, labelbottom=True)
        if l + cols >= L:
            ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle(f"softmax(theta) per layer at the end of each epoch (white = uniform 1/{K})", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="probability")
    return _save(fig, path)


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(ep, [r["expected_latency_ms"] for r in history], "o-", label="expected latency E[LAT] under P_theta")
    top.plot(ep, [r.get("argmax_latency_ms") for r in history], "s--", label="most likely architecture")
    top.set_ylabel("LUT latency (ms)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(ep, [r["val_acc"] for r in history], "o-", label="held-out accuracy, most likely architecture")
    tr = [r.get("train_acc") for r in history]
    if all(v is not None for v in tr):
        bottom.plot(ep, tr, "s--", label="training accuracy (sampled architectures)")
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    warm = [r["epoch"] for r in history if r.get("phase") == "warmup"]
    for ax in (top, bottom):
        if warm:
            ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.85", zorder=0)
        ax.set_xticks(ep)
    top.set_title("search progress (grey: warm-up, theta frozen)", fontsize=10)
    return _save(fig, path)


def plot_samples(samples: Sequence[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots()
    drawn = [s for s in samples if s["kind"] == "sample"]
    best = [s for s in samples if s["kind"] == "argmax"]
    ax.scatter([s["latency_ms"] for s in drawn], [s["val_acc"] for s in drawn], s=28, alpha=0.75,
               label=f"{len(drawn)} architectures drawn from P_theta")
    if best:
        ax.scatter([best[0]["latency_ms"]], [best[0]["val_acc"]], marker="*", s=220, color="tab:red",
                   edgecolor="black", zorder=3, label="most likely architecture (argmax)")
    for s in (s for s in samples if s["kind"] == "returned"):
        ax.scatter([s["latency_ms"]], [s["val_acc"]], marker="D", s=90, color="tab:green", edgecolor="black",
                   zorder=3, label="returned: argmax repaired into the budget")
    ax.set_xlabel("LUT latency (ms)")
    ax.set_ylabel("held-out accuracy (supernet weights, one-hot)")
    ax.set_title("sampled architectures: accuracy vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(run_dir: str | Path) -> list[Path]:
    """Write the run folder's PNGs; returns their paths. Raises RunDirError if there is no history."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    config = _read_json(run_dir / "config.json")
    L = len(history[-1]["probs"])
    K = len(history[-1]["probs"][0])
    try:
        candidates = list(config["space"]["candidates"])
    except (TypeError, KeyError):
        candidates = [f"cand {k}" for k in range(K)]
    if len(candidates) != K:
        raise RunDirError(f"{run_dir / 'metrics.jsonl'}: probs have {K} candidates, config.json lists {len(candidates)}")
    written = [
        plot_theta_heatmap(history, candidates, _layer_labels(config, L), run_dir / PLOT_FILES[0]),
        plot_curves(history, run_dir / PLOT_FILES[1]),
    ]
    samples = _read_json(run_dir / "samples.json")
    if samples:
        written.append(plot_samples(samples, run_dir / PLOT_FILES[2]))
    return written
