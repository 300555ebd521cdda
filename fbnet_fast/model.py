"""Plain models: one architecture of a space as an ordinary ``nn.Module``.

:func:`build_model` turns ``(space, architecture)`` into an :class:`FBNetModel` with
no supernet code in it: no theta, no mixed ops, no unused candidates. Its
``state_dict`` keys are stable and readable, e.g. for a 3-layer architecture::

    stem.conv.weight, stem.bn.{weight,bias,running_mean,running_var,num_batches_tracked}
    blocks.0.conv_pw.weight, blocks.0.bn1.*, blocks.0.conv_dw.weight, blocks.0.bn2.*,
    blocks.0.conv_pwl.weight, blocks.0.bn3.*          (an IR block, e.g. k3_e6)
    blocks.1.conv.weight, blocks.1.bn.*               (skip in a layer that changes shape)
                                                      (skip as identity: no keys at all)
    head.conv.weight, head.bn.*, head.fc.weight, head.fc.bias

``blocks.<l>`` is searchable layer ``l`` of the space, so a supernet's
``layers.<l>.candidates.<j>.<name>`` maps to ``blocks.<l>.<name>`` when the
architecture picks candidate ``j`` in layer ``l``; :func:`inherit_from_supernet`
does exactly that copy.

Cost: :func:`count_params` and :func:`count_flops` (FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode``, PyTorch's maintained counter, on a real
forward pass, so the count follows the modules actually built rather than formulas
kept beside them). FlopCounterMode counts a multiply-add as 2 FLOPs and counts
convolutions and matrix products only (not BN, ReLU, pooling, additions); the
paper's "FLOPs" (FBNet-B: 295M) are multiply-adds, i.e. ``flops / 2``, reported
as ``macs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .blocks import build_block, build_head, build_stem
from .errors import CheckpointError, SpaceError
from .ops import block_op, check_impl, head_op, stem_op
from .space import Architecture, SearchSpace

__all__ = [
    "FBNetModel",
    "ModelStats",
    "build_model",
    "inherit_from_supernet",
    "supernet_key_map",
    "count_params",
    "count_flops",
    "model_stats",
    "load_run_supernet",
    "MODEL_FORMAT",
    "save_model_file",
    "load_model_file",
]

MODEL_FORMAT = "fbnet-fast/model"
MODEL_VERSION = 1


class FBNetModel(nn.Module):
    """Stem, the chosen block of every searchable layer, head.

    ``forward(x [N, in_channels, input_size, input_size]) -> logits [N, num_classes]``.

    ``space`` and ``arch`` are kept as plain attributes (not modules, not buffers) so
    the model can say what it is; they never enter the ``state_dict``.
    """

    def __init__(self, space: SearchSpace, arch: Architecture, *, dropout: float = 0.0, impl: str = "reference") -> None:
        super().__init__()
        arch.check(space)
        self.space = space
        self.arch = arch
        # how the blocks run: "reference" (each module's own forward: what is traced and exported) or
        # a fused implementation of fbnet_fast.ops.block_op ("auto", "cpp", "triton"), which the
        # trainer uses for its steps; a plain attribute, never in the state_dict
        self.impl = check_impl(impl, what="block implementation")
        self.stem = build_stem(space)
        self.blocks = nn.Sequential(*(build_block(b, layer) for b, layer in zip(arch.blocks, space.layers)))
        self.head = build_head(space, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            x = self.blocks(self.stem(x))
        else:
            x = stem_op(x, self.stem, impl=self.impl)
            for block in self.blocks:
                x = block_op(x, block, impl=self.impl)
            return head_op(x, self.head, impl=self.impl)
        return self.head(x)

    def extra_repr(self) -> str:
        impl = "" if self.impl == "reference" else f", impl={self.impl!r}"
        return f"space={self.space.name!r} ({self.space.fingerprint}), arch={str(self.arch)!r}{impl}"


def build_model(space: SearchSpace, arch: Architecture | Sequence[str], *, dropout: float = 0.0) -> FBNetModel:
    """The plain model of ``arch`` in ``space`` (validated: layer count, names, fingerprint).

    ``arch`` may also be the block names, one per layer. ``dropout`` is the rate before the
    classifier (0 disables it; FBNet trains with 0.2).
    """
    if not isinstance(arch, Architecture):
        arch = Architecture(tuple(arch), space.name, space.fingerprint)
    if not 0.0 <= dropout < 1.0:
        raise SpaceError(f"dropout must be in [0, 1), got {dropout}")
    return FBNetModel(space, arch, dropout=dropout)


# ---- weight inheritance -------------------------------------------------------------------

def supernet_key_map(space: SearchSpace, arch: Architecture) -> dict[str, str]:
    """``{plain model key: supernet key}`` for every entry of the plain model's state_dict."""
    idx = arch.indices(space)
    model = build_model(space, arch)
    out = {}
    for key in model.state_dict():
        if key.startswith("blocks."):
            _, layer, rest = key.split(".", 2)
            out[key] = f"layers.{layer}.candidates.{idx[int(layer)]}.{rest}"
        else:
            out[key] = key
    return out


