"""FBNet's candidate blocks as plain ``nn.Module``s with stable submodule names.

Only :func:`build_block` decides channels and strides from a layer spec; the block
classes take everything as keyword-only arguments, so ``state_dict`` keys are
predictable (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``conv_pwl``, ``bn3``).
"""

from __future__ import annotations

import torch
from torch import nn

from .space import Candidate, LayerSpec, SearchSpace, parse_candidate

__all__ = ["IRBlock", "SkipBlock", "ChannelShuffle", "Stem", "Head", "BLOCK_KINDS", "build_block", "channel_shuffle",
           "register_block_kind"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: ``[N, g*c, H, W] -> [N, c*g, H, W]`` (transpose of groups)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class IRBlock(nn.Module):
    """FBNet's inverted-residual block (Wu et al. 2019, Fig. 3 / Table 2).

    ``x [N, c_in, H, W] -> [N, c_out, H/stride, W/stride]``::

        conv_pw  1x1, groups g, c_in -> mid      bn1  ReLU   (shuffle if g > 1)
        conv_dw  kxk depthwise, stride s         bn2  ReLU
        conv_pwl 1x1, groups g, mid -> c_out     bn3          (+ x if s == 1 and c_in == c_out)

    ``mid = round(c_in * expansion)``; expansion 1 still has the first 1x1 conv, as in
    the paper's table. Convolutions carry no bias (BN follows each one).
    """

    kind = "ir"

    def __init__(self, *, c_in: int, c_out: int, kernel: int, expansion: float, groups: int = 1,
                 stride: int = 1) -> None:
        super().__init__()
        mid = int(round(c_in * expansion))
        self.c_in, self.c_out, self.mid = c_in, c_out, mid
        self.kernel, self.expansion, self.groups, self.stride = kernel, expansion, groups, stride
        self.conv_pw = nn.Conv2d(c_in, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv_pw(x)))
        y = self.shuffle(y)
        y = torch.relu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


def zero_init_residual_(module: nn.Module) -> int:
    """Zero the last BN scale of every residual inverted-residual block in ``module``.

    Each such block then starts as the identity, so a deep net (or a supernet) starts
    as a shallow one and its first steps do not have to fight 22 randomly initialised
    residual branches (Goyal et al. 2017, "zero gamma"; torchvision's
    ``zero_init_residual``). Returns how many blocks were changed.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, IRBlock) and m.residual:
            nn.init.zeros_(m.bn3.weight)
            n += 1
    return n


class SkipBlock(nn.Module):
    """FBNet's ``skip`` candidate.

    The identity when the layer keeps its shape. In a layer that changes shape (the
    first of a stage with stride 2 or a new width) an identity is impossible; we
    follow the official block library (facebookresearch/mobile-vision) and make it
    a 1x1 conv with the layer's stride + BN + ReLU, so ``skip`` is a candidate in
    every layer and a searched net may drop a stage's first block to its cheapest form.
    """

    kind = "skip"

    def __init__(self, *, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.identity = stride == 1 and c_in == c_out
        if not self.identity:
            self.conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return torch.relu(self.bn(self.conv(x)))


class Stem(nn.Module):
    """3x3 conv + BN + ReLU, the fixed first layer."""

    def __init__(self, *, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Head(nn.Module):
    """1x1 conv + BN + ReLU, global average pool, dropout, fully connected."""

    def __init__(self, *, c_in: int, c_head: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_head, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_head)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if torch.is_grad_enabled() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # The average pool of a channels_last map as a mean over the NHWC view's rows: its backward
            # hands the ReLU a gradient in the same layout. adaptive_avg_pool2d's backward does not, and
            # the ReLU's backward then runs a strided path: 27 -> 18 ms for the head's training step at
            # fbnet-cifar width 0.25, batch 64 (1 thread, AMD EPYC), ~6 % of a training step.
            x = x.permute(0, 2, 3, 1).flatten(1, 2).mean(1)
        else:
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


# Every block class by its ``kind``: the one place that maps a candidate's kind to a module.
# The fused mixed op keeps its own allow-list of the exact classes it implements
# (ops/mixed_op_fused.py, FUSED_KINDS); a block of any other kind runs the eager reference.
BLOCK_KINDS: dict[str, type[nn.Module]] = {"ir": IRBlock, "skip": SkipBlock}


def register_block_kind(cls: type[nn.Module]) -> type[nn.Module]:
    """Add a block class (with a class attribute ``kind`` and a ``from_candidate(candidate, layer)``
    classmethod) to :data:`BLOCK_KINDS`; usable as a decorator. A kind is registered once."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a class attribute 'kind' (a non-empty string)")
    if kind in BLOCK_KINDS and BLOCK_KINDS[kind] is not cls:
        raise ValueError(f"block kind {kind!r} is already {BLOCK_KINDS[kind].__name__}")
    BLOCK_KINDS[kind] = cls
    return cls


def build_block(candidate: str | Candidate, layer: LayerSpec) -> nn.Module:
    """The module for ``candidate`` at ``layer``'s channels and stride (its kind's class in :data:`BLOCK_KINDS`)."""
    cand = parse_candidate(candidate) if isinstance(candidate, str) else candidate
    cls = BLOCK_KINDS.get(cand.kind)
    if cls is None:
        raise ValueError(f"no block class for kind {cand.kind!r}; known: {sorted(BLOCK_KINDS)}")
    if cls is SkipBlock:
        return SkipBlock(c_in=layer.c_in, c_out=layer.c_out, stride=layer.stride)
    if cls is IRBlock:
        return IRBlock(c_in=layer.c_in, c_out=layer.c_out, kernel=cand.kernel, expansion=cand.expansion,
                       groups=cand.groups, stride=layer.stride)
    return cls.from_candidate(cand, layer)


def build_stem(space: SearchSpace) -> Stem:
    return Stem(c_in=space.in_channels, c_out=space.stem_channels, stride=space.stem_stride)


def build_head(space: SearchSpace, *, dropout: float = 0.0) -> Head:
    return Head(c_in=space.layers[-1].c_out, c_head=space.head_channels, num_classes=space.num_classes,
                dropout=dropout)
