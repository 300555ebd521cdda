"""Does the search beat chance? The accuracy-vs-latency study behind ``fbnet-fast study pareto``.

For a sweep of latency weights ``alpha`` the study runs one search per alpha (all
with one LUT and one seed, so alpha is the only difference), takes each search's most
likely architecture, trains it from scratch with one fixed schedule and records its
held-out top-1, its LUT latency and its latency *measured* end to end on the host.
``num_random`` architectures drawn uniformly from the same space (and the FBNet
presets whose block list fits the space, see :func:`fitting_presets`) are trained and
measured the same way. The report is

* ``points.csv``: one row per point (searched / random / preset);
* ``pareto.png``: accuracy vs measured latency: the random cloud and its Pareto front,
  the searched points joined as a front, the presets;
* ``summary.json``: the two figures (fraction of random architectures dominated by
  the searched front; accuracy gap at matched latency, interpolated on the random
  front; :func:`dominated_fraction`, :func:`accuracy_gaps`) and the search cost;
* ``cost.csv``: wall time and peak memory (max RSS) of every search, with the fused
  kernels and, for ``cost_alphas``, again with the eager reference (``--kernel reference``).

Study folder (every phase reuses what a previous run finished, so an interrupted
study continues where it stopped; a killed search or training resumes from its
checkpoint)::

    study.json                      the study's options, resolved search and training
                                    configs, seeds, host, torch version
    lut.json                        the one latency table every search uses
    searches/alpha-<a>-<kernel>/    one ``fbnet-fast search`` run folder per search
    searches/alpha-<a>-<kernel>.cost.json   its wall time and peak RSS
    searches/alpha-<a>-<kernel>.log         its console output
    train/<key>/                    one ``fbnet-fast train`` run folder per distinct architecture
    train/<key>.arch.json, .log     its architecture file and console output
    latency.json                    end-to-end host latency per architecture key
    points.csv, cost.csv, summary.json, pareto.png

Searches and trainings run as child processes (``python -m fbnet_fast search`` /
``train``), ``jobs`` at a time, so each one's peak RSS is its own (``os.wait4``) and
a 2-core host runs two single-threaded jobs side by side. The warm-up epochs train the
weights on the CE alone, so they do not depend on alpha: the alphas outside
``cost_alphas`` start from the end of one full search's warm-up (``search
--warmup-from``) and reach the result they would reach after a warm-up of their own.
The searches of ``cost_alphas`` always run whole, with the fused kernels and with the
reference, side by side when ``jobs`` >= 2 so both see the same load.
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
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, RunDirError, TrainingError
from ..lut import LatencyTable
from ..presets import fitting_presets
from ..runs import atomic_write_text
from ..space import Architecture, load_space

__all__ = ["StudyConfig", "PHASES", "run_study", "pareto_front", "dominates", "dominated_fraction",
           "front_accuracy_at", "accuracy_gaps", "fitting_presets", "arch_key", "plot_pareto"]

STUDY_FORMAT = "fbnet-fast/pareto-study"
STUDY_VERSION = 1

# Phases a run can skip (``--skip``); the report is always written from what exists.
PHASES = ("search", "cost", "measure", "train", "random", "presets")


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
    # latency budgets, one search each (``search --target-fraction f --budget-mode budget_mode``):
    # fractions of the LUT latency under uniform theta
    targets: tuple[float, ...] = ()
    budget_mode: str = "target"
    # per target, band_random architectures drawn uniformly from those whose LUT latency is within
    # +-band of the target (fbnet_fast.budget.sample_in_band): random nets at the searched net's latency
    band: float = 0.05
    band_random: int = 5
    num_random: int = 20
    presets: bool = True
    cost_alphas: tuple[float, ...] = (0.2,)  # searched again with --kernel reference
    seed: int = 0
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
    # state every search outside cost_alphas starts from; None: the first full search's.
    warmup_from: str | None = None
    # ... and one for every training from scratch
    train_epochs: int = 10
    batch_size: int = 64
    lut: str | None = None  # a LUT file to use; None: measure one on this host
    lut_repeats: int = 20
    latency_repeats: int = 20  # timing samples per architecture, end to end
    threads: int | None = 1  # torch intra-op threads in searches, trainings and timings
    jobs: int = 1  # searches / trainings run at once, each a child process with `threads` threads
    # Searches of alphas outside cost_alphas start from the end of one full search's warm-up
    # (``search --warmup-from``): the warm-up does not read alpha, so the result is the same.
    share_warmup: bool = True
    progress: bool = True

    # Options that change results: a study folder refuses a rerun that differs in them.
    # alphas, num_random, presets and cost_alphas only add or leave out points.
    FIXED = ("space", "width_mult", "input_size", "data", "num_train", "num_val", "seed", "search_epochs",
             "warmup_epochs", "theta_lr", "gumbel", "loss_form", "train_epochs", "batch_size", "lut_repeats",
             "latency_repeats", "threads", "budget_mode", "band")

    def validate(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)):
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")

        for n in ("search_epochs", "train_epochs", "batch_size", "lut_repeats", "latency_repeats", "jobs"):
            positive_int(n)
        for n in ("warmup_epochs", "num_random", "seed", "band_random"):
            positive_int(n, allow_zero=True)
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
        if self.theta_lr is not None and not (isinstance(self.theta_lr, (int, float)) and math.isfinite(self.theta_lr)
                                              and self.theta_lr > 0):
            raise ConfigError(f"theta_lr must be a positive number, got {self.theta_lr!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be >= 1, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["alphas"], d["cost_alphas"], d["targets"] = list(self.alphas), list(self.cost_alphas), list(self.targets)
        return d

    def searches(self) -> list[tuple[str, float]]:
        """Every search of the study: ``("alpha", a)`` per alpha, then ``("target", f)`` per target."""
        return [("alpha", float(a)) for a in self.alphas] + [("target", float(f)) for f in self.targets]

    def search_config(self, spec: tuple[str, float], kernel: str):
        """The :class:`~fbnet_fast.search.SearchConfig` of one search: ``("alpha", a)`` (the alpha/beta
        loss, no budget) or ``("target", f)`` (a budget at that fraction of the uniform latency)."""
        from ..search import SearchConfig

        kind, value = spec
        budget = ({"target_fraction": value, "budget_mode": self.budget_mode} if kind == "target"
                  else {"target_fraction": None, "alpha": value, "loss_form": self.loss_form})
        return SearchConfig(space=self.space, width_mult=self.width_mult, data=self.data, num_train=self.num_train,
                            num_val=self.num_val, epochs=self.search_epochs, warmup_epochs=self.warmup_epochs,
                            batch_size=self.batch_size, kernel=kernel, seed=self.seed,
                            **({} if self.theta_lr is None else {"theta_lr": self.theta_lr}), gumbel=self.gumbel,
                            threads=self.threads, plots=False, progress=False, **budget)

    def train_config(self):
        """The one :class:`~fbnet_fast.train.TrainConfig` every architecture is trained with."""
        from ..train import TrainConfig

        return TrainConfig(data=self.data, num_train=self.num_train, num_val=self.num_val,
                           epochs=self.train_epochs, batch_size=self.batch_size, seed=self.seed,
                           threads=self.threads, progress=self.progress)

    def warmup_donor(self) -> tuple[str, float] | None:
        """The search whose fused run does its own warm-up for every search outside ``cost_alphas``
        (None when ``warmup_from`` names an existing search instead)."""
        if self.warmup_from is not None:
            return None
        return ("alpha", float(self.cost_alphas[0])) if self.cost_alphas else self.searches()[0]

    def shares_warmup(self, spec: tuple[str, float]) -> bool:
        """Whether ``spec`` starts after the donor's warm-up (the warm-up reads neither alpha nor budget)."""
        costed = spec[0] == "alpha" and spec[1] in self.cost_alphas
        return self.share_warmup and not costed and spec != self.warmup_donor()

    @property
    def random_seed(self) -> int:
        # The uniform draws have their own stream so adding alphas never changes them;
        # the first R of a larger R are the same architectures.
        return self.seed + 1


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


