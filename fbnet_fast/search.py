"""The FBNet search: alternate weights and architecture, write everything to a run folder.

Schedule (Wu et al. 2019, Sec. 4.1; all of it in :class:`SearchConfig`):

* ``warmup_epochs`` epochs train only the weights, theta frozen at its uniform
  init, so every candidate is sampled with equal probability and gets trained;
* each later epoch trains the weights (SGD, momentum, cosine LR over all weight
  steps) on ``w_fraction`` (80 %) of the training data, then theta (Adam) on the
  other 20 %;
* ``tau = tau0 * exp(-tau_decay * epoch)``: 5.0 * e^-0.045 per epoch.

The weights minimise cross-entropy: the latency factor of the loss does not
depend on them, and in the product form it would only rescale their learning rate
by a drifting constant. Theta minimises the latency-aware loss
(:class:`~fbnet_fast.loss.LatencyLoss`).

Reproducibility and resume: every random draw of a step (data order, augmentation,
Gumbel noise, dropout) comes from a generator seeded by ``(seed, epoch, phase,
step)``, so a step is a pure function of the state before it. A checkpoint holds
the model, both optimizers, the LR schedule, the position (epoch, phase, step),
the running sums of the current phase and the metric history; a resumed search
ends bit-identical to an uninterrupted one.

Crash safety: a checkpoint is written every ``checkpoint_every`` steps and at every
epoch end, to a temp file in ``checkpoints/`` (flush + fsync), then ``os.replace``d
into ``ckpt-<global step>.pt`` and the folder fsynced; the newest
``keep_checkpoints`` are kept. A process killed at any point leaves complete
checkpoints and at most one torn ``.ckpt-*.pt.tmp``, which ``resume`` deletes. A
checkpoint that cannot be read is renamed ``*.pt.corrupt`` (never deleted) and the
previous one is used. ``tau`` is not stored: it is a function of the epoch.

Multi-process (``torchrun``, see :mod:`fbnet_fast.distributed`): every rank builds
the same data, model and step-seeded draws (so the Gumbel noise is identical), takes
its contiguous shard of each global batch (``batch_size / world`` images, augmented
as part of the full batch so the pixels match a single-process run), and all-reduces
the phase's gradients, the BN running statistics and the step metrics in one
buffer. BatchNorm normalises with per-rank batch statistics (the DDP default;
``SyncBatchNorm`` supports no CPU and cannot reach into the fused kernels); the
running statistics are averaged over ranks every step, which is exact for the
running mean and misses only the between-shard part of the running variance.
Evaluation is sharded over ranks. Rank 0 alone writes files.

Run folder::

    config.json         resolved configuration (space, fingerprint, latency unit, ...)
    lut.json            the latency table used
    metrics.jsonl       one line per epoch: CE, latency, accuracy, tau, softmax(theta)
    checkpoints/        ckpt-*.pt, the last ``keep_checkpoints`` kept, written atomically
    theta.json          final theta and softmax(theta) per layer
    arch.json           the most likely architecture (``fbnet-fast`` architecture format with
                        ``space_def``: ``fbnet-fast train RUN/arch.json`` needs nothing else)
    summary.txt         the final architecture as a table
    samples.json        ``plot_samples`` architectures drawn from P_theta and the argmax,
                        each with its LUT latency and held-out accuracy
    *.png               pictures (:mod:`fbnet_fast.plots`; ``fbnet-fast plot RUN_DIR``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .blocks import zero_init_residual_
from .budget import Budget, Commitment, repair, uniform_latency
from .data import random_crop_flip
from .distributed import SINGLE, Dist, flat_params, init_from_env, shutdown, unflatten_into
from .errors import CheckpointError, ConfigError, FBNetError, RunDirError, TrainingError
from .loss import LatencyLoss, resolve_unit
from .lut import LatencyTable
from .malloc import long_lived_frozen
from .multitarget import COMBINE_MODES, load_latency_model
from .runs import (OptionsDict, RampCosine, atomic_torch_save, atomic_write_text, check_run_dir, momentum_sgd,
                   prepare_run_dir, prime_momentum, read_run_config, step_seed)
from .space import Architecture, SearchSpace, load_space
from .ops import KERNEL_CHOICES, check_impl
from .precision import PRECISIONS, autocast, check_precision, fp32_logits
from .supernet import Supernet

__all__ = ["SearchConfig", "Searcher", "run_search", "tau_at", "hard_at", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fbnet-fast/search-checkpoint"
# Images of the generated data set a search uses unless told otherwise.
SEARCH_SYNTHETIC_TRAIN = 4000
SEARCH_SYNTHETIC_VAL = 1000
CHECKPOINT_VERSION = 1
# Host back ends the search can measure its own LUT with (a board or GPU LUT comes in by --lut).
LUT_BACKENDS = ("torch-cpu", "onnxruntime", "executorch")


@dataclass
class SearchConfig(OptionsDict):
    """Every knob of a search. Defaults: the paper's schedule, scaled to ~10 min on 2 cores."""

    _what = "search option"  # for the unknown-option message (a class attribute, not a field)
    # what a run folder written before these options existed ran with (runs.OptionsDict.from_dict)
    _legacy = {"target_ms": None, "target_fraction": None, "hard_epochs": 0, "tau_schedule": "paper",
               "tau_end": 0.1, "commit": None, "commit_by": 1.0, "commit_lr": 0.5, "commit_rho": 5.0,
               "decide_by": None, "lut_backend": "torch-cpu", "precision": "fp32"}

    # what to search
    space: str = "fbnet-cifar"
    width_mult: float | None = 0.25
    data: str = "synthetic"
    num_train: int | None = None
    num_val: int | None = None
    lut: str | None = None  # path, or comma-separated paths (multi-target); None: measure on the host CPU
    lut_weights: str | None = None  # multi-target: per-LUT weights "1,2" (default: equal)
    lut_combine: str = "mean"  # multi-target: "mean" (weighted log-latency sum) or "max" (worst case)
    lut_repeats: int = 20
    # the back end that measures the LUT when no --lut is given: ONNX Runtime ranks a layer's blocks
    # as ExecuTorch/XNNPACK (the phone runtime) does, eager torch does not (README, "Which back end the
    # default search measures")
    lut_backend: str = "onnxruntime"
    # schedule
    epochs: int = 6
    warmup_epochs: int = 2
    batch_size: int = 64
    w_fraction: float = 0.8
    w_lr: float = 0.05  # the reimplementation's 0.1 at batch 192, linearly scaled to batch 64 (rounded up)
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-4
    # Linear ramp of the weight LR over the first steps (Goyal et al. 2017): without it the
    # first SGD steps through the 1504-wide head push the logits far out and the CE rises
    # from 2.3 to 3-8 before it falls (seen at lr 0.05-0.1, batch 64, width 0.25).
    w_lr_ramp_steps: int = 60
    # Clip the weight gradient's global norm (0: off), as DARTS-style supernets do: at lr 0.05
    # one run's CE went 2.47 -> 3.00 in its second warm-up epoch while a run differing only in
    # its schedule length learned; the mixture of nine candidates makes rare huge steps.
    w_grad_clip: float = 5.0
    # Residual blocks start as the identity (their last BN scale is 0): with it the warm-up's
    # weight-gradient norm fell from ~15 to ~3 and the CE leaves its plateau earlier.
    zero_init_residual: bool = True
    # 0.1, not the paper's 0.01: the paper's theta takes 80 epochs of steps; at 0.01 the former
    # 8-epoch default ended with theta near uniform (largest probability 0.14 against 0.11) and a
    # budget was met by an all-skip argmax; at 0.1 the expected latency settled on the budget.
    theta_lr: float = 0.1
    theta_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_decay: float = 0.045
    # "paper": tau0 * exp(-tau_decay * epoch), whatever the run's length; "anneal": tau0 through the
    # warm-up, then geometrically down to tau_end at the last epoch, so every run ends nearly one-hot
    tau_schedule: str = "anneal"
    # 1.0: lower ends of the anneal (0.5, 0.1) collapsed the default run's supernet to chance as the
    # Gumbel samples turned one-hot (held-out 61 % -> 10 %); at 1.0 it ended at 72.5 %
    tau_end: float = 1.0
    # a latency budget (fbnet_fast.budget): T in ms on the LUT's (corrected) scale; None: the
    # alpha/beta loss of the paper
    target_ms: float | None = None
    # instead of target_ms (which wins when both are set): T = this x the uniform-theta latency
    target_fraction: float | None = 0.75
    budget_mode: str = "ceiling"
    budget_tol: float = 0.03
    dual_lr: float = 0.2
    budget_rho: float = 5.0
    # loss
    alpha: float = 0.2
    beta: float = 0.6
    loss_form: str = "mul"
    latency_unit: str = "auto"
    label_smoothing: float = 0.0
    gumbel: str = "soft"
    # The last hard_epochs epochs sample one candidate per layer (straight-through hard Gumbel, as
    # GDAS, Dong & Yang 2019): the weights then train the single paths P_theta draws, so the most
    # likely architecture runs on weights trained for it (the soft mixture's discretisation gap
    # closes), at about 1/7 of a soft step's cost. 0: soft to the end (the paper).
    hard_epochs: int = 0
    # Every layer's entropy of P_theta (share of log K) must fall linearly to this by the last soft
    # theta step (fbnet_fast.budget.Commitment), so the most likely architecture is the net the
    # weights trained and the budget holds for it, not only for the expectation. None: off (the paper).
    commit: float | None = 0.15
    commit_by: float = 1.0  # share of the soft theta steps by which the ceiling reaches commit
    commit_lr: float = 0.5  # the ceiling's multiplier step (eta)
    commit_rho: float = 5.0  # its quadratic penalty
    # Decide the layers one at a time (greedy, as SGAS, Li et al. 2020): after each theta step the
    # undecided layers whose P_theta has the lowest entropy are fixed to their most likely block, as
    # many as a linear schedule calls for, so that by this share of the soft theta steps every layer is; a decided
    # layer trains and runs as that one block (exactly one-hot) from then on, so the rest of the
    # search trains the weights of the net it will return; the last decisions land it in the budget.
    # Measured on the default run (same warm-up and LUT): without it the supernet ended at 47-62 %
    # held-out and its argmax on the supernet's weights at 11-26 %; with 0.5 the returned net scored
    # 59.9 % against the supernet's 59.9 %, and the run took about 7 instead of 12.7 minutes (the epochs
    # after the last decision train one block per layer). None: off (the paper: theta soft to the end).
    decide_by: float | None = 0.5
    # execution
    kernel: str = "auto"
    # "bf16": autocast bf16 for the supernet's forward/backward (fp32 master weights, theta, CE and the
    # latency term); only where bf16 is native (fbnet_fast.precision)
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    augment: bool = True
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: epoch ends only
    keep_checkpoints: int = 3
    progress: bool = True
    # pictures at the end
    plots: bool = True
    recalibrate_batches: int = 8  # BN re-estimation batches before evaluating one architecture
    # start from the end of another search's warm-up (its checkpoints/warmup.pt) instead of
    # running the warm-up again: an alpha sweep trains the weights-only epochs once
    warmup_from: str | None = None
    plot_samples: int = 16  # architectures drawn from P_theta for the accuracy-vs-latency scatter
    # with a budget: time the returned net end to end with the LUT's back end when it runs on this host
    measure_result: bool = True

    def validate(self) -> None:
        def pos(name: str, integer: bool = False, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v >= 0 if allow_zero else v > 0) and (not integer or float(v).is_integer())
            if not ok:
                kind = "integer" if integer else "number"
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {v!r}")

        for n in ("epochs", "batch_size", "lut_repeats", "keep_checkpoints"):
            pos(n, integer=True)
        for n in ("warmup_epochs", "hard_epochs", "checkpoint_every", "plot_samples", "w_lr_ramp_steps", "recalibrate_batches"):
            pos(n, integer=True, allow_zero=True)
        for n in ("w_lr", "theta_lr", "tau0", "tau_end", "dual_lr", "commit_lr"):
            pos(n)
        for n in ("w_momentum", "w_weight_decay", "w_grad_clip", "theta_weight_decay", "tau_decay", "alpha",
                  "label_smoothing"):
            pos(n, allow_zero=True)
        if self.warmup_from is not None and not self.warmup_epochs:
            raise ConfigError(f"warmup_from={self.warmup_from!r} needs warm-up epochs to skip; warmup_epochs is 0")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"beta must be > 0, got {self.beta!r}")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs}): "
                f"theta would never be trained"
            )
        if self.hard_epochs > self.epochs - self.warmup_epochs:
            raise ConfigError(f"hard_epochs ({self.hard_epochs}) must be at most the search epochs after the warm-up "
                              f"({self.epochs} - {self.warmup_epochs}): a one-path warm-up from uniform theta trains "
                              f"a different random net every step")
        if not 0 < self.w_fraction < 1:
            raise ConfigError(f"w_fraction must be strictly between 0 and 1, got {self.w_fraction}")
        if self.gumbel not in ("soft", "hard"):
            raise ConfigError(f"gumbel must be 'soft' or 'hard', got {self.gumbel!r}")
        if self.kernel not in KERNEL_CHOICES:
            raise ConfigError(f"kernel must be one of {KERNEL_CHOICES}, got {self.kernel!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.loss_form not in ("mul", "add"):
            raise ConfigError(f"loss_form must be 'mul' or 'add', got {self.loss_form!r}")
        if self.lut_backend not in LUT_BACKENDS:
            raise ConfigError(f"lut_backend must be one of {', '.join(LUT_BACKENDS)} (a host back end), got "
                              f"{self.lut_backend!r}; for a board or GPU measure with `fbnet-fast lut measure` and "
                              f"pass --lut")
        if self.lut_combine not in COMBINE_MODES:
            raise ConfigError(f"lut_combine must be one of {COMBINE_MODES}, got {self.lut_combine!r}")
        if self.latency_unit not in ("ms", "us", "auto"):
            raise ConfigError(f"latency_unit must be 'ms', 'us' or 'auto', got {self.latency_unit!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ConfigError(f"tau_schedule must be one of {TAU_SCHEDULES}, got {self.tau_schedule!r}")
        if self.tau_schedule == "anneal" and not self.tau_end < self.tau0:
            raise ConfigError(f"tau_end ({self.tau_end}) must be below tau0 ({self.tau0})")
        pos("budget_rho", allow_zero=True)
        pos("commit_rho", allow_zero=True)
        if self.target_fraction is not None and self.target_ms is None:
            f = self.target_fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
                raise ConfigError(f"--target-fraction must be a positive number (of the uniform latency), got {f!r}")
            self.budget(1.0)
        if self.target_ms is not None:
            self.budget()  # ConfigError for a bad target, mode or tolerance
        self.commitment()
        if self.decide_by is not None:
            v = self.decide_by
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 < v <= 1):
                raise ConfigError(f"--decide-by must be in (0, 1] (the share of the search's theta steps by which "
                                  f"every layer is decided), got {v!r}")

    def budget(self, uniform_ms: float | None = None) -> Budget | None:
        """The search's latency budget, or None (the alpha/beta loss). With ``target_fraction``,
        ``uniform_ms`` (the LUT latency under uniform theta) sets ``T``."""
        if self.target_ms is None and self.target_fraction is None:
            return None
        t = self.target_ms if self.target_ms is not None else self.target_fraction * float(uniform_ms)
        return Budget(t, mode=self.budget_mode, tol=self.budget_tol, dual_lr=self.dual_lr, rho=self.budget_rho)

    def commitment(self) -> Commitment | None:
        """The falling entropy ceiling on every layer of ``P_theta`` (``commit``), or None."""
        return (None if self.commit is None
                else Commitment(self.commit, dual_lr=self.commit_lr, rho=self.commit_rho, by=self.commit_by))


TAU_SCHEDULES = ("paper", "anneal")


def hard_at(cfg: SearchConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) samples one candidate per layer (straight-through hard Gumbel)."""
    return cfg.gumbel == "hard" or epoch >= cfg.epochs - cfg.hard_epochs


def tau_at(cfg: SearchConfig, epoch: int) -> float:
    """Gumbel temperature of ``epoch`` (0-based).

    ``"paper"``: ``tau0 * exp(-tau_decay * epoch)``. ``"anneal"``: ``tau0`` during the warm-up,
    then ``tau0 * (tau_end / tau0) ** (i / (n - 1))`` at soft search epoch ``i`` of ``n``: the last
    soft epoch trains at ``tau_end`` (nearly one-hot weights) whatever the number of epochs, and
    the ``hard_epochs`` after it stay there (in a straight-through step tau only scales theta's
    gradient, which Adam normalises).
    """
    if cfg.tau_schedule == "anneal":
        n = cfg.epochs - cfg.warmup_epochs - cfg.hard_epochs
        i = epoch - cfg.warmup_epochs
        if i < 0:
            return cfg.tau0
        if n <= 1:
            return cfg.tau_end
        return cfg.tau0 * (cfg.tau_end / cfg.tau0) ** (min(i, n - 1) / (n - 1))
    return cfg.tau0 * math.exp(-cfg.tau_decay * epoch)


class _Split:
    """A uint8 image tensor + labels with the data set's normalisation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, gen: torch.Generator | None, device: torch.device,
              channels_last: bool, shard: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B', C, H, W]`` float and labels ``[B']`` of ``idx`` (``[B]``).

        ``shard`` picks this rank's rows after the whole batch is augmented, so each
        image gets the same crop and flip whatever the number of ranks.
        """
        x = self.images[idx]
        if gen is not None:
            x = random_crop_flip(x, gen)
        y = self.labels[idx]
        if shard is not None:
            x, y = x[shard], y[shard]
        x = (x.float() / 255.0 - self.mean) / self.std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(device), y.to(device)


class Searcher:
    """Owns one search: model, data, optimizers, position; ``run()`` drives it to the end.

    ``dist`` places this process in a ``torchrun`` group (default: a single process).
    """

    def __init__(self, cfg: SearchConfig, run_dir: str | Path, *, space: SearchSpace | None = None,
                 lut: LatencyTable | None = None, data: Any = None, log: Callable[[str], None] = print,
                 dist: Dist = SINGLE) -> None:
        cfg.validate()
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        self.log = log if dist.is_main else (lambda msg: None)
        self.progress = cfg.progress and dist.is_main
        if cfg.batch_size % dist.world:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is the global batch and must divide evenly over the "
                f"{dist.world} processes (got {cfg.batch_size % dist.world} left over)"
            )
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if space is None:
            space = load_space(cfg.space, width_mult=cfg.width_mult)
        # The data is made at the space's input size, so a 16x16 space file searches
        # the generated set (or resized images) without a separate option.
        self.data = data if data is not None else self._build_data(space.input_size)
        data = self.data
        if space.num_classes != data.num_classes:
            space = space.replace(num_classes=data.num_classes)
        if space.input_size != data.image_size:
            raise ConfigError(
                f"space {space.name!r} expects {space.input_size}x{space.input_size} input but data "
                f"{cfg.data!r} has {data.image_size}x{data.image_size} images"
            )
        self.space = space
        train = data.train
        w_idx, t_idx = _split_train(train.labels, cfg.w_fraction, cfg.seed)
        self.w_split = _Split(train.images[w_idx], train.labels[w_idx], train.mean, train.std)
        self.t_split = _Split(train.images[t_idx], train.labels[t_idx], train.mean, train.std)
        self.val_split = _Split(data.val.images, data.val.labels, data.val.mean, data.val.std)
        self.w_steps = len(self.w_split) // cfg.batch_size
        self.t_steps = len(self.t_split) // cfg.batch_size
        if self.w_steps < 1 or self.t_steps < 1:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is larger than the weight split ({len(self.w_split)} images) or the "
                f"architecture split ({len(self.t_split)} images); use a smaller batch or more data"
            )
        per_rank = cfg.batch_size // dist.world
        self.shard = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank) if dist.active else None
        if lut is None:
            lut = self._load_or_measure_lut()
        lut.check_space(space)
        self.lut = lut
        self.unit = resolve_unit(cfg.latency_unit, lut.min_latency())
        self.criterion = LatencyLoss(alpha=cfg.alpha, beta=cfg.beta, form=cfg.loss_form, unit=self.unit,
                                     label_smoothing=cfg.label_smoothing)
        self.uniform_ms = uniform_latency(lut, space.num_layers, len(space.candidates))
        self.budget = cfg.budget(self.uniform_ms)
        if self.budget is not None:
            self.budget.check_reachable(lut)
            how = (f" ({cfg.target_fraction:g} x the uniform-theta latency {self.uniform_ms:.4f} ms)"
                   if cfg.target_ms is None else f" (uniform theta: {self.uniform_ms:.4f} ms)")
            self.log(f"budget: {self.budget.mode} {self.budget.target_ms:.4f} ms{how}")
        self.commit = cfg.commitment()
        impl = check_impl(cfg.kernel)
        check_precision(cfg.precision, self.device, kernel=impl)
        torch.manual_seed(cfg.seed)
        self.model = Supernet(space, impl=impl).to(self.device)
        if cfg.zero_init_residual:
            zero_init_residual_(self.model)
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            # Depthwise convs and BN run ~1.7x faster in NHWC on this class of CPU.
            self.model = self.model.to(memory_format=torch.channels_last)
        self.lut_matrix = lut.matrix(space.candidates).to(self.device, torch.float32)
        # BN running statistics: averaged over ranks every step (see the module docstring).
        self._float_buffers = [b for b in self.model.buffers() if b.is_floating_point()]

        # The two parameter groups, listed once (a step toggles their requires_grad and gathers their
        # gradients; walking the ~1,800 parameters of the module tree each time cost ~1 % of a search).
        self._w_params = list(self.model.weight_parameters())
        self._a_params = list(self.model.arch_parameters())
        self._grad_phase: str | None = None  # which group has requires_grad on ("w" | "theta"), None: not set yet
        # fused: torch's one-kernel update over the ~1,600 weight tensors (CPU and CUDA), not a Python loop (CPU
        # defaults to it) nor foreach (one dispatch per tensor and op: 24 vs 8 ms a step at width 0.25, AMD EPYC
        # Zen 4); the same arithmetic up to float32 rounding.
        self.w_opt = momentum_sgd(self._w_params, lr=cfg.w_lr, momentum=cfg.w_momentum,
                                  weight_decay=cfg.w_weight_decay, device=self.device)
        self.t_opt = torch.optim.Adam(self._a_params, lr=cfg.theta_lr,
                                      weight_decay=cfg.theta_weight_decay, foreach=True)
        self.w_sched = torch.optim.lr_scheduler.LambdaLR(
            self.w_opt, RampCosine(cfg.w_lr_ramp_steps, cfg.epochs * self.w_steps))
        # position: the next step to run is (epoch, phase, step)
        self.epoch, self.phase, self.step = 0, "w", 0
        self.accum: dict[str, float] = {}
        # the block each layer is fixed to (decide_by), -1 while undecided
        self.decided: list[int] = [-1] * space.num_layers
        self.history: list[dict[str, Any]] = []
        self.epoch_start = time.time()
        self.elapsed = 0.0
        self.last_checkpoint: Path | None = None

    # ---- set-up helpers -----------------------------------------------------------------
    def _build_data(self, image_size: int):
        from .data import build_datasets

        num_train, num_val = self.cfg.num_train, self.cfg.num_val
        if self.cfg.data == "synthetic":
            # The default search's budget (~10 min on 2 cores): one epoch is ~60 steps of
            # batch 64 at width 0.25, ~1.3 s each with the fused kernels.
            num_train = SEARCH_SYNTHETIC_TRAIN if num_train is None else num_train
            num_val = SEARCH_SYNTHETIC_VAL if num_val is None else num_val
        return build_datasets(self.cfg.data, image_size=image_size, seed=self.cfg.seed,
                              num_train=num_train, num_val=num_val)

    def _load_or_measure_lut(self) -> LatencyTable:
        if self.cfg.lut:
            return load_latency_model(self.cfg.lut, self.space, weights=self.cfg.lut_weights,
                                      combine=self.cfg.lut_combine)

        def measure() -> dict[str, Any]:
            from .measure import measure_lut

            self.log(f"measuring a latency table for {self.space.name} on the host CPU with {self.cfg.lut_backend} "
                     f"(pass --lut to reuse one)")
            return measure_lut(self.space, backend=self.cfg.lut_backend, repeats=self.cfg.lut_repeats,
                               progress=self.progress).to_dict()

        # Timings differ between processes: rank 0 measures and every rank uses its table.
        return LatencyTable.from_dict(self.dist.share(measure), source="<measured>", space=self.space)

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.space.fingerprint,
            "space": self.space.to_dict(),
            "config": self.cfg.to_dict(),
            # tau is tau_at(config, epoch); the data order, augmentation and Gumbel noise
            # of every step are drawn from generators seeded by (seed, epoch, phase, step).
            "position": {"epoch": self.epoch, "phase": self.phase, "step": self.step},
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "t_opt": self.t_opt.state_dict(),
            "w_sched": self.w_sched.state_dict(),
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "commit": self.commit.state_dict() if self.commit is not None else None,
            "decided": list(self.decided),
            "accum": dict(self.accum),
            "history": list(self.history),
            "elapsed": self.elapsed + (time.time() - self.epoch_start),
            "world_size": self.dist.world,
            # Every step reseeds its own generators; these are kept so code outside the
            # step functions (user callbacks) also resumes exactly.
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()},
        }

    # Options that change the trajectory: a checkpoint must agree on them to be resumed.
    _TRAJECTORY_FIELDS = ("epochs", "warmup_epochs", "hard_epochs", "batch_size", "w_fraction", "w_lr", "w_momentum",
                          "w_weight_decay", "w_grad_clip", "zero_init_residual", "theta_lr", "theta_weight_decay",
                          "tau0", "tau_decay", "alpha", "beta", "loss_form", "label_smoothing", "gumbel", "seed", "augment", "data",
                          "num_train", "num_val", "tau_schedule", "tau_end", "target_ms", "target_fraction", "budget_mode",
                          "budget_tol", "dual_lr", "budget_rho", "commit", "commit_by", "commit_lr",
                          "commit_rho", "decide_by")

    # Options the warm-up does not read (weight steps minimise the CE alone and theta is not
    # trained): a search may start from the warm-up of another that differs only in these.
    _POST_WARMUP_FIELDS = ("alpha", "beta", "loss_form", "theta_lr", "theta_weight_decay", "tau_end", "hard_epochs",
                           "target_ms",
                           "target_fraction", "budget_mode", "budget_tol", "dual_lr", "budget_rho", "commit",
                           "commit_by", "commit_lr", "commit_rho", "decide_by")

    def load_state_dict(self, state: dict[str, Any], *, source: str = "<checkpoint>",
                        ignore: tuple[str, ...] = ()) -> None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: not an fbnet-fast search checkpoint")
        if state.get("fingerprint") != self.space.fingerprint:
            raise CheckpointError(
                f"{source}: checkpoint is for space fingerprint {state.get('fingerprint')}, this search uses "
                f"{self.space.name!r} with fingerprint {self.space.fingerprint}"
            )
        saved_cfg = state.get("config")
        if isinstance(saved_cfg, dict):
            mine = self.cfg.to_dict()
            diff = [f"{k}: checkpoint {saved_cfg.get(k)!r}, this search {mine[k]!r}"
                    for k in self._TRAJECTORY_FIELDS
                    if k not in ignore and k in saved_cfg and saved_cfg[k] != mine[k]]
            if diff:
                raise CheckpointError(f"{source}: checkpoint was written with other options ({'; '.join(diff)})")
        try:
            self.model.load_state_dict(state["model"])
            self.w_opt.load_state_dict(state["w_opt"])
            prime_momentum(self.w_opt)
            self.t_opt.load_state_dict(state["t_opt"])
            self.w_sched.load_state_dict(state["w_sched"])
            if self.budget is not None and state.get("budget") is not None and "budget" not in ignore:
                self.budget.load_state_dict(state["budget"])
            if self.commit is not None and state.get("commit") is not None and "budget" not in ignore:
                self.commit.load_state_dict(state["commit"])
            if "decided" in state and "budget" not in ignore:
                self.decided = [int(k) for k in state["decided"]]
                if len(self.decided) != self.space.num_layers:
                    raise ValueError(f"{len(self.decided)} layer decisions for {self.space.num_layers} layers")
            pos = state["position"]
            self.epoch, self.phase, self.step = int(pos["epoch"]), str(pos["phase"]), int(pos["step"])
            self.accum = dict(state["accum"])
            self.history = list(state["history"])
            self.elapsed = float(state.get("elapsed", 0.0))
            rng = state["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: checkpoint does not match this search: {e}") from None
        if self.phase not in ("w", "theta") or not 0 <= self.epoch <= self.cfg.epochs:
            raise CheckpointError(f"{source}: position {pos} is outside this search's schedule")
        self.epoch_start = time.time()

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path | None:
        """Atomically write the current state; keep the newest ``keep_checkpoints`` files.

        Rank 0 only (every rank holds the same state); other ranks return None.
        """
        if not self.dist.is_main:
            return None
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        gstep = self._global_step()
        path = self.ckpt_dir / f"ckpt-{gstep:08d}.pt"
        atomic_torch_save(self.state_dict(), path)
        for old in sorted(self.ckpt_dir.glob("ckpt-*.pt"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        self.last_checkpoint = path
        return path

    def _global_step(self) -> int:
        per_epoch = self.w_steps + self.t_steps
        return self.epoch * per_epoch + (self.step if self.phase == "w" else self.w_steps + self.step)

    def _pick_checkpoint(self) -> tuple[str | None, list[str]]:
        """Rank 0: delete torn temp files and return the newest readable checkpoint.

        Unreadable checkpoints newer than it are renamed ``*.pt.corrupt`` (kept for
        inspection, out of the ``keep_checkpoints`` rotation that would otherwise let them
        push out the good ones); when none is readable nothing is renamed.
        """
        # Writes killed before their os.replace (checkpoints, metrics.jsonl, PNGs): never
        # a file anyone reads, so they go.
        for tmp in [*self.ckpt_dir.glob(".ckpt-*.tmp"), *self.run_dir.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        bad: list[tuple[Path, str]] = []
        for p in sorted(self.ckpt_dir.glob("ckpt-*.pt"), reverse=True):
            try:
                state = torch.load(p, map_location="cpu", weights_only=False)
                if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError("not an fbnet-fast search checkpoint")
            except Exception as e:  # truncated / corrupt file: fall back to the previous one
                # torch's messages run to several sentences of advice; the first says what broke
                first = (str(e).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
                bad.append((p, f"{type(e).__name__}: {first}" if first else type(e).__name__))
                continue
            notes = []
            for b, why in bad:
                os.replace(b, b.with_name(b.name + ".corrupt"))
                notes.append(f"{b.name} is unreadable ({why}); renamed to {b.name}.corrupt, using {p.name}")
            return str(p), notes
        if not bad:
            return None, []
        names = ", ".join(b.name for b, _ in bad)
        return None, [f"{names} {'is' if len(bad) == 1 else 'are all'} corrupt or truncated "
                      f"(newest: {bad[0][1]})"]

    def _read_checkpoint(self, p: Path) -> dict[str, Any]:
        try:
            return torch.load(p, map_location=self.device, weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{p}: cannot read checkpoint: {type(e).__name__}: {e}") from None

    @property
    def warmup_checkpoint(self) -> Path:
        """The state at the end of the warm-up, kept out of the rotation for ``warmup_from``."""
        return self.ckpt_dir / "warmup.pt"

    def start_from_warmup(self, run_dir: str | Path) -> None:
        """Load another search's end-of-warm-up state (``warmup_from``).

        The warm-up trains only the weights on the CE, so its trajectory depends on the
        seed, data and schedule but not on alpha, beta, the loss form or theta's
        optimiser: a search started here ends exactly as one that ran its own warm-up.
        Those options are the only ones allowed to differ; the LUT must be the same
        (the warm-up epochs' history records its latencies).
        """
        donor = Path(run_dir)
        p = donor / "checkpoints" / "warmup.pt"
        if not p.is_file():
            raise RunDirError(f"warmup_from {donor}: no warm-up checkpoint {p} (a search writes it when its "
                              f"warm-up epochs end)")
        state = self._read_checkpoint(p)
        try:
            theirs = load_latency_model(donor / "lut.json", self.space).matrix(self.space.candidates)
        except FBNetError as e:
            raise RunDirError(f"warmup_from {donor}: cannot read its LUT: {e}") from None
        mine = self.lut.matrix(self.space.candidates)
        if theirs.shape != mine.shape or not torch.equal(torch.as_tensor(theirs), torch.as_tensor(mine)):
            raise CheckpointError(f"warmup_from {donor}: that search used another latency table; its warm-up "
                                  f"history's latencies would not be this search's")
        fresh_t_opt = self.t_opt.state_dict()  # theta's Adam: untouched by the warm-up, this search's options
        self.load_state_dict(state, source=str(p), ignore=self._POST_WARMUP_FIELDS)
        self.t_opt.load_state_dict(fresh_t_opt)
        if (self.epoch, self.phase, self.step) != (self.cfg.warmup_epochs, "w", 0):
            raise CheckpointError(f"{p}: position epoch {self.epoch} {self.phase} step {self.step} is not the end "
                                  f"of {self.cfg.warmup_epochs} warm-up epochs")
        self.last_checkpoint = None
        self.log(f"starting after the warm-up of {donor} (epoch {self.epoch})")

    def resume(self) -> Path | None:
        """Load the newest readable checkpoint of the run folder; None when there is none."""
        found, notes = self.dist.share(self._pick_checkpoint)
        if found is not None:
            for n in notes:
                self.log(f"warning: {n}")
        else:
            if notes:
                raise CheckpointError(f"no readable checkpoint in {self.ckpt_dir}: " + "; ".join(notes)
                                      + "; expected a file written by 'fbnet-fast search'")
            return None
        p = Path(found)
        state = self._read_checkpoint(p)
        self.load_state_dict(state, source=str(p))
        self.last_checkpoint = p
        self.log(f"resumed from {p} (epoch {self.epoch}, phase {self.phase}, step {self.step})")
        return p

    # ---- one step ----------------------------------------------------------------------------
    def _step_generators(self) -> tuple[torch.Generator, torch.Generator]:
        phase_id = 0 if self.phase == "w" else 1
        seed = step_seed(self.cfg.seed, self.epoch, phase_id, self.step)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global stream
        data_gen = torch.Generator().manual_seed(seed)
        gumbel_gen = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)
        return data_gen, gumbel_gen

    def _batch_indices(self, split: _Split) -> torch.Tensor:
        phase_id = 0 if self.phase == "w" else 1
        perm_gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.epoch, phase_id, 2**20))
        perm = torch.randperm(len(split), generator=perm_gen)
        b = self.cfg.batch_size
        return perm[self.step * b:(self.step + 1) * b]

    def _train_step(self) -> dict[str, float]:
        cfg = self.cfg
        split = self.w_split if self.phase == "w" else self.t_split
        data_gen, gumbel_gen = self._step_generators()
        x, y = split.batch(self._batch_indices(split), data_gen if cfg.augment else None, self.device,
                           self.channels_last, self.shard)
        tau = tau_at(cfg, self.epoch)
        if not self.model.training:  # evaluate() leaves the whole model in eval mode
            self.model.train()
        is_w = self.phase == "w"
        if self._grad_phase != self.phase:
            for p in self._w_params:
                p.requires_grad_(is_w)  # theta steps skip the weight-gradient convolutions
            for p in self._a_params:
                p.requires_grad_(not is_w)
            self._grad_phase = self.phase
        weights = self._fix(self.model.sample_weights(tau, hard=hard_at(cfg, self.epoch), generator=gumbel_gen))
        logits = fp32_logits(self.model, cfg.precision, self.device, x, weights)  # CE and latency term in fp32
        latency = self.lut.expected_latency(weights, self.lut_matrix)
        terms = self.criterion(logits, y, latency)
        loss = terms.ce if is_w else terms.loss
        probs = None if is_w else self._probs()
        if not is_w and self.budget is not None:  # CE + lambda * (LAT(P_theta) / T - 1)
            loss = terms.ce + self.budget.term(self.lut.expected_latency(probs, self.lut_matrix))
        if not is_w and self.commit is not None:  # + mu * mean_l (H(P_l) / log K - h(s))+
            loss = loss + self.commit.term(probs, self._progress(self.epoch, self.step + 1))
        opt = self.w_opt if is_w else self.t_opt
        opt.zero_grad(set_to_none=True)
        acc = (logits.detach().argmax(1) == y).float().mean()
        stats = torch.stack([terms.ce.detach().float(), loss.detach().float(), acc])
        if self.dist.active:
            stats = self._all_reduce_step(loss, stats, is_w)
        if not torch.isfinite(stats[1]):
            where = (f"the last good checkpoint {self.last_checkpoint} is kept" if self.last_checkpoint
                     else f"no checkpoint was written yet in {self.ckpt_dir}")
            raise TrainingError(
                f"loss became {float(stats[1])} at epoch {self.epoch + 1} ({'weight' if is_w else 'theta'} step "
                f"{self.step + 1}); stopped, {where}. Lower --w-lr or --theta-lr."
            )
        if not self.dist.active:
            loss.backward()
        extra = {}
        if is_w:
            # after the all-reduce: every rank sees (and clips) the same global gradient
            grads = [p.grad for p in self._w_params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            if cfg.w_grad_clip:
                torch.nn.utils.clip_grads_with_norm_(grads, cfg.w_grad_clip, norm, foreach=True)
            extra["grad_norm"] = float(norm)
        opt.step()
        if not is_w:
            self._pin_decided()
        if is_w:
            self.w_sched.step()
        elif self.budget is not None:  # dual ascent on the constraint, with theta after its step
            with torch.no_grad():
                gap = float(self.budget.gap(self.lut.expected_latency(self._probs(), self.lut_matrix)))
            self.budget.dual_step(gap)
            extra["budget_gap"] = gap
        if not is_w and self.commit is not None:
            with torch.no_grad():
                cgap = float(self.commit.gap(self._probs(), self._progress(self.epoch, self.step + 1)))
            self.commit.dual_step(cgap)
        if not is_w:
            self._decide(self._progress(self.epoch, self.step + 1))
        return {"ce": float(stats[0]), "loss": float(stats[1]), "acc": float(stats[2]),
                "latency_ms": float(latency.detach()), **extra}

    def _progress(self, epoch: int, steps: int) -> float:
        """Share of the search's soft theta steps done after ``steps`` theta steps of ``epoch``, in
        [0, 1] (0 through the warm-up, 1 from the last soft epoch's last step on)."""
        n = max(1, self.cfg.epochs - self.cfg.warmup_epochs - self.cfg.hard_epochs) * self.t_steps
        return min(1.0, max(0.0, ((epoch - self.cfg.warmup_epochs) * self.t_steps + steps) / n))

    # A decided layer's theta is pinned to this logit on its block and 0 elsewhere: P_theta is one-hot
    # to float precision (e^-30), so the budget, the commitment, the metrics and the argmax read it
    # as decided, while the weights of the steps are made exactly one-hot by _fix.
    _PIN = 30.0

    def _pin_decided(self) -> None:
        with torch.no_grad():
            for l, k in enumerate(self.decided):
                if k >= 0:
                    th = self.model.layers[l].theta
                    th.zero_()
                    th[k] = self._PIN

    def _fix(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights`` ``[L, K]`` with every decided layer's row replaced by its exact one-hot."""
        if all(k < 0 for k in self.decided):
            return weights
        mask = torch.tensor([k >= 0 for k in self.decided], device=weights.device)
        one_hot = torch.zeros_like(weights, requires_grad=False)
        for l, k in enumerate(self.decided):
            if k >= 0:
                one_hot[l, k] = 1.0
        return torch.where(mask[:, None], one_hot, weights)

    def _decide(self, progress: float) -> None:
        """Fix the layers the schedule calls for after ``progress`` of the theta steps (``decide_by``):
        the undecided ones whose P_theta has the lowest entropy, each to its most likely block.

        Called after every theta step, so the layers are fixed one or two at a time and theta, the
        budget's multiplier and the weights adapt between decisions. Measured on the default run
        (same warm-up and LUT): decisions at epoch ends only (11 layers, then 11) fixed `skip` in the
        11 most certain layers first, the net under-spent the ceiling and the last decision's repair
        changed 3 layers (59.3 % / 59.0 % held-out at the end); after every theta step 5 layers got
        `skip`, the net landed in the budget with no repair (59.9 % / 59.9 %); all 22 at once after
        two theta epochs ended at 24.7 % / 24.1 %.
        """
        by = self.cfg.decide_by
        if by is None or self.epoch < self.cfg.warmup_epochs:
            return
        L = len(self.decided)
        want = min(L, math.ceil(L * min(1.0, progress / by) - 1e-9))
        todo = [l for l in range(L) if self.decided[l] < 0]
        n = want - (L - len(todo))
        if n <= 0:
            return
        probs = self.model.probabilities().double().cpu()
        ent = Commitment.entropies(probs)
        picked = sorted(todo, key=lambda l: (float(ent[l]), l))[:n]
        for l in picked:
            self.decided[l] = int(probs[l].argmax())
        note = ""
        if n == len(todo) and self.budget is not None:
            # The last decisions land the net in the budget (the same repair as at the end, on the
            # decided layers' pinned logits and the others' own): the epochs after train the net
            # that is returned, not one a repair changes afterwards.
            fixed = repair(self.lut, torch.log_softmax(self.model.theta.detach().double().cpu(), -1), self.budget.window)
            if fixed.changed:
                note = ("; to meet the budget " + ", ".join(
                    f"{l}: {self.space.candidates[self.decided[l]]} -> {self.space.candidates[fixed.indices[l]]}"
                    for l in fixed.changed))
                self.decided = [int(k) for k in fixed.indices]
        self._pin_decided()
        self.log(f"decided layer(s) {', '.join(f'{l}={self.space.candidates[self.decided[l]]}' for l in sorted(picked))}"
                 f" ({L - len(todo) + n}/{L}){note}")

    def _probs(self) -> torch.Tensor:
        """``P_theta`` ``[L, K]``, differentiable (the budget's expected latency)."""
        return torch.softmax(self.model.theta, dim=-1)

    def _all_reduce_step(self, loss: torch.Tensor, stats: torch.Tensor, is_w: bool) -> torch.Tensor:
        """Backward, then average gradients, BN running stats and metrics over ranks in one collective.

        Each rank's loss is the mean over its equal shard and linear in it (CE, or CE
        times a latency factor that is the same on every rank), so the mean of the
        ranks' gradients is the gradient of the global batch's loss.
        """
        loss.backward()
        params = self._w_params if is_w else self._a_params
        # A parameter without a gradient (a candidate hard Gumbel did not pick) has none on
        # every rank: the noise is the same everywhere.
        grads = [p.grad for p in params if p.grad is not None]
        parts = grads + self._float_buffers
        flat = torch.cat([flat_params(parts).float(), stats.to(self.device)])
        self.dist.all_reduce_sum_(flat)
        flat.div_(self.dist.world)
        unflatten_into(flat[:-3], parts)
        return flat[-3:].cpu()

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, weights: torch.Tensor | None = None, *, recalibrate: bool = True) -> dict[str, float]:
        """Top-1 and CE on the held-out split of ``weights`` (default: the most likely architecture).

        Supernet weights with BN statistics recalibrated for this architecture (see
        :meth:`_recalibrated_bn`); sharded over ranks when distributed.
        """
        if weights is None:
            weights = self.model.argmax_weights()
        if not recalibrate:
            self.model.eval()
            return self._evaluate(weights)
        with self._recalibrated_bn(weights):
            return self._evaluate(weights)

    @contextlib.contextmanager
    def _recalibrated_bn(self, weights: torch.Tensor):
        """BN running statistics of the evaluated architecture itself, restored afterwards.

        The supernet's running statistics describe the Gumbel *mixture* each layer fed its
        successor during training (at tau 5 nearly the mean of 9 candidates, with a much
        smaller variance than any single candidate's output), so a one-hot architecture run
        with them is at chance even when the supernet trains to 50 %. As in single-path
        NAS, the statistics are re-estimated (cumulative average, ``recalibrate_batches``
        batches of the weight split in a fixed seeded order) and the training statistics are
        put back, so evaluation never changes the search.

        The batches carry the training augmentation (seeded crops and flips) when the search
        trains with it: the weights learned under the batch statistics of augmented images, and
        statistics of plain images shift every BN's normalisation away from that. Measured on a
        default-space run whose layers were all decided (the supernet *is* the returned net), its
        own running statistics scored 59.3 % held-out, statistics recalibrated on plain images
        49.3 % (50.5 % with 32 batches), on augmented images 59.4 %.
        """
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                 for m in bns]
        try:
            b = self.cfg.batch_size
            batches = min(self.cfg.recalibrate_batches, len(self.w_split) // b)
            if batches > 0:
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None
                perm = torch.randperm(len(self.w_split), generator=torch.Generator().manual_seed(self.cfg.seed))
                aug = torch.Generator().manual_seed(self.cfg.seed + 1) if self.cfg.augment else None
                self.model.train()
                with torch.no_grad():
                    for k in range(batches):
                        x, _ = self.w_split.batch(perm[k * b:(k + 1) * b], aug, self.device, self.channels_last)
                        with autocast(self.cfg.precision, self.device):
                            self.model(x, weights)
            self.model.eval()
            yield
        finally:
            for m, (rm, rv, nb, mom) in zip(bns, saved):
                m.running_mean.copy_(rm)
                m.running_var.copy_(rv)
                m.num_batches_tracked.copy_(nb)
                m.momentum = mom

    def _evaluate(self, weights: torch.Tensor) -> dict[str, float]:
        n = len(self.val_split)
        lo, hi = n * self.dist.rank // self.dist.world, n * (self.dist.rank + 1) // self.dist.world
        correct, ce = 0.0, 0.0
        bs = max(self.cfg.batch_size, 256)
        for i in range(lo, hi, bs):
            idx = torch.arange(i, min(hi, i + bs))
            x, y = self.val_split.batch(idx, None, self.device, self.channels_last)
            logits = fp32_logits(self.model, self.cfg.precision, self.device, x, weights)
            ce += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        if self.dist.active:
            t = self.dist.all_reduce_sum_(torch.tensor([correct, ce], dtype=torch.float64, device=self.device))
            correct, ce = float(t[0]), float(t[1])
        return {"val_acc": correct / n, "val_ce": ce / n}

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        # the collector's full scans skip the ~330,000 objects alive now (fbnet_fast/malloc.py)
        with long_lived_frozen():
            with tqdm(total=cfg.epochs, initial=self.epoch, desc="search", unit="epoch",
                      disable=not self.progress, position=0) as ebar:
                while self.epoch < cfg.epochs:
                    self._run_epoch()
                    ebar.update(1)
                    last = self.history[-1]
                    ebar.set_postfix(ce=f"{last['train_ce']:.3f}", lat_ms=f"{last['expected_latency_ms']:.3f}",
                                     val_acc=f"{last['val_acc']:.3f}")
            return self.finish()

    def _phases(self) -> list[str]:
        # no theta steps once every layer is decided: the epoch trains the returned net alone
        done = self.cfg.decide_by is not None and all(k >= 0 for k in self.decided)
        return ["w"] if self.epoch < self.cfg.warmup_epochs or done else ["w", "theta"]

    def _run_epoch(self) -> None:
        cfg = self.cfg
        for phase in self._phases():
            if self._phase_done(phase):
                continue
            self.phase = phase
            n = self.w_steps if phase == "w" else self.t_steps
            desc = f"epoch {self.epoch + 1}/{cfg.epochs} {'weights' if phase == 'w' else 'theta'}"
            with tqdm(total=n, initial=self.step, desc=desc, unit="step", leave=False,
                      disable=not self.progress, position=1) as bar:
                while self.step < n:
                    m = self._train_step()
                    for k, v in m.items():
                        key = f"{phase}_{k}"
                        self.accum[key] = self.accum.get(key, 0.0) + v
                    self.accum[f"{phase}_n"] = self.accum.get(f"{phase}_n", 0.0) + 1
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(ce=f"{m['ce']:.3f}", lat_ms=f"{m['latency_ms']:.3f}", acc=f"{m['acc']:.2f}")
                    if cfg.checkpoint_every and self._global_step() % cfg.checkpoint_every == 0 and self.step < n:
                        self.save_checkpoint()
                    if phase == "theta" and "theta" not in self._phases():
                        break  # every layer decided: the rest of the theta steps would change nothing
            if phase == "w" and "theta" in self._phases():
                self.phase, self.step = "theta", 0
        self._end_epoch()

    def _phase_done(self, phase: str) -> bool:
        # On resume, a phase before the saved one is already done.
        order = ["w", "theta"]
        return order.index(phase) < order.index(self.phase)

    def _end_epoch(self) -> None:
        cfg = self.cfg
        # The supernet as it trains (noise-free weights softmax(theta / tau), its own BN
        # statistics) and the most likely architecture alone (BN recalibrated): the gap
        # between them is the soft relaxation's discretisation gap, large while tau is high.
        tau = tau_at(cfg, self.epoch)
        ev = self.evaluate(self._fix(torch.softmax(self.model.theta.detach() / tau, -1)), recalibrate=False)
        arg = self.evaluate()
        ev["val_acc_argmax"], ev["val_ce_argmax"] = arg["val_acc"], arg["val_ce"]
        probs = self.model.probabilities()
        arch = self.model.most_likely()
        a = self.accum

        def mean(key: str) -> float | None:
            n = a.get(key.split("_", 1)[0] + "_n", 0.0)
            return a[key] / n if n and key in a else None

        self.elapsed += time.time() - self.epoch_start
        entropies = Commitment.entropies(probs.double())
        rec = {
            "epoch": self.epoch + 1,
            "phase": "warmup" if self.epoch < cfg.warmup_epochs else "search",
            "tau": tau_at(cfg, self.epoch),
            "gumbel": "hard" if hard_at(cfg, self.epoch) else "soft",
            "lr": self.w_opt.param_groups[0]["lr"],
            "train_ce": mean("w_ce"),
            "train_acc": mean("w_acc"),
            # the weight gradient's global norm before clipping (w_grad_clip), mean over the epoch
            "train_grad_norm": mean("w_grad_norm"),
            "theta_loss": mean("theta_loss"),
            "theta_ce": mean("theta_ce"),
            "sampled_latency_ms": mean("theta_latency_ms") if "theta_n" in a else mean("w_latency_ms"),
            "expected_latency_ms": float(self.lut.expected_latency(probs.double().cpu(),
                                                                  self.lut.matrix(self.space.candidates))),
            "argmax_latency_ms": self.lut.architecture_latency(arch.blocks),
            **({"target_ms": self.budget.target_ms, "budget_lambda": self.budget.lam,
                "budget_gap": mean("theta_budget_gap")} if self.budget is not None else {}),
            # per-layer entropy of P_theta over log K (1: uniform, 0: one-hot): the largest, the
            # mean, and the ceiling the commitment held them under
            **({"decided": sum(k >= 0 for k in self.decided)} if cfg.decide_by is not None else {}),
            "entropy_max": float(entropies.max()),
            "entropy_mean": float(entropies.mean()),
            **({"entropy_ceiling": self.commit.ceiling(self._progress(self.epoch, self.t_steps)),
                "commit_mu": self.commit.mu}
               if self.commit is not None else {}),
            **ev,
            "arch": str(arch),
            "probs": [[round(float(p), 6) for p in row] for row in probs],
            # wall clock: the one field that differs between a resumed and an uninterrupted run
            "elapsed_s": round(self.elapsed, 2),
        }
        self.history.append(rec)
        self.epoch, self.phase, self.step, self.accum = self.epoch + 1, "w", 0, {}
        self.epoch_start = time.time()
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.save_checkpoint()
        if self.epoch == cfg.warmup_epochs and self.dist.is_main:
            atomic_torch_save(self.state_dict(), self.warmup_checkpoint)
        self.log(f"epoch {rec['epoch']}/{cfg.epochs} [{rec['phase']}, {rec['gumbel']}] tau {rec['tau']:.3f} "
                 f"train CE {rec['train_ce']:.3f} val acc {rec['val_acc']:.3f} (argmax net {rec['val_acc_argmax']:.3f}) "
                 f"E[latency] {rec['expected_latency_ms']:.3f} ms  argmax {rec['argmax_latency_ms']:.3f} ms")

    def sample_and_evaluate(self, n: int, returned: Architecture | None = None) -> list[dict[str, Any]]:
        """``n`` architectures drawn from ``P_theta`` (seeded by the run seed), the argmax first and,
        when the budget repair changed it, the returned architecture second (kind ``"returned"``).

        Each is evaluated on the held-out split with the supernet's weights (one-hot
        weights, BN statistics recalibrated for it); returns one record per architecture.
        An architecture drawn again is not evaluated again: the evaluation is deterministic (the
        same seeded recalibration batches, the statistics put back after each), so its record is
        the first one's. At the end of a default search every layer is decided and all ``n`` draws
        are the argmax: 17 evaluations were 16 repeats (6-9 s of the default search).
        """
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, 2**30))
        argmax = self.model.most_likely()
        extra = [returned] if returned is not None and returned.blocks != argmax.blocks else []
        archs = [argmax] + extra + self.model.sample_architectures(n, generator=gen)
        kinds = ["argmax"] + ["returned"] * len(extra) + ["sample"] * n
        logp = torch.log(self.model.probabilities().double().cpu())
        out, done = [], {}
        for j, arch in enumerate(archs):
            idx = arch.indices(self.space)
            ev = done.get(tuple(idx))
            if ev is None:
                onehot = torch.zeros(self.space.num_layers, len(self.space.candidates), device=self.device)
                onehot[torch.arange(len(idx)), torch.tensor(idx)] = 1.0
                ev = done[tuple(idx)] = self.evaluate(onehot)
            out.append({"kind": kinds[j], "arch": str(arch),
                        "latency_ms": self.lut.architecture_latency(idx),
                        "log_prob": float(logp[torch.arange(len(idx)), torch.tensor(idx)].sum()), **ev})
        return out

    def _honour_budget(self, argmax: Architecture) -> tuple[Architecture, list[str], dict[str, Any]]:
        """The architecture to return under the budget: the argmax, or its repair (fbnet_fast.budget.repair).

        Returns ``(architecture, summary lines, result fields)``; the lines give the target, the LUT
        prediction raw and corrected, the repair, and the latency measured on this host when the
        LUT's back end runs here.
        """
        b = self.budget
        log_probs = torch.log_softmax(self.model.theta.detach().double().cpu(), dim=-1)
        fixed = repair(self.lut, log_probs, b.window)
        before = self.lut.architecture_latency(argmax.blocks)
        arch = argmax if not fixed.changed else Architecture.from_indices(self.space, fixed.indices)
        lat = self.lut.architecture_latency(arch.blocks)
        unit = "ms on " + str((self.lut.device or {}).get("device_name") or (self.lut.device or {}).get("backend"))
        lo, hi = b.window
        what = {"target": f"target {b.target_ms:.4f} ms (+-{b.tol:.0%})",
                "ceiling": f"ceiling {b.target_ms:.4f} ms (spent: the net lands in [{lo:.4f}, {hi:.4f}] ms)",
                "under": f"under {b.target_ms:.4f} ms"}[b.mode]
        lines = [f"budget: {what}, {unit}; lambda at the end {b.lam:.4f}",
                 f"argmax of theta: {before:.4f} ms (LUT)" + (" -> within the budget" if not fixed.changed else "")]
        if fixed.changed:
            lines.append(f"repaired: {len(fixed.changed)} layer(s) changed "
                         + ", ".join(f"{l}: {argmax.blocks[l]} -> {arch.blocks[l]}" for l in fixed.changed)
                         + f"; {lat:.4f} ms (LUT)" + ("" if fixed.ok else " (no architecture of the space is in "
                                                       "the window; this is the closest)"))
        corr = getattr(self.lut, "correction", None)
        if corr:
            raw = sum(self.lut.layers[l][blk].median_ms for l, blk in enumerate(arch.blocks)) + self.lut.fixed_ms
            lines.append(f"LUT prediction: raw sum {raw:.4f} ms, corrected {lat:.4f} ms "
                         f"(scale {corr['scale']:.4f}, offset {corr['offset_ms']:.4f} ms)")
        else:
            lines.append(f"LUT prediction: {lat:.4f} ms (no correction fitted to this LUT)")
        extra: dict[str, Any] = {"target_ms": b.target_ms, "budget_mode": b.mode, "argmax": argmax,
                                 "argmax_latency_ms": before, "repaired_layers": fixed.changed,
                                 "within_budget": fixed.ok}
        measured = self._measure_here(arch) if self.dist.is_main else None  # one rank times, the others wait
        if measured is not None:
            extra["measured_ms"] = measured
            lines.append(f"measured end to end on this host ({self.lut.device.get('backend')}): {measured:.4f} ms, "
                         f"{100 * (measured / lat - 1):+.1f} % against the LUT, "
                         f"{100 * (measured / b.target_ms - 1):+.1f} % against the target")
        return arch, lines, extra

    def _measure_here(self, arch: Architecture) -> float | None:
        """The architecture's end-to-end latency with the LUT's own back end, when that back end is this host."""
        device = dict(getattr(self.lut, "device", None) or {})
        if device.get("backend") not in LUT_BACKENDS or not self.cfg.measure_result:
            return None
        from .measure import backend_from_device, cpu_name
        from .measure.core import Job, measure_jobs
        from .model import build_model

        if device.get("device_name") != cpu_name():
            return None
        backend = backend_from_device(device)
        try:
            size = self.space.input_size
            shape = (int(device.get("batch_size", 1)), self.space.in_channels, size, size)
            job = Job("result", lambda: build_model(self.space, arch), shape, "the searched net")
            entry = measure_jobs(backend, [[job]], progress=False, desc="end-to-end latency")["result"]
        finally:
            backend.close()
        return entry.median_ms

    def finish(self) -> dict[str, Any]:
        """Write theta, the most likely architecture, the summary table, samples and plots (rank 0)."""
        probs = self.model.probabilities()
        argmax = arch = self.model.most_likely()
        budget_lines: list[str] = []
        result_extra: dict[str, Any] = {}
        if self.budget is not None:
            arch, budget_lines, result_extra = self._honour_budget(argmax)
        lat = self.lut.architecture_latency(arch.blocks)
        samples = self.sample_and_evaluate(self.cfg.plot_samples, arch) if self.cfg.plots else []
        result = {"arch": arch, "latency_ms": lat, "history": self.history, "run_dir": str(self.run_dir),
                  **result_extra}
        if hasattr(self.lut, "per_target_latency"):  # multi-target: every device's latency
            result["latency_per_target_ms"] = self.lut.per_target_latency(arch.indices(self.space))
        if not self.dist.is_main:
            return result
        theta = {
            "space": self.space.name, "fingerprint": self.space.fingerprint,
            "candidates": list(self.space.candidates),
            "theta": [[float(v) for v in row] for row in self.model.theta.detach().cpu()],
            "probs": [[float(v) for v in row] for row in probs.cpu()],
        }
        atomic_write_text(self.run_dir / "theta.json", json.dumps(theta, indent=1) + "\n")
        atomic_write_text(self.run_dir / "arch.json", json.dumps(arch.to_dict(self.space), indent=1) + "\n")
        lines = [f"{'architecture within the budget' if arch is not argmax else 'most likely architecture'} of "
                 f"{self.space.name} (fingerprint {self.space.fingerprint})",
                 f"{'layer':>5}  {'shape':<22} {'block':<10} {'P':>6} {'latency ms':>10}"]
        for l, (spec, block) in enumerate(zip(self.space.layers, arch.blocks)):
            i = self.space.candidates.index(block)
            shape = f"{spec.c_in}->{spec.c_out} s{spec.stride} {spec.in_size}px"
            lines.append(f"{l:>5}  {shape:<22} {block:<10} {float(probs[l, i]):>6.3f} "
                         f"{self.lut.layers[l][block].median_ms:>10.4f}")
        last = self.history[-1] if self.history else {}
        if "latency_per_target_ms" in result:
            lines.append("per target: " + ", ".join(f"{k} {v:.4f} ms" for k, v in result["latency_per_target_ms"].items()))
        lines.append(f"LUT latency {lat:.4f} ms (stem+head {self.lut.fixed_ms:.4f} ms); "
                     f"supernet val acc {last.get('val_acc', float('nan')):.4f}")
        if samples:
            lines.append(f"argmax as a stand-alone subnet (one-hot weights): val acc {samples[0]['val_acc']:.4f}; "
                         f"{self.cfg.plot_samples} sampled architectures in samples.json")
            if len(samples) > 1 and samples[1]["kind"] == "returned":
                lines.append(f"the returned (repaired) architecture as a stand-alone subnet: val acc "
                             f"{samples[1]['val_acc']:.4f}")
        lines += budget_lines
        atomic_write_text(self.run_dir / "summary.txt", "\n".join(lines) + "\n")
        if self.cfg.plots:
            atomic_write_text(self.run_dir / "samples.json", json.dumps(samples, indent=1) + "\n")
            from .plots import write_plots

            try:
                written = write_plots(self.run_dir)
                self.log(f"wrote {', '.join(p.name for p in written)} in {self.run_dir}")
            except Exception as e:  # pictures must never cost the search its results
                self.log(f"warning: could not draw the plots ({type(e).__name__}: {e}); "
                         f"run 'fbnet-fast plot {self.run_dir}' to retry")
        return result