def inherit_from_supernet(model: FBNetModel, supernet_state: Mapping[str, torch.Tensor], *,
                          exclude: Sequence[str] = ()) -> list[str]:
    """Copy the chosen candidates' weights (and BN statistics) from a supernet state_dict.

    ``supernet_state`` is :class:`~fbnet_fast.supernet.Supernet`'s ``state_dict()`` for
    the same space (the ``"model"`` entry of a search checkpoint). Every tensor of
    ``model`` whose key does not start with a prefix in ``exclude`` (e.g. ``"head.fc."``
    when the class count differs) is overwritten; returns the plain keys copied. Raises
    :class:`CheckpointError` naming the first missing key or mismatched shape.
    """
    mapping = supernet_key_map(model.space, model.arch)
    n_theta = sum(1 for k in supernet_state if k.endswith(".theta"))
    if n_theta and n_theta != model.space.num_layers:
        raise CheckpointError(
            f"supernet state has {n_theta} searchable layers but space {model.space.name!r} has {model.space.num_layers}"
        )
    new = {}
    own = model.state_dict()
    for key, src in mapping.items():
        if any(key.startswith(p) for p in exclude):
            continue
        if src not in supernet_state:
            raise CheckpointError(f"supernet state has no entry {src!r} (needed for {key!r}); is it for this space?")
        t = supernet_state[src]
        if t.shape != own[key].shape:
            raise CheckpointError(
                f"supernet entry {src!r} has shape {list(t.shape)}, the model's {key!r} has {list(own[key].shape)}"
            )
        new[key] = t.detach().clone().contiguous()
    model.load_state_dict(new, strict=not exclude)
    return list(new)


def load_run_supernet(run_dir: str | Path) -> tuple[SearchSpace, dict[str, torch.Tensor], Path]:
    """The space and the newest readable supernet state_dict of a search run folder.

    Returns ``(space, state_dict, checkpoint path)``. Raises :class:`CheckpointError`
    when the folder holds no search or no readable checkpoint.
    """
    from .runs import read_run_config

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    _, space = read_run_config(run_dir, error=CheckpointError)
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"), reverse=True)
    errors = []
    for p in ckpts:
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated file: fall back to the one before
            errors.append(f"{p.name}: {type(e).__name__}")
            continue
        if not isinstance(state, dict) or "model" not in state:
            errors.append(f"{p.name}: no 'model' entry")
            continue
        if state.get("fingerprint", space.fingerprint) != space.fingerprint:
            raise CheckpointError(f"{p}: checkpoint fingerprint {state.get('fingerprint')} does not match "
                                  f"{cfg_path} ({space.fingerprint})")
        return space, state["model"], p
    detail = ("; ".join(errors)) if errors else "none found"
    raise CheckpointError(f"no readable search checkpoint in {run_dir / 'checkpoints'} ({detail})")


# ---- cost -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelStats:
    """Parameters and forward cost of one image."""

    params: int
    flops: int  # FlopCounterMode's count: 2 per multiply-add, convs and matmuls only

    @property
    def macs(self) -> int:
        """Multiply-adds, the unit of the paper's "FLOPs" column."""
        return self.flops // 2

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "flops": self.flops, "macs": self.macs}


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a zero input ``input_shape`` (e.g. ``(1, 3, 32, 32)``)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(input_shape, dtype=p.dtype if p is not None else torch.float32,
                        device=p.device if p is not None else "cpu")
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def model_stats(space: SearchSpace, arch: Architecture | None = None, model: nn.Module | None = None) -> ModelStats:
    """:class:`ModelStats` of ``model`` (built from ``arch`` when not given), per image."""
    if model is None:
        if arch is None:
            raise ValueError("model_stats needs an architecture or a model")
        model = build_model(space, arch)
    return ModelStats(count_params(model),
                      count_flops(model, (1, space.in_channels, space.input_size, space.input_size)))


# ---- model files ------------------------------------------------------------------------------

def save_model_file(path: str | Path, model: FBNetModel, **extra: Any) -> None:
    """Write ``{format, space, arch, model: state_dict, **extra}`` atomically to ``path``."""
    from .runs import atomic_torch_save

    payload = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "space": model.space.to_dict(),
               "fingerprint": model.space.fingerprint, "arch": model.arch.to_dict(),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    atomic_torch_save(payload, path)


def load_model_file(path: str | Path) -> tuple[FBNetModel, dict[str, Any]]:
    """Read a model file (:func:`save_model_file`) or a training checkpoint.

    Returns ``(model in eval mode, payload)``. Raises :class:`CheckpointError` naming
    the file when it is unreadable or not an fbnet-fast model.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"model file {str(path)!r} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"cannot read model file {str(path)!r} ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or not {"space", "arch", "model"} <= set(payload):
        raise CheckpointError(f"{path}: not an fbnet-fast model file or training checkpoint "
                              f"(needs 'space', 'arch' and 'model' entries)")
    try:
        space = SearchSpace.from_dict(payload["space"], source=f"{path}:space")
        arch = Architecture.from_dict(payload["arch"], source=f"{path}:arch")
    except SpaceError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(space, arch)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the architecture: {e}") from None
    model.eval()
    return model, payload
