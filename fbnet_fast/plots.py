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
    """One panel per layer, candidates (rows) by epochs (columns), four panels a row, all in one Axes: the
    panels are images placed on one grid with their labels as text. (A subplot per layer, as until the
    twenty-eighth session, took 1.7-1.9 s for the default search's 22 layers, most of it matplotlib's layout and
    tick machinery for 24 Axes; this takes 0.4 s, AMD EPYC Zen 4. Every search draws it at its end.)"""
    import numpy as np
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    epochs = [r["epoch"] for r in history]
    E, L, K = len(epochs), len(history[-1]["probs"]), len(candidates)
    cols = min(L, 4)
    rows = math.ceil(L / cols)
    probs = np.asarray([r["probs"] for r in history], dtype=float)  # [E, L, K]
    # Diverging colours centred on the uniform 1/K: a short search moves theta by a few
    # percent, which a 0..1 scale would not show at all.
    uniform = 1.0 / K
    spread = max(float(probs.max()) - uniform, uniform - float(probs.min()), 1e-3)
    norm = TwoSlopeNorm(vcenter=uniform, vmin=max(0.0, uniform - spread), vmax=min(1.0, uniform + spread))
    gap_x, gap_y = max(1.0, 0.35 * E), 2.6  # between panels, in cells (gap_y holds a panel's two-line title)
    pitch_x, pitch_y = E + gap_x, K + gap_y
    fig = Figure(figsize=(max(7.0, (2.2 + 0.25 * E) * cols + 1.5), (0.2 * K + 0.8) * rows + 1.0))
    ax = fig.add_axes((0.07, 0.03, 0.8, 0.87))
    im, boxes, yticks = None, [], []
    step = max(1, E // 8)
    for l in range(L):
        r, c = divmod(l, cols)
        x0, y0 = c * pitch_x, r * pitch_y + gap_y
        im = ax.imshow(probs[:, l, :].T, cmap="RdBu_r", norm=norm, interpolation="nearest", aspect="auto",
                       extent=(x0, x0 + E, y0 + K, y0))
        boxes.append(Rectangle((x0, y0), E, K))
        best = int(probs[-1, l].argmax())
        ax.text(x0 + E / 2, y0 - 0.3, f"{labels[l]}\nargmax {candidates[best]} (p={probs[-1, l, best]:.2f})",
                ha="center", va="bottom", fontsize=8)
        for i in range(0, E, step):  # the epochs under each panel
            ax.text(x0 + i + 0.5, y0 + K + 0.15, str(epochs[i]), ha="center", va="top", fontsize=7)
        if c == 0:
            yticks += [y0 + k + 0.5 for k in range(K)]
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="black", linewidth=0.8))
    ax.set_xlim(-0.2, cols * pitch_x - gap_x + 0.2)
    ax.set_ylim(rows * pitch_y + 0.2, 0)
    ax.set_yticks(yticks, list(candidates) * rows, fontsize=7)
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(f"softmax(theta) per layer\ncandidates (rows) at the end of each epoch (columns, numbered below); "
                 f"white = uniform 1/{K}", fontsize=10)
    fig.colorbar(im, cax=fig.add_axes((0.9, 0.2, 0.02, 0.6)), label="probability")
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
