"""Lottery tickets on a searched (or preset) net, and what sparsity costs in latency.

Iterative magnitude pruning (Frankle & Carbin, ICLR 2019), :func:`run_pruning`:

1. initialise (seeded) and keep the initial weights ``w0``; train (``epochs``);
2. remove ``1 - (1 - sparsity)^(1/rounds)`` of the *remaining* prunable weights with the
   smallest magnitude, ``scope="global"`` (one threshold for all layers) or ``"layer"``
   (the same fraction of every layer), so ``rounds`` rounds end at ``sparsity``;
3. rewind the survivors to ``w0`` (``rewind_step=0``) or to their values after
   ``rewind_step`` steps of the first training (Frankle et al. 2019's "late rewinding",
   for deeper nets), BN statistics included; train again with the mask held;
4. repeat from 2. The control: each round's mask with a fresh random initialisation
   (seed + 1000 + round), trained the same way.

Prunable weights: every conv and linear weight (``dim > 1``); BN parameters stay dense.
The mask is applied after every optimizer step, so momentum and weight decay cannot
revive a pruned weight. Each round retrains the full cosine schedule.

Latency: every pruned net is measured end to end (batch 1, the chosen back end, all nets
interleaved in one group). Unstructured zeros sit inside dense tensors, so dense
kernels do the same work: the point of the measurement is that sparsity alone buys no
latency. The structured variant (:func:`prune_channels`) removes the expanded (middle)
channels of inverted-residual blocks with the smallest BN scale ``|bn2.weight|``
("network slimming"), which makes every conv of the block physically smaller, then
fine-tunes; it is measured the same way.

Output folder: ``prune.json`` (every point), ``prune.md`` (the table), ``prune.png``
(accuracy vs sparsity, latency vs sparsity).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import IRBlock
from ..errors import ConfigError
from ..runs import atomic_write_text, momentum_sgd
from ..model import build_model, count_flops
from ..space import Architecture, SearchSpace

__all__ = ["PruneConfig", "prunable", "magnitude_masks", "apply_masks", "sparsity", "prune_channels",
           "run_pruning", "plot_pruning"]


@dataclass
class PruneConfig:
    """Every knob of :func:`run_pruning`."""

    rounds: int = 4
    sparsity: float = 0.8  # fraction of prunable weights removed after all rounds
    scope: str = "global"  # or "layer"
    rewind_step: int = 0  # 0: rewind to initialisation; k: to the weights after k steps
    control: bool = True  # random re-initialisation with each round's mask
    epochs: int = 3
    batch_size: int = 64
    augment: bool = True  # random crop + flip, as the trainer does
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    channel_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # structured: middle channels removed
    finetune_epochs: int = 0  # structured fine-tuning; 0: same as epochs
    backend: str = "torch-cpu"
    threads: int = 1
    repeats: int = 20
    passes: int = 2
    progress: bool = False

    def validate(self) -> None:
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise ConfigError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if not (isinstance(self.sparsity, (int, float)) and 0 < self.sparsity < 1):
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity!r}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if not (isinstance(self.rewind_step, int) and self.rewind_step >= 0):
            raise ConfigError(f"rewind_step must be an integer >= 0, got {self.rewind_step!r}")
        for n in ("epochs", "batch_size", "threads", "repeats", "passes"):
            v = getattr(self, n)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{n} must be an integer >= 1, got {v!r}")
        if not all(0 < f < 1 for f in self.channel_fractions):
            raise ConfigError(f"channel fractions must each be in (0, 1), got {list(self.channel_fractions)}")

    @property
    def per_round(self) -> float:
        """Fraction of the remaining weights removed each round."""
        return 1.0 - (1.0 - self.sparsity) ** (1.0 / self.rounds)


# ---- masks ------------------------------------------------------------------------------------

def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every conv and linear weight (``dim > 1``)."""
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


