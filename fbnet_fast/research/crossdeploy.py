"""The cross-device experiment (FBNet's Table 4) on the hardware at hand.

The paper searched one net per device (FBNet-iPhoneX, FBNet-S8) and showed each is
slower on the other device. :func:`cross_deploy` does the same for any LUTs of one
space: one architecture per LUT (searched with that LUT, or given), each measured end
to end on every LUT's target, giving an N x N table (2 x 2 for two targets) whose
diagonal should be the fastest entry of each column.

A target is re-created from its LUT's ``device`` record (:func:`backend_for`): back end,
threads, sampling settings, clock and, for ``ssh``, the board; so "torch eager, 1 thread"
vs "ONNX Runtime, 2 threads" on one CPU are two targets, and so is any board reachable
over SSH. End-to-end measurement reuses the additivity study
(:func:`fbnet_fast.measure.additivity.validate_lut`): all nets of a target are timed in
interleaved rounds with that target's settings, so load that comes and goes hits them
alike, and the LUT's prediction is reported beside the measurement.

Output folder: ``crossdeploy.json`` (everything), ``crossdeploy.md`` (the table),
``crossdeploy.png`` (grouped bars: one group per target, one bar per architecture,
p10-p90 whiskers), ``arch-<i>.json`` (the architectures) and ``search-<i>/`` when searched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..lut import LatencyTable
from ..runs import atomic_write_text
from ..space import Architecture, SearchSpace

__all__ = ["CrossDeployResult", "backend_for", "target_name", "cross_deploy", "plot_cross_deploy"]


def target_name(lut: LatencyTable, i: int = 0) -> str:
    """A short label: ``torch-cpu 1t``, ``onnxruntime 2t``, ``executorch int8 1t``, ``ssh pi@board``."""
    d = lut.device or {}
    name = str(d.get("backend", f"target {i}"))
    if d.get("dtype", "fp32") != "fp32":
        name += f" {d['dtype']}"
    if d.get("board"):
        name += f" {d['board']}"
    if d.get("threads"):
        name += f" {d['threads']}t"
    return name


def backend_for(lut: LatencyTable, **overrides: Any):
    """The measuring back end described by ``lut.device`` (``overrides`` win, e.g. ``passes=1``)."""
    from ..measure import backend_from_device

    return backend_from_device(dict(lut.device or {}), source=str(lut.source), **overrides)


@dataclass
class CrossDeployResult:
    """``measured_ms[i][j]``: architecture ``i`` (made for target ``i``) on target ``j``."""

    targets: list[str]
    archs: list[Architecture]
    arch_sources: list[str]
    measured_ms: list[list[float]]
    p10_ms: list[list[float]]
    p90_ms: list[list[float]]
    predicted_ms: list[list[float]]
    devices: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, int]] = field(default_factory=list)

    def slowdowns(self) -> list[list[float]]:
        """``measured[i][j] / measured[j][j]``: how much slower arch ``i`` is than target ``j``'s own."""
        n = len(self.targets)
        return [[self.measured_ms[i][j] / self.measured_ms[j][j] for j in range(n)] for i in range(n)]

    def diagonal_wins(self) -> list[bool]:
        """Per target: is its own architecture the fastest there?"""
        n = len(self.targets)
        return [all(self.measured_ms[j][j] <= self.measured_ms[i][j] for i in range(n)) for j in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "devices": self.devices,
                "archs": [{"blocks": list(a.blocks), "source": s, **st}
                          for a, s, st in zip(self.archs, self.arch_sources, self.stats or [{}] * len(self.archs))],
                "measured_ms": self.measured_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "predicted_ms": self.predicted_ms, "slowdown": self.slowdowns(), "diagonal_wins": self.diagonal_wins()}

    def markdown(self) -> str:
        n = len(self.targets)
        head = "| architecture (made for) | " + " | ".join(f"on {t}" for t in self.targets) + " |"
        rows = [head, "|---|" + "---|" * n]
        sd = self.slowdowns()
        for i in range(n):
            cells = []
            for j in range(n):
                mark = "**" if i == j else ""
                cells.append(f"{mark}{self.measured_ms[i][j]:.3f} ms{mark} (×{sd[i][j]:.2f}; LUT "
                             f"{self.predicted_ms[i][j]:.3f})")
            rows.append(f"| {self.targets[i]} ({self.arch_sources[i]}) | " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"


def _measure_on(lut: LatencyTable, space: SearchSpace, archs: Sequence[Architecture], names: Sequence[str],
                backend_overrides: dict[str, Any], progress: bool):
    from ..measure.additivity import validate_lut

    if len(archs) < 2:
        raise ConfigError("the cross-device experiment needs at least 2 architectures")
    rep = validate_lut(lut, space, archs, names, backend_for(lut, **backend_overrides), progress=progress)
    pred = [lut.architecture_latency(a.blocks) for a in archs]
    return rep, pred


def cross_deploy(space: SearchSpace, luts: Sequence[LatencyTable], out_dir: str | Path, *,
                 archs: Sequence[Architecture | None] | None = None, search: Any = None,
                 data: Any = None, names: Sequence[str] | None = None, backend_overrides: dict[str, Any] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> CrossDeployResult:
    """Run the experiment; writes the output folder (see the module docstring).

    Args:
        luts: one LUT per target, all for ``space``.
        archs: per target, a given architecture or ``None`` (search it). Default: search all.
        search: the :class:`~fbnet_fast.search.SearchConfig` for the searches (its ``lut`` is
            replaced by each target's table); needed when any architecture is searched.
        backend_overrides: measuring settings that win over the LUTs' (``passes=1`` ...).
    """
    from ..model import model_stats

    if len(luts) < 2:
        raise ConfigError(f"the cross-device experiment needs at least 2 LUTs, got {len(luts)}")
    for t in luts:
        t.check_space(space)
    archs = list(archs) if archs is not None else [None] * len(luts)
    if len(archs) != len(luts):
        raise ConfigError(f"{len(archs)} architectures given for {len(luts)} LUTs")
    names = list(names) if names else [target_name(t, i) for i, t in enumerate(luts)]
    if len(set(names)) != len(names):
        names = [f"{n} #{i}" for i, n in enumerate(names)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen, sources = [], []
    for i, (lut, a) in enumerate(zip(luts, archs)):
        if a is not None:
            a.check(space)
            chosen.append(a)
            sources.append("given")
            continue
        if search is None:
            raise ConfigError(f"no architecture given for target {names[i]!r} and no search configuration")
        from ..search import run_search

        log(f"searching an architecture for {names[i]} ...")
        res = run_search(search, out / f"search-{i}", space=space, lut=lut, data=data, overwrite=True,
                         log=lambda m: None)
        chosen.append(res["arch"])
        sources.append("searched")
        log(f"  {names[i]}: {res['arch']} (LUT {res['latency_ms']:.3f} ms)")
    for i, a in enumerate(chosen):
        atomic_write_text(out / f"arch-{i}.json", json.dumps({**a.to_dict(), "space_def": space.to_dict(),
                                                              "target": names[i]}, indent=1) + "\n")
    n = len(luts)
    meas = [[0.0] * n for _ in range(n)]
    lo, hi, pred = ([[0.0] * n for _ in range(n)] for _ in range(3))
    devices = []
    for j, lut in enumerate(luts):
        log(f"measuring {n} architectures end to end on {names[j]} ...")
        rep, p = _measure_on(lut, space, chosen, [f"arch{i}" for i in range(n)], dict(backend_overrides or {}),
                             progress)
        devices.append(rep.device)
        for i in range(n):
            meas[i][j], lo[i][j], hi[i][j], pred[i][j] = (rep.measured_ms[i], rep.measured_p10_ms[i],
                                                          rep.measured_p90_ms[i], p[i])
    stats = [model_stats(space, a).to_dict() for a in chosen]
    result = CrossDeployResult(names, chosen, sources, meas, lo, hi, pred, devices, stats)
    atomic_write_text(out / "crossdeploy.json", json.dumps(result.to_dict(), indent=1) + "\n")
    atomic_write_text(out / "crossdeploy.md", result.markdown())
    plot_cross_deploy(result, out / "crossdeploy.png")
    return result


def plot_cross_deploy(result: CrossDeployResult, path: str | Path) -> None:
    """One panel per target (own y scale: targets differ ~10x here), one bar per architecture,
    p10-p90 whiskers; the target's own architecture hatched."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(result.targets)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, n, figsize=(1.0 + 3.0 * n, 3.8), dpi=120, squeeze=False)
    sd = result.slowdowns()
    for j, ax in enumerate(axes[0]):
        ys = [result.measured_ms[i][j] for i in range(n)]
        err = [[ys[i] - result.p10_ms[i][j] for i in range(n)], [result.p90_ms[i][j] - ys[i] for i in range(n)]]
        # Scale to the medians: a 2-thread wall-clock target under load has p90s ~10x its median
        # (onnxruntime 2t here), which would flatten the bars.
        top = max(ys) * 1.6
        bars = ax.bar(range(n), ys, 0.7, yerr=err, capsize=3, color=[colors[i % len(colors)] for i in range(n)])
        for i, b in enumerate(bars):
            if i == j:
                b.set_hatch("//")
                b.set_edgecolor("black")
            # inside the bar at its foot, clear of the p10-p90 whisker
            p90 = result.p90_ms[i][j]
            note = f"\np90 {p90:.2f} ms\n(off scale)" if p90 > top else ""
            ax.annotate(f"{ys[i]:.3f} ms\n×{sd[i][j]:.2f}{note}", (b.get_x() + b.get_width() / 2, 0.0),
                        ha="center",
                        va="bottom", fontsize=7, xytext=(0, 3), textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9}, zorder=5)
        ax.set_xticks(range(n))
        ax.set_xticklabels([f"made for\n{t}" for t in result.targets], fontsize=7)
        ax.set_title(f"measured on {result.targets[j]}", fontsize=9)
        ax.set_ylim(0, top)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("end-to-end latency, batch 1 (ms, median)")
    fig.suptitle("Cross-device: each searched architecture on each target (hatched: its own)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
