"""Train one architecture from scratch (or from inherited supernet weights).

The paper's last step (Wu et al. 2019, Sec. 4.1): sample architectures from
``P_theta`` and train each on the full data set. Recipe, all in :class:`TrainConfig`:
SGD with Nesterov momentum, a linear LR ramp then cosine to 0 over all steps, label-smoothed
cross-entropy, dropout before the classifier, weight decay on conv and linear
weights only (decaying BN's scale and shift only shrinks what the next BN
renormalises), random crop + horizontal flip (``data.random_crop_flip``, the same batch
augmentation the search uses; padding = input size / 8, i.e. 4 pixels at 32x32).

Reproducibility and resume: the epoch's order and every step's augmentation and
dropout draws come from generators seeded by ``(seed, epoch, step)``, and a
checkpoint is written (atomically) at the end of every epoch, so training resumed
from epoch ``k`` ends bit-identical to an uninterrupted run.

Output folder::

    config.json       training options, space, architecture, data description
    arch.json         the architecture (fbnet-fast architecture format + space_def)
    metrics.jsonl     one line per epoch: lr, train loss/top-1, val loss/top-1, best so far
    checkpoints/      ckpt-EEEE.pt after epoch EEEE, newest ``keep_checkpoints`` kept
    best.pt           model file (``fbnet_fast.model`` format) of the best val top-1
    summary.json      best and last val top-1, params, FLOPs, time

The held-out split is the data spec's validation part (synthetic: its own seeded
stream; CIFAR-10: the test batch; folders: val/ or a seeded 20 % split). The best
epoch is picked on that same split, so ``best_val_acc`` is slightly optimistic;
``last_val_acc`` is not.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import CheckpointError, ConfigError, TrainingError
from .blocks import zero_init_residual_
from .data import random_crop_flip
from .ops import KERNEL_CHOICES, check_impl
from .malloc import long_lived_frozen
from .model import FBNetModel, build_model, inherit_from_supernet, load_run_supernet, model_stats, save_model_file
from .precision import PRECISIONS, autocast, check_precision, fp32_logits
from .runs import (OptionsDict, RampCosine, atomic_torch_save, atomic_write_text, momentum_sgd, prepare_run_dir,
                   prime_momentum, step_seed)
from .space import Architecture, SearchSpace

__all__ = ["TrainConfig", "Trainer", "run_training", "atomic_torch_save", "TRAIN_CHECKPOINT_FORMAT"]

TRAIN_CHECKPOINT_FORMAT = "fbnet-fast/train-checkpoint"
TRAIN_CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig(OptionsDict):
    """Every knob of a training run. Defaults: ~5 min for a width-0.25 model on 2 cores."""

    _what = "training option"  # for the unknown-option message (a class attribute, not a field)

    data: str = "synthetic"
    num_train: int | None = None
    num_val: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05  # the search's weight LR at the same batch size
    # Linear ramp of the LR over the first steps, as in the search: from scratch at lr 0.05
    # the first epoch's train loss sat at 2.8-2.9 (above ln 10) and the held-out loss at 4-13
    # without it (width 0.25, 32 px, batch 64).
    lr_ramp_steps: int = 60
    zero_init_residual: bool = True  # residual blocks start as the identity (blocks.zero_init_residual_)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the usual value for 32x32 data sets; ImageNet FBNet used 4e-5
    label_smoothing: float = 0.1
    dropout: float = 0.2  # FBNet's classifier dropout
    augment: bool = True
    seed: int = 0
    threads: int | None = None
    inherit: str | None = None  # search run folder to copy the chosen candidates' weights from
    keep_checkpoints: int = 2
    progress: bool = True
    device: str = "cpu"
    # torch.compile the model for the training steps and evaluation (its compile time is timed
    # apart, before the first epoch, and reported as compile_s; the run's elapsed_s excludes it)
    compile: bool = False
    # "bf16": autocast bf16 for the steps and evaluation, fp32 master weights and loss (fbnet_fast.precision)
    precision: str = "fp32"
    # how the blocks run in the training steps: "auto" (the search's fused kernels where built, as one-
    # candidate mixed ops; the eager blocks under --compile or bf16), "reference" (eager), "cpp", "triton"
    kernel: str = "auto"

    def validate(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for n in ("epochs", "batch_size", "keep_checkpoints"):
            v = getattr(self, n)
            check(n, isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer")
        v = self.lr_ramp_steps
        check("lr_ramp_steps", isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer")
        check("lr", num(self.lr) and self.lr > 0, "a positive number")
        for n in ("momentum", "weight_decay"):
            check(n, num(getattr(self, n)) and getattr(self, n) >= 0, "a non-negative number")
        check("label_smoothing", num(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)")
        check("dropout", num(self.dropout) and 0 <= self.dropout < 1, "in [0, 1)")
        check("seed", isinstance(self.seed, int) and self.seed >= 0, "a non-negative integer")
        if self.threads is not None:
            check("threads", isinstance(self.threads, int) and self.threads >= 1, "a positive integer")
        check("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        check("kernel", self.kernel in KERNEL_CHOICES, f"one of {', '.join(KERNEL_CHOICES)}")
        if self.compile and check_impl(self.kernel) not in ("auto", "reference"):
            raise ConfigError(f"--compile traces the eager blocks; --kernel {self.kernel} cannot run under it: "
                              f"use --kernel auto or reference")



class Trainer:
    """Owns one training run: model, data, optimizer, position; ``run()`` drives it to the end."""

    def __init__(self, cfg: TrainConfig, space: SearchSpace, arch: Architecture, out_dir: str | Path, *,
                 data: Any = None, inherit: bool = True, log: Callable[[str], None] = print) -> None:
        cfg.validate()
        self.cfg, self.out_dir, self.log = cfg, Path(out_dir), log
        self.device = torch.device(cfg.device)
        check_precision(cfg.precision, self.device, kernel=cfg.kernel)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if data is None:
            from .data import build_datasets

            data = build_datasets(cfg.data, image_size=space.input_size, seed=cfg.seed,
                                  num_train=cfg.num_train, num_val=cfg.num_val)
        if data.image_size != space.input_size:
            raise ConfigError(f"space {space.name!r} expects {space.input_size}x{space.input_size} input but the "
                              f"data has {data.image_size}x{data.image_size} images")
        if space.num_classes != data.num_classes:
            space = space.replace(num_classes=data.num_classes)  # the fingerprint ignores the classifier
        arch.check(space)
        self.space, self.arch, self.data = space, arch, data
        self.train_images, self.train_labels = data.train.images, data.train.labels
        self.val_images, self.val_labels = data.val.images, data.val.labels
        c = space.in_channels
        self.mean = torch.tensor(data.train.mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(data.train.std, dtype=torch.float32).view(1, c, 1, 1)
        self.padding = max(1, round(space.input_size / 8))
        self.steps_per_epoch = len(self.train_labels) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set "
                              f"({len(self.train_labels)} images); use a smaller batch or more data")

        torch.manual_seed(cfg.seed)
        model = build_model(space, arch, dropout=cfg.dropout)
        if cfg.zero_init_residual:
            zero_init_residual_(model)
        self.inherited_from: str | None = None
        if cfg.inherit and inherit:  # a resumed run takes every weight from its checkpoint
            run_space, state, ckpt = load_run_supernet(cfg.inherit)
            if run_space.fingerprint != space.fingerprint:
                raise ConfigError(f"--inherit {cfg.inherit}: the search used space fingerprint "
                                  f"{run_space.fingerprint}, this architecture's space has {space.fingerprint}")
            skip = () if run_space.num_classes == space.num_classes else ("head.fc.",)
            inherit_from_supernet(model, state, exclude=skip)
            self.inherited_from = str(ckpt)
            note = " (classifier re-initialised: different number of classes)" if skip else ""
            log(f"inherited the chosen candidates' weights from {ckpt}{note}")
        self.channels_last = self.device.type == "cpu"
        model = model.to(self.device)
        if self.channels_last:
            # Same reason as the search: depthwise convs and BN are faster in NHWC on CPU.
            model = model.to(memory_format=torch.channels_last)
        # The steps run the blocks through the fused kernels (fbnet_fast.ops.block_op) unless compiled or
        # asked not to; evaluation runs them too on CPU, else folds BN into eager convs (_eval_net); saved models are eager.
        impl = check_impl(cfg.kernel)
        model.impl = "reference" if cfg.compile and impl == "auto" else impl
        self.model: FBNetModel = model
        # what the steps call: the model itself, or its torch.compile'd wrapper (same parameters)
        self.net: Any = torch.compile(model) if cfg.compile else model
        self.compile_s: float | None = None

        decay, no_decay = [], []
        for p in model.parameters():
            (decay if p.dim() > 1 else no_decay).append(p)
        self.opt = momentum_sgd([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum, device=self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, RampCosine(cfg.lr_ramp_steps, cfg.epochs * self.steps_per_epoch))
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
        self.elapsed = 0.0

    # ---- batches ------------------------------------------------------------------------------
    def _prepare(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if gen is not None:
            images = random_crop_flip(images, gen, padding=self.padding)
        x = (images.float() / 255.0 - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, epoch, 2**20))
        return torch.randperm(len(self.train_labels), generator=gen)

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT, "version": TRAIN_CHECKPOINT_VERSION,
            "fingerprint": self.space.fingerprint, "space": self.space.to_dict(), "arch": self.arch.to_dict(),
            "config": self.cfg.to_dict(), "epoch": self.epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "history": list(self.history), "best": dict(self.best), "elapsed": self.elapsed,
            "inherited_from": self.inherited_from,
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "<checkpoint>") -> None:
        if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: not an fbnet-fast training checkpoint")
        if state.get("fingerprint") != self.space.fingerprint or state.get("arch", {}).get("blocks") != list(self.arch.blocks):
            raise CheckpointError(f"{source}: checkpoint is for another architecture or space")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            prime_momentum(self.opt)
            self.sched.load_state_dict(state["sched"])
            self.epoch = int(state["epoch"])
            self.history = list(state["history"])
            self.best = dict(state["best"])
            self.elapsed = float(state.get("elapsed", 0.0))
            self.inherited_from = state.get("inherited_from")
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: checkpoint does not match this run: {e}") from None

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        path = self.ckpt_dir / f"ckpt-{self.epoch:04d}.pt"
        atomic_torch_save(self.state_dict(), path)
        for old in sorted(self.ckpt_dir.glob("ckpt-*.pt"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def resume(self) -> Path | None:
        """Load the newest readable checkpoint; None when there is none (start from scratch)."""
        errors = []
        for p in sorted(self.ckpt_dir.glob("ckpt-*.pt"), reverse=True):
            try:
                state = torch.load(p, map_location=self.device, weights_only=False)
            except Exception as e:  # truncated or corrupt: fall back to the previous one
                errors.append(f"{p.name}: {type(e).__name__}")
                continue
            self.load_state_dict(state, source=str(p))
            self.log(f"resumed from {p} after epoch {self.epoch}")
            return p
        if errors:
            raise CheckpointError(f"no readable checkpoint in {self.ckpt_dir}: " + "; ".join(errors))
        return None

    # ---- training ---------------------------------------------------------------------------------
    def _train_epoch(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        order = self._epoch_order(self.epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        with tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
                  leave=False, disable=not cfg.progress, position=1) as bar:
            for step in range(self.steps_per_epoch):
                seed = step_seed(cfg.seed, self.epoch, step)
                torch.manual_seed(seed)  # dropout
                gen = torch.Generator().manual_seed(seed) if cfg.augment else None
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x = self._prepare(self.train_images[idx], gen)
                y = self.train_labels[idx].to(self.device)
                logits = fp32_logits(self.net, cfg.precision, self.device, x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {float(loss)} in epoch {self.epoch + 1}, step {step}; the last good "
                        f"checkpoint is kept in {self.ckpt_dir}. Lower --lr."
                    )
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.sched.step()
                n = len(y)
                loss_sum += float(loss.detach()) * n
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += n
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{correct / seen:.3f}")
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen}

    def _compile(self) -> float:
        """Compile the training and the evaluation graph of ``self.net`` on one batch, leaving the
        model's parameters, BN statistics and gradients as they were; returns the seconds it took."""
        t0 = time.perf_counter()
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        b = min(self.cfg.batch_size, len(self.train_labels))
        x = self._prepare(self.train_images[:b], None)
        self.model.train()
        logits = fp32_logits(self.net, self.cfg.precision, self.device, x)
        F.cross_entropy(logits, self.train_labels[:b].to(self.device)).backward()
        self.model.eval()
        with torch.no_grad(), autocast(self.cfg.precision, self.device):
            self.net(x)
        self.model.load_state_dict(saved)
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def _eval_net(self) -> Any:
        """The evaluation model: the compiled one under ``compile``; the model itself in eval mode when its
        blocks run the fused CPU kernels (their forward with running statistics ran 1.27-1.43x the folded eager
        copy on 1,000 images at 1 and 2 threads, fbnet-cifar width 0.25, AMD EPYC Zen 4, bench/cpu/ab_eval.py);
        else an eval
        copy with every conv + BN pair folded into one conv (fewer passes over the activations, the same
        function)."""
        if self.cfg.compile:
            self.model.eval()
            return self.net
        from .ops import resolve_impl

        if resolve_impl(self.model.impl, self.device) == "cpp":
            self.model.eval()
            return self.model
        from .export import ExportError, fold_batchnorm

        try:
            folded = fold_batchnorm(self.model)
        except ExportError:  # a block with a BN that follows no conv: evaluate it as it is
            self.model.eval()
            return self.model
        folded.impl = "reference"  # no BN left for the fused kernels
        return folded.to(memory_format=torch.channels_last) if self.channels_last else folded

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1 and (unsmoothed) cross-entropy on the held-out split, BN in eval mode."""
        net = self._eval_net()
        n, correct, ce = len(self.val_labels), 0, 0.0
        for i in range(0, n, 256):
            x = self._prepare(self.val_images[i:i + 256], None)
            y = self.val_labels[i:i + 256].to(self.device)
            logits = fp32_logits(net, self.cfg.precision, self.device, x)
            ce += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return {"val_loss": ce / n, "val_acc": correct / n}

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.compile and self.compile_s is None:
            self.compile_s = self._compile()
            self.log(f"torch.compile: {self.compile_s:.1f} s (not counted in the epochs' time)")
        with long_lived_frozen():  # the collector's full scans skip the objects alive now (fbnet_fast/malloc.py)
            with tqdm(total=cfg.epochs, initial=self.epoch, desc="train", unit="epoch",
                      disable=not cfg.progress, position=0) as ebar:
                while self.epoch < cfg.epochs:
                    t0 = time.time()
                    lr = self.opt.param_groups[0]["lr"]
                    rec = {"epoch": self.epoch + 1, "lr": lr, **self._train_epoch(), **self.evaluate()}
                    self.elapsed += time.time() - t0
                    self.epoch += 1
                    if rec["val_acc"] > self.best["val_acc"]:
                        self.best = {"val_acc": rec["val_acc"], "epoch": self.epoch}
                        save_model_file(self.out_dir / "best.pt", self._cpu_model(), val_acc=rec["val_acc"],
                                        epoch=self.epoch, data=self.data.description,
                                        mean=list(self.data.train.mean), std=list(self.data.train.std),
                                        class_names=list(self.data.class_names))
                    rec.update(best_val_acc=self.best["val_acc"], best_epoch=self.best["epoch"],
                               elapsed_s=round(self.elapsed, 2))
                    self.history.append(rec)
                    atomic_write_text(self.out_dir / "metrics.jsonl",
                                      "".join(json.dumps(r) + "\n" for r in self.history))
                    self.save_checkpoint()
                    ebar.update(1)
                    ebar.set_postfix(val_acc=f"{rec['val_acc']:.3f}", best=f"{self.best['val_acc']:.3f}")
                    self.log(f"epoch {rec['epoch']}/{cfg.epochs} lr {lr:.4f} train loss {rec['train_loss']:.3f} "
                             f"top-1 {rec['train_acc']:.3f} | val loss {rec['val_loss']:.3f} top-1 {rec['val_acc']:.3f} "
                             f"(best {self.best['val_acc']:.3f} at epoch {self.best['epoch']})")
        return self.finish()

    def _cpu_model(self) -> FBNetModel:
        # The saved model file is NCHW on CPU whatever the training device and layout.
        m = build_model(self.space, self.arch, dropout=self.cfg.dropout)
        m.load_state_dict({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()})
        return m

    def finish(self) -> dict[str, Any]:
        stats = model_stats(self.space, self.arch)
        last = self.history[-1] if self.history else {}
        summary = {
            "arch": str(self.arch), "space": self.space.name, "fingerprint": self.space.fingerprint,
            "data": self.data.description, "epochs": self.epoch,
            "best_val_acc": self.best["val_acc"], "best_epoch": self.best["epoch"],
            "last_val_acc": last.get("val_acc"), **stats.to_dict(),
            "inherited_from": self.inherited_from, "elapsed_s": round(self.elapsed, 2),
            **({"compile_s": round(self.compile_s, 2)} if self.compile_s is not None else {}),
            "best_model": str(self.out_dir / "best.pt"),
        }
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary


def run_training(cfg: TrainConfig, space: SearchSpace, arch: Architecture, out_dir: str | Path, *,
                 resume: bool = False, overwrite: bool = False, data: Any = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``arch`` of ``space`` into ``out_dir`` (or resume the run there); returns the summary."""
    out_dir = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    if resume:
        saved = json.loads((out_dir / "config.json").read_text())
        cfg = TrainConfig.from_dict(saved["train"])
        space = SearchSpace.from_dict(saved["space"], source=str(out_dir / "config.json"))
        arch = Architecture.from_dict(saved["arch"], source=str(out_dir / "config.json"))
    trainer = Trainer(cfg, space, arch, out_dir, data=data, inherit=not resume, log=log)
    if resume:
        trainer.resume()
    else:
        arch_doc = trainer.arch.to_dict(trainer.space)
        config = {"train": cfg.to_dict(), "space": trainer.space.to_dict(), "arch": trainer.arch.to_dict(),
                  "fingerprint": trainer.space.fingerprint, "data": trainer.data.description,
                  "torch": torch.__version__}
        atomic_write_text(out_dir / "config.json", json.dumps(config, indent=1) + "\n")
        atomic_write_text(out_dir / "arch.json", json.dumps(arch_doc, indent=1) + "\n")
    if trainer.epoch >= trainer.cfg.epochs:
        return trainer.finish()
    return trainer.run()