def magnitude_masks(model: nn.Module, masks: dict[str, torch.Tensor], fraction: float, *,
                    scope: str = "global") -> dict[str, torch.Tensor]:
    """New masks removing ``fraction`` of the weights still alive under ``masks`` (smallest |w|).

    ``scope="global"``: one threshold over all prunable weights; ``"layer"``: the same
    fraction in every tensor. Ties at the threshold are broken by position (stable sort),
    so the count removed is exact.
    """
    params = prunable(model)
    new = {}
    if scope == "global":
        alive = torch.cat([params[n].detach().abs().flatten()[masks[n].flatten().bool()] for n in params])
        k = int(round(fraction * alive.numel()))
        if k == 0:
            return {n: m.clone() for n, m in masks.items()}
        thresh = torch.kthvalue(alive, k).values
        # exact count: remove everything below the threshold, then ties in order of position
        below = {n: (params[n].detach().abs() < thresh) & masks[n].bool() for n in params}
        n_below = sum(int(b.sum()) for b in below.values())
        ties_left = k - n_below
        for n in params:
            m = masks[n].bool() & ~below[n]
            tie = (params[n].detach().abs() == thresh) & m
            if ties_left > 0 and tie.any():
                idx = tie.flatten().nonzero().squeeze(1)[:ties_left]
                flat = m.flatten().clone()
                flat[idx] = False
                m = flat.view_as(m)
                ties_left -= len(idx)
            new[n] = m.to(masks[n].dtype)
        return new
    for n, p in params.items():
        m = masks[n].flatten().bool()
        alive_idx = m.nonzero().squeeze(1)
        k = int(round(fraction * alive_idx.numel()))
        if k >= alive_idx.numel():
            k = alive_idx.numel() - 1  # never empty a whole layer
        order = p.detach().abs().flatten()[alive_idx].argsort(stable=True)[:k]
        flat = m.clone()
        flat[alive_idx[order]] = False
        new[n] = flat.view_as(p).to(masks[n].dtype)
    return new


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for n, p in prunable(model).items():
        p.mul_(masks[n])


def sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of prunable weights removed."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(float(m.sum()) for m in masks.values()) / total


# ---- structured (channel) pruning -----------------------------------------------------------------

