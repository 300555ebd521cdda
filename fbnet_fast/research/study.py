"""Does the search beat chance, beyond noise? The study behind ``fbnet-fast study pareto``.

Searched points are either a sweep of latency weights ``alpha`` or a list of latency
budgets (``targets``: fractions of the LUT latency under uniform theta). Every searched
point is ``search_seeds`` (N) searches, seeds ``seed``, ``seed + 1``, ...; every
architecture (searched, random, preset) is trained from scratch ``train_seeds`` (M)
times with training seeds ``seed``, ``seed + 1``, ... (a training seed also draws the
generated data set, so every architecture sees the same M data sets: the comparisons
are paired by seed) and timed end to end on the host. Against each target stand random
architectures whose *measured* latency lies within ``+-band`` of the searched nets'
measured latency (:func:`fill_band`), drawn until the band holds ``band_random``.

Statistics (:func:`bootstrap_median`, :func:`bootstrap_difference`): a point's accuracy
is the median of its trainings with a percentile-bootstrap 95 % interval (``bootstrap``
resamples, seeded per statistic). A searched point and a random band are clustered data
(N architectures x M trainings; band: its architectures x M), so they are resampled in
two stages, architectures with replacement and then each drawn architecture's trainings
with replacement (Davison & Hinkley 1997, sec. 3.8): resampling the pooled N x M values
as if independent would count an architecture's M trainings as M searches and give too
narrow an interval when search-to-search differences dominate. The gain at a target is
the searched median minus the band median, both resampled independently per draw.

``compare_one_path`` (a target fraction): at that target each soft search is matched by
a one-path search (``--gumbel hard``: one candidate per layer computed) given the soft
search's measured wall time (:func:`one_path_plan`); both are trained and compared
with the band the same way.

Folders. ``out`` holds the run folders (checkpoints, logs); ``results`` (default: ``out``)
holds the small files a user commits so that a later run, on another machine or day,
continues instead of restarting::

    study.json                      options, the LUT's hash, resolved configs, seeds, host
    lut.json, space.json            the one latency table and the resolved space of every search
    searches/<name>.json            one finished search: seed, schedule, architecture, wall time
    archs/<key>.json                one architecture: blocks, accuracy per training seed,
                                    measured latency per host (CPU model / ISA)
    bands/target-<f>.json           the random draws of one target's band, in order
    summary.json, report.md         the figures (report.md: the table for RESULTS.md)
    points.csv, cost.csv, pareto.png, invocations.jsonl

Search folders in ``out``: ``searches/<name>/`` with ``<name>`` = ``alpha-0.2-auto``,
``target-0.75-s1-auto`` (search seed index 1), ``target-0.75-onepath-auto``;
trainings: ``train/<key>/`` (training seed index 0), ``train/<key>-t<j>/``.

Searches and trainings run as child processes (``python -m fbnet_fast search`` /
``train``), ``jobs`` at a time, so each one's peak RSS is its own (``os.wait4``). The
warm-up epochs train the weights on the CE alone, so they depend on neither alpha nor
the budget: per search seed, the searches after the first start from the end of its
warm-up (``search --warmup-from``) and reach the result they would reach after a warm-up
of their own. The searches of ``cost_alphas`` (seed index 0) run whole, with the fused
kernels and with the reference.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, RunDirError, TrainingError
from ..lut import LatencyTable
from ..presets import fitting_presets
from ..runs import atomic_write_text
from ..space import Architecture, load_space

__all__ = ["StudyConfig", "SearchRun", "PHASES", "run_study", "pareto_front", "dominates", "dominated_fraction",
           "front_accuracy_at", "accuracy_gaps", "fitting_presets", "arch_key", "plot_pareto", "Interval",
           "bootstrap_median", "bootstrap_difference", "fill_band", "one_path_plan", "seed_spread"]

STUDY_FORMAT = "fbnet-fast/pareto-study"
STUDY_VERSION = 2

# Phases a run can skip (``--skip``); the report is always written from what exists.
PHASES = ("search", "cost", "one-path", "measure", "train", "random", "presets")

# A LUT proposal band twice as wide as the measured band: a net's measured latency is its LUT
# latency times a ratio that varies from net to net (1.14-1.42 in RESULTS.md's first target
# study), so a LUT band as narrow as the measured one would never propose part of it.
LUT_BAND_WIDENING = 2.0


@dataclass
class StudyConfig:
    """Every knob of a study. Defaults: the issue's sweep on the default data and space."""

    space: str = "fbnet-cifar"
    width_mult: float | None = 0.25
    input_size: int | None = None  # None: the space's own (fbnet-cifar: 32)
    data: str = "synthetic"
    num_train: int | None = None
    num_val: int | None = None
    alphas: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0)
    # latency budgets, one searched point each (``search --target-fraction f --budget-mode budget_mode``):
    # fractions of the LUT latency under uniform theta
    targets: tuple[float, ...] = ()
    budget_mode: str = "target"
    # per target, random nets whose latency measured on the host lies within +-band of the searched
    # nets' (median over the searches), drawn until the band holds band_random of them (fill_band)
    band: float = 0.05
    band_random: int = 10
    num_random: int = 20
    presets: bool = True
    cost_alphas: tuple[float, ...] = (0.2,)  # searched again with --kernel reference
    seed: int = 0
    search_seeds: int = 1  # N: searches per searched point, seeds seed, seed + 1, ...
    train_seeds: int = 1  # M: trainings per architecture, seeds seed, seed + 1, ...
    bootstrap: int = 10_000  # bootstrap resamples per interval
    # a target fraction: there each soft search is matched by a one-path (--gumbel hard) search of
    # the same wall time (one_path_plan)
    compare_one_path: float | None = None
    # one schedule for every search ...
    search_epochs: int = 8
    warmup_epochs: int = 2
    theta_lr: float | None = None  # None: the search's default
    gumbel: str = "soft"
    # "mul" (the paper's CE * alpha * log(LAT)^beta) or "add" (CE + alpha * log(LAT)^beta).
    # Under Adam the product's alpha only scales theta's gradient, which Adam normalises
    # away: a sweep of alpha is then a sweep of theta's weight decay. "add" makes alpha a
    # real trade-off.
    loss_form: str = "mul"
    # A finished search folder (same seed, data, schedule and LUT) whose end-of-warm-up
    # state every search of seed index 0 outside cost_alphas starts from; None: the first full search's.
    warmup_from: str | None = None
    # ... and one for every training from scratch
    train_epochs: int = 10
    batch_size: int = 64
    lut: str | None = None  # a LUT file to use; None: the results' or out's, else measure one on this host
    # the host back end that measures the LUT (when none is given) and every architecture end to end: the
    # default search's (ONNX Runtime: ranks blocks as the phone runtime does; README); a folder written
    # before this option existed was measured with eager torch (LEGACY_FIXED)
    backend: str = "onnxruntime"
    lut_repeats: int = 20
    latency_repeats: int = 20  # timing samples per architecture, end to end
    threads: int | None = 1  # torch intra-op threads in searches, trainings and timings
    jobs: int = 1  # searches / trainings run at once, each a child process with `threads` threads
    # Searches outside cost_alphas start from the end of their seed's first full search's warm-up
    # (``search --warmup-from``): the warm-up does not read alpha, so the result is the same.
    share_warmup: bool = True
    progress: bool = True
    results: str | None = None  # the results folder (committed); None: the study folder itself

    # Options that change results: a study or results folder refuses a rerun that differs in them
    # (so does another LUT). alphas, targets, num_random, presets, cost_alphas, search_seeds,
    # train_seeds, band_random and compare_one_path only add or leave out searches and trainings,
    # each of which is the same whichever others exist; bootstrap changes only the report.
    FIXED = ("space", "width_mult", "input_size", "data", "num_train", "num_val", "seed", "search_epochs",
             "warmup_epochs", "theta_lr", "gumbel", "loss_form", "train_epochs", "batch_size", "lut_repeats",
             "latency_repeats", "threads", "budget_mode", "band", "backend")
    # what a study.json written before a FIXED option existed ran with
    LEGACY_FIXED = {"backend": "torch-cpu"}

    def validate(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)):
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")

        for n in ("search_epochs", "train_epochs", "batch_size", "lut_repeats", "latency_repeats", "jobs",
                  "search_seeds", "train_seeds"):
            positive_int(n)
        for n in ("warmup_epochs", "num_random", "seed", "band_random"):
            positive_int(n, allow_zero=True)
        positive_int("bootstrap")
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap must be at least 100 resamples (a 95 % interval from fewer is noise), "
                              f"got {self.bootstrap}")
        if self.warmup_epochs >= self.search_epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than search_epochs "
                              f"({self.search_epochs}): theta would never be trained")
        for name in ("alphas", "cost_alphas"):
            vals = getattr(self, name)
            if any(not (isinstance(a, (int, float)) and math.isfinite(a) and a >= 0) for a in vals):
                raise ConfigError(f"{name} must be non-negative numbers, got {list(vals)}")
        if not self.alphas and not self.targets:
            raise ConfigError("alphas and targets are both empty: the study needs at least one search")
        if any(not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0) for f in self.targets):
            raise ConfigError(f"targets must be positive fractions of the uniform latency, got {list(self.targets)}")
        from ..budget import BUDGET_MODES

        if self.budget_mode not in BUDGET_MODES:
            raise ConfigError(f"budget_mode must be one of {BUDGET_MODES}, got {self.budget_mode!r}")
        if not (isinstance(self.band, (int, float)) and 0 < self.band < 1):
            raise ConfigError(f"band must be a fraction in (0, 1), got {self.band!r}")
        missing = [a for a in self.cost_alphas if a not in self.alphas]
        if missing:
            raise ConfigError(f"cost_alphas {missing} are not in alphas {list(self.alphas)}: the reference "
                              f"search is timed against the fused search of the same alpha")
        if self.loss_form not in ("mul", "add"):
            raise ConfigError(f"loss_form must be 'mul' or 'add', got {self.loss_form!r}")
        if self.warmup_from is not None and not self.share_warmup:
            raise ConfigError("warmup_from is given but share_warmup is off")
        if self.gumbel not in ("soft", "hard"):
            raise ConfigError(f"gumbel must be 'soft' or 'hard', got {self.gumbel!r}")
        if self.compare_one_path is not None:
            if self.compare_one_path not in self.targets:
                raise ConfigError(f"compare_one_path {self.compare_one_path!r} is not one of the targets "
                                  f"{list(self.targets)}: the one-path search is compared at a searched target")
            if self.gumbel != "soft":
                raise ConfigError("compare_one_path needs soft searches (gumbel 'soft') to compare with")
        if self.theta_lr is not None and not (isinstance(self.theta_lr, (int, float)) and math.isfinite(self.theta_lr)
                                              and self.theta_lr > 0):
            raise ConfigError(f"theta_lr must be a positive number, got {self.theta_lr!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be >= 1, got {self.threads!r}")
        from ..search import LUT_BACKENDS

        if self.backend not in LUT_BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(LUT_BACKENDS)} (a back end of this host: the study "
                              f"times every architecture end to end where it runs), got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["alphas"], d["cost_alphas"], d["targets"] = list(self.alphas), list(self.cost_alphas), list(self.targets)
        return d

    def searches(self) -> list[tuple[str, float]]:
        """Every searched point: ``("alpha", a)`` per alpha, then ``("target", f)`` per target."""
        return [("alpha", float(a)) for a in self.alphas] + [("target", float(f)) for f in self.targets]

    def search_seed(self, index: int) -> int:
        return self.seed + index

    def train_seed(self, index: int) -> int:
        return self.seed + index

    def search_runs(self) -> list["SearchRun"]:
        """The soft (fused-kernel) searches: every searched point once per search seed, seed-major."""
        return [SearchRun(sp, i) for i in range(self.search_seeds) for sp in self.searches()]

    def search_config(self, run: "SearchRun", *, epochs: int | None = None, warmup_epochs: int | None = None):
        """The :class:`~fbnet_fast.search.SearchConfig` of one search: ``("alpha", a)`` (the alpha/beta
        loss, no budget) or ``("target", f)`` (a budget at that fraction of the uniform latency).
        A one-path run searches with ``gumbel="hard"`` on ``epochs`` / ``warmup_epochs`` (its plan);
        a probe is 2 warm-up + 1 search epoch without layer decisions (every theta step runs)."""
        from ..search import SearchConfig

        kind, value = run.spec
        budget = ({"target_fraction": value, "budget_mode": self.budget_mode} if kind == "target"
                  else {"target_fraction": None, "alpha": value, "loss_form": self.loss_form})
        extra: dict[str, Any] = {}
        if run.role == "probe":
            extra = {"gumbel": "hard", "epochs": 3, "warmup_epochs": 2, "decide_by": None}
        elif run.role == "one-path":
            if epochs is None or warmup_epochs is None:
                raise ConfigError(f"{run.name}: a one-path search needs its planned epochs (one_path_plan)")
            extra = {"gumbel": "hard", "epochs": epochs, "warmup_epochs": warmup_epochs}
        cfg = SearchConfig(space=self.space, width_mult=self.width_mult, data=self.data, num_train=self.num_train,
                           num_val=self.num_val, epochs=self.search_epochs, warmup_epochs=self.warmup_epochs,
                           batch_size=self.batch_size, kernel=run.kernel, seed=self.search_seed(run.seed_index),
                           **({} if self.theta_lr is None else {"theta_lr": self.theta_lr}), gumbel=self.gumbel,
                           threads=self.threads, plots=False, progress=False, **budget)
        return dataclasses.replace(cfg, **extra) if extra else cfg

    def train_config(self, seed_index: int = 0):
        """The :class:`~fbnet_fast.train.TrainConfig` every architecture is trained with (one per seed)."""
        from ..train import TrainConfig

        return TrainConfig(data=self.data, num_train=self.num_train, num_val=self.num_val,
                           epochs=self.train_epochs, batch_size=self.batch_size, seed=self.train_seed(seed_index),
                           threads=self.threads, progress=self.progress)

    def warmup_donor(self, seed_index: int = 0) -> tuple[str, float] | None:
        """The searched point whose fused search of ``seed_index`` does its own warm-up for every other search
        of that seed outside ``cost_alphas`` (None when ``warmup_from`` names an existing search instead)."""
        if seed_index == 0 and self.warmup_from is not None:
            return None
        if seed_index == 0 and self.cost_alphas:
            return ("alpha", float(self.cost_alphas[0]))
        return self.searches()[0]

    def shares_warmup(self, spec: tuple[str, float], seed_index: int = 0) -> bool:
        """Whether the search of ``spec`` starts after the donor's warm-up (which reads neither alpha nor budget)."""
        costed = seed_index == 0 and spec[0] == "alpha" and spec[1] in self.cost_alphas
        return self.share_warmup and not costed and spec != self.warmup_donor(seed_index)

    @property
    def random_seed(self) -> int:
        # The uniform draws have their own stream so adding alphas never changes them;
        # the first R of a larger R are the same architectures.
        return self.seed + 1

    def fixed(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in self.FIXED}


@dataclass(frozen=True)
class SearchRun:
    """One search of the study: a searched point, its search seed index, its role and kernel.

    ``role``: ``"search"`` (the study's own), ``"one-path"`` (``--gumbel hard`` on the soft
    search's wall time) or ``"probe"`` (three one-path epochs that time a one-path epoch).
    """

    spec: tuple[str, float]
    seed_index: int = 0
    role: str = "search"
    kernel: str = "auto"

    @property
    def name(self) -> str:
        """``target-0.75-auto`` (seed index 0), ``target-0.75-s1-auto``, ``target-0.75-onepath-auto``."""
        role = {"search": "", "one-path": "-onepath", "probe": "-onepath-probe"}[self.role]
        seed = f"-s{self.seed_index}" if self.seed_index else ""
        return f"{_spec_name(self.spec)}{seed}{role}-{self.kernel}"


def _spec_name(spec: tuple[str, float]) -> str:
    """``alpha-0.2`` / ``target-0.75``: a searched point's folder stem."""
    return f"{spec[0]}-{spec[1]:g}"


# ---- the figures (pure functions: points are (latency, accuracy) pairs) ------------------------

def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` (latency, accuracy) is at least as fast and as accurate as ``b`` and better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, by increasing latency."""
    idx = [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def dominated_fraction(front: Sequence[Sequence[float]], others: Sequence[Sequence[float]]) -> float:
    """Share of ``others`` dominated by at least one point of ``front`` (nan when ``others`` is empty)."""
    if not others:
        return float("nan")
    return sum(any(dominates(f, o) for f in front) for o in others) / len(others)


def front_accuracy_at(front: Sequence[Sequence[float]], latency: float) -> float | None:
    """Accuracy of the Pareto front of ``front`` at ``latency``, linear between its points.

    None below the fastest point (the front says nothing there); the front's best
    accuracy beyond the slowest (a slower budget can always run the faster model).
    """
    pts = [front[i] for i in pareto_front(front)]
    if not pts or latency < pts[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= latency <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (latency - x0) / (x1 - x0)
    return max(p[1] for p in pts)


def accuracy_gaps(searched: Sequence[Sequence[float]], random: Sequence[Sequence[float]]) -> list[float | None]:
    """Per searched point: its accuracy minus the random front's at the same latency (None: out of range)."""
    out = []
    for lat, acc in searched:
        ref = front_accuracy_at(random, lat)
        out.append(None if ref is None else acc - ref)
    return out


# ---- statistics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A median (or a difference of medians) and its percentile-bootstrap interval.

    ``lo``/``hi`` are None when the data cannot vary under resampling (one value). ``n``:
    values pooled; ``clusters``: architectures they came from; ``resamples``, ``seed``: the
    bootstrap that made the interval.
    """

    median: float
    lo: float | None
    hi: float | None
    n: int
    clusters: int
    resamples: int
    seed: int
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _clean(groups: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(v) for v in g] for g in groups if len(g)]


def _resampled_medians(groups: list[list[float]], rng: Any, resamples: int):
    """``resamples`` medians of ``groups`` resampled in two stages (clusters, then values within each)."""
    import numpy as np

    if len(groups) == 1:  # one architecture: its values are the units
        x = np.asarray(groups[0])
        return np.median(x[rng.integers(0, len(x), (resamples, len(x)))], axis=1)
    k, m = len(groups), max(len(g) for g in groups)
    pad = np.full((k, m), np.nan)
    counts = np.array([len(g) for g in groups])
    for i, g in enumerate(groups):
        pad[i, :len(g)] = g
    c = rng.integers(0, k, (resamples, k))  # architectures drawn with replacement
    cnt = counts[c][..., None]  # [B, k, 1]: each drawn architecture keeps its number of trainings
    j = np.minimum((rng.random((resamples, k, m)) * cnt).astype(np.int64), cnt - 1)
    x = np.where(np.arange(m)[None, None, :] < cnt, pad[c[..., None], j], np.nan)
    return np.nanmedian(x.reshape(resamples, -1), axis=1)


def _percentiles(stats: Any, level: float) -> tuple[float, float]:
    import numpy as np

    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_median(groups: Sequence[Sequence[float]], *, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> Interval | None:
    """Median of the pooled ``groups`` (one list of values per architecture) and its percentile-bootstrap
    interval: with one group its values are resampled; with several, the groups first, then the values
    within each drawn group (two-stage). None when there are no values."""
    import numpy as np

    g = _clean(groups)
    if not g:
        return None
    pooled = [v for x in g for v in x]
    med = float(statistics.median(pooled))
    if len(pooled) < 2:
        return Interval(med, None, None, len(pooled), len(g), resamples, seed, level)
    lo, hi = _percentiles(_resampled_medians(g, np.random.default_rng(seed), resamples), level)
    return Interval(med, lo, hi, len(pooled), len(g), resamples, seed, level)


def bootstrap_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], *, resamples: int = 10_000,
                         seed: int = 0, level: float = 0.95) -> Interval | None:
    """``median(a) - median(b)`` of two independent clustered samples (as :func:`bootstrap_median`) and its
    percentile-bootstrap interval, both resampled in every draw. None when either is empty."""
    import numpy as np

    ga, gb = _clean(a), _clean(b)
    if not ga or not gb:
        return None
    pa, pb = [v for x in ga for v in x], [v for x in gb for v in x]
    diff = float(statistics.median(pa) - statistics.median(pb))
    if len(pa) < 2 and len(pb) < 2:
        return Interval(diff, None, None, len(pa) + len(pb), len(ga) + len(gb), resamples, seed, level)
    rng = np.random.default_rng(seed)
    ma = _resampled_medians(ga, rng, resamples) if len(pa) > 1 else np.full(resamples, pa[0])
    mb = _resampled_medians(gb, rng, resamples) if len(pb) > 1 else np.full(resamples, pb[0])
    lo, hi = _percentiles(ma - mb, level)
    return Interval(diff, lo, hi, len(pa) + len(pb), len(ga) + len(gb), resamples, seed, level)


def seed_spread(per_arch: Sequence[Sequence[float]]) -> dict[str, Any]:
    """How much of the accuracies' spread is the training seed and how much the architecture.

    ``within_arch_sd``: root of the mean per-architecture variance over its trainings
    (architectures with >= 2); ``between_arch_sd``: sd of the per-architecture means. When the
    first is close to the second, a training's luck (e.g. a slow start) decides as much as the net.
    """
    multi = [list(map(float, g)) for g in per_arch if len(g) >= 2]
    means = [statistics.fmean(g) for g in per_arch if len(g)]
    within = math.sqrt(statistics.fmean([statistics.variance(g) for g in multi])) if multi else None
    between = statistics.stdev(means) if len(means) >= 2 else None
    return {"within_arch_sd": within, "between_arch_sd": between, "archs": len(means),
            "archs_with_several_trainings": len(multi)}


def _stat_seed(seed: int, label: str) -> int:
    """A bootstrap seed per statistic: adding a target never changes another's interval."""
    return (seed * 1_000_003 + zlib.crc32(label.encode())) % 2**32


# ---- random nets in a measured latency band --------------------------------------------------

def fill_band(rounds: list[dict[str, Any]], *, lo: float, hi: float, need: int, host: str,
              measure: Callable[[list[dict[str, Any]]], None] | None,
              propose: Callable[[float, float, int, int], tuple[list[dict[str, Any]], int]] | None,
              ratio0: float, max_candidates: int) -> dict[str, Any]:
    """Draw random architectures until ``need`` of them measure within ``[lo, hi]`` ms on ``host``.

    ``rounds`` is the draw record (persisted by the caller, appended to here): each round proposes
    ``n`` candidates uniform over a LUT band (``propose(lut_lo, lut_hi, n, round) -> (candidates,
    proposals)``; a candidate is ``{"key", "blocks", "lut_ms", "measured": {host: {"median_ms"...}}}``)
    centred on the measured band divided by the measured/LUT ratio of the candidates so far (``ratio0``
    before any), ``LUT_BAND_WIDENING`` times as wide; ``measure(candidates)`` times those without a
    measurement on ``host`` and stores it in them. A candidate counts once (the first time drawn).
    Stops when the band is full, after ``max_candidates`` candidates, or when ``measure`` /
    ``propose`` is None (no new measurements: the record as it is).

    Returns ``{"accepted": candidates in the band, first ``need`` in draw order, "measured_until_full":
    candidates measured until the need-th was accepted (all measured when short), "candidates",
    "proposals": LUT draws of the sampler, "rounds", "full", "note"}``.
    """
    note = None
    while True:
        seen: set[str] = set()
        cands = []
        for r in rounds:
            for c in r["candidates"]:
                if c["key"] not in seen:
                    seen.add(c["key"])
                    cands.append(c)
        todo = [c for c in cands if host not in c.get("measured", {})]
        if todo and measure is not None:
            measure(todo)
        ms = {c["key"]: float(c["measured"][host]["median_ms"]) for c in cands if host in c.get("measured", {})}
        accepted = [c for c in cands if c["key"] in ms and lo <= ms[c["key"]] <= hi]
        if len(accepted) >= need or measure is None or propose is None or note is not None:
            break
        if len(cands) >= max_candidates:
            note = f"{len(accepted)} of {need} in the band after {len(cands)} candidates (the cap)"
            break
        ratios = [ms[c["key"]] / float(c["lut_ms"]) for c in cands if c["key"] in ms and float(c["lut_ms"]) > 0]
        ratio = statistics.median(ratios) if ratios else ratio0
        rate = len(accepted) / len(ms) if ms else 0.5
        n = min(max_candidates - len(cands), max(2, math.ceil((need - len(accepted)) / max(rate, 0.2))))
        centre, half = 0.5 * (lo + hi) / ratio, LUT_BAND_WIDENING * (hi - lo) / (hi + lo)
        try:
            new, proposals = propose(centre * (1 - half), centre * (1 + half), n, len(rounds))
        except ConfigError as e:  # e.g. the LUT band lies outside the space's reachable range
            note = f"no more candidates: {e}"
            break
        fresh = [c for c in new if c["key"] not in seen]
        rounds.append({"round": len(rounds), "ratio": ratio, "lut_band": [centre * (1 - half), centre * (1 + half)],
                       "proposals": proposals, "drawn": len(new), "candidates": fresh})
        if not fresh and len(rounds) > 3 and not any(r["candidates"] for r in rounds[-3:]):
            note = "the LUT band holds no architecture not drawn already"
    until, hits = 0, 0
    for c in cands:
        if c["key"] not in ms:
            continue
        until += 1
        if lo <= ms[c["key"]] <= hi:
            hits += 1
            if hits == need:
                break
    return {"accepted": accepted[:need], "measured_until_full": until, "candidates": len(cands),
            "measured": len(ms), "proposals": sum(int(r.get("proposals", 0)) for r in rounds),
            "rounds": len(rounds), "full": len(accepted) >= need, "note": note}


# ---- one-path at the soft search's wall time --------------------------------------------------

def one_path_plan(budget_s: float, warm_epoch_s: float, theta_epoch_s: float, *, epochs: int, warmup_epochs: int,
                  decide_by: float | None, first_epoch_extra_s: float = 0.0) -> dict[str, Any]:
    """The longest one-path schedule whose modelled search time fits ``budget_s`` (the soft search's).

    A one-path epoch costs ``warm_epoch_s`` (its weight steps and end-of-epoch evaluation) plus
    ``theta_epoch_s`` while theta still trains: with layer decisions (``decide_by`` d) the theta
    steps end once every layer is decided, after d of the search epochs; the first epoch of a process
    costs ``first_epoch_extra_s`` more (first calls: allocations, kernel set-up). The costs come from a
    probe (two one-path warm-up epochs and one search epoch without decisions). The warm-up keeps
    the soft schedule's share (``warmup_epochs / epochs``, at least 1 when it has one), so the
    one-path search is the same schedule, longer. Returns ``{"epochs", "warmup_epochs",
    "predicted_s", "next_s" (one epoch more), "fits"}``; at least 2 epochs even when they do not fit.
    """
    d = 1.0 if decide_by is None else float(decide_by)

    def warm(e: int) -> int:
        w = round(e * warmup_epochs / epochs)
        return min(e - 1, max(1 if warmup_epochs else 0, w))

    def cost(e: int) -> float:
        return max(first_epoch_extra_s, 0.0) + e * warm_epoch_s + d * (e - warm(e)) * max(theta_epoch_s, 0.0)

    e = 2
    while cost(e + 1) <= budget_s and e < 100_000:
        e += 1
    return {"epochs": e, "warmup_epochs": warm(e), "predicted_s": cost(e), "next_s": cost(e + 1),
            "fits": cost(e) <= budget_s}


# ---- architectures -----------------------------------------------------------------------------

def arch_key(arch: Architecture | Sequence[str]) -> str:
    """A short stable key of a block list (the training and latency folders are named by it)."""
    blocks = arch.blocks if isinstance(arch, Architecture) else tuple(arch)
    return hashlib.sha1(" ".join(blocks).encode()).hexdigest()[:12]


def _lut_hash(lut: LatencyTable) -> str:
    return hashlib.sha256(json.dumps(lut.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _host() -> dict[str, str]:
    """The measuring host: CPU model and the instruction set torch's kernels use on it."""
    import torch

    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # a label; never fail the study for it
        isa = "unknown"
    return {"cpu": _cpu_name(), "isa": isa}


def _host_key(h: dict[str, str]) -> str:
    return f"{h['cpu']} / {h['isa']}"


# ---- the study ---------------------------------------------------------------------------------

class Study:
    """One study: its run folder ``out`` and its results folder; each method reuses what is there."""

    def __init__(self, cfg: StudyConfig, out: str | Path, *, log: Callable[[str], None] = print) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, Path(out)
        self.started: str | None = None  # set by run_study: this invocation's line in invocations.jsonl
        log_lock = threading.Lock()  # searches and trainings report from worker threads

        def locked_log(msg: str) -> None:
            with log_lock:
                log(msg)

        self.log = locked_log
        self.res = Path(cfg.results) if cfg.results else self.out
        self.space = load_space(cfg.space, width_mult=cfg.width_mult, input_size=cfg.input_size)
        self._stats: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()  # read-modify-write of the results' architecture files
        self.host = _host()
        self.host_key = _host_key(self.host)
        for d in dict.fromkeys((self.out, self.res)):
            d.mkdir(parents=True, exist_ok=True)
            self._check_folder(d)
        self.lut = self._lut()
        self.lut_hash = _lut_hash(self.lut)
        self._write_study_json()
        from ..budget import uniform_latency

        self.uniform_ms = uniform_latency(self.lut, self.space.num_layers, len(self.space.candidates))
        self.bands: dict[float, dict[str, Any]] = {}  # per target: fill_band's account (band_points)

    # ---- set-up -------------------------------------------------------------------------------
    def _check_folder(self, d: Path) -> None:
        """Refuse a folder holding another study (other FIXED options) or unrelated files."""
        path = d / "study.json"
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
                saved = doc["study"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise RunDirError(f"{path} is not a study file ({type(e).__name__}: {e}); use another folder") from None
            mine = self.cfg.to_dict()
            legacy = StudyConfig.LEGACY_FIXED
            diff = [f"{k}: folder {saved.get(k, legacy.get(k))!r}, now {mine[k]!r}" for k in StudyConfig.FIXED
                    if saved.get(k, legacy.get(k)) != mine[k]]
            if diff:
                what = "--results" if d == self.res and d != self.out else "--out"
                raise RunDirError(f"{d} holds a study with other options ({'; '.join(diff)}); its results were made "
                                  f"with those and would be mixed with these: rerun with the same options to "
                                  f"continue it, or pick another {what}")
        elif any(p.name not in ("lut.json", "lut.json.partial", "space.json") for p in d.iterdir()):
            raise RunDirError(f"{d} already holds files but no study.json; pick an empty or new folder")

    def _lut(self) -> LatencyTable:
        """The study's one LUT: the results folder's, else the study folder's, else ``--lut``, else measured
        here. A LUT other than the one the results were made with is refused."""
        found = [(p, LatencyTable.load(p, self.space)) for p in dict.fromkeys((self.res / "lut.json",
                                                                                self.out / "lut.json")) if p.is_file()]
        table = found[0][1] if found else None
        for p, t in found[1:] + ([(Path(self.cfg.lut), LatencyTable.load(self.cfg.lut, self.space))]
                                 if self.cfg.lut and found else []):
            if _lut_hash(t) != _lut_hash(table):
                raise RunDirError(f"{p} is another latency table than {found[0][0]}, which the study's results were "
                                  f"made with; use that one (or leave --lut out), or pick another --out/--results")
        if table is None:
            if self.cfg.lut:
                table = LatencyTable.load(self.cfg.lut, self.space)
            else:
                from ..measure import measure_lut

                path = self.out / "lut.json"
                self.log(f"measuring the latency table of {self.space.name} on this host with {self.cfg.backend} "
                         f"({path})")
                table = measure_lut(self.space, backend=self.cfg.backend, threads=self.cfg.threads or 1,
                                    repeats=self.cfg.lut_repeats,
                                    output=path, progress=self.cfg.progress)
        for d in dict.fromkeys((self.res, self.out)):
            if not (d / "lut.json").is_file():
                table.save(d / "lut.json")
        # as every later run reads it (its hash is the one study.json records)
        return LatencyTable.load(self.res / "lut.json", self.space)

    def _write_study_json(self) -> None:
        import torch

        for d in dict.fromkeys((self.out, self.res)):
            path = d / "study.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                if saved.get("lut_sha256") not in (None, self.lut_hash):
                    raise RunDirError(f"{path}: the study was made with another latency table "
                                      f"({saved['lut_sha256']}, now {self.lut_hash}); pick another folder")
                if saved.get("fingerprint") not in (None, self.space.fingerprint):
                    raise RunDirError(f"{path}: the study was made on another space (fingerprint "
                                      f"{saved['fingerprint']}, now {self.space.fingerprint}: other widths, input "
                                      f"size or candidates); pick another folder")
        seeds = {"search": [self.cfg.search_seed(i) for i in range(self.cfg.search_seeds)],
                 "train": [self.cfg.train_seed(j) for j in range(self.cfg.train_seeds)],
                 "data": "the search's or training's seed", "random_architectures": self.cfg.random_seed}
        fixed = self.cfg.fixed()
        doc = {
            "format": STUDY_FORMAT, "version": STUDY_VERSION, "study": self.cfg.to_dict(),
            "lut_sha256": self.lut_hash, "fingerprint": self.space.fingerprint,
            # what a rerun must match (the FIXED options, the LUT, the space), hashed
            "options_hash": hashlib.sha256(json.dumps({**fixed, "lut": self.lut_hash,
                                                       "fingerprint": self.space.fingerprint},
                                                      sort_keys=True).encode()).hexdigest()[:16],
            "seeds": seeds,
            # as each search runs it: on the resolved space file (input size and width applied)
            "search_config": {_spec_name(sp): {**self.cfg.search_config(SearchRun(sp)).to_dict(),
                                               "space": "space.json", "width_mult": self.space.width_mult}
                              for sp in self.cfg.searches()},
            "reference_kernel_alphas": list(self.cfg.cost_alphas),
            "train_config": self.cfg.train_config().to_dict(),
            "space": self.space.to_dict(),
            "host": {**self.host, "cores": os.cpu_count(), "python": platform.python_version(),
                     "torch": torch.__version__, "platform": platform.platform()},
        }
        for d in dict.fromkeys((self.out, self.res)):
            atomic_write_text(d / "study.json", json.dumps(doc, indent=1) + "\n")
            # The resolved space (width and input size applied) is what every search loads.
            atomic_write_text(d / "space.json", json.dumps(self.space.to_dict(), indent=1) + "\n")

    def data_classes(self) -> int:
        # The number of classes without building the data set (a report-only rerun stays cheap).
        for p in sorted((self.out / "train").glob("*/config.json")) if (self.out / "train").is_dir() else []:
            return int(json.loads(p.read_text())["space"]["num_classes"])
        return self.space.num_classes

    # ---- results files ------------------------------------------------------------------------
    def _read(self, rel: str) -> dict[str, Any] | None:
        p = self.res / rel
        return json.loads(p.read_text()) if p.is_file() else None

    def _write(self, rel: str, doc: dict[str, Any]) -> None:
        atomic_write_text(self.res / rel, json.dumps(doc, indent=1) + "\n")

    def arch_record(self, arch: Architecture) -> dict[str, Any]:
        """The results' record of ``arch`` (``archs/<key>.json``), empty when there is none yet."""
        key = arch_key(arch)
        return self._read(f"archs/{key}.json") or {
            "key": key, "blocks": list(arch.blocks), "fingerprint": self.space.fingerprint,
            "lut_ms": round(self.lut.architecture_latency(arch.blocks), 6), "trainings": {}, "latency": {}}

    def _update_arch(self, arch: Architecture, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with self._lock:  # two trainings of one net may finish side by side
            rec = self.arch_record(arch)
            change(rec)
            self._write(f"archs/{rec['key']}.json", rec)
            return rec

    def latency_here(self, arch: Architecture) -> dict[str, Any] | None:
        """``arch``'s end-to-end latency measured on this host (CPU model and ISA), or None."""
        return self.arch_record(arch)["latency"].get(self.host_key)

    # ---- searches -----------------------------------------------------------------------------
    def search_dir(self, run: SearchRun | tuple[str, float], kernel: str = "auto") -> Path:
        run = run if isinstance(run, SearchRun) else SearchRun(run, kernel=kernel)
        return self.out / "searches" / run.name

    def _child(self, cmd: list[str], log_path: Path, what: str) -> tuple[float, Any]:
        """Run ``python -m fbnet_fast <cmd>`` with its output in ``log_path``; (wall s, rusage)."""
        env = dict(os.environ)
        if self.cfg.threads:
            env["OMP_NUM_THREADS"] = str(self.cfg.threads)
        t0 = time.perf_counter()
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "fbnet_fast", *cmd], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise TrainingError(f"{what} failed (exit {code}); its log {log_path} ends: " + " | ".join(tail))
        return wall, usage

    def search_record(self, run: SearchRun) -> dict[str, Any] | None:
        """The results' record of a finished search (``searches/<name>.json``), or None."""
        return self._read(f"searches/{run.name}.json")

    def search_records(self) -> list[dict[str, Any]]:
        """Every finished search in the results (the ``.cost.json`` files beside the run folders excluded)."""
        d = self.res / "searches"
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json")) if not p.name.endswith(".cost.json")] \
            if d.is_dir() else []

    def run_search(self, run: SearchRun | tuple[str, float], kernel: str = "auto", warmup_from: Path | None = None,
                   plan: dict[str, Any] | None = None) -> dict[str, Any]:
        """One search as a child process; returns (and stores in the results) its record. Reused when
        the results hold it, recorded without running when its folder finished.

        ``warmup_from``: a finished search of this study whose warm-up this one starts from (ignored, with
        the same result, when that folder has no warm-up checkpoint: e.g. its record came from the
        results of another machine). ``plan``: a one-path search's :func:`one_path_plan`.
        """
        run = run if isinstance(run, SearchRun) else SearchRun(run, kernel=kernel)
        done = self.search_record(run)
        if done is not None:
            return done
        d = self.search_dir(run)
        cost_path = d.with_name(d.name + ".cost.json")
        scfg = self.cfg.search_config(run, **({"epochs": plan["epochs"], "warmup_epochs": plan["warmup_epochs"]}
                                              if plan else {}))
        if not (cost_path.is_file() and (d / "arch.json").is_file()):
            if warmup_from is not None and not (warmup_from / "checkpoints" / "warmup.pt").is_file():
                if self.cfg.warmup_from is not None and warmup_from == Path(self.cfg.warmup_from):
                    pass  # the user's donor: the search names what is missing
                else:
                    self.log(f"{run.name}: {warmup_from.name} has no warm-up checkpoint here; running its own "
                             f"warm-up (the same result)")
                    warmup_from = None
            self._search_child(run, scfg, warmup_from, cost_path)
        cost = json.loads(cost_path.read_text())
        hist = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
        arch = Architecture.from_dict(json.loads((d / "arch.json").read_text()), source=str(d / "arch.json"))
        kind, value = run.spec
        rec = {"name": run.name, "kind": kind, "value": value, "seed_index": run.seed_index,
               "seed": scfg.seed, "role": run.role, "kernel": run.kernel, "gumbel": scfg.gumbel,
               "epochs": scfg.epochs, "warmup_epochs": scfg.warmup_epochs, "decide_by": scfg.decide_by,
               "blocks": list(arch.blocks), "key": arch_key(arch),
               "lut_ms": round(self.lut.architecture_latency(arch.blocks), 6),
               # cumulative search-loop seconds at each epoch's end (a shared warm-up's included)
               "epoch_elapsed_s": [h.get("elapsed_s") for h in hist],
               "supernet_val_acc": hist[-1].get("val_acc") if hist else None,
               **({"plan": plan} if plan else {}), "cost": cost, "host": self.host}
        self._write(f"searches/{run.name}.json", rec)
        return rec

    def _search_child(self, run: SearchRun, scfg: Any, warmup_from: Path | None, cost_path: Path) -> None:
        d = self.search_dir(run)
        cmd = ["search", "--out", str(d), "--lut", str(self.out / "lut.json"),
               "--space", str(self.out / "space.json"), "--data", scfg.data, "--epochs", str(scfg.epochs),
               "--warmup-epochs", str(scfg.warmup_epochs), "--hard-epochs", str(scfg.hard_epochs),
               "--batch-size", str(scfg.batch_size), "--kernel", scfg.kernel, "--seed", str(scfg.seed),
               "--theta-lr", repr(float(scfg.theta_lr)), "--gumbel", scfg.gumbel, "--no-plots", "--no-progress"]
        cmd += ["--no-decide"] if scfg.decide_by is None else ["--decide-by", repr(float(scfg.decide_by))]
        if run.spec[0] == "alpha":
            cmd += ["--no-budget", "--alpha", repr(run.spec[1]), "--loss-form", scfg.loss_form]
        else:
            cmd += ["--target-fraction", repr(run.spec[1]), "--budget-mode", scfg.budget_mode]
        # --width-mult explicitly: the search's own default (0.25) would replace the file's
        for opt, v in (("--width-mult", self.space.width_mult), ("--num-train", scfg.num_train),
                       ("--num-val", scfg.num_val), ("--threads", scfg.threads)):
            if v is not None:
                cmd += [opt, str(v)]
        resumed = (d / "config.json").is_file()
        if resumed:
            cmd.append("--resume")
        else:
            if d.exists():
                cmd.append("--overwrite")
            if warmup_from is not None:
                cmd += ["--warmup-from", str(warmup_from)]
        d.parent.mkdir(parents=True, exist_ok=True)
        log_path = d.with_name(d.name + ".log")
        what = f"search {run.name}"
        self.log(f"{what}{' (resuming)' if resumed else ''}"
                 f"{f' after the warm-up of {warmup_from.name}' if warmup_from is not None else ''} -> {d}")
        wall, usage = self._child(cmd, log_path, what)
        hist = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
        arch = json.loads((d / "arch.json").read_text())
        rec = {"alpha": run.spec[1] if run.spec[0] == "alpha" else None,
               "target": run.spec[1] if run.spec[0] == "target" else None, "seed_index": run.seed_index,
               "role": run.role, "name": run.name, "kernel": scfg.kernel, "gumbel": scfg.gumbel,
               "wall_s": round(wall, 2), "search_loop_s": hist[-1].get("elapsed_s") if hist else None,
               # ru_maxrss is KiB on Linux: the child's own peak resident set
               "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "epochs": scfg.epochs, "resumed": resumed,
               # epochs this process ran: a search after a shared warm-up skips those epochs
               "epochs_run": scfg.epochs - (scfg.warmup_epochs if warmup_from is not None else 0),
               "warmup_from": "" if warmup_from is None else warmup_from.name, "jobs": self.cfg.jobs,
               "arch": " ".join(arch["blocks"]), "load_avg_1m": round(os.getloadavg()[0], 2)}
        atomic_write_text(cost_path, json.dumps(rec, indent=1) + "\n")

    def one_path(self, run: SearchRun) -> dict[str, Any] | None:
        """The one-path search matching the soft search ``run`` (a probe first when needed); its record,
        or None when the soft search has not finished."""
        soft = self.search_record(run)
        if soft is None:
            self.log(f"one-path at {_spec_name(run.spec)} seed {run.seed_index}: the soft search has not "
                     f"finished; skipped")
            return None
        hard = dataclasses.replace(run, role="one-path")
        done = self.search_record(hard)
        if done is not None:
            return done
        plan = self.one_path_plan(run)
        self.log(f"{hard.name}: {plan['epochs']} one-path epochs ({plan['warmup_epochs']} warm-up) modelled at "
                 f"{plan['predicted_s']:.1f} s against the soft search's {plan['budget_s']:.1f} s")
        return self.run_search(hard, plan=plan)

    def one_path_plan(self, run: SearchRun) -> dict[str, Any]:
        """The one-path schedule of the soft search ``run``'s wall time, from its record and the probe's
        (both in the results, so another machine plans the same)."""
        soft = self.search_record(run)
        probe = self.run_search(dataclasses.replace(run, role="probe"))
        e = [float(v) for v in probe["epoch_elapsed_s"]]
        # epoch 2 is a warm-up epoch without the first one's set-up; epoch 3 adds theta's steps
        warm, theta, extra = e[1] - e[0], (e[2] - e[1]) - (e[1] - e[0]), e[0] - (e[1] - e[0])
        budget = float(soft["epoch_elapsed_s"][-1])
        scfg = self.cfg.search_config(run)
        plan = one_path_plan(budget, warm, theta, epochs=scfg.epochs, warmup_epochs=scfg.warmup_epochs,
                             decide_by=scfg.decide_by, first_epoch_extra_s=extra)
        return {**plan, "budget_s": budget, "soft": soft["name"], "probe": probe["name"],
                "probe_warm_epoch_s": warm, "probe_theta_epoch_s": theta, "probe_first_epoch_extra_s": extra}

    def target_ms(self, fraction: float) -> float:
        """The budget ``fraction`` x the LUT latency under uniform theta, as the searches compute it."""
        return fraction * self.uniform_ms

    # ---- points -------------------------------------------------------------------------------
    def planned_points(self, skip: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Searched and one-path (finished searches), uniformly random, presets:
        ``{kind, label, alpha, target, seed_index, arch}`` (band points come from :meth:`band_points`)."""
        from ..measure.additivity import sample_architectures

        pts = []
        for run in self.cfg.search_runs():
            roles = [run] + ([dataclasses.replace(run, role="one-path")]
                             if run.spec == ("target", self.cfg.compare_one_path) else [])
            for r in roles:
                rec = self.search_record(r)
                if rec is None:
                    continue
                kind = "searched" if r.role == "search" else "one-path"
                pts.append({"kind": kind, "label": f"{r.spec[0]}={r.spec[1]:g}"
                            + (f" s{r.seed_index}" if r.seed_index else "") + (" one-path" if r.role != "search" else ""),
                            "alpha": r.spec[1] if r.spec[0] == "alpha" else None,
                            "target": r.spec[1] if r.spec[0] == "target" else None, "seed_index": r.seed_index,
                            "arch": Architecture(tuple(rec["blocks"]), self.space.name, self.space.fingerprint)})
        if self.cfg.num_random and "random" not in skip:
            for i, arch in enumerate(sample_architectures(self.space, self.cfg.num_random, seed=self.cfg.random_seed)):
                pts.append({"kind": "random", "label": f"random-{i:03d}", "alpha": None, "target": None,
                            "seed_index": None, "arch": arch})
        if self.cfg.presets and "presets" not in skip:
            for name, label, arch in fitting_presets(self.space):
                pts.append({"kind": "preset", "label": label, "alpha": None, "target": None, "seed_index": None,
                            "arch": arch})
        return pts

    def band_points(self, points: Sequence[dict[str, Any]], *, measure: bool = True) -> list[dict[str, Any]]:
        """Per target, the random nets of its measured band (:func:`fill_band`, drawn here when short
        and ``measure``); the draw record is kept in the results (``bands/target-<f>.json``)."""
        from ..budget import sample_in_band

        out = []
        for f in self.cfg.targets:
            mine = [p for p in points if p["kind"] == "searched" and p["target"] == f]
            lats = [(self.latency_here(p["arch"]), self.lut.architecture_latency(p["arch"].blocks)) for p in mine]
            lats = [(m["median_ms"], l) for m, l in lats if m is not None]
            if not lats:
                self.log(f"target {f:g}: no searched net measured on this host yet; its random band waits")
                continue
            centre = statistics.median(m for m, _ in lats)
            lo, hi = centre * (1 - self.cfg.band), centre * (1 + self.cfg.band)
            rel = f"bands/target-{f:g}.json"
            doc = self._read(rel) or {"fraction": f, "rounds": []}
            seed = (self.cfg.random_seed * 1_000_003 + int(round(f * 1e4))) * 101

            def propose(lut_lo: float, lut_hi: float, n: int, rnd: int) -> tuple[list[dict[str, Any]], int]:
                idx, draws = sample_in_band(self.lut, lut_lo, lut_hi, n, seed=seed + rnd)
                archs = [Architecture.from_indices(self.space, i) for i in idx]
                return [{"key": arch_key(a), "blocks": list(a.blocks),
                         "lut_ms": round(self.lut.architecture_latency(a.blocks), 6), "measured": {}}
                        for a in archs], draws

            def timed(cands: list[dict[str, Any]]) -> None:
                archs = {c["key"]: Architecture(tuple(c["blocks"]), self.space.name, self.space.fingerprint)
                         for c in cands}
                got = self._time(archs, desc=f"band of target {f:g}")
                for c in cands:
                    c.setdefault("measured", {})[self.host_key] = got[c["key"]]
                self._write(rel, doc)

            acc = fill_band(doc["rounds"], lo=lo, hi=hi, need=self.cfg.band_random, host=self.host_key,
                            measure=timed if measure else None, propose=propose if measure else None,
                            ratio0=statistics.median(m / l for m, l in lats if l > 0),
                            max_candidates=max(50, 25 * self.cfg.band_random))
            doc.update({"band_ms": [lo, hi], "centre_ms": centre, "host": self.host_key,
                        "need": self.cfg.band_random})
            self._write(rel, doc)
            self.bands[f] = {**{k: v for k, v in acc.items() if k != "accepted"}, "centre_ms": centre,
                             "band_ms": [lo, hi]}
            if not acc["full"]:
                self.log(f"warning: target {f:g}: the band [{lo:.4f}, {hi:.4f}] ms holds {len(acc['accepted'])} of "
                         f"{self.cfg.band_random} random nets ({acc['note'] or 'no new measurements'})")
            for i, c in enumerate(acc["accepted"]):
                arch = Architecture(tuple(c["blocks"]), self.space.name, self.space.fingerprint)
                entry = c["measured"][self.host_key]
                self._update_arch(arch, lambda rec, e=entry: rec["latency"].setdefault(self.host_key, e))
                out.append({"kind": "band", "label": f"band-{f:g}-{i:02d}", "alpha": None, "target": f,
                            "seed_index": None, "arch": arch})
        return out

    def _time(self, archs: dict[str, Architecture], desc: str = "end-to-end latency") -> dict[str, dict[str, Any]]:
        """End-to-end latency of ``archs`` on this host, one group timed in interleaved rounds by the study's
        back end with the LUT's rules (``threads`` threads, process CPU clock, two passes), so load on a
        shared host slows every model of a round alike."""
        from ..model import build_model
        from ..measure.core import Job, get_backend_class, measure_jobs

        if not archs:
            return {}
        self.log(f"measuring {len(archs)} architecture(s) end to end on this host ({desc})")
        backend = get_backend_class(self.cfg.backend)(threads=self.cfg.threads or 1, repeats=self.cfg.latency_repeats)
        shape = (1, self.space.in_channels, self.space.input_size, self.space.input_size)
        jobs = [Job(k, (lambda a=a: build_model(self.space, a)), shape, k) for k, a in archs.items()]
        try:
            res = measure_jobs(backend, [jobs], progress=self.cfg.progress, desc=desc)
        finally:
            backend.close()
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        return {k: {"median_ms": res[k].median_ms, "p10_ms": res[k].p10_ms, "p90_ms": res[k].p90_ms, **self.host,
                    "settings": backend.settings(), "repeats": self.cfg.latency_repeats, "measured_at": when}
                for k in archs}

    def measure(self, archs: Sequence[Architecture]) -> None:
        """Time every architecture not yet measured on this host; stored in its results record."""
        todo = {arch_key(a): a for a in archs if self.latency_here(a) is None}
        got = self._time(todo)
        for k, a in todo.items():
            self._update_arch(a, lambda rec, e=got[k]: rec["latency"].__setitem__(self.host_key, e))

    def train_dir(self, arch: Architecture, seed_index: int) -> Path:
        key = arch_key(arch)
        return self.out / "train" / (key if seed_index == 0 else f"{key}-t{seed_index}")

    def train(self, arch: Architecture, seed_index: int = 0) -> dict[str, Any]:
        """Train ``arch`` from scratch with training seed ``seed_index`` (reused when the results hold it,
        recorded when its folder finished, resumed when started); returns its results entry.

        A child process (``fbnet-fast train``), so trainings can run side by side (``jobs``).
        """
        tcfg = self.cfg.train_config(seed_index)
        done = self.arch_record(arch)["trainings"].get(str(tcfg.seed))
        if done is not None:
            return done
        d = self.train_dir(arch, seed_index)
        key = arch_key(arch)
        wall = None
        if not (d / "summary.json").is_file():
            resume = (d / "config.json").is_file() and any((d / "checkpoints").glob("ckpt-*.pt"))
            d.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                cmd = ["train", "--resume"]
            else:
                arch_file = d.with_name(d.name + ".arch.json")
                atomic_write_text(arch_file, json.dumps(arch.to_dict(), indent=1) + "\n")
                cmd = ["train", str(arch_file), "--space", str(self.out / "space.json"),
                       "--width-mult", str(self.space.width_mult), "--data", tcfg.data, "--epochs", str(tcfg.epochs),
                       "--batch-size", str(tcfg.batch_size), "--seed", str(tcfg.seed)]
                for opt, v in (("--num-train", tcfg.num_train), ("--num-val", tcfg.num_val),
                               ("--threads", tcfg.threads)):
                    if v is not None:
                        cmd += [opt, str(v)]
                if d.exists():
                    cmd.append("--overwrite")
            cmd += ["--out", str(d), "--no-progress"]
            self.log(f"training {key} seed {tcfg.seed} ({'resuming' if resume else 'from scratch'}): {arch}")
            wall, _ = self._child(cmd, d.with_name(d.name + ".log"), f"training {key} seed {tcfg.seed}")
        summ = json.loads((d / "summary.json").read_text())
        entry = {"seed": tcfg.seed, "val_acc": summ.get("last_val_acc"), "best_val_acc": summ.get("best_val_acc"),
                 "epochs": tcfg.epochs, "train_s": summ.get("elapsed_s"),
                 "wall_s": None if wall is None else round(wall, 2), **self.host}
        self._update_arch(arch, lambda rec: rec["trainings"].__setitem__(str(tcfg.seed), entry))
        return entry

    # ---- report -------------------------------------------------------------------------------
    def collect(self, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per point: its latencies, the median of its trainings and that median's interval."""
        from ..model import model_stats

        seeds = [str(self.cfg.train_seed(j)) for j in range(self.cfg.train_seeds)]
        rows = []
        for p in points:
            arch = p["arch"]
            rec = self.arch_record(arch)
            key = rec["key"]
            runs = [rec["trainings"][s] for s in seeds if s in rec["trainings"]]
            accs = [float(t["val_acc"]) for t in runs if t.get("val_acc") is not None]
            iv = bootstrap_median([accs], resamples=self.cfg.bootstrap, seed=_stat_seed(self.cfg.seed, "arch " + key))
            m = rec["latency"].get(self.host_key, {})
            if key not in self._stats:  # a FLOP count is a forward pass: once per architecture
                self._stats[key] = model_stats(self.space, arch).to_dict()
            stats = self._stats[key]
            rows.append({
                "kind": p["kind"], "label": p["label"],
                "alpha": "" if p["alpha"] is None else p["alpha"],
                "target": "" if p.get("target") is None else p["target"],
                "seed_index": "" if p.get("seed_index") is None else p["seed_index"],
                "target_ms": "" if p.get("target") is None else round(self.target_ms(p["target"]), 5),
                "key": key, "blocks": " ".join(arch.blocks),
                "lut_ms": round(self.lut.architecture_latency(arch.blocks), 5),
                "measured_ms": _r(m.get("median_ms")), "measured_p10_ms": _r(m.get("p10_ms")),
                "measured_p90_ms": _r(m.get("p90_ms")),
                "val_acc": "" if iv is None else round(iv.median, 5),
                "val_acc_lo": "" if iv is None or iv.lo is None else round(iv.lo, 5),
                "val_acc_hi": "" if iv is None or iv.hi is None else round(iv.hi, 5),
                "trainings": len(accs), "val_accs": " ".join(f"{a:.4f}" for a in accs),
                "best_val_acc": _r(statistics.median(float(t["best_val_acc"]) for t in runs)
                                   if runs and all(t.get("best_val_acc") is not None for t in runs) else None),
                "params": stats["params"], "macs": stats["macs"],
                "train_s": _r(sum(float(t["train_s"]) for t in runs if t.get("train_s") is not None) if runs else None),
            })
        return rows

    def _num_val(self) -> int | None:
        # the data description of a training run says "N train / M val"
        for p in sorted((self.out / "train").glob("*/config.json")) if (self.out / "train").is_dir() else []:
            d = json.loads(p.read_text())
            desc = str(d.get("data", ""))
            m = re.search(r"(\d+) val", desc)
            return int(m.group(1)) if m else None
        return None

    def _groups(self, rows: Sequence[dict[str, Any]], kind: str, target: float) -> list[list[float]]:
        return [[float(a) for a in r["val_accs"].split()] for r in rows
                if r["kind"] == kind and r["target"] == target and r["val_accs"]]

    def _interval(self, label: str, groups: list[list[float]]) -> dict[str, Any] | None:
        iv = bootstrap_median(groups, resamples=self.cfg.bootstrap, seed=_stat_seed(self.cfg.seed, label))
        return None if iv is None else iv.to_dict()

    def _difference(self, label: str, a: list[list[float]], b: list[list[float]]) -> dict[str, Any] | None:
        iv = bootstrap_difference(a, b, resamples=self.cfg.bootstrap, seed=_stat_seed(self.cfg.seed, label))
        return None if iv is None else iv.to_dict()

    def _searched_summary(self, rows: Sequence[dict[str, Any]], kind: str, target: float | None,
                          alpha: float | None = None) -> dict[str, Any]:
        mine = [r for r in rows if r["kind"] == kind and r["target"] == ("" if target is None else target)
                and r["alpha"] == ("" if alpha is None else alpha)]
        groups = [[float(a) for a in r["val_accs"].split()] for r in mine if r["val_accs"]]
        meas = [float(r["measured_ms"]) for r in mine if r["measured_ms"] != ""]
        name = f"{kind} {'target' if target is not None else 'alpha'} {target if target is not None else alpha}"
        return {"searches": len(mine), "trainings": sum(len(g) for g in groups),
                "accuracy": self._interval(name, groups),
                "measured_ms": statistics.median(meas) if meas else None,
                "measured_ms_range": [min(meas), max(meas)] if meas else None,
                "lut_ms": statistics.median(float(r["lut_ms"]) for r in mine) if mine else None,
                "archs": [{"seed_index": r["seed_index"], "key": r["key"], "blocks": r["blocks"],
                           "measured_ms": r["measured_ms"] or None, "val_accs": r["val_accs"]} for r in mine]}

    def _matched_accuracy(self, rows: Sequence[dict[str, Any]], acc: float, searched_ms: float | None) -> dict[str, Any]:
        """The fastest random net (band or uniform, any target) whose median accuracy is at least ``acc``."""
        rnd = [r for r in rows if r["kind"] in ("band", "random") and r["val_acc"] != "" and r["measured_ms"] != ""]
        good = sorted((r for r in rnd if float(r["val_acc"]) >= acc), key=lambda r: float(r["measured_ms"]))
        if not good:
            best = max((float(r["val_acc"]) for r in rnd), default=None)
            return {"random_ms": None, "note": f"no random net is as accurate ({len(rnd)} trained; the best: "
                                               + ("none" if best is None else f"{best:.4f}") + ")"}
        r = good[0]
        out: dict[str, Any] = {"random_ms": float(r["measured_ms"]), "random_acc": float(r["val_acc"]),
                               "random_key": r["key"], "random_kind": r["kind"], "note": None}
        if searched_ms:
            # > 0: the searched net is that much faster than the fastest random net as accurate
            out["latency_saved"] = 1 - searched_ms / out["random_ms"]
        return out

    def _target_figures(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for f in self.cfg.targets:
            t = self.target_ms(f)
            s = self._searched_summary(rows, "searched", f)
            sg, bg = self._groups(rows, "searched", f), self._groups(rows, "band", f)
            band = [r for r in rows if r["kind"] == "band" and r["target"] == f]
            meas = [float(r["measured_ms"]) for r in band if r["measured_ms"] != ""]
            draws = self.bands.get(f, {})
            rec: dict[str, Any] = {
                "fraction": f, "target_ms": round(t, 5), "budget_mode": self.cfg.budget_mode,
                "searched": s,
                "searched_lut_error": None if s["lut_ms"] is None else s["lut_ms"] / t - 1,
                "band": {"centre_ms": draws.get("centre_ms"), "band_ms": draws.get("band_ms"), "width": self.cfg.band,
                         "archs": len(band), "trained_archs": len(bg), "trainings": sum(len(g) for g in bg),
                         "accuracy": self._interval(f"band {f}", bg),
                         "measured_ms": statistics.median(meas) if meas else None,
                         "draws": {k: draws.get(k) for k in ("measured_until_full", "candidates", "measured",
                                                             "proposals", "rounds", "full", "note")}},
                "gain": self._difference(f"gain {f}", sg, bg),
            }
            acc = (s["accuracy"] or {}).get("median")
            rec["matched_accuracy"] = (None if acc is None else self._matched_accuracy(rows, acc, s["measured_ms"]))
            if f == self.cfg.compare_one_path:
                h = self._searched_summary(rows, "one-path", f)
                hg = self._groups(rows, "one-path", f)
                walls = []
                for i in range(self.cfg.search_seeds):
                    soft = self.search_record(SearchRun(("target", f), i))
                    hard = self.search_record(SearchRun(("target", f), i, role="one-path"))
                    if soft and hard:
                        walls.append({"seed_index": i, "soft_s": soft["epoch_elapsed_s"][-1],
                                      "one_path_s": hard["epoch_elapsed_s"][-1], "soft_epochs": soft["epochs"],
                                      "one_path_epochs": hard["epochs"],
                                      "one_path_warmup_epochs": hard["warmup_epochs"], "plan": hard.get("plan")})
                rec["one_path"] = {**h, "gain": self._difference(f"one-path gain {f}", hg, bg),
                                   "soft_minus_one_path": self._difference(f"soft - one-path {f}", sg, hg),
                                   "wall": walls}
                hacc = (h["accuracy"] or {}).get("median")
                rec["one_path"]["matched_accuracy"] = (None if hacc is None
                                                       else self._matched_accuracy(rows, hacc, h["measured_ms"]))
            out.append(rec)
        return out

    def _cost(self, rows: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
        recs = self.search_records()
        by_role: dict[str, dict[str, Any]] = {}
        for r in recs:
            c = by_role.setdefault(f"{r['role']} ({r['kernel']})", {"n": 0, "wall_s": 0.0, "search_loop_s": 0.0})
            c["n"] += 1
            c["wall_s"] += float(r["cost"].get("wall_s") or 0)
            c["search_loop_s"] += float(r["epoch_elapsed_s"][-1] or 0) if r["epoch_elapsed_s"] else 0
        seeds = {str(self.cfg.train_seed(j)) for j in range(self.cfg.train_seeds)}
        keys = list(dict.fromkeys(r["key"] for r in rows))
        trainings = [t for k in keys for s, t in (self._read(f"archs/{k}.json") or {"trainings": {}})["trainings"].items()
                     if s in seeds]
        runs = []
        p = self.res / "invocations.jsonl"
        if p.is_file():  # the earlier invocations (this one's own line, kept current, is wall_s)
            runs = [r for r in (json.loads(l) for l in p.read_text().splitlines() if l.strip())
                    if r.get("started") != self.started]
        for c in by_role.values():
            c["wall_s"], c["search_loop_s"] = round(c["wall_s"], 1), round(c["search_loop_s"], 1)
        return {"searches": by_role, "trainings": len(trainings),
                "training_wall_s": round(sum(float(t.get("wall_s") or t.get("train_s") or 0) for t in trainings), 1),
                "this_run_wall_s": round(wall_s, 1),
                "earlier_runs_wall_s": round(sum(float(r.get("wall_s", 0)) for r in runs), 1),
                "runs": len(runs) + 1, "jobs": self.cfg.jobs}

    def report(self, points: Sequence[dict[str, Any]], *, wall_s: float = 0.0, command: str | None = None) -> dict[str, Any]:
        rows = self.collect(points)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["kind"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.res / "points.csv", buf.getvalue())
        recs = self.search_records()
        costs = [{**r["cost"], "name": r["name"], "seed_index": r["seed_index"], "role": r["role"]} for r in recs]
        costs.sort(key=lambda c: (c.get("alpha") is None, c.get("alpha") or 0.0, c.get("target") or 0.0,
                                  c["seed_index"], c["role"], c["kernel"]))
        cbuf = io.StringIO()
        cw = csv.DictWriter(cbuf, fieldnames=["name", "alpha", "target", "seed_index", "role", "kernel", "gumbel",
                                              "wall_s", "search_loop_s", "peak_rss_mib", "epochs", "epochs_run",
                                              "warmup_from", "jobs", "resumed", "load_avg_1m", "arch"],
                            extrasaction="ignore")
        cw.writeheader()
        cw.writerows(costs)
        atomic_write_text(self.res / "cost.csv", cbuf.getvalue())

        def pts(kind: str, lat: str = "measured_ms") -> list[tuple[float, float]]:
            return [(float(r[lat]), float(r["val_acc"])) for r in rows
                    if r["kind"] == kind and r[lat] != "" and r["val_acc"] != ""]

        figures: dict[str, Any] = {}
        for lat in ("measured_ms", "lut_ms"):
            s, r = pts("searched", lat), pts("random", lat)
            gaps = accuracy_gaps(s, r)
            defined = [g for g in gaps if g is not None]
            figures[lat] = {
                "num_searched": len(s), "num_random": len(r),
                "random_dominated_by_searched_front": dominated_fraction(s, r),
                "searched_dominated_by_random": dominated_fraction(r, s),
                "accuracy_gap_per_searched_point": gaps,
                "mean_accuracy_gap": sum(defined) / len(defined) if defined else None,
                "searched_points_in_random_latency_range": len(defined),
            }
        nval = self._num_val()
        if nval:
            # one binomial standard error of a held-out accuracy near the points' mean
            accs = [float(r["val_acc"]) for r in rows if r["val_acc"] != ""]
            p = sum(accs) / len(accs) if accs else 0.5
            figures["val_images"] = nval
            figures["accuracy_standard_error"] = math.sqrt(p * (1 - p) / nval)
        figures["alphas"] = [{"alpha": a, **self._searched_summary(rows, "searched", None, a)} for a in self.cfg.alphas]
        figures["targets"] = self._target_figures(rows)
        # the random nets' spread: training seed against architecture (RESULTS.md's slow starts)
        figures["noise"] = seed_spread([[float(a) for a in r["val_accs"].split()] for r in rows
                                        if r["kind"] in ("band", "random") and r["val_accs"]])
        by_alpha: dict[float, dict[str, Any]] = {}
        for c in costs:
            if c.get("alpha") is not None and c["seed_index"] == 0 and c["role"] == "search":
                by_alpha.setdefault(c["alpha"], {})[c["kernel"]] = c
        speedups = [{"alpha": a, "fused_wall_s": k["auto"]["wall_s"], "reference_wall_s": k["reference"]["wall_s"],
                     "wall_speedup": k["reference"]["wall_s"] / k["auto"]["wall_s"],
                     "fused_peak_rss_mib": k["auto"]["peak_rss_mib"],
                     "reference_peak_rss_mib": k["reference"]["peak_rss_mib"],
                     "same_architecture": k["auto"]["arch"] == k["reference"]["arch"]}
                    for a, k in sorted(by_alpha.items()) if "auto" in k and "reference" in k]
        planned = len(rows) * self.cfg.train_seeds
        done = sum(r["trainings"] for r in rows)
        hosts = sorted({self.host_key})
        summary = {"figures": figures, "search_cost": {"searches": costs, "fused_vs_reference": speedups},
                   "cost": self._cost(rows, wall_s),
                   "bootstrap": {"resamples": self.cfg.bootstrap, "level": 0.95, "method": "percentile",
                                 "seeds": f"per statistic from --seed {self.cfg.seed} and its name",
                                 "groups": "two-stage: architectures (searches), then each one's trainings"},
                   "search_seeds": self.cfg.search_seeds, "train_seeds": self.cfg.train_seeds,
                   # every architecture: the median of its trainings and its interval (points.csv has the rest)
                   "point_intervals": [{k: r[k] for k in ("kind", "label", "key", "measured_ms", "val_acc",
                                                          "val_acc_lo", "val_acc_hi", "trainings")} for r in rows],
                   "latency_measured_on": hosts, "command": command,
                   "points": len(rows), "trained": sum(r["trainings"] == self.cfg.train_seeds for r in rows),
                   "trainings": done, "trainings_planned": planned, "complete": done == planned,
                   "random_below_issue_minimum": self.cfg.num_random < 20 and not self.cfg.targets}
        atomic_write_text(self.res / "summary.json", json.dumps(summary, indent=1) + "\n")
        atomic_write_text(self.res / "report.md", report_markdown(summary, self.cfg))
        try:
            plot_pareto(rows, self.res / "pareto.png", figures,
                        title=f"{self.space.name} w{self.space.width_mult:g} {self.space.input_size}px, "
                              f"{self.cfg.train_epochs}-epoch trainings, {self.cfg.search_seeds} search x "
                              f"{self.cfg.train_seeds} training seed(s)", chance=1.0 / self.data_classes(),
                        band=self.cfg.band)
        except ImportError as e:
            self.log(f"warning: no plot ({e})")
        return summary


def _r(v: Any) -> Any:
    return "" if v is None else round(float(v), 5)


def _cpu_name() -> str:
    try:
        from ..measure import cpu_name

        return cpu_name()
    except Exception:  # the host name is a label; never fail the study for it
        return platform.processor()


def _pct(iv: dict[str, Any] | None, *, points: bool = False) -> str:
    """``88.5 % [80.1, 90.2]`` (accuracy) or ``+17.7 pts [+3.0, +25.1]`` (a difference)."""
    if not iv:
        return "n/a"
    if points:
        ci = "" if iv["lo"] is None else f" [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}]"
        return f"{100 * iv['median']:+.1f} pts{ci}"
    ci = "" if iv["lo"] is None else f" [{100 * iv['lo']:.1f}, {100 * iv['hi']:.1f}]"
    return f"{100 * iv['median']:.1f} %{ci}"


def _matched(m: dict[str, Any] | None) -> str:
    if not m:
        return "n/a"
    if m.get("random_ms") is None:
        return m["note"]
    saved = m.get("latency_saved")
    return (f"{m['random_ms']:.3f} ms ({100 * m['random_acc']:.1f} %)"
            + ("" if saved is None else f": searched {100 * abs(saved):.1f} % {'faster' if saved >= 0 else 'slower'}"))


# Below this many searches per point the report says its searched intervals are optimistic: with N
# searches the first bootstrap stage has C(2N - 1, N) distinct draws (3 at N = 2, 126 at N = 5).
MIN_SEARCH_SEEDS = 5


def report_markdown(summary: dict[str, Any], cfg: StudyConfig) -> str:
    """The per-target table (and the one-path comparison, noise and cost) as markdown for RESULTS.md."""
    f = summary["figures"]
    b = summary["bootstrap"]
    lines = [f"Every searched point: {cfg.search_seeds} search(es); every architecture: {cfg.train_seeds} training(s) "
             f"of {cfg.train_epochs} epochs. Medians with percentile-bootstrap 95 % intervals ({b['resamples']:,} "
             f"resamples, {b['groups']}). Random nets: measured latency within ±{100 * cfg.band:g} % of the "
             f"searched nets' (their median), at least {cfg.band_random} per band.", ""]
    if cfg.search_seeds < MIN_SEARCH_SEEDS:
        n = cfg.search_seeds
        lines += [f"**Caution:** with {n} search(es) per point the bootstrap's first stage has only "
                  f"{math.comb(2 * n - 1, n)} distinct draw(s), so the searched points' intervals (and the gains') "
                  f"are too narrow for the search-to-search spread; read a sign only with --search-seeds "
                  f"{MIN_SEARCH_SEEDS} or more (RESULTS.md: two searches excluded 0 where six did not).", ""]
    if f["targets"]:
        lines += ["| target | T (LUT ms) | searched: measured ms | searched median [95 % CI] | band (measured ms) | "
                  "random-band median [95 % CI] | gain [95 % CI] | fastest random as accurate | draws |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in f["targets"]:
            s, bd = t["searched"], t["band"]
            dr = bd["draws"]
            band = ("n/a" if not bd["band_ms"] else f"{bd['band_ms'][0]:.3f}–{bd['band_ms'][1]:.3f}")
            draws = ("n/a" if dr.get("measured_until_full") is None else
                     f"{dr['measured_until_full']} measured ({dr['proposals']} LUT draws)"
                     + ("" if dr.get("full") else f", band short: {dr.get('note') or 'not filled'}"))
            lines.append(f"| {t['fraction']:g} × uniform | {t['target_ms']:.3f} | "
                         f"{'n/a' if s['measured_ms'] is None else format(s['measured_ms'], '.3f')} | "
                         f"{_pct(s['accuracy'])} ({s['searches']}×{cfg.train_seeds}) | {band} | "
                         f"{_pct(bd['accuracy'])} ({bd['trained_archs']}×{cfg.train_seeds}) | "
                         f"{_pct(t['gain'], points=True)} | {_matched(t['matched_accuracy'])} | {draws} |")
        for t in f["targets"]:
            op = t.get("one_path")
            if not op:
                continue
            lines += ["", f"Soft against one-path (`--gumbel hard`) at {t['fraction']:g} × uniform, the same wall time "
                          f"per search seed:", "",
                      "| search | epochs (warm-up) | search loop s | median [95 % CI] | gain vs band [95 % CI] | "
                      "fastest random as accurate |", "|---|---|---|---|---|---|"]
            for w in op["wall"]:
                lines.append(f"| seed {w['seed_index']}: soft | {cfg.search_epochs} ({cfg.warmup_epochs}) | "
                             f"{w['soft_s']:.1f} | | | |")
                lines.append(f"| seed {w['seed_index']}: one-path | {w['one_path_epochs']} "
                             f"({w['one_path_warmup_epochs']}) | {w['one_path_s']:.1f} "
                             f"({100 * (w['one_path_s'] / w['soft_s'] - 1):+.0f} %) | | | |")
            lines.append(f"| soft, all seeds | | | {_pct(t['searched']['accuracy'])} | {_pct(t['gain'], points=True)} | "
                         f"{_matched(t['matched_accuracy'])} |")
            lines.append(f"| one-path, all seeds | | | {_pct(op['accuracy'])} | {_pct(op['gain'], points=True)} | "
                         f"{_matched(op['matched_accuracy'])} |")
            lines += ["", f"Soft minus one-path: {_pct(op['soft_minus_one_path'], points=True)}."]
    for a in f.get("alphas", []):
        if a["searches"]:
            lines.append(f"- α = {a['alpha']:g}: {_pct(a['accuracy'])} ({a['searches']}×{cfg.train_seeds}), "
                         f"measured {'n/a' if a['measured_ms'] is None else format(a['measured_ms'], '.3f')} ms")
    n = f["noise"]
    if n["within_arch_sd"] is not None or n["between_arch_sd"] is not None:
        def pts(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f} pts"

        lines += ["", f"Random nets' spread: sd across training seeds of one architecture {pts(n['within_arch_sd'])} "
                      f"(pooled over {n['archs_with_several_trainings']}), sd across architectures "
                      f"{pts(n['between_arch_sd'])} ({n['archs']} architectures)."]
    c = summary["cost"]
    srch = "; ".join(f"{k}: {v['n']}, {v['wall_s'] / 60:.1f} min" for k, v in sorted(c["searches"].items()))
    lines += ["", f"Cost: searches {srch or 'none'}; {c['trainings']} trainings, {c['training_wall_s'] / 60:.1f} min "
                  f"(sums of the child processes, {c['jobs']} at a time); wall time of the study's runs "
                  f"{(c['this_run_wall_s'] + c['earlier_runs_wall_s']) / 60:.1f} min over {c['runs']} run(s). "
                  f"Latency measured on {', '.join(summary['latency_measured_on'])}."]
    if summary.get("command"):
        lines += ["", "```", summary["command"], "```"]
    return "\n".join(lines) + "\n"


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path, figures: dict[str, Any], *, title: str = "",
                chance: float | None = None, band: float | None = None) -> Path:
    """Accuracy vs measured latency: the random cloud (per-architecture medians) and its front, each target
    as a vertical line (the band's centre; the band shaded), the searched points per target or alpha with
    their bootstrap intervals as error bars (x: the searches' measured range), the one-path point, the presets.

    ``chance`` draws the accuracy of guessing (1 / classes) so a study whose trainings
    did not learn cannot be misread.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def sel(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] == kind and r["measured_ms"] != "" and r["val_acc"] != ""]

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colours = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan")
    targets = figures.get("targets", [])
    for i, t in enumerate(targets):
        c = colours[i % len(colours)]
        lo_hi = (t.get("band") or {}).get("band_ms")
        if lo_hi:
            ax.axvspan(lo_hi[0], lo_hi[1], color=c, alpha=0.08, zorder=0)
            ax.axvline(0.5 * (lo_hi[0] + lo_hi[1]), color=c, lw=1, ls="-.", zorder=1,
                       label=f"target {t['fraction']:g} (band ±{100 * (band or 0):g} %)")
    rnd = sel("random")
    if rnd:
        pts = [(r["measured_ms"], r["val_acc"]) for r in rnd]
        ax.scatter(*zip(*pts), s=22, c="0.6", label=f"uniformly random ({len(rnd)})", zorder=2)
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(*zip(*front), ls="--", c="0.45", lw=1, label="random Pareto front", zorder=2)
    band_rows = sel("band")
    for i, t in enumerate(targets):
        mine = [r for r in band_rows if r["target"] == t["fraction"]]
        if mine:
            ax.scatter([r["measured_ms"] for r in mine], [r["val_acc"] for r in mine], s=24, marker="s",
                       facecolors="none", edgecolors=colours[i % len(colours)], zorder=3,
                       label=f"random in the band of {t['fraction']:g} ({len(mine)})")

    def interval_point(summ: dict[str, Any], colour: str, marker: str, label: str) -> None:
        acc, xr = summ.get("accuracy"), summ.get("measured_ms_range")
        if not acc or summ.get("measured_ms") is None:
            return
        x, y = summ["measured_ms"], acc["median"]
        yerr = [[y - acc["lo"]], [acc["hi"] - y]] if acc["lo"] is not None else None
        xerr = [[x - xr[0]], [xr[1] - x]] if xr else None
        ax.errorbar([x], [y], yerr=yerr, xerr=xerr, fmt=marker, color=colour, ms=8, capsize=4, lw=1.5, zorder=6,
                    label=label)

    srch = sel("searched")
    if srch:
        ax.scatter([r["measured_ms"] for r in srch], [r["val_acc"] for r in srch], s=14, c="tab:red", alpha=0.45,
                   zorder=5, label="searched nets (median of their trainings)")
    hard = sel("one-path")
    if hard:
        ax.scatter([r["measured_ms"] for r in hard], [r["val_acc"] for r in hard], s=14, c="tab:orange", alpha=0.45,
                   zorder=5, label="one-path nets (median of their trainings)")
    first = True
    for t in targets:
        interval_point(t["searched"], "tab:red", "o", "searched point: median, 95 % CI" if first else None)
        first = False
        if t.get("one_path"):
            interval_point(t["one_path"], "tab:orange", "D", f"one-path at {t['fraction']:g}: median, 95 % CI")
    for a in figures.get("alphas", []):
        interval_point(a, "tab:red", "o", "searched point: median, 95 % CI" if first else None)
        if a.get("measured_ms") is not None and a.get("accuracy"):
            ax.annotate(f"α={a['alpha']:g}", (a["measured_ms"], a["accuracy"]["median"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8, color="tab:red")
        first = False
    for r in sel("preset"):
        yerr = ([[r["val_acc"] - r["val_acc_lo"]], [r["val_acc_hi"] - r["val_acc"]]]
                if r["val_acc_lo"] != "" else None)
        ax.errorbar([r["measured_ms"]], [r["val_acc"]], yerr=yerr, fmt="*", ms=12, c="tab:blue", zorder=5, capsize=3)
        ax.annotate(r["label"].split(" (")[0], (r["measured_ms"], r["val_acc"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8, color="tab:blue")
    if sel("preset"):
        ax.scatter([], [], marker="*", s=140, c="tab:blue", label="FBNet presets (blocks in this space)")
    if chance is not None:
        ax.axhline(chance, c="0.3", lw=0.8, ls=":", label=f"chance ({chance:.0%})", zorder=1)
    sub = []
    m = figures.get("measured_ms", {})
    frac, gap = m.get("random_dominated_by_searched_front"), m.get("mean_accuracy_gap")
    if frac is not None and not math.isnan(frac):
        sub.append(f"random dominated by searched front: {frac:.0%}")
    if gap is not None:
        sub.append(f"mean gap at matched latency: {gap * 100:+.1f} pts")
    ax.set_title(title + ("\n" + "; ".join(sub) if sub else ""), fontsize=10)
    ax.set_xlabel("measured end-to-end latency on the host (ms, batch 1)")
    ax.set_ylabel("held-out top-1 (last epoch; median over training seeds)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08)  # room for the labels of the slowest points
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _parallel(jobs: int, tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks`` ``jobs`` at a time (each starts a child process); results in order.

    The first failure stops tasks that have not started and is raised once the running
    ones end (their children are never left orphaned).
    """
    if jobs <= 1 or len(tasks) <= 1:
        return [t() for t in tasks]
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(t) for t in tasks]
        wait(futures, return_when="FIRST_EXCEPTION")
        for f in futures:
            f.cancel()
        return [f.result() for f in futures]


def run_study(cfg: StudyConfig, out: str | Path, *, skip: Sequence[str] = (), command: str | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the study in ``out`` (results in ``cfg.results``, default ``out``); returns the
    summary (also in ``summary.json``).

    Order: LUT; the full searches (per search seed the warm-up donor, and the searches of
    ``cost_alphas`` with the fused kernels and with the reference side by side, ``jobs`` >= 2:
    same host load for both); the other searches, each after its seed's donor's warm-up; the
    one-path probes and searches (``compare_one_path``); end-to-end latency of every point; each
    target's random band (drawn and measured until full); trainings, training seed by training
    seed, ``jobs`` at a time; report. ``skip`` leaves out phases of :data:`PHASES`; the report
    covers whatever exists. ``command`` is quoted in ``report.md``.
    """
    bad = sorted(set(skip) - set(PHASES))
    if bad:
        raise ConfigError(f"unknown phase(s) {bad} to skip; phases are {', '.join(PHASES)}")
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    study = Study(cfg, out, log=log)
    # This invocation's line in invocations.jsonl is rewritten with its wall time after every
    # report (each finished training) and at the end, so a run that is stopped keeps its cost.
    inv = study.res / "invocations.jsonl"
    prior = inv.read_text() if inv.is_file() else ""
    study.started = started

    def record(wall: float) -> None:
        atomic_write_text(inv, prior + json.dumps({"started": started, "wall_s": round(wall, 1), "host": study.host,
                                                   "jobs": cfg.jobs, "skip": list(skip)}) + "\n")

    if "search" not in skip:
        tasks: list[Callable[[], Any]] = []
        full = [r for r in cfg.search_runs() if not cfg.shares_warmup(r.spec, r.seed_index)]
        full.sort(key=lambda r: r.spec != cfg.warmup_donor(r.seed_index))  # donors first
        for r in full:
            tasks.append(lambda r=r: study.run_search(r))
            if r.seed_index == 0 and r.spec[0] == "alpha" and r.spec[1] in cfg.cost_alphas and "cost" not in skip:
                tasks.append(lambda r=r: study.run_search(dataclasses.replace(r, kernel="reference")))
        _parallel(cfg.jobs, tasks)
        rest = [r for r in cfg.search_runs() if cfg.shares_warmup(r.spec, r.seed_index)]

        def donor_dir(i: int) -> Path:
            if i == 0 and cfg.warmup_from is not None:
                return Path(cfg.warmup_from)
            return study.search_dir(SearchRun(cfg.warmup_donor(i), i))

        _parallel(cfg.jobs, [lambda r=r: study.run_search(r, warmup_from=donor_dir(r.seed_index)) for r in rest])
    elif "cost" not in skip:
        _parallel(cfg.jobs, [lambda a=a: study.run_search(SearchRun(("alpha", float(a)), kernel="reference"))
                             for a in cfg.cost_alphas])
    if cfg.compare_one_path is not None and "one-path" not in skip:
        soft = [SearchRun(("target", float(cfg.compare_one_path)), i) for i in range(cfg.search_seeds)]
        ready = [r for r in soft if study.search_record(r) is not None]
        # the probes first, side by side as the soft searches ran, then the one-path searches
        _parallel(cfg.jobs, [lambda r=r: study.run_search(dataclasses.replace(r, role="probe")) for r in ready
                             if study.search_record(dataclasses.replace(r, role="one-path")) is None])
        _parallel(cfg.jobs, [lambda r=r: study.one_path(r) for r in soft])
    points = study.planned_points(skip)
    if "measure" not in skip:
        study.measure([p["arch"] for p in points])
    if "random" not in skip:
        points += study.band_points(points, measure="measure" not in skip)
    if "train" not in skip:
        distinct = list({arch_key(p["arch"]): p["arch"] for p in points}.values())
        lock = threading.Lock()

        def train(arch: Architecture, j: int) -> None:
            study.train(arch, j)
            with lock:  # a partial study always has an up-to-date report
                study.report(points, wall_s=time.perf_counter() - t0, command=command)
                record(time.perf_counter() - t0)

        _parallel(cfg.jobs, [lambda a=a, j=j: train(a, j) for j in range(cfg.train_seeds) for a in distinct])
    summary = study.report(points, wall_s=time.perf_counter() - t0, command=command)
    record(time.perf_counter() - t0)
    summary["out"] = str(study.out)
    summary["results"] = str(study.res)
    return summary