# ---- architectures -----------------------------------------------------------------------------

def arch_key(arch: Architecture | Sequence[str]) -> str:
    """A short stable key of a block list (the training and latency folders are named by it)."""
    blocks = arch.blocks if isinstance(arch, Architecture) else tuple(arch)
    return hashlib.sha1(" ".join(blocks).encode()).hexdigest()[:12]


# ---- the study ---------------------------------------------------------------------------------

def _spec_name(spec: tuple[str, float]) -> str:
    """``alpha-0.2`` / ``target-0.75``: a search's folder name and label stem."""
    return f"{spec[0]}-{spec[1]:g}"


class Study:
    """One study folder; each ``phase_*`` method reuses what is already there."""

    def __init__(self, cfg: StudyConfig, out: str | Path, *, log: Callable[[str], None] = print) -> None:
        cfg.validate()
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.space = load_space(cfg.space, width_mult=cfg.width_mult, input_size=cfg.input_size)
        self._stats: dict[str, dict[str, int]] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_study_json()
        self.lut = self._lut()
        from ..budget import uniform_latency

        self.uniform_ms = uniform_latency(self.lut, self.space.num_layers, len(self.space.candidates))
        self.band_draws: dict[float, int] = {}  # draws sample_in_band took per target (planned_points)

    # ---- set-up -------------------------------------------------------------------------------
    def _write_study_json(self) -> None:
        import torch

        path = self.out / "study.json"
        mine = self.cfg.to_dict()
        if path.is_file():
            try:
                saved = json.loads(path.read_text())["study"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise RunDirError(f"{path} is not a study file ({type(e).__name__}: {e}); use another --out") from None
            diff = [f"{k}: folder {saved.get(k)!r}, now {mine[k]!r}" for k in StudyConfig.FIXED
                    if saved.get(k) != mine[k]]
            if diff:
                raise RunDirError(f"{self.out} holds a study with other options ({'; '.join(diff)}); rerun with "
                                  f"the same options to continue it, or pick another --out")
        elif any(p.name not in ("lut.json", "lut.json.partial", "space.json") for p in self.out.iterdir()):
            raise RunDirError(f"{self.out} already holds files but no study.json; pick an empty or new --out")
        doc = {
            "format": STUDY_FORMAT, "version": STUDY_VERSION, "study": mine,
            "seeds": {"search": self.cfg.seed, "train": self.cfg.seed, "data": self.cfg.seed,
                      "random_architectures": self.cfg.random_seed},
            # as each search runs it: on the resolved space file (input size and width applied)
            "search_config": {_spec_name(sp): {**self.cfg.search_config(sp, "auto").to_dict(),
                                               "space": "space.json", "width_mult": self.space.width_mult}
                              for sp in self.cfg.searches()},
            "reference_kernel_alphas": list(self.cfg.cost_alphas),
            "train_config": self.cfg.train_config().to_dict(),
            "space": self.space.to_dict(), "fingerprint": self.space.fingerprint,
            "host": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                     "torch": torch.__version__, "platform": platform.platform()},
        }
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
        # The resolved space (width and input size applied) is what every search loads.
        atomic_write_text(self.out / "space.json", json.dumps(self.space.to_dict(), indent=1) + "\n")

    def _lut(self) -> LatencyTable:
        path = self.out / "lut.json"
        if path.is_file():
            return LatencyTable.load(path, self.space)
        if self.cfg.lut:
            table = LatencyTable.load(self.cfg.lut, self.space)
        else:
            from ..measure import measure_lut

            self.log(f"measuring the latency table of {self.space.name} on this host ({path})")
            table = measure_lut(self.space, threads=self.cfg.threads or 1, repeats=self.cfg.lut_repeats,
                                output=path, progress=self.cfg.progress)
        table.save(path)
        return table

    def data_classes(self) -> int:
        # The number of classes without building the data set (a report-only rerun stays cheap).
        for p in sorted((self.out / "train").glob("*/config.json")) if (self.out / "train").is_dir() else []:
            return int(json.loads(p.read_text())["space"]["num_classes"])
        return self.space.num_classes

    # ---- searches -----------------------------------------------------------------------------
    def search_dir(self, spec: tuple[str, float], kernel: str) -> Path:
        return self.out / "searches" / f"{_spec_name(spec)}-{kernel}"

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

    def run_search(self, spec: tuple[str, float], kernel: str, warmup_from: Path | None = None) -> dict[str, Any]:
        """One search (``spec``: ``("alpha", a)`` or ``("target", f)``) as a child process; returns (and
        stores) its cost record. Reused when finished.

        ``warmup_from``: a finished search of this study whose warm-up this one starts from.
        """
        run = self.search_dir(spec, kernel)
        cost_path = run.with_name(run.name + ".cost.json")
        if cost_path.is_file() and (run / "arch.json").is_file():
            return json.loads(cost_path.read_text())
        scfg = self.cfg.search_config(spec, kernel)
        cmd = ["search", "--out", str(run), "--lut", str(self.out / "lut.json"),
               "--space", str(self.out / "space.json"), "--data", scfg.data, "--epochs", str(scfg.epochs),
               "--warmup-epochs", str(scfg.warmup_epochs), "--hard-epochs", str(scfg.hard_epochs),
               "--batch-size", str(scfg.batch_size), "--kernel", kernel, "--seed", str(scfg.seed),
               "--theta-lr", repr(float(scfg.theta_lr)), "--gumbel", scfg.gumbel, "--no-plots", "--no-progress"]
        if spec[0] == "alpha":
            cmd += ["--no-budget", "--alpha", repr(spec[1]), "--loss-form", scfg.loss_form]
        else:
            cmd += ["--target-fraction", repr(spec[1]), "--budget-mode", scfg.budget_mode]
        # --width-mult explicitly: the search's own default (0.25) would replace the file's
        for opt, v in (("--width-mult", self.space.width_mult), ("--num-train", scfg.num_train),
                       ("--num-val", scfg.num_val), ("--threads", scfg.threads)):
            if v is not None:
                cmd += [opt, str(v)]
        resumed = (run / "config.json").is_file()
        if resumed:
            cmd.append("--resume")
        else:
            if run.exists():
                cmd.append("--overwrite")
            if warmup_from is not None:
                cmd += ["--warmup-from", str(warmup_from)]
        run.parent.mkdir(parents=True, exist_ok=True)
        log_path = run.with_name(run.name + ".log")
        what = f"search {spec[0]}={spec[1]:g} kernel={kernel}"
        self.log(f"{what}{' (resuming)' if resumed else ''}"
                 f"{f' after the warm-up of {warmup_from.name}' if warmup_from is not None else ''} -> {run}")
        wall, usage = self._child(cmd, log_path, what)
        hist = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        arch = json.loads((run / "arch.json").read_text())
        rec = {"alpha": spec[1] if spec[0] == "alpha" else None, "target": spec[1] if spec[0] == "target" else None,
               "kernel": kernel, "wall_s": round(wall, 2),
               "search_loop_s": hist[-1].get("elapsed_s") if hist else None,
               # ru_maxrss is KiB on Linux: the child's own peak resident set
               "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "epochs": scfg.epochs, "resumed": resumed,
               # epochs this process ran: a search after a shared warm-up skips those epochs
               "epochs_run": scfg.epochs - (scfg.warmup_epochs if warmup_from is not None else 0),
               "warmup_from": "" if warmup_from is None else warmup_from.name, "jobs": self.cfg.jobs,
               "arch": " ".join(arch["blocks"]), "load_avg_1m": round(os.getloadavg()[0], 2)}
        atomic_write_text(cost_path, json.dumps(rec, indent=1) + "\n")
        return rec

    def searched_archs(self) -> list[tuple[tuple[str, float], Architecture]]:
        out = []
        for spec in self.cfg.searches():
            p = self.search_dir(spec, "auto") / "arch.json"
            if p.is_file() and p.with_name("theta.json").is_file():
                out.append((spec, Architecture.from_dict(json.loads(p.read_text()), source=str(p))))
        return out

    def target_ms(self, fraction: float) -> float:
        """The budget ``fraction`` x the LUT latency under uniform theta, as the searches compute it."""
        return fraction * self.uniform_ms

    def band_archs(self, fraction: float) -> tuple[list[Architecture], int]:
        """``band_random`` architectures uniform over the LUT band +-``band`` around the target, and the
        draws it took (seeded per target: adding targets or raising the count never changes earlier ones)."""
        from ..budget import sample_in_band

        t = self.target_ms(fraction)
        seed = self.cfg.random_seed * 1000 + int(round(fraction * 1e4))
        idx, draws = sample_in_band(self.lut, t * (1 - self.cfg.band), t * (1 + self.cfg.band),
                                    self.cfg.band_random, seed=seed)
        return [Architecture.from_indices(self.space, i) for i in idx], draws

    # ---- points -------------------------------------------------------------------------------
    def planned_points(self, skip: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Searched (finished searches only), presets, random: ``{kind, label, alpha, arch}``."""
        from ..measure.additivity import sample_architectures

        pts = [{"kind": "searched", "label": f"{spec[0]}={spec[1]:g}", "alpha": spec[1] if spec[0] == "alpha" else None,
                "target": spec[1] if spec[0] == "target" else None, "arch": arch}
               for spec, arch in self.searched_archs()]
        if "random" not in skip:
            for f in self.cfg.targets:
                archs, self.band_draws[f] = self.band_archs(f)
                pts += [{"kind": "band", "label": f"band-{f:g}-{i:02d}", "alpha": None, "target": f, "arch": a}
                        for i, a in enumerate(archs)]
        if self.cfg.num_random and "random" not in skip:
            for i, arch in enumerate(sample_architectures(self.space, self.cfg.num_random, seed=self.cfg.random_seed)):
                pts.append({"kind": "random", "label": f"random-{i:03d}", "alpha": None, "target": None, "arch": arch})
        if self.cfg.presets and "presets" not in skip:
            for name, label, arch in fitting_presets(self.space):
                pts.append({"kind": "preset", "label": label, "alpha": None, "target": None, "arch": arch})
        return pts

    def train(self, arch: Architecture) -> dict[str, Any]:
        """Train ``arch`` from scratch into ``train/<key>`` (reused when finished, resumed when started).

        A child process (``fbnet-fast train``), so trainings can run side by side (``jobs``).
        """
        key = arch_key(arch)
        d = self.out / "train" / key
        if (d / "summary.json").is_file():
            return json.loads((d / "summary.json").read_text())
        tcfg = self.cfg.train_config()
        resume = (d / "config.json").is_file() and any((d / "checkpoints").glob("ckpt-*.pt"))
        d.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            cmd = ["train", "--resume"]
        else:
            arch_file = d.with_name(key + ".arch.json")
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
        self.log(f"training {key} ({'resuming' if resume else 'from scratch'}): {arch}")
        self._child(cmd, d.with_name(key + ".log"), f"training {key}")
        return json.loads((d / "summary.json").read_text())

    def measure(self, archs: Sequence[Architecture]) -> dict[str, dict[str, Any]]:
        """End-to-end host latency of every architecture not yet in ``latency.json``; returns all entries.

        The missing models form one group, timed in interleaved rounds by the LUT's own
        back end and rules (torch-cpu, one thread, process CPU clock, two passes), so
        load on the shared host slows every model of a round alike.
        """
        from ..model import build_model
        from ..measure import TorchCPUBackend
        from ..measure.core import Job, measure_jobs

        path = self.out / "latency.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        todo = {arch_key(a): a for a in archs if arch_key(a) not in known}
        if todo:
            self.log(f"measuring {len(todo)} architecture(s) end to end on this host")
            backend = TorchCPUBackend(threads=self.cfg.threads or 1, repeats=self.cfg.latency_repeats)
            shape = (1, self.space.in_channels, self.space.input_size, self.space.input_size)
            jobs = [Job(k, (lambda a=a: build_model(self.space, a)), shape, k) for k, a in todo.items()]
            res = measure_jobs(backend, [jobs], progress=self.cfg.progress, desc="end-to-end latency")
            backend.close()
            for k, a in todo.items():
                e = res[k]
                known[k] = {"blocks": list(a.blocks), "median_ms": e.median_ms, "p10_ms": e.p10_ms,
                            "p90_ms": e.p90_ms, "settings": backend.settings()}
            atomic_write_text(path, json.dumps(known, indent=1) + "\n")
        return known

    # ---- report -------------------------------------------------------------------------------
    def collect(self, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        from ..model import model_stats

        lat_path = self.out / "latency.json"
        measured = json.loads(lat_path.read_text()) if lat_path.is_file() else {}
        rows = []
        for p in points:
            arch, key = p["arch"], arch_key(p["arch"])
            summ_path = self.out / "train" / key / "summary.json"
            summ = json.loads(summ_path.read_text()) if summ_path.is_file() else {}
            m = measured.get(key, {})
            if key not in self._stats:  # a FLOP count is a forward pass: once per architecture
                self._stats[key] = model_stats(self.space, arch).to_dict()
            stats = self._stats[key]
            rows.append({
                "kind": p["kind"], "label": p["label"],
                "alpha": "" if p["alpha"] is None else p["alpha"],
                "target": "" if p.get("target") is None else p["target"],
                "target_ms": "" if p.get("target") is None else round(self.target_ms(p["target"]), 5),
                "key": key, "blocks": " ".join(arch.blocks),
                "lut_ms": round(self.lut.architecture_latency(arch.blocks), 5),
                "measured_ms": _r(m.get("median_ms")), "measured_p10_ms": _r(m.get("p10_ms")),
                "measured_p90_ms": _r(m.get("p90_ms")),
                "val_acc": summ.get("last_val_acc", ""), "best_val_acc": summ.get("best_val_acc", ""),
                "params": stats["params"], "macs": stats["macs"], "train_s": summ.get("elapsed_s", ""),
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

    def _target_figures(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per target: the searched net's LUT and measured latency against the target, its accuracy, and the
        accuracy of the random nets of the same LUT band (median, range, how many trained)."""
        import statistics

        out = []
        for f in self.cfg.targets:
            t = self.target_ms(f)
            mine = [r for r in rows if r["kind"] == "searched" and r["target"] == f]
            band = [r for r in rows if r["kind"] == "band" and r["target"] == f]
            accs = sorted(float(r["val_acc"]) for r in band if r["val_acc"] != "")
            meas = [float(r["measured_ms"]) for r in band if r["measured_ms"] != ""]
            rec: dict[str, Any] = {
                "fraction": f, "target_ms": round(t, 5), "budget_mode": self.cfg.budget_mode,
                "band": [round(t * (1 - self.cfg.band), 5), round(t * (1 + self.cfg.band), 5)],
                "band_draws": self.band_draws.get(f),
                "band_trained": len(accs), "band_planned": len(band),
                "band_median_acc": statistics.median(accs) if accs else None,
                "band_min_acc": accs[0] if accs else None, "band_max_acc": accs[-1] if accs else None,
                "band_median_measured_ms": statistics.median(meas) if meas else None,
            }
            if mine:
                r = mine[0]
                rec.update({"searched_lut_ms": r["lut_ms"], "searched_lut_error": r["lut_ms"] / t - 1,
                            "searched_measured_ms": r["measured_ms"] or None,
                            "searched_measured_error": (r["measured_ms"] / t - 1) if r["measured_ms"] != "" else None,
                            "searched_acc": r["val_acc"] if r["val_acc"] != "" else None, "blocks": r["blocks"]})
                if rec["searched_acc"] is not None and accs:
                    rec["gain_vs_band_median"] = float(rec["searched_acc"]) - rec["band_median_acc"]
                    rec["band_share_below_searched"] = sum(a < float(rec["searched_acc"]) for a in accs) / len(accs)
            out.append(rec)
        return out

    def report(self, points: Sequence[dict[str, Any]], costs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = self.collect(points)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["kind"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.out / "points.csv", buf.getvalue())
        cbuf = io.StringIO()
        cw = csv.DictWriter(cbuf, fieldnames=["alpha", "target", "kernel", "wall_s", "search_loop_s", "peak_rss_mib", "epochs",
                                              "epochs_run", "warmup_from", "jobs", "resumed", "load_avg_1m",
                                              "arch"])
        cw.writeheader()
        cw.writerows([{"target": None, **c} for c in costs])
        atomic_write_text(self.out / "cost.csv", cbuf.getvalue())

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
        figures["targets"] = self._target_figures(rows)
        by_alpha: dict[float, dict[str, Any]] = {}
        for c in costs:
            if c.get("alpha") is not None:
                by_alpha.setdefault(c["alpha"], {})[c["kernel"]] = c
        speedups = [{"alpha": a, "fused_wall_s": k["auto"]["wall_s"], "reference_wall_s": k["reference"]["wall_s"],
                     "wall_speedup": k["reference"]["wall_s"] / k["auto"]["wall_s"],
                     "fused_peak_rss_mib": k["auto"]["peak_rss_mib"],
                     "reference_peak_rss_mib": k["reference"]["peak_rss_mib"],
                     "same_architecture": k["auto"]["arch"] == k["reference"]["arch"]}
                    for a, k in sorted(by_alpha.items()) if "auto" in k and "reference" in k]
        trained = sum(r["val_acc"] != "" for r in rows)
        summary = {"figures": figures, "search_cost": {"searches": list(costs), "fused_vs_reference": speedups},
                   "points": len(rows), "trained": trained, "complete": trained == len(rows),
                   "random_below_issue_minimum": self.cfg.num_random < 20}
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1) + "\n")
        try:
            plot_pareto(rows, self.out / "pareto.png", figures["measured_ms"],
                        title=f"{self.space.name} w{self.space.width_mult:g} {self.space.input_size}px, "
                              f"{self.cfg.train_epochs} training epochs", chance=1.0 / self.data_classes())
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


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path, figures: dict[str, Any], *, title: str = "",
                chance: float | None = None) -> Path:
    """Accuracy vs measured latency: random cloud + its front, searched front (joined), presets.

    ``chance`` draws the accuracy of guessing (1 / classes) so a study whose trainings
    did not learn cannot be misread.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def sel(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] == kind and r["measured_ms"] != "" and r["val_acc"] != ""]

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    rnd = sel("random")
    if rnd:
        pts = [(r["measured_ms"], r["val_acc"]) for r in rnd]
        ax.scatter(*zip(*pts), s=22, c="0.6", label=f"uniformly random ({len(rnd)})", zorder=2)
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(*zip(*front), ls="--", c="0.45", lw=1, label="random Pareto front", zorder=2)
    band = sel("band")
    targets = sorted({r["target"] for r in band} | {r["target"] for r in sel("searched") if r.get("target") != ""})
    colours = {t: c for t, c in zip(targets, ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive"))}
    for t in targets:
        mine = [r for r in band if r["target"] == t]
        if mine:
            ax.scatter([r["measured_ms"] for r in mine], [r["val_acc"] for r in mine], s=26, marker="s",
                       facecolors="none", edgecolors=colours.get(t, "0.3"), zorder=3,
                       label=f"random in the LUT band of target {t:g} ({len(mine)})")
    srch = sel("searched")
    if srch:
        # Searches that found the same architecture share one marker and one label.
        merged: dict[str, dict[str, Any]] = {}
        for r in srch:
            m = merged.setdefault(r["key"], {**r, "names": []})
            m["names"].append(f"α={r['alpha']:g}" if r.get("alpha") != "" else f"T={r['target']:g}")
        pts = [(m["measured_ms"], m["val_acc"]) for m in merged.values()]
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(*zip(*front), "-", c="tab:red", lw=1.5, label="searched front (joined)", zorder=4)
        ax.scatter(*zip(*pts), c="tab:red", s=36, label="searched (one per alpha / target)", zorder=5)
        for m in merged.values():
            ax.annotate(", ".join(m["names"]), (m["measured_ms"], m["val_acc"]),
                        textcoords="offset points", xytext=(4, 5), fontsize=8, color="tab:red")
    for r in sel("preset"):
        ax.scatter([r["measured_ms"]], [r["val_acc"]], marker="*", s=140, c="tab:blue", zorder=5)
        ax.annotate(r["label"].split(" (")[0], (r["measured_ms"], r["val_acc"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8, color="tab:blue")
    if sel("preset"):
        ax.scatter([], [], marker="*", s=140, c="tab:blue", label="FBNet presets (blocks in this space)")
    if chance is not None:
        ax.axhline(chance, c="0.3", lw=0.8, ls=":", label=f"chance ({chance:.0%})", zorder=1)
    frac, gap = figures.get("random_dominated_by_searched_front"), figures.get("mean_accuracy_gap")
    sub = []
    if frac is not None and not math.isnan(frac):
        sub.append(f"random dominated by searched front: {frac:.0%}")
    if gap is not None:
        sub.append(f"mean gap at matched latency: {gap * 100:+.1f} pts")
    ax.set_title(title + ("\n" + "; ".join(sub) if sub else ""), fontsize=10)
    ax.set_xlabel("measured end-to-end latency on the host (ms, batch 1, 1 thread)")
    ax.set_ylabel("held-out top-1 (last epoch)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08)  # room for the labels of the slowest points
    ax.legend(fontsize=8, loc="lower right")
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


def run_study(cfg: StudyConfig, out: str | Path, *, skip: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the study in ``out``; returns the summary (also in ``summary.json``).

    Order: LUT; the searches of ``cost_alphas`` with the fused kernels and with the
    reference side by side (``jobs`` >= 2: same host load for both); the other alphas,
    each starting after the warm-up of the first full fused search (``share_warmup``);
    end-to-end latency of every point; trainings (searched, then random, then presets),
    ``jobs`` at a time; report. ``skip`` leaves out phases of :data:`PHASES`; the report
    covers whatever exists.
    """
    bad = sorted(set(skip) - set(PHASES))
    if bad:
        raise ConfigError(f"unknown phase(s) {bad} to skip; phases are {', '.join(PHASES)}")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    study = Study(cfg, out, log=log)
    costs: list[dict[str, Any]] = []
    if "search" not in skip:
        donor = cfg.warmup_donor()
        first = [sp for sp in cfg.searches() if not cfg.shares_warmup(sp)]  # full searches, donor first
        first.sort(key=lambda sp: sp != donor)
        tasks: list[Callable[[], Any]] = []
        for sp in first:
            tasks.append(lambda sp=sp: study.run_search(sp, "auto"))
            if sp[0] == "alpha" and sp[1] in cfg.cost_alphas and "cost" not in skip:
                tasks.append(lambda sp=sp: study.run_search(sp, "reference"))
        costs += _parallel(cfg.jobs, tasks)
        rest = [sp for sp in cfg.searches() if cfg.shares_warmup(sp)]
        donor_dir = Path(cfg.warmup_from) if cfg.warmup_from is not None else study.search_dir(donor, "auto")
        costs += _parallel(cfg.jobs, [lambda sp=sp: study.run_search(sp, "auto", warmup_from=donor_dir)
                                      for sp in rest])
    elif "cost" not in skip:
        costs += _parallel(cfg.jobs, [lambda a=a: study.run_search(("alpha", float(a)), "reference")
                                      for a in cfg.cost_alphas])
    # finished searches from earlier runs count too (e.g. a rerun with --skip search)
    seen = {(c.get("alpha"), c.get("target"), c["kernel"]) for c in costs}
    for p in sorted((study.out / "searches").glob("*.cost.json")) if (study.out / "searches").is_dir() else []:
        c = json.loads(p.read_text())
        if (c.get("alpha"), c.get("target"), c["kernel"]) not in seen:
            costs.append(c)
    costs.sort(key=lambda c: (c.get("alpha") is None, c.get("alpha") or 0.0, c.get("target") or 0.0, c["kernel"]))
    points = study.planned_points(skip)
    if "measure" not in skip:
        study.measure([p["arch"] for p in points])
    if "train" not in skip:
        distinct = list({arch_key(p["arch"]): p["arch"] for p in points}.values())
        lock = threading.Lock()

        def train(arch: Architecture) -> None:
            study.train(arch)
            with lock:  # a partial study always has an up-to-date report
                study.report(points, costs)

        _parallel(cfg.jobs, [lambda a=a: train(a) for a in distinct])
    summary = study.report(points, costs)
    summary["out"] = str(study.out)
    return summary