def _slim(block: IRBlock, keep: torch.Tensor) -> None:
    """Replace ``block``'s middle convs/BNs by ones holding only channels ``keep`` (in place)."""
    k = len(keep)

    def bn(old: nn.BatchNorm2d) -> nn.BatchNorm2d:
        new = nn.BatchNorm2d(k, eps=old.eps, momentum=old.momentum)
        for name in ("weight", "bias"):
            getattr(new, name).data.copy_(getattr(old, name).data[keep])
        for name in ("running_mean", "running_var"):
            getattr(new, name).copy_(getattr(old, name)[keep])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
        return new

    pw = nn.Conv2d(block.c_in, k, 1, bias=False)
    pw.weight.data.copy_(block.conv_pw.weight.data[keep])
    dw = nn.Conv2d(k, k, block.kernel, stride=block.stride, padding=block.kernel // 2, groups=k, bias=False)
    dw.weight.data.copy_(block.conv_dw.weight.data[keep])
    pwl = nn.Conv2d(k, block.c_out, 1, bias=False)
    pwl.weight.data.copy_(block.conv_pwl.weight.data[:, keep])
    block.conv_pw, block.bn1, block.conv_dw, block.bn2, block.conv_pwl = pw, bn(block.bn1), dw, bn(block.bn2), pwl
    block.mid = k


@torch.no_grad()
def prune_channels(model: nn.Module, fraction: float) -> nn.Module:
    """A copy of ``model`` with ``fraction`` of every IR block's middle channels removed.

    Channels with the smallest ``|bn2.weight|`` go (their output after ReLU is the
    smallest the projection sees); at least one channel stays. Blocks with grouped 1x1
    convs (``_g2``) are left whole: removing channels there would have to keep the
    groups equal and the shuffle consistent. Returns a model of the same class whose
    middle convolutions are smaller (so it is faster, unlike masked weights).
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"channel fraction must be in (0, 1), got {fraction}")
    out = copy.deepcopy(model)
    for block in out.modules():
        if isinstance(block, IRBlock) and block.groups == 1:
            mid = block.conv_pw.out_channels
            keep_n = max(1, mid - int(math.floor(fraction * mid)))
            keep = block.bn2.weight.detach().abs().argsort(descending=True, stable=True)[:keep_n].sort().values
            _slim(block, keep)
    return out


# ---- training ---------------------------------------------------------------------------------------

class _Data:
    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        c = bundle.train.images.shape[1]
        self.mean = torch.tensor(bundle.train.mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(bundle.train.std, dtype=torch.float32).view(1, c, 1, 1)
        self.padding = max(1, round(bundle.image_size / 8))

    def prep(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        from ..data import random_crop_flip

        if gen is not None:
            images = random_crop_flip(images, gen, padding=self.padding)
        return (images.float() / 255.0 - self.mean) / self.std


def _train(model: nn.Module, data: _Data, cfg: PruneConfig, masks: dict[str, torch.Tensor] | None, *,
           epochs: int, seed: int, snapshot_step: int = 0) -> tuple[float, dict[str, torch.Tensor] | None]:
    """Train with the mask held; returns (held-out top-1, state after ``snapshot_step`` steps or None)."""
    from ..runs import step_seed

    imgs, labels = data.bundle.train.images, data.bundle.train.labels
    steps = len(labels) // cfg.batch_size
    if steps < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(labels)} images)")
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    opt = momentum_sgd([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
                       lr=cfg.lr, momentum=cfg.momentum, device=next(model.parameters()).device)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    if masks is not None:
        apply_masks(model, masks)
    snap = None
    step_no = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(step_seed(seed, epoch, 2**20)))
        for step in range(steps):
            if snapshot_step and step_no == snapshot_step:
                snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
            gen = torch.Generator().manual_seed(step_seed(seed, epoch, step)) if cfg.augment else None
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(data.prep(imgs[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if masks is not None:
                apply_masks(model, masks)
            step_no += 1
    if snapshot_step and snap is None:
        raise ConfigError(f"rewind_step {snapshot_step} is beyond the first training ({step_no} steps)")
    return _evaluate(model, data), snap


@torch.no_grad()
def _evaluate(model: nn.Module, data: _Data) -> float:
    model.eval()
    imgs, labels = data.bundle.val.images, data.bundle.val.labels
    correct = 0
    for i in range(0, len(labels), 256):
        correct += int((model(data.prep(imgs[i:i + 256], None)).argmax(1) == labels[i:i + 256]).sum())
    return correct / len(labels)


def _fresh(space: SearchSpace, arch: Architecture, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(space, arch)


# ---- the experiment ---------------------------------------------------------------------------------

def run_pruning(space: SearchSpace, arch: Architecture, cfg: PruneConfig, out_dir: str | Path, *,
                data: Any = None, data_spec: str = "synthetic", num_train: int | None = None,
                num_val: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """IMP with rewinding, the random re-init control and structured channel pruning; every
    net measured end to end. Returns ``{"config", "space", "arch", "rows": [...]}`` (also in
    ``prune.json``); a row: ``kind`` (dense / imp / reinit / channels), ``round``,
    ``sparsity``, ``params_nonzero``, ``macs``, ``val_acc``, ``latency_ms`` (+ p10/p90)."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        from ..data import build_datasets

        data = build_datasets(data_spec, image_size=space.input_size, seed=cfg.seed, num_train=num_train,
                              num_val=num_val)
    if space.num_classes != data.num_classes:
        space = space.replace(num_classes=data.num_classes)
    d = _Data(data)
    arch.check(space)
    shape = (1, space.in_channels, space.input_size, space.input_size)

    model = _fresh(space, arch, cfg.seed)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {n: torch.ones_like(p) for n, p in prunable(model).items()}
    total_w = sum(m.numel() for m in masks.values())
    rows: list[dict[str, Any]] = []
    nets: dict[str, nn.Module] = {}

    def record(kind: str, rnd: int, net: nn.Module, acc: float, m: dict[str, torch.Tensor] | None) -> None:
        key = f"{kind}-{rnd}"
        nz = sum(int((p != 0).sum()) for p in prunable(net).values())
        sp = sparsity(m) if m is not None else 1.0 - sum(p.numel() for p in prunable(net).values()) / total_w
        rows.append({"kind": kind, "round": rnd, "sparsity": sp, "params_nonzero": nz,
                     "macs": count_flops(net, shape) // 2, "val_acc": acc, "key": key})
        nets[key] = copy.deepcopy(net).eval()
        log(f"{kind:>8} round {rnd}: sparsity {sp:.3f}, held-out top-1 {acc:.4f}")

    acc, snap = _train(model, d, cfg, None, epochs=cfg.epochs, seed=cfg.seed, snapshot_step=cfg.rewind_step)
    rewind_state = snap if cfg.rewind_step else init_state
    record("dense", 0, model, acc, masks)
    dense = copy.deepcopy(model)
    for r in range(1, cfg.rounds + 1):
        masks = magnitude_masks(model, masks, cfg.per_round, scope=cfg.scope)
        model.load_state_dict(rewind_state)
        acc, _ = _train(model, d, cfg, masks, epochs=cfg.epochs, seed=cfg.seed + r)
        record("imp", r, model, acc, masks)
        if cfg.control:
            ctrl = _fresh(space, arch, cfg.seed + 1000 + r)
            acc_c, _ = _train(ctrl, d, cfg, masks, epochs=cfg.epochs, seed=cfg.seed + r)
            record("reinit", r, ctrl, acc_c, masks)
    ft = cfg.finetune_epochs or cfg.epochs
    for i, frac in enumerate(cfg.channel_fractions, 1):
        slim = prune_channels(dense, frac)
        acc_s, _ = _train(slim, d, cfg, None, epochs=ft, seed=cfg.seed + 500 + i)
        record("channels", i, slim, acc_s, None)
        rows[-1]["channel_fraction"] = frac

    _measure(rows, nets, shape, cfg, log)
    result = {"config": asdict(cfg), "space": space.to_dict(), "arch": arch.to_dict(), "data": data.description,
              "rows": rows}
    atomic_write_text(out / "prune.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "prune.md", markdown_table(rows))
    plot_pruning(rows, out / "prune.png", title=f"{arch.space_name or space.name}: {cfg.scope} IMP, "
                 f"rewind {'to init' if not cfg.rewind_step else f'to step {cfg.rewind_step}'}")
    return result


def _measure(rows: list[dict[str, Any]], nets: dict[str, nn.Module], shape: tuple[int, ...], cfg: PruneConfig,
             log: Callable[[str], None]) -> None:
    from ..measure import get_backend
    from ..measure.core import Job, measure_jobs

    backend = get_backend(cfg.backend, threads=cfg.threads, repeats=cfg.repeats, passes=cfg.passes)
    jobs = [Job(r["key"], (lambda m=nets[r["key"]]: m), shape, r["key"]) for r in rows]
    log(f"measuring {len(jobs)} nets end to end on {backend.name} ({cfg.threads} thread(s)) ...")
    try:
        res = measure_jobs(backend, [jobs], progress=cfg.progress, desc="pruned nets")
    finally:
        backend.close()
    for r in rows:
        e = res[r["key"]]
        r.update(latency_ms=e.median_ms, latency_p10_ms=e.p10_ms, latency_p90_ms=e.p90_ms)
    dense = next(r["latency_ms"] for r in rows if r["kind"] == "dense")
    for r in rows:
        r["latency_vs_dense"] = r["latency_ms"] / dense
        r["backend"] = backend.name


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| net | round | weights removed | nonzero weights | M multiply-adds (dense kernels) | held-out top-1 "
             "| latency ms (p10–p90) | latency / dense |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["kind"] + (f" ({r['channel_fraction']:.0%} of middle channels)" if r["kind"] == "channels" else "")
        lines.append(f"| {name} | {r['round']} | {r['sparsity']:.1%} | {r['params_nonzero']:,d} | {r['macs'] / 1e6:.2f} "
                     f"| {r['val_acc']:.3f} | {r.get('latency_ms', float('nan')):.3f} "
                     f"({r.get('latency_p10_ms', float('nan')):.3f}–{r.get('latency_p90_ms', float('nan')):.3f}) "
                     f"| {r.get('latency_vs_dense', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def plot_pruning(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> None:
    """Left: held-out top-1 vs weights removed; right: measured latency vs weights removed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dense = [r for r in rows if r["kind"] == "dense"]
    styles = {"imp": ("tab:blue", "o-", "IMP (rewound): unstructured"),
              "reinit": ("tab:orange", "s--", "random re-init, same masks"),
              "channels": ("tab:green", "^-", "channel pruning (structured)")}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for kind, (color, fmt, label) in styles.items():
        pts = dense + sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["sparsity"])
        if len(pts) < 2:
            continue
        xs = [100 * r["sparsity"] for r in pts]
        a1.plot(xs, [100 * r["val_acc"] for r in pts], fmt, color=color, label=label)
        if "latency_ms" in pts[0]:
            ys = [r["latency_ms"] for r in pts]
            err = [[r["latency_ms"] - r["latency_p10_ms"] for r in pts], [r["latency_p90_ms"] - r["latency_ms"] for r in pts]]
            a2.errorbar(xs, ys, yerr=err, fmt=fmt, color=color, capsize=3, label=label)
    a1.set_xlabel("prunable weights removed (%)")
    a1.set_ylabel("held-out top-1 (%)")
    a1.set_title("accuracy vs sparsity", fontsize=9)
    a2.set_xlabel("prunable weights removed (%)")
    a2.set_ylabel(f"measured latency, batch 1 (ms, {rows[0].get('backend', '')})")
    a2.set_title("measured latency vs sparsity (unstructured zeros stay in dense tensors)", fontsize=9)
    a2.set_ylim(bottom=0)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