def _split_train(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import split_indices

    return split_indices(len(labels), fraction, seed=seed, labels=labels)


def _read_run_config(run_dir: Path) -> tuple[SearchConfig, SearchSpace]:
    try:
        saved, space = read_run_config(run_dir, error=RunDirError)
    except RunDirError as e:
        raise RunDirError(f"cannot resume: {e}") from None
    if not isinstance(saved.get("search"), dict):
        raise RunDirError(f"cannot resume: {run_dir / 'config.json'} holds no search options")
    return SearchConfig.from_dict(saved["search"]), space


def run_search(cfg: SearchConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
               log: Callable[[str], None] = print, space: SearchSpace | None = None,
               lut: LatencyTable | None = None, data: Any = None) -> dict[str, Any]:
    """Run (or resume) a search into ``run_dir``; returns the final architecture and history.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the processes search
    together; see the module docstring. Nothing in ``run_dir`` changes until the
    options, space, LUT and data have all been checked, so a typo never costs the
    user an earlier run (not even with ``--overwrite``).
    """
    run_dir = Path(run_dir)
    if resume:  # plain reads: every rank gets the same answer or the same error
        check_run_dir(run_dir, resume=True, overwrite=overwrite)
        cfg, space = _read_run_config(run_dir)
        lut = load_latency_model(run_dir / "lut.json", space)
    else:
        cfg.validate()
    dist, device = init_from_env(cfg.device)
    try:
        if not resume:
            dist.share(lambda: check_run_dir(run_dir, resume=False, overwrite=overwrite))
        if device != cfg.device:
            cfg = dataclasses.replace(cfg, device=device)
        searcher = Searcher(cfg, run_dir, space=space, lut=lut, data=data, log=log, dist=dist)
        if resume:
            searcher.resume()
        else:
            def start() -> None:
                prepare_run_dir(run_dir, resume=False, overwrite=overwrite)
                config = {"search": cfg.to_dict(), "space": searcher.space.to_dict(),
                          "fingerprint": searcher.space.fingerprint, "latency_unit": searcher.unit,
                          "data": getattr(searcher.data, "description", cfg.data),
                          "torch": torch.__version__, "world_size": dist.world}
                atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1) + "\n")
                searcher.lut.save(run_dir / "lut.json")

            dist.share(start)
            if cfg.warmup_from:
                searcher.start_from_warmup(cfg.warmup_from)
                searcher.save_checkpoint()  # a kill from here on resumes this run, not the donor's
        if searcher.epoch >= searcher.cfg.epochs:
            return searcher.finish()
        return searcher.run()
    finally:
        shutdown(dist)
